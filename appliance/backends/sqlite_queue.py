"""The embedded mode's EventQueue: asynchronous events, destination deliveries and named message
queues in one SQLite database (WAL, ``synchronous=FULL``: a commit is on disk when it returns, so
an event answered 202 survives ``kill -9`` of the appliance and a power cut).

One connection under a lock: every write is a short transaction and the queue is written by one
process. A claim commits ``running`` (and the attempt number) before the attempt starts, so an
attempt cut short by a crash is found ``running`` at the next start (:meth:`recover`) and run again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from appliance.core.errors import EventQueueFull, MessageQueueFull

#: Messages all embedded queues may hold together (a queue nobody reads must not fill the disk).
MAX_MESSAGES = 100_000
from appliance.core.ports import QueuedEvent

_EVENT_COLS = ("id", "function", "payload", "created_at", "state", "attempts", "failures", "available_at",
               "source", "last_error", "updated_at")


class SqliteEventQueue:
    def __init__(self, path: Path, *, max_pending: int = 10000, retention: int = 10000, clock=time.time,
                 ledger: bool = False):
        """``ledger``: only a record of events whose queue is elsewhere (SQS, backends/sqs_event_queue.py):
        no bound on pending events (the real queue has its own), and the oldest rows beyond ``retention``
        go whatever their state (an event accepted here may have been run by another process)."""
        self.path = Path(path)
        self.ledger = ledger
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, function TEXT NOT NULL, "
                         "payload BLOB NOT NULL, created_at REAL NOT NULL, state TEXT NOT NULL, "
                         "attempts INTEGER NOT NULL, failures INTEGER NOT NULL, available_at REAL NOT NULL, "
                         "source TEXT, last_error TEXT, updated_at REAL NOT NULL, seq INTEGER)")
        self._db.execute("CREATE INDEX IF NOT EXISTS events_due ON events (state, available_at)")
        self._db.execute("CREATE INDEX IF NOT EXISTS events_fn ON events (function, updated_at)")
        self._db.execute("CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "event_id TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL, record TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "queue TEXT NOT NULL, body BLOB NOT NULL, sent_at REAL NOT NULL, "
                         "visible_at REAL NOT NULL DEFAULT 0, receive_count INTEGER NOT NULL DEFAULT 0, "
                         "first_receive REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS messages_q ON messages (queue, visible_at)")
        self._sent = threading.Condition()
        self._pending = self._db.execute("SELECT count(*) FROM events WHERE state IN ('queued', 'retrying', "
                                         "'running')").fetchone()[0]
        self._since_prune = 0

    # -- events -------------------------------------------------------------------------

    def put(self, event: QueuedEvent) -> bool:
        with self._lock:
            if self._pending >= self.max_pending and not self.ledger:
                raise EventQueueFull(f"{self._pending} asynchronous events are already pending; the limit is "
                                     f"{self.max_pending} (APPLIANCE_ASYNC_MAX_PENDING); retry later")
            self._tx_begin()
            try:
                added = self._insert(event)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending += added
            if self.ledger:
                self._count_for_prune()
            return bool(added)

    def track(self, e: QueuedEvent) -> None:
        """Ledger: an event this process received from the real queue is running here now."""
        with self._lock:
            self._db.execute(
                "INSERT INTO events (id, function, payload, created_at, state, attempts, failures, available_at, "
                "source, last_error, updated_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, NULL, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = 'running', attempts = excluded.attempts, "
                "failures = excluded.failures, updated_at = excluded.updated_at",
                (e.id, e.function, e.payload, e.created_at, e.attempts, e.failures, e.updated_at, e.source,
                 e.updated_at))
            self._count_for_prune()

    def _count_for_prune(self) -> None:
        self._since_prune += 1
        if self._since_prune >= 100:
            self._since_prune = 0
            self._prune()

    def _insert(self, e: QueuedEvent) -> int:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO events (id, function, payload, created_at, state, attempts, failures, available_at, "
            "source, last_error, updated_at) VALUES (?, ?, ?, ?, 'queued', 0, 0, ?, ?, NULL, ?)",
            (e.id, e.function, e.payload, e.created_at, e.available_at or e.created_at, e.source, e.created_at))
        return cur.rowcount

    def _tx_begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def claim(self, now, limit, busy, caps) -> list[QueuedEvent]:
        if limit <= 0:
            return []
        out: list[QueuedEvent] = []
        taken: dict[str, int] = {}
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE state IN ('queued', 'retrying') "
                "AND available_at <= ? ORDER BY available_at LIMIT ?", (now, max(limit * 8, 64))).fetchall()
            if not rows:
                return out
            self._tx_begin()
            try:
                for row in rows:
                    e = QueuedEvent(*row)
                    n = busy.get(e.function, 0) + taken.get(e.function, 0)
                    if n >= caps(e.function):
                        continue
                    e.attempts += 1
                    e.state = "running"
                    self._db.execute("UPDATE events SET state = 'running', attempts = ?, updated_at = ? WHERE id = ?",
                                     (e.attempts, now, e.id))
                    taken[e.function] = taken.get(e.function, 0) + 1
                    out.append(e)
                    if len(out) >= limit:
                        break
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def finish(self, event_id, state, *, now, available_at=0.0, failures=0, error=None, destination=None) -> None:
        with self._lock:
            self._tx_begin()
            try:
                self._db.execute("UPDATE events SET state = ?, available_at = ?, failures = ?, last_error = ?, "
                                 "updated_at = ? WHERE id = ?",
                                 (state, available_at or now, failures, error, now, event_id))
                if destination is not None:
                    self._db.execute("INSERT INTO deliveries (event_id, kind, target, record) VALUES (?, ?, ?, ?)",
                                     (event_id, destination["kind"], destination["target"],
                                      json.dumps(destination["record"])))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if state in ("succeeded", "dead"):
                self._pending = max(0, self._pending - 1)
                self._count_for_prune()

    def _prune(self) -> None:
        """Finished events beyond ``retention`` go, oldest first (pending ones are never dropped)."""
        if self.ledger:
            self._db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY updated_at DESC "
                             "LIMIT -1 OFFSET ?)", (self.retention,))
            return
        self._db.execute("DELETE FROM events WHERE state IN ('succeeded', 'dead') AND id IN (SELECT id FROM events "
                         "WHERE state IN ('succeeded', 'dead') ORDER BY updated_at DESC LIMIT -1 OFFSET ?)",
                         (self.retention,))

    def recover(self, now) -> int:
        with self._lock:
            cur = self._db.execute("UPDATE events SET state = 'retrying', available_at = ?, updated_at = ?, "
                                   "last_error = 'Appliance.Restarted: the attempt was cut short by a stop of the "
                                   "appliance' WHERE state = 'running'", (now, now))
            return cur.rowcount

    def next_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT min(available_at) FROM events WHERE state IN ('queued', 'retrying')"
                                   ).fetchone()
        return row[0] if row else None

    def get(self, event_id) -> QueuedEvent | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE id = ?",
                                   (event_id,)).fetchone()
        return QueuedEvent(*row) if row else None

    def list(self, function, *, state=None, limit=50) -> list[dict]:
        sql = f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE function = ?"
        args: list = [function]
        if state:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(_EVENT_COLS, row))
            d.pop("payload")
            d["payload_bytes"] = len(row[2])
            out.append(d)
        return out

    def counts(self, function=None) -> dict[str, int]:
        sql, args = "SELECT state, count(*) FROM events", []
        if function:
            sql += " WHERE function = ?"
            args.append(function)
        with self._lock:
            rows = self._db.execute(sql + " GROUP BY state", args).fetchall()
        return dict(rows)

    # -- destinations -------------------------------------------------------------------

    def deliveries(self, limit) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT id, event_id, kind, target, record FROM deliveries ORDER BY id LIMIT ?",
                                    (limit,)).fetchall()
        return [{"id": r[0], "event_id": r[1], "kind": r[2], "target": r[3], "record": json.loads(r[4])} for r in rows]

    def complete_delivery(self, delivery_id, *, event=None, message=None, error=None) -> None:
        with self._lock:
            self._tx_begin()
            try:
                added = self._insert(event) if event is not None else 0
                if message is not None:
                    self._db.execute("INSERT INTO messages (queue, body, sent_at) VALUES (?, ?, ?)",
                                     (message[0], message[1], self._clock()))
                if error:
                    self._db.execute("UPDATE events SET last_error = ? WHERE id = (SELECT event_id FROM deliveries "
                                     "WHERE id = ?)", (f"destination not delivered: {error}"[:1000], delivery_id))
                self._db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending += added

    # -- embedded message queues (MessageQueues port: destinations, queue sources) ----------

    def send(self, queue: str, body) -> str:
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            held = self._db.execute("SELECT count(*) FROM messages").fetchone()[0]
            if held >= MAX_MESSAGES:
                raise MessageQueueFull(f"the embedded queues hold {held} messages, the most they may; "
                                       "read or delete some (or use SQS)")
            cur = self._db.execute("INSERT INTO messages (queue, body, sent_at) VALUES (?, ?, ?)",
                                   (queue, data, self._clock()))
        with self._sent:
            self._sent.notify_all()
        return str(cur.lastrowid)

    def receive(self, queue: str, max_messages: int, wait_s: float, visibility_s: int) -> list:
        """Up to ``max_messages`` visible messages, hidden for ``visibility_s``; waits up to ``wait_s``
        for the first (a long poll) and then returns what there is."""
        from appliance.core.ports import Message

        deadline = time.monotonic() + wait_s
        while True:
            now = self._clock()
            with self._lock:
                self._tx_begin()
                try:
                    rows = self._db.execute("SELECT id, body, sent_at, receive_count, first_receive FROM messages "
                                            "WHERE queue = ? AND visible_at <= ? ORDER BY id LIMIT ?",
                                            (queue, now, max_messages)).fetchall()
                    for r in rows:
                        self._db.execute("UPDATE messages SET visible_at = ?, receive_count = receive_count + 1, "
                                         "first_receive = coalesce(first_receive, ?) WHERE id = ?",
                                         (now + visibility_s, now, r[0]))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            if rows:
                return [Message(id=str(r[0]), receipt=f"{r[0]}:{r[3] + 1}", body=bytes(r[1]).decode(),
                                receive_count=r[3] + 1, sent_at_ms=int(r[2] * 1000),
                                first_receive_ms=int((r[4] or now) * 1000)) for r in rows]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            with self._sent:
                self._sent.wait(min(left, 1.0))  # a send wakes it; hidden messages reappear within 1 s

    def delete(self, queue: str, receipts: list[str]) -> None:
        """Delete by receipt: a receipt from an earlier receive (the message was received again since)
        no longer deletes it, as with SQS."""
        with self._lock:
            self._tx_begin()
            try:
                for receipt in receipts:
                    mid, _, count = receipt.partition(":")
                    self._db.execute("DELETE FROM messages WHERE id = ? AND queue = ? AND receive_count = ?",
                                     (mid, queue, count))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def arn(self, queue: str) -> str:
        return f"arn:faas:local:queue:{queue}"

    def depth(self, queue: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM messages WHERE queue = ?", (queue,)).fetchone()[0]

    def messages(self, queue: str, limit: int = 10, *, delete: bool = False) -> list[dict]:
        """The oldest messages of ``queue``; with ``delete`` they are taken off it."""
        with self._lock:
            rows = self._db.execute("SELECT id, body, sent_at FROM messages WHERE queue = ? ORDER BY id LIMIT ?",
                                    (queue, limit)).fetchall()
            if delete and rows:
                self._db.execute(f"DELETE FROM messages WHERE id IN ({', '.join('?' * len(rows))})",
                                 [r[0] for r in rows])
        return [{"id": str(r[0]), "body": bytes(r[1]).decode(errors="replace"), "sent_at": r[2]} for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
