"""Invocation records: what ran, how long, how it ended, what it printed, what it cost.

Records are written by a background thread in batches, so the request path only appends to a
queue. Each edge router keeps its own database; in cluster mode the control plane merges queries
across edges. ``billed_gb_s`` follows Lambda: memory in GB times the run duration rounded up to
the next millisecond.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.core.codec import dumps_compact
from appliance.core.errors import ValidationError

log = logging.getLogger("appliance.core.records")

STATUSES = ("ok", "error", "timeout", "throttled", "unavailable")
#: Records written between two prunes down to the retention.
PRUNE_EVERY = 1000
#: Records waiting for the writer; past this (the database is stuck) new ones are dropped and logged.
MAX_PENDING = 100_000
#: How often the writer commits what was added: a record is readable within about this long.
#: Short on purpose: a batch's insert is CPU work in proportion to its size, and on a 2-core
#: host a 50 ms batch (about 4 ms of SQLite at 7,000 req/s) delayed about one warm request in a
#: hundred by that long (p99 at one connection 3.8 ms; 1.2 ms with 10 ms batches).
WRITE_INTERVAL_S = 0.01
#: How long the writer sleeps once nothing came in: an idle appliance should not wake 100 times
#: a second. The first records after a quiet spell are written within this long (a flush at once).
IDLE_INTERVAL_S = 0.5


def billed_gb_seconds(memory_mb: int, duration_ms: float) -> float:
    return round(memory_mb / 1024 * math.ceil(max(duration_ms, 0.0)) / 1000, 9)


@dataclass
class InvocationRecord:
    request_id: str
    function: str
    version: int
    started_at: float                 # epoch seconds
    duration_ms: float = 0.0          # end to end at the edge
    run_ms: float = 0.0               # the round trip to the instance on the platform's clock (billed)
    billed_gb_s: float = 0.0
    memory_mb: int = 128
    cold: bool = False
    cold_cause: str | None = None
    init_ms: float = 0.0              # cold start time this request waited for (placement to ready)
    status: str = "ok"                # ok | error | timeout | throttled | unavailable
    http_status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    instance_id: str | None = None
    trigger: str | None = None        # "GET /hello/serverless" or "api"
    phases: dict[str, float] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def to_api(self) -> dict:
        return asdict(self)


_COLUMNS = ("request_id", "function", "version", "started_at", "duration_ms", "run_ms", "billed_gb_s", "memory_mb",
            "cold", "cold_cause", "init_ms", "status", "http_status", "error_type", "error_message", "instance_id",
            "trigger", "phases", "logs")


#: One statement inserts a whole batch, its rows passed as one JSON array of arrays. sqlite3
#: lets go of the GIL while a statement steps and takes it back after: ``executemany`` did that
#: once per row, and each time the writer asked for the GIL back the edge's event loop had to
#: hand it over. Inserting 10,000 records per second that way cost the edge about 13% of its
#: throughput; one step per batch lets the loop run while SQLite writes. (An SQLite built
#: without its JSON functions, before 3.38 they were optional, gets ``_INSERT_ROW`` per row.)
_INSERT_BATCH = (f"INSERT OR REPLACE INTO invocations ({', '.join(_COLUMNS)}) SELECT "
                 + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_COLUMNS)))
                 + " FROM json_each(?) ORDER BY key")
_INSERT_ROW = f"INSERT OR REPLACE INTO invocations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def _has_json(db: sqlite3.Connection) -> bool:
    try:
        return db.execute("SELECT json_extract('[7]', '$[0]')").fetchone()[0] == 7
    except sqlite3.OperationalError:
        return False


def _row(r: InvocationRecord) -> tuple:
    """The record as a database row. Plain attribute reads: ``dataclasses.asdict`` deep-copies
    every field and cost this writer, which shares the edge's GIL, a few percent of a request."""
    return (r.request_id, r.function, r.version, r.started_at, r.duration_ms, r.run_ms, r.billed_gb_s, r.memory_mb,
            int(r.cold), r.cold_cause, r.init_ms, r.status, r.http_status, r.error_type, r.error_message,
            r.instance_id, r.trigger, dumps_compact(r.phases).decode(), dumps_compact(r.logs).decode())


class RecordStore:
    def __init__(self, path: Path, *, retention: int = 100_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention = retention
        # Request threads append to a deque (atomic, wakes nobody); the writer drains it every
        # WRITE_INTERVAL_S in one transaction. A queue.Queue took a lock and signalled a
        # condition per record, on the edge's warm path.
        self._buf: collections.deque = collections.deque()
        self._writing = False
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS invocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         f"{', '.join(c + ' TEXT' if c in ('phases', 'logs') else c for c in _COLUMNS)})")
        self._db.execute("CREATE INDEX IF NOT EXISTS inv_fn ON invocations (function, started_at)")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS inv_rid ON invocations (request_id)")
        self._batch_json = _has_json(self._db)
        self._written = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._since_prune = 0
        self._thread = threading.Thread(target=self._writer, daemon=True, name="records-writer")
        self._thread.start()
        self.dropped = 0

    def add(self, record: InvocationRecord) -> None:
        if len(self._buf) >= MAX_PENDING:
            self.dropped += 1
            log.warning("event=record_dropped request_id=%s reason=queue-full", record.request_id)
            return
        self._buf.append(record)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record added so far is in the database."""
        self._wake.set()
        with self._written:
            return self._written.wait_for(lambda: not self._buf and not self._writing, timeout_s)

    def _writer(self) -> None:
        interval = WRITE_INTERVAL_S
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            if self._buf:
                self._write_batch()
                interval = WRITE_INTERVAL_S
            else:
                interval = IDLE_INTERVAL_S
            if stopping and not self._buf:
                return

    def _write_batch(self) -> None:
        buf = self._buf
        with self._written:
            self._writing = True
        try:
            batch = []
            while buf and len(batch) < 5000:
                batch.append(buf.popleft())
            rows = [_row(r) for r in batch]
            try:
                with self._db_lock:
                    if self._batch_json:
                        self._db.execute(_INSERT_BATCH, (dumps_compact(rows).decode(),))
                    else:
                        self._db.execute("BEGIN")
                        self._db.executemany(_INSERT_ROW, rows)
                        self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                log.error("event=record_write_failed count=%d error=%r", len(rows), str(exc))
                with self._db_lock:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            self._since_prune += len(batch)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                try:
                    self.prune()
                except sqlite3.Error as exc:
                    log.error("event=record_prune_failed error=%r", str(exc))
        finally:
            with self._written:
                self._writing = False
                self._written.notify_all()

    def prune(self) -> int:
        with self._db_lock:
            row = self._db.execute("SELECT max(seq) FROM invocations").fetchone()
            if not row or row[0] is None:
                return 0
            cur = self._db.execute("DELETE FROM invocations WHERE seq <= ?", (row[0] - self.retention,))
            return cur.rowcount

    def query(self, function: str | None = None, *, since: float | None = None, status: str | None = None,
              limit: int = 100, after_seq: int | None = None, request_id: str | None = None) -> list[dict]:
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}; got {status!r}", field="status")
        if not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be from 1 to 1000, got {limit}", field="limit")
        sql, args = _filtered(f"SELECT seq, {', '.join(_COLUMNS)} FROM invocations", function=function, since=since,
                              status=status, after_seq=after_seq, request_id=request_id)
        # Newest first, unless following (after_seq): then oldest first so output stays in order.
        sql += " ORDER BY seq " + ("ASC" if after_seq is not None else "DESC") + " LIMIT ?"
        args.append(limit)
        with self._db_lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(("seq",) + _COLUMNS, row))
            d["phases"] = json.loads(d["phases"] or "{}")
            d["logs"] = json.loads(d["logs"] or "[]")
            d["cold"] = bool(d["cold"])
            out.append(d)
        return out

    def usage(self, function: str | None = None, *, since: float | None = None) -> list[dict]:
        sql, args = _filtered("SELECT function, count(*), sum(billed_gb_s), sum(cold), sum(status != 'ok'), "
                              "avg(duration_ms) FROM invocations", function=function, since=since)
        sql += " GROUP BY function ORDER BY function"
        with self._db_lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{"function": f, "invocations": n, "gb_seconds": round(gb or 0.0, 6), "cold_starts": cold or 0,
                 "errors": errs or 0, "avg_duration_ms": round(avg or 0.0, 3)} for f, n, gb, cold, errs, avg in rows]

    def close(self) -> None:
        self.flush(5.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)
        with self._db_lock:
            self._db.close()


def _filtered(select: str, **filters) -> tuple[str, list]:
    """``select`` with a WHERE clause for the filters given (None = not filtered), and its arguments."""
    conditions = {"function": "function = ?", "since": "started_at >= ?", "status": "status = ?",
                  "after_seq": "seq > ?", "request_id": "request_id = ?"}
    where, args = [], []
    for name, value in filters.items():
        if value is not None:
            where.append(conditions[name])
            args.append(value)
    return (select + (" WHERE " + " AND ".join(where) if where else "")), args


def now() -> float:
    return time.time()
