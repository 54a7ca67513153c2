"""Processes the benchmark starts, and stopping all of them whatever happens.

Every server is started in its own session (process group), so stopping it also stops what it
spawned (gunicorn workers, serverless-offline's Python children, appliance instances). ``stop_all``
runs from ``finally``, from ``atexit`` and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

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


def stop(p: subprocess.Popen | None, timeout_s: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout_s``; also kills stragglers of the group."""
    if p is None:
        return
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
    with _lock:
        if p in _started:
            _started.remove(p)


def stop_all() -> None:
    with _lock:
        procs = list(_started)
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
