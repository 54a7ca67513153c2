"""Invocation records: what ran, how long, how it ended, what it printed, what it cost; and usage.

Each edge router keeps its own database; in cluster mode the control plane merges queries
across edges. ``billed_gb_s`` follows Lambda: memory in GB times the run duration (the round trip
to the instance on the platform's clock) rounded up to the next millisecond.

**No answered request loses its record.** :meth:`RecordStore.add` runs before the answer is sent:
it appends the record's row to a journal file with one ``write(2)`` and queues it for the writer
thread, which inserts queued rows into SQLite in batches (one transaction per batch, every
``WRITE_INTERVAL_S``). A killed process (``kill -9`` included) leaves its journal in the page cache,
and the next start inserts what the database lacks. Once a batch that emptied the queue is
committed, the journal segment it came from is deleted, so the journal holds only rows not yet
in the database. Neither the journal nor SQLite (WAL, ``synchronous=NORMAL``) is fsynced per
record: a power loss or kernel crash may lose the records of the last moments (about a second).

**Bounded.** Records are kept by count, by age and by bytes (in total and per function), pruned by
the writer; each record's logs keep their head and tail within ``MAX_LOG_BYTES``. A query answer
stops at ``max_bytes`` and says where to go on. **Usage** (invocations, errors, cold starts, GB-s,
duration) is metered apart from records, in daily aggregates per function updated in the same
transaction as the records, so pruning records never shrinks it.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
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
#: Seconds between prunes at most (retention by age needs them while nothing is written).
PRUNE_INTERVAL_S = 10.0
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
#: Bytes of log lines kept per record: the head and the tail, with a line saying what was cut.
MAX_LOG_BYTES = 256 << 10
#: Days of usage aggregates kept.
USAGE_RETENTION_DAYS = 800


def billed_gb_seconds(memory_mb: int, duration_ms: float) -> float:
    return round(memory_mb / 1024 * math.ceil(max(duration_ms, 0.0)) / 1000, 9)


def bound_logs(lines: list[str], max_bytes: int = MAX_LOG_BYTES) -> list[str]:
    """``lines`` within ``max_bytes`` (counted as characters plus a newline each): the first half
    and the last half, with a line between them that says what was dropped. Pure."""
    total = 0
    for line in lines:
        total += len(line) + 1
    if total <= max_bytes:
        return lines
    half = max_bytes // 2
    head, size = [], 0
    for line in lines:
        if size + len(line) + 1 > half:
            break
        head.append(line)
        size += len(line) + 1
    tail, size = [], 0
    for line in reversed(lines[len(head):]):
        if size + len(line) + 1 > half:
            break
        tail.append(line)
        size += len(line) + 1
    tail.reverse()
    dropped = lines[len(head):len(lines) - len(tail)]
    note = (f"[faas] log truncated by the platform: {sum(len(x) + 1 for x in dropped)} bytes in {len(dropped)} "
            f"lines were not kept (limit {max_bytes} bytes per invocation)")
    return head + [note] + tail


@dataclass
class InvocationRecord:
    request_id: str                   # the platform's own id: new for every request, the record's key
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
    correlation_id: str | None = None  # the client's own X-Request-Id, kept as it was given

    def to_api(self) -> dict:
        return asdict(self)


_COLUMNS = ("request_id", "function", "version", "started_at", "duration_ms", "run_ms", "billed_gb_s", "memory_mb",
            "cold", "cold_cause", "init_ms", "status", "http_status", "error_type", "error_message", "instance_id",
            "trigger", "phases", "logs", "correlation_id")
#: The row as stored: the columns above, then ``size`` (the bytes of the row's JSON, what
#: retention by bytes counts).
_STORED = _COLUMNS + ("size",)

#: One statement inserts a whole batch, its rows passed as one JSON array of arrays. sqlite3
#: lets go of the GIL while a statement steps and takes it back after: ``executemany`` did that
#: once per row, and each time the writer asked for the GIL back the edge's event loop had to
#: hand it over. Inserting 10,000 records per second that way cost the edge about 13% of its
#: throughput; one step per batch lets the loop run while SQLite writes. (An SQLite built
#: without its JSON functions, before 3.38 they were optional, gets ``_INSERT_ROW`` per row.)
#: ``OR IGNORE``: a request id is the record's key; a second record with the same id (a journal
#: replayed over rows already written) never replaces the first.
_INSERT_BATCH = (f"INSERT OR IGNORE INTO invocations ({', '.join(_STORED)}) SELECT "
                 + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_COLUMNS)))
                 + ", length(value) FROM json_each(?) ORDER BY key")
_INSERT_ROW = f"INSERT OR IGNORE INTO invocations ({', '.join(_STORED)}) VALUES ({', '.join('?' * len(_STORED))})"
_USAGE_UPSERT = ("INSERT INTO usage_daily (day, function, invocations, errors, cold_starts, gb_s, duration_ms) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, function) DO UPDATE SET "
                 "invocations = invocations + excluded.invocations, errors = errors + excluded.errors, "
                 "cold_starts = cold_starts + excluded.cold_starts, gb_s = gb_s + excluded.gb_s, "
                 "duration_ms = duration_ms + excluded.duration_ms")


#: The batch's usage, aggregated by SQLite from the same JSON document (no second parse in Python).
_USAGE_BATCH = ("INSERT INTO usage_daily (day, function, invocations, errors, cold_starts, gb_s, duration_ms) "
                "SELECT strftime('%Y-%m-%d', json_extract(value, '$[3]'), 'unixepoch'), json_extract(value, '$[1]'), "
                "count(*), sum(json_extract(value, '$[11]') != 'ok'), sum(json_extract(value, '$[8]')), "
                "total(json_extract(value, '$[6]')), total(json_extract(value, '$[4]')) FROM json_each(?) "
                "WHERE true GROUP BY 1, 2 ON CONFLICT (day, function) DO UPDATE SET "
                "invocations = invocations + excluded.invocations, errors = errors + excluded.errors, "
                "cold_starts = cold_starts + excluded.cold_starts, gb_s = gb_s + excluded.gb_s, "
                "duration_ms = duration_ms + excluded.duration_ms")


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
            r.instance_id, r.trigger, dumps_compact(r.phases).decode(), dumps_compact(r.logs).decode(),
            r.correlation_id)


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _usage_of(rows: list[list]) -> list[tuple]:
    """Daily aggregates of rows (as ``_row`` makes them): one tuple per (day, function)."""
    agg: dict[tuple[str, str], list] = {}
    for r in rows:
        key = (_day(r[3]), r[1])
        a = agg.get(key)
        if a is None:
            a = agg[key] = [0, 0, 0, 0.0, 0.0]
        a[0] += 1
        a[1] += r[11] != "ok"
        a[2] += r[8]
        a[3] += r[6] or 0.0
        a[4] += r[4] or 0.0
    return [(day, fn, *a) for (day, fn), a in agg.items()]


@dataclass(frozen=True)
class Retention:
    """How much of the records is kept (the oldest go first): count, age and bytes (the rows'
    JSON), in total and per function. Usage aggregates are not records and are kept apart."""
    max_records: int = 100_000
    max_age_s: float = 7 * 86400
    max_bytes: int = 1 << 30
    max_function_bytes: int = 256 << 20


class RecordStore:
    def __init__(self, path: Path, *, retention: int | Retention = 100_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.limits = retention if isinstance(retention, Retention) else Retention(max_records=retention)
        self.retention = self.limits.max_records
        # Request threads (and the edge's loop) write the journal and append to a deque under one
        # short lock; the writer drains the deque every WRITE_INTERVAL_S in one transaction.
        self._buf: collections.deque = collections.deque()
        self._jlock = threading.Lock()
        self._writing = False
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS invocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         f"{', '.join(c + ' TEXT' if c in ('phases', 'logs') else c for c in _STORED)})")
        have = {r[1] for r in self._db.execute("PRAGMA table_info(invocations)")}
        for col in _STORED:
            if col not in have:  # a database from before the column
                self._db.execute(f"ALTER TABLE invocations ADD COLUMN {col}" + (" DEFAULT 0" if col == "size" else ""))
        self._db.execute("CREATE INDEX IF NOT EXISTS inv_fn ON invocations (function, started_at)")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS inv_rid ON invocations (request_id)")
        self._db.execute("CREATE TABLE IF NOT EXISTS usage_daily (day TEXT, function TEXT, invocations INTEGER, "
                         "errors INTEGER, cold_starts INTEGER, gb_s REAL, duration_ms REAL, "
                         "PRIMARY KEY (day, function))")
        self._batch_json = _has_json(self._db)
        self._journal_dir = self.path.with_name(self.path.name + ".journal")
        self._journal_dir.mkdir(exist_ok=True)
        self.recovered = self._replay_journal()
        self._segment = 0
        self._jfd = -1
        self._jpath: Path | None = None
        self._open_segment()
        self._written = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._since_prune = 0
        self._last_prune = 0.0
        self.dropped = 0
        self._thread = threading.Thread(target=self._writer, daemon=True, name="records-writer")
        self._thread.start()

    # -- the journal ---------------------------------------------------------------------

    def _open_segment(self) -> Path | None:
        """Start a new journal segment; returns the previous one (None at the first)."""
        self._segment += 1
        path = self._journal_dir / f"{time.time_ns():020d}-{self._segment:08d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        old_fd, old = self._jfd, self._jpath
        self._jfd, self._jpath = fd, path
        if old_fd >= 0:
            os.close(old_fd)
        return old

    def _replay_journal(self) -> int:
        """Insert the rows of journal segments a killed process left (those already in the
        database are ignored by their request id); count them into usage only when inserted."""
        inserted = 0
        for seg in sorted(self._journal_dir.glob("*.jsonl")):
            rows = []
            with open(seg, "rb") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue   # a line torn by the kill
                    if isinstance(row, list) and len(row) == len(_COLUMNS):
                        rows.append((row, len(line) - 1))
            new = []
            self._db.execute("BEGIN")
            for row, size in rows:
                if self._db.execute(_INSERT_ROW, (*row, size)).rowcount == 1:
                    new.append(row)
            self._db.executemany(_USAGE_UPSERT, _usage_of(new))
            self._db.execute("COMMIT")
            inserted += len(new)
            seg.unlink()
        if inserted:
            log.warning("event=records_recovered count=%d", inserted)
        return inserted

    # -- writing -------------------------------------------------------------------------

    def add(self, record: InvocationRecord) -> None:
        """Journal the record (one ``write(2)``: it survives this process being killed) and
        queue it for the database. Returns once it is in the journal."""
        if len(self._buf) >= MAX_PENDING:
            self.dropped += 1
            log.warning("event=record_dropped request_id=%s reason=queue-full", record.request_id)
            return
        logs = record.logs
        if logs and sum(map(len, logs)) + len(logs) > MAX_LOG_BYTES:
            record.logs = bound_logs(logs)
        row = dumps_compact(_row(record))
        with self._jlock:
            try:
                os.write(self._jfd, row + b"\n")
            except OSError as exc:
                log.error("event=record_journal_failed request_id=%s error=%r", record.request_id, str(exc))
            self._buf.append(row)

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
            if time.monotonic() - self._last_prune > PRUNE_INTERVAL_S:
                self._prune_logged()
            if stopping and not self._buf:
                return

    def _prune_logged(self) -> None:
        self._since_prune = 0
        self._last_prune = time.monotonic()
        try:
            self.prune()
        except sqlite3.Error as exc:
            log.error("event=record_prune_failed error=%r", str(exc))

    def _write_batch(self) -> None:
        buf = self._buf
        with self._written:
            self._writing = True
        try:
            batch = []
            done_segment = None
            with self._jlock:
                while buf and len(batch) < 5000:
                    batch.append(buf.popleft())
                if not buf:
                    # Every row journalled so far is in this batch: once it is committed, the
                    # segment holding them is no longer needed.
                    done_segment = self._open_segment()
            try:
                with self._db_lock:
                    self._db.execute("BEGIN")
                    if self._batch_json:
                        doc = (b"[" + b",".join(batch) + b"]").decode()
                        self._db.execute(_INSERT_BATCH, (doc,))
                        self._db.execute(_USAGE_BATCH, (doc,))
                    else:
                        rows = [json.loads(b) for b in batch]
                        self._db.executemany(_INSERT_ROW, [(*r, len(b)) for r, b in zip(rows, batch)])
                        self._db.executemany(_USAGE_UPSERT, _usage_of(rows))
                    self._db.execute("COMMIT")
                if done_segment is not None:
                    for seg in self._journal_dir.glob("*.jsonl"):
                        if seg.name <= done_segment.name:
                            seg.unlink(missing_ok=True)
            except sqlite3.Error as exc:
                log.error("event=record_write_failed count=%d error=%r", len(batch), str(exc))
                with self._db_lock:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            self._since_prune += len(batch)
            if self._since_prune >= PRUNE_EVERY:
                self._prune_logged()
        finally:
            with self._written:
                self._writing = False
                self._written.notify_all()

    # -- retention -----------------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Delete the oldest records past each limit of the retention; returns how many."""
        now = time.time() if now is None else now
        lim = self.limits
        deleted = 0
        with self._db_lock:
            db = self._db
            row = db.execute("SELECT max(seq) FROM invocations").fetchone()
            if not row or row[0] is None:
                return 0
            deleted += db.execute("DELETE FROM invocations WHERE seq <= ?", (row[0] - lim.max_records,)).rowcount
            deleted += db.execute("DELETE FROM invocations WHERE started_at < ?", (now - lim.max_age_s,)).rowcount
            # Total bytes: everything older than the newest rows that fit.
            cut = db.execute("SELECT max(seq) FROM (SELECT seq, sum(size) OVER (ORDER BY seq DESC) AS kept "
                             "FROM invocations) WHERE kept > ?", (lim.max_bytes,)).fetchone()[0]
            if cut is not None:
                deleted += db.execute("DELETE FROM invocations WHERE seq <= ?", (cut,)).rowcount
            # Bytes per function: a noisy function does not push the others' records out.
            for (fn,) in db.execute("SELECT function FROM invocations GROUP BY function HAVING sum(size) > ?",
                                    (lim.max_function_bytes,)).fetchall():
                cut = db.execute("SELECT max(seq) FROM (SELECT seq, sum(size) OVER (ORDER BY seq DESC) AS kept "
                                 "FROM invocations WHERE function = ?) WHERE kept > ?",
                                 (fn, lim.max_function_bytes)).fetchone()[0]
                if cut is not None:
                    deleted += db.execute("DELETE FROM invocations WHERE function = ? AND seq <= ?",
                                          (fn, cut)).rowcount
            db.execute("DELETE FROM usage_daily WHERE day < ?", (_day(now - USAGE_RETENTION_DAYS * 86400),))
        return deleted

    # -- reading -------------------------------------------------------------------------

    def query(self, function: str | None = None, *, since: float | None = None, status: str | None = None,
              limit: int = 100, after_seq: int | None = None, request_id: str | None = None,
              before: float | None = None, max_bytes: int | None = None) -> list[dict]:
        """Rows newest first (oldest first when following with ``after_seq``), at most ``limit``
        and, past the first row, at most ``max_bytes`` of stored rows: read one at a time, so an
        answer is never built larger than that in memory."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}; got {status!r}", field="status")
        if not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be from 1 to 1000, got {limit}", field="limit")
        sql, args = _filtered(f"SELECT seq, {', '.join(_STORED)} FROM invocations", function=function, since=since,
                              status=status, after_seq=after_seq, request_id=request_id, before=before)
        sql += " ORDER BY seq " + ("ASC" if after_seq is not None else "DESC") + " LIMIT ?"
        args.append(limit)
        out = []
        used = 0
        with self._db_lock:
            cur = self._db.execute(sql, args)
            try:
                for row in cur:
                    d = dict(zip(("seq",) + _STORED, row))
                    used += d.pop("size") or 0
                    if out and max_bytes is not None and used > max_bytes:
                        break
                    d["phases"] = json.loads(d["phases"] or "{}")
                    d["logs"] = json.loads(d["logs"] or "[]")
                    d["cold"] = bool(d["cold"])
                    out.append(d)
            finally:
                cur.close()
        return out

    def usage(self, function: str | None = None, *, since: float | None = None) -> list[dict]:
        """Usage per function from the daily aggregates (``since`` counts whole UTC days: the day
        it falls in and after)."""
        sql, args = _filtered("SELECT function, sum(invocations), sum(gb_s), sum(cold_starts), sum(errors), "
                              "sum(duration_ms) FROM usage_daily", function=function,
                              day=_day(since) if since is not None else None)
        sql += " GROUP BY function ORDER BY function"
        with self._db_lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{"function": f, "invocations": n, "gb_seconds": round(gb or 0.0, 6), "cold_starts": cold or 0,
                 "errors": errs or 0, "avg_duration_ms": round((dur or 0.0) / n, 3) if n else 0.0}
                for f, n, gb, cold, errs, dur in rows]

    def stats(self) -> dict:
        """What the records hold: rows and bytes (for operators and the tests of retention)."""
        with self._db_lock:
            n, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM invocations").fetchone()
        return {"records": n, "bytes": size, "journal_segments": len(list(self._journal_dir.glob("*.jsonl")))}

    def close(self) -> None:
        self.flush(5.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)
        with self._jlock:
            if self._jfd >= 0:
                os.close(self._jfd)
                self._jfd = -1
            if not self._buf and self._jpath is not None:
                self._jpath.unlink(missing_ok=True)
        with self._db_lock:
            self._db.close()


def _filtered(select: str, **filters) -> tuple[str, list]:
    """``select`` with a WHERE clause for the filters given (None = not filtered), and its arguments."""
    conditions = {"function": "function = ?", "since": "started_at >= ?", "status": "status = ?",
                  "after_seq": "seq > ?", "request_id": "request_id = ?", "before": "started_at < ?",
                  "day": "day >= ?"}
    where, args = [], []
    for name, value in filters.items():
        if value is not None:
            where.append(conditions[name])
            args.append(value)
    return (select + (" WHERE " + " AND ".join(where) if where else "")), args


def now() -> float:
    return time.time()
