"""Processes the benchmark starts, and stopping all of them whatever happens.

Every server is started in its own session (process group), so stopping it also stops what it
spawned in that group (gunicorn workers, serverless-offline's Python children). Children that put
themselves in a session of their own (the appliance starts each instance with ``setsid``) are
found as descendants just before the stop and ended too if they outlive their parent.
``stop_all`` runs from ``finally``, from ``atexit`` and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

_lock = threading.Lock()
_started: list[subprocess.Popen] = []


def spawn(cmd: list[str], *, log: Path, env: dict | None = None, cwd: str | Path | None = None,
          pass_fds: tuple = ()) -> subprocess.Popen:
    """Start ``cmd`` in a new session with stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, env=env, cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)
    with _lock:
        _started.append(p)
    return p


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(p: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        return []


def _end_survivors(kids: list[psutil.Process], timeout_s: float = 3.0) -> int:
    """Terminate, then kill, descendants that outlived their parent; how many there were."""
    alive = []
    for k in kids:
        try:
            if k.is_running() and k.status() != psutil.STATUS_ZOMBIE:
                alive.append(k)
        except psutil.Error:
            pass
    for k in alive:
        try:
            k.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=timeout_s)
    for k in still:
        try:
            k.kill()
        except psutil.Error:
            pass
    return len(alive)


#: Processes that outlived the server that started them (see bench README: appliance shutdown).
orphans_ended = 0


def stop(p: subprocess.Popen | None, timeout_s: float = 5.0) -> int:
    """SIGTERM the process group, SIGKILL it after ``timeout_s``; then end descendants that left the
    group and outlived it."""
    global orphans_ended
    if p is None:
        return 0
    kids = _descendants(p)
    if p.poll() is None:
        _signal_group(p, signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive their parent (or ignore SIGTERM): the group goes in any case.
    _signal_group(p, signal.SIGKILL)
    try:
        p.wait(2.0)
    except subprocess.TimeoutExpired:
        pass
    left = _end_survivors(kids)
    orphans_ended += left
    with _lock:
        if p in _started:
            _started.remove(p)
    return left


def stop_all() -> None:
    with _lock:
        procs = list(_started)
    kids = [k for p in procs for k in _descendants(p)]
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    end = time.monotonic() + 5.0
    for p in procs:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        _signal_group(p, signal.SIGKILL)
        try:
            p.wait(1.0)
        except subprocess.TimeoutExpired:
            pass
    _end_survivors(kids)
    with _lock:
        _started.clear()


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM, so ``finally`` blocks run and stop every process."""


def install_handlers() -> None:
    atexit.register(stop_all)

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    # Ctrl-C raises KeyboardInterrupt even where SIGINT was inherited as ignored (background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
