"""SQLite document store with check-and-set revisions (embedded mode's MetadataStore)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from appliance.core.errors import RevisionConflict


class SqliteMetadataStore:
    """Keys map to JSON documents with a revision taken from one store-wide counter.

    One connection guarded by a lock: metadata writes are rare and small, and a single writer
    keeps check-and-set trivially correct. WAL mode lets the invocation-record database and
    readers in other processes (``faas`` against a stopped appliance) proceed meanwhile.
    """

    #: Reads are local file reads of well under a millisecond: fine on an event loop.
    remote = False

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS docs (key TEXT PRIMARY KEY, doc TEXT NOT NULL, revision INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO counter (id, value) VALUES (1, 0)")

    def get(self, key: str) -> tuple[dict, int] | None:
        with self._lock:
            row = self._db.execute("SELECT doc, revision FROM docs WHERE key = ?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def list(self, prefix: str) -> list[tuple[str, dict, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, doc, revision FROM docs WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix)).fetchall()
        return [(k, json.loads(d), r) for k, d, r in rows]

    def put(self, key: str, doc: dict, expected_revision: int | None = None) -> int:
        body = json.dumps(doc, sort_keys=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT revision FROM docs WHERE key = ?", (key,)).fetchone()
                current = row[0] if row else 0
                if expected_revision is not None and expected_revision != current:
                    raise RevisionConflict(
                        f"{key} changed concurrently (revision {current}, expected {expected_revision}); "
                        "re-read it and retry")
                self._db.execute("UPDATE counter SET value = value + 1 WHERE id = 1")
                revision = self._db.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0]
                self._db.execute("INSERT INTO docs (key, doc, revision) VALUES (?, ?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET doc = excluded.doc, revision = excluded.revision",
                                 (key, body, revision))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return revision

    def delete(self, key: str, expected_revision: int | None = None) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT revision FROM docs WHERE key = ?", (key,)).fetchone()
                if expected_revision is not None and (row[0] if row else 0) != expected_revision:
                    raise RevisionConflict(f"{key} changed concurrently; re-read it and retry")
                self._db.execute("DELETE FROM docs WHERE key = ?", (key,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
