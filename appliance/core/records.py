"""Invocation records: what ran, how long, how it ended, what it printed, what it cost; and usage.

Each edge router keeps its own database; in cluster mode the control plane merges queries
across edges. ``billed_gb_s`` follows Lambda: memory in GB times the run duration (the round trip
to the instance on the platform's clock) rounded up to the next millisecond.

**No answered request loses its record.** :meth:`RecordStore.add` runs before the answer is sent:
it appends the record's row to a journal (:mod:`.journal`: memory-mapped files, a copy into the
page cache, no system call) and queues it for the writer thread, which inserts queued rows into
SQLite in batches (one transaction per batch, every ``WRITE_INTERVAL_S``) and records in the same
transaction how far into the journal the database now goes. A killed process (``kill -9``
included) leaves its journal in the page cache, and the next start inserts the rows past that
position. Neither the journal nor SQLite (WAL, ``synchronous=NORMAL``) is fsynced per record: a
power loss or kernel crash may lose the records of the last seconds (what the kernel had not yet
written back).

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
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.core import series as series_mod
from appliance.core.codec import dumps_compact
from appliance.core.errors import ValidationError
from appliance.core.journal import Journal

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
    executed_version: str = "$LATEST"  # the published version that ran ("3"), or $LATEST
    alias: str | None = None          # the alias it was called through, if any

    def to_api(self) -> dict:
        return asdict(self)


_COLUMNS = ("request_id", "function", "version", "started_at", "duration_ms", "run_ms", "billed_gb_s", "memory_mb",
            "cold", "cold_cause", "init_ms", "status", "http_status", "error_type", "error_message", "instance_id",
            "trigger", "phases", "logs", "correlation_id", "executed_version", "alias")
#: The last columns' values for rows journaled before they existed (executed_version, alias).
_ADDED_DEFAULTS = ("$LATEST", None)
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
                 + ", length(CAST(value AS BLOB)) FROM json_each(?) ORDER BY key")
_INSERT_ROW = f"INSERT OR IGNORE INTO invocations ({', '.join(_STORED)}) VALUES ({', '.join('?' * len(_STORED))})"
_USAGE_UPSERT = ("INSERT INTO usage_daily (day, function, invocations, errors, cold_starts, gb_s, duration_ms) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, function) DO UPDATE SET "
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
            r.correlation_id, r.executed_version, r.alias)


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _usage_of_records(records: list[InvocationRecord]) -> list[tuple]:
    """Daily aggregates of records: one tuple per (day, function). Plain attribute reads on the
    writer's thread (SQLite aggregating the batch's JSON cost about 4 us per record more)."""
    agg: dict[tuple[int, str], list] = {}
    for r in records:
        key = (int(r.started_at // 86400), r.function)
        a = agg.get(key)
        if a is None:
            a = agg[key] = [0, 0, 0, 0.0, 0.0]
        a[0] += 1
        a[1] += r.status != "ok"
        a[2] += r.cold
        a[3] += r.billed_gb_s or 0.0
        a[4] += r.duration_ms or 0.0
    return [(_day(day * 86400), fn, *a) for (day, fn), a in agg.items()]


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
        self._db.execute("CREATE TABLE IF NOT EXISTS journal_state (id INTEGER PRIMARY KEY, segment INTEGER, "
                         "offset INTEGER)")
        #: Bytes of the stored rows per function (retention by bytes reads these, not the table).
        self._fn_bytes: collections.Counter = collections.Counter(dict(self._db.execute(
            "SELECT function, coalesce(sum(size), 0) FROM invocations GROUP BY function").fetchall()))
        self._journal = Journal(self.path.with_name(self.path.name + ".journal"))
        self.recovered = self._replay_journal()
        self._written = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._since_prune = 0
        self._last_prune = 0.0
        self.dropped = 0
        self._thread = threading.Thread(target=self._writer, daemon=True, name="records-writer")
        self._thread.start()

    # -- the journal ---------------------------------------------------------------------

    def _replay_journal(self) -> int:
        """Insert the journal's rows the database lacks (those after the position the last
        committed batch recorded), counting them into usage, then start the journal afresh."""
        row = self._db.execute("SELECT segment, offset FROM journal_state WHERE id = 1").fetchone()
        rows = []
        for line in self._journal.read_from(tuple(row) if row else None):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, list) and len(parsed) == len(_COLUMNS) - len(_ADDED_DEFAULTS):
                parsed = parsed + list(_ADDED_DEFAULTS)  # a row journaled before the last columns existed
            if isinstance(parsed, list) and len(parsed) == len(_COLUMNS):
                rows.append((parsed, len(line)))
        new = []
        self._db.execute("BEGIN")
        for parsed, size in rows:
            if self._db.execute(_INSERT_ROW, (*parsed, size)).rowcount == 1:
                new.append(parsed)
                self._fn_bytes[parsed[1]] += size
        self._db.executemany(_USAGE_UPSERT, _usage_of(new))
        self._db.execute("DELETE FROM journal_state")
        self._db.execute("COMMIT")
        self._journal.release_all()
        if new:
            log.warning("event=records_recovered count=%d", len(new))
        return len(new)

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
                mark = self._journal.append(row)
            except OSError as exc:   # no room for a new segment: the record still goes to the database
                log.error("event=record_journal_failed request_id=%s error=%r", record.request_id, str(exc))
                mark = None
            self._buf.append((row, mark, record))
            self._fn_bytes[record.function] += len(row)

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
            with self._jlock:
                while buf and len(batch) < 5000:
                    batch.append(buf.popleft())
            marks = [m for _, m, _ in batch if m is not None]
            usage = _usage_of_records([r for _, _, r in batch])
            batch = [row for row, _, _ in batch]
            try:
                with self._db_lock:
                    self._db.execute("BEGIN")
                    if self._batch_json:
                        doc = (b"[" + b",".join(batch) + b"]").decode()
                        self._db.execute(_INSERT_BATCH, (doc,))
                    else:
                        rows = [json.loads(b) for b in batch]
                        self._db.executemany(_INSERT_ROW, [(*r, len(b)) for r, b in zip(rows, batch)])
                    self._db.executemany(_USAGE_UPSERT, usage)
                    if marks:   # where the journal's rows stop being in the database
                        self._db.execute("INSERT OR REPLACE INTO journal_state (id, segment, offset) VALUES (1, ?, ?)",
                                         marks[-1])
                    self._db.execute("COMMIT")
                if marks:
                    self._journal.release_before(marks[-1])
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
        """Delete the oldest records past each limit of the retention; returns how many.

        Cheap when nothing is over: the count from the largest ``seq``, the age from the oldest
        row, the bytes from totals kept as rows are added. Bytes are pruned to 90% of their limit
        so the next prune is a while away."""
        now = time.time() if now is None else now
        lim = self.limits
        deleted = 0
        with self._db_lock:
            db = self._db
            top = db.execute("SELECT max(seq) FROM invocations").fetchone()[0]
            if top is None:
                return 0
            if top - lim.max_records > 0:
                deleted += self._delete("seq <= ?", (top - lim.max_records,))
            cutoff = now - lim.max_age_s
            oldest = db.execute("SELECT started_at FROM invocations ORDER BY seq LIMIT 1").fetchone()
            while oldest is not None and oldest[0] < cutoff:   # the oldest first, a chunk at a time
                n = self._delete("seq IN (SELECT seq FROM (SELECT seq, started_at FROM invocations ORDER BY seq "
                                 "LIMIT 5000) WHERE started_at < ?)", (cutoff,))
                deleted += n
                if n < 5000:
                    break
            if sum(self._fn_bytes.values()) > lim.max_bytes:
                deleted += self._delete_oldest(sum(self._fn_bytes.values()) - int(lim.max_bytes * 0.9), None)
            for fn, size in list(self._fn_bytes.items()):
                if size > lim.max_function_bytes:
                    deleted += self._delete_oldest(size - int(lim.max_function_bytes * 0.9), fn)
            db.execute("DELETE FROM usage_daily WHERE day < ?", (_day(now - USAGE_RETENTION_DAYS * 86400),))
        return deleted

    def _delete(self, where: str, args: tuple) -> int:
        """Delete rows (db lock held), taking their sizes off the byte totals."""
        rows = self._db.execute(f"DELETE FROM invocations WHERE {where} RETURNING function, size", args).fetchall()
        with self._jlock:
            for fn, size in rows:
                left = self._fn_bytes.get(fn, 0) - (size or 0)
                if left > 0:
                    self._fn_bytes[fn] = left
                else:
                    self._fn_bytes.pop(fn, None)
        return len(rows)

    def _delete_oldest(self, nbytes: int, function: str | None) -> int:
        """Delete the oldest rows (of ``function``, or of all) adding up to ``nbytes`` at least."""
        sql = "SELECT seq, size FROM invocations" + (" WHERE function = ?" if function else "") + " ORDER BY seq"
        cut, got = None, 0
        cur = self._db.execute(sql, (function,) if function else ())
        try:
            for seq, size in cur:
                cut, got = seq, got + (size or 0)
                if got >= nbytes:
                    break
        finally:
            cur.close()
        if cut is None:
            return 0
        if function:
            return self._delete("function = ? AND seq <= ?", (function, cut))
        return self._delete("seq <= ?", (cut,))

    # -- reading -------------------------------------------------------------------------

    def query(self, function: str | None = None, *, since: float | None = None, status: str | None = None,
              limit: int = 100, after_seq: int | None = None, request_id: str | None = None,
              before_seq: int | None = None, max_bytes: int | None = None) -> list[dict]:
        """Rows newest first (oldest first when following with ``after_seq``), at most ``limit``
        and, past the first row, at most ``max_bytes`` of stored rows: read one at a time, so an
        answer is never built larger than that in memory."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}; got {status!r}", field="status")
        if not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be from 1 to 1000, got {limit}", field="limit")
        sql, args = _filtered(f"SELECT seq, {', '.join(_STORED)} FROM invocations", function=function, since=since,
                              status=status, after_seq=after_seq, request_id=request_id, before_seq=before_seq)
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

    def forget(self, function: str) -> int:
        """Drop a deleted function's records and usage, so a function made again under its name starts empty.
        Returns how many were dropped."""
        self.flush(5.0)
        with self._db_lock:
            cur = self._db.execute("DELETE FROM invocations WHERE function = ?", (function,))
            # Its usage goes with it: usage outlives records' retention, not the function.
            self._db.execute("DELETE FROM usage_daily WHERE function = ?", (function,))
            self._db.commit()
            self._fn_bytes.pop(function, None)
            return cur.rowcount

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
        return {"records": n, "bytes": size, "journal_segments": len(self._journal.segments())}

    def series(self, function: str, since: float, step: float) -> list[dict]:
        """This store's buckets of ``function`` for a chart (see core/series.py)."""
        with self._db_lock:
            return series_mod.query(self._db, function, since, step)

    def close(self) -> None:
        self.flush(5.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)
        with self._jlock:
            if not self._buf:
                self._journal.release_all()   # everything is in the database
            else:
                self._journal.close()
        with self._db_lock:
            self._db.close()


def _filtered(select: str, **filters) -> tuple[str, list]:
    """``select`` with a WHERE clause for the filters given (None = not filtered), and its arguments."""
    conditions = {"function": "function = ?", "since": "started_at >= ?", "status": "status = ?",
                  "after_seq": "seq > ?", "request_id": "request_id = ?", "before_seq": "seq < ?",
                  "day": "day >= ?"}
    where, args = [], []
    for name, value in filters.items():
        if value is not None:
            where.append(conditions[name])
            args.append(value)
    return (select + (" WHERE " + " AND ".join(where) if where else "")), args


def now() -> float:
    return time.time()
