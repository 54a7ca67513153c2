"""What a launcher hands back for a sandboxed instance it did not start itself: a process reaped by
someone else (the zygote, or a snapshot template), whose exit status arrives by message.

Signals go through a pidfd taken at once, so a recycled pid can never be signalled by mistake."""

from __future__ import annotations

import os
import signal
import threading


class ExitHandle:
    """``pid``, ``returncode``, ``wait`` and ``signal`` like ``subprocess.Popen``; :meth:`_finish`
    records the status, runs ``on_exit`` (the launcher's cleanup) first, and wakes the waiters."""

    def __init__(self, pid: int, on_exit):
        self.pid = pid
        self.oom = False
        self._on_exit = on_exit
        self._rc: int | None = None
        self._done = threading.Event()
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # already gone; its status comes by message all the same
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        return self._rc if self._done.is_set() else None

    def wait(self, timeout: float | None) -> int | None:
        self._done.wait(timeout)
        return self.returncode

    def signal(self, sig: int) -> None:
        if self._done.is_set():
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _finish(self, rc: int) -> None:
        if self._done.is_set():
            return
        try:
            self._on_exit(self)
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._rc = rc
            self._done.set()
