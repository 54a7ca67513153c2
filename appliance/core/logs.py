"""One line per event, ``key=value`` fields, the request id on every request line.

Modules log with ``log.info("event=x request_id=%s ...", ...)``; this formatter prefixes the time,
level and logger so every line stands alone for grep and log shippers.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import sys
import threading
import time


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second: lines within one second share it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def line(created: float, level: str, logger: str, msg: str) -> str:
    """One log line: time, level and logger, then the event's ``key=value`` fields."""
    ts = f"{_utc_second(int(created))}.{int(created % 1 * 1000):03d}Z"
    if "event=" not in msg:
        msg = f'event=message text="{msg}"'
    return f"ts={ts} level={level} logger={logger} {msg}"


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line_ = line(record.created, record.levelname.lower(), record.name, record.getMessage())
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n")
            line_ += f' exc="{exc}"'
        return line_


class _BatchingHandler(logging.Handler):
    """Appends records to a deque; one writer thread formats and writes them every ``interval_s``.

    Request threads must not pay for logging: the stock QueueHandler formats and copies each
    record, and its queue wakes the writer thread on every put (a futex call while holding the
    GIL). Together that was about a fifth of the edge's Python time per warm request. A deque
    append wakes nobody; the writer drains in batches, so a line appears within ``interval_s``.
    """

    def __init__(self, target: logging.Handler, interval_s: float = 0.05):
        super().__init__()
        self._target = target
        self._interval_s = interval_s
        self._buf: collections.deque = collections.deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: deque.append is atomic. The message is merged now, while its
        # arguments still hold the values they had at the call.
        record.msg = record.getMessage()
        record.args = None
        self._buf.append(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        self.handle(record)

    def add_line(self, created: float, logger: str, msg: str) -> None:
        """An INFO line from :func:`info`, formatted by the writer thread."""
        self._buf.append((created, logger, msg))

    def _drain(self) -> None:
        buf = self._buf
        target = self._target
        end = target.terminator
        lines: list[str] = []
        while buf:
            item = buf.popleft()
            if type(item) is tuple:
                created, name, msg = item
                lines.append(line(created, "info", name, msg) + end)
                continue
            self._write(lines)
            target.handle(item)
        self._write(lines)
        target.flush()

    def _write(self, lines: list[str]) -> None:
        """Write the plain lines gathered so far in one call (and empty the list)."""
        if lines:
            target = self._target
            target.acquire()
            try:
                target.stream.write("".join(lines))
            finally:
                target.release()
            lines.clear()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self._drain()
            except Exception:  # a broken stream must not end logging for good
                pass
        self._drain()

    def close(self) -> None:
        """Write out what is queued and stop the writer."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._thread.join(timeout=5)
        super().close()


_handler: _BatchingHandler | None = None


def _stop() -> None:
    """Write out what is queued and stop the writer thread (at exit, or before a new setup)."""
    if _handler is not None:
        _handler.close()


def info(logger: logging.Logger, msg: str, *args) -> None:
    """``logger.info(msg, *args)`` for a line written on every request (the invocation line).

    When the lines go only to this module's writer, the message is merged here and queued as a
    plain tuple: building a ``LogRecord`` and walking the logger hierarchy cost the edge's event
    loop about 6 us per request, which its throughput pays in full. Anywhere else (another handler
    attached, as test log capture does), it is an ordinary ``logger.info``.
    """
    h = _handler
    if h is not None and logger.isEnabledFor(logging.INFO) and _only_writer(logger, h):
        h.add_line(time.time(), logger.name, msg % args if args else msg)
    else:
        logger.info(msg, *args)


def _only_writer(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether the batching writer is the one handler ``logger``'s lines reach, with no filter."""
    node = logger
    while node is not None:
        if node.filters:
            return False
        if node.handlers:
            return node.parent is None and node.handlers == [handler]
        if not node.propagate:
            return False
        node = node.parent
    return False


def setup(level: str = "info", stream=None) -> None:
    """Log lines are formatted and written by one background thread: request threads only enqueue
    a record, so they never wait on each other for the stream's lock or its write."""
    global _handler
    stream_handler = logging.StreamHandler(stream or sys.stderr)
    stream_handler.setFormatter(KeyValueFormatter())
    if _handler is None:
        atexit.register(_stop)
    else:
        _stop()
    _handler = _BatchingHandler(stream_handler)
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
    # Lines carry neither caller, thread nor process fields, so records need not collect them
    # (the logging HOWTO's "Optimization" switches): finding the caller walks the stack on every
    # call, a tenth of the invocation's own CPU on the edge's warm path.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Waitress reports every client disconnect at INFO; keep its warnings only.
    logging.getLogger("waitress").setLevel(logging.WARNING)
