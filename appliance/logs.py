"""One line per event, ``key=value`` fields, the request id on every request line.

Modules log with ``log.info("event=x request_id=%s ...", ...)``; this formatter prefixes the time,
level and logger so every line stands alone for grep and log shippers.
"""

from __future__ import annotations

import logging
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


def setup(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Waitress reports every client disconnect at INFO; keep its warnings only.
    logging.getLogger("waitress").setLevel(logging.WARNING)
