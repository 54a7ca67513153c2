"""One line per event, ``key=value`` fields, the request id on every request line.

Modules log with ``log.info("event=x request_id=%s ...", ...)``; this formatter prefixes the time,
level and logger so every line stands alone for grep and log shippers.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        msg = record.getMessage()
        if "event=" not in msg:
            msg = f'event=message text="{msg}"'
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {msg}"
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n")
            line += f' exc="{exc}"'
        return line


_listener: logging.handlers.QueueListener | None = None


def _stop() -> None:
    """Write out what is queued and stop the writer thread (at exit, or before a new setup)."""
    if _listener is not None and _listener._thread is not None:
        _listener.stop()


def setup(level: str = "info", stream=None) -> None:
    """Log lines are formatted and written by one background thread: request threads only enqueue
    a record, so they never wait on each other for the stream's lock or its write."""
    global _listener
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    if _listener is None:
        atexit.register(_stop)
    else:
        _stop()
    q: queue.SimpleQueue = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(level.upper())
    # Waitress reports every client disconnect at INFO; keep its warnings only.
    logging.getLogger("waitress").setLevel(logging.WARNING)
