"""Invocation records as the control plane reads them: this process's, and every edge's.

Each edge router keeps its own records (``RecordStore``) and serves them on ``/_/invocations``
and ``/_/usage``. In cluster mode the control plane finds the edges in Consul and merges their
answers; in embedded mode there is one source, this process. Both go through :class:`RecordsView`,
so the API does not care which.

Following (``faas logs --follow``) uses a cursor per source: the last ``seq`` seen of each edge's
database, encoded as one opaque string. Sequence numbers, not timestamps: a long invocation that
started earlier is recorded after a short one that started later, and must still be shown.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from appliance.core import series as series_mod
from appliance.core.errors import ValidationError
from appliance.core.records import RecordStore

log = logging.getLogger("appliance.core.records")

#: Seconds one edge may take to answer before the merge goes on without it.
EDGE_TIMEOUT_S = 3.0


def encode_cursor(cursor: dict[str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor, sort_keys=True).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, field: str = "after") -> dict[str, int] | None:
    """The per-source cursor of ``after``; a bare integer is this process's own sequence number."""
    if raw is None or raw == "":
        return None
    if raw.isdigit():
        return {"local": int(raw)}
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in data.items()):
            return data
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    raise ValidationError(f"{field} must be the `next` value of a previous answer", field=field)


def next_page(rows: list[dict], before: dict[str, int] | None) -> dict[str, int]:
    """The cursor of the page after ``rows`` (newest first): per source, the oldest ``seq`` given.
    Sequence numbers rather than start times: records are written as invocations end, so a later
    page by start time would skip a long invocation recorded after shorter ones."""
    cur = dict(before or {})
    for r in rows:
        cur[r["edge"]] = min(cur.get(r["edge"], r["seq"]), r["seq"])
    return cur


class RecordsView:
    """Queries over this process's records and, optionally, other edges' (``edges()`` gives their
    base URLs, this process excluded)."""

    def __init__(self, local: RecordStore | None, edges: Callable[[], list[str]] | None = None, *,
                 credential: str = ""):
        self.local = local
        self.edges = edges or (lambda: [])
        self._session = requests.Session()
        if credential:  # the edges' /_/ paths answer only the appliance's own parts
            self._session.headers["Authorization"] = f"Bearer {credential}"
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="records-fanout")

    def flush(self, timeout_s: float = 2.0) -> None:
        if self.local is not None:
            self.local.flush(timeout_s)

    def _sources(self) -> list[str]:
        return (["local"] if self.local is not None else []) + list(self.edges())

    def _ask(self, source: str, path: str, params: dict) -> tuple[str, list[dict]]:
        if source == "local":
            raise AssertionError("local is read directly")
        try:
            resp = self._session.get(source.rstrip("/") + path, params={k: v for k, v in params.items() if v is not None},
                                     timeout=(1.0, EDGE_TIMEOUT_S))
            resp.raise_for_status()
            body = resp.json()
            return source, body.get("invocations") or body.get("usage") or body.get("buckets") or []
        except (requests.RequestException, ValueError) as exc:
            log.warning("event=edge_records_unavailable edge=%s error=%r", source, str(exc))
            return source, []

    def query(self, function: str | None = None, *, since: float | None = None, status: str | None = None,
              limit: int = 100, after: dict[str, int] | None = None, request_id: str | None = None,
              before: dict[str, int] | None = None, max_bytes: int | None = None) -> list[dict]:
        """Rows newest first (oldest first when following with ``after``), each with ``edge`` (its
        source) and ``seq`` (its position in that source). ``max_bytes`` bounds the answer: each
        source gets its share of it. ``before`` is a cursor (:func:`next_page`) of the rows already
        seen, per source: only older ones (by ``seq``, the order they were recorded in) come."""
        rows: list[dict] = []
        sources = self._sources()
        share = max(1, max_bytes // max(1, len(sources))) if max_bytes is not None else None
        if self.local is not None:
            for r in self.local.query(function, since=since, status=status, limit=limit, request_id=request_id,
                                      after_seq=(after or {}).get("local", 0) if after is not None else None,
                                      before_seq=(before or {}).get("local"), max_bytes=share):
                rows.append({**r, "edge": "local"})
        remote = [s for s in sources if s != "local"]
        jobs = [self._pool.submit(self._ask, edge, "/_/invocations", {
            "function": function, "since": since, "status": status, "limit": limit, "request_id": request_id,
            "after": (after or {}).get(edge, 0) if after is not None else None, "before": (before or {}).get(edge),
            "max_bytes": share}) for edge in remote]
        for job in jobs:
            edge, found = job.result()
            rows.extend({**r, "edge": edge} for r in found)
        seen: set[str] = set()
        unique = []
        for r in rows:
            if r["request_id"] not in seen:  # an edge listed twice in Consul answers twice
                seen.add(r["request_id"])
                unique.append(r)
        in_source_order = list(unique)
        unique.sort(key=lambda r: r["started_at"], reverse=after is None)
        kept = unique[:limit]
        if after is None and len(kept) < len(unique):
            # Paging (next_page) goes on from each source's oldest seq given: what a source gave
            # must reach the answer as a prefix, else a row cut here would never be seen.
            kept_ids, cut, broken = {id(r) for r in kept}, set(), set()
            for r in in_source_order:
                if id(r) not in kept_ids:
                    broken.add(r["edge"])
                elif r["edge"] in broken:
                    cut.add(id(r))
            kept = [r for r in kept if id(r) not in cut]
        return kept

    def usage(self, function: str | None = None, *, since: float | None = None) -> list[dict]:
        parts: list[list[dict]] = []
        if self.local is not None:
            parts.append(self.local.usage(function, since=since))
        jobs = [self._pool.submit(self._ask, edge, "/_/usage", {"function": function, "since": since})
                for edge in self._sources() if edge != "local"]
        parts.extend(job.result()[1] for job in jobs)
        total: dict[str, dict] = {}
        for part in parts:
            for u in part:
                t = total.setdefault(u["function"], {"function": u["function"], "invocations": 0, "gb_seconds": 0.0,
                                                     "cold_starts": 0, "errors": 0, "_duration": 0.0})
                t["invocations"] += u["invocations"]
                t["gb_seconds"] += u["gb_seconds"]
                t["cold_starts"] += u["cold_starts"]
                t["errors"] += u["errors"]
                t["_duration"] += u["avg_duration_ms"] * u["invocations"]
        out = []
        for t in sorted(total.values(), key=lambda t: t["function"]):
            n = t.pop("_duration")
            t["gb_seconds"] = round(t["gb_seconds"], 6)
            t["avg_duration_ms"] = round(n / t["invocations"], 3) if t["invocations"] else 0.0
            out.append(t)
        return out

    def series(self, function: str, window: str, now: float) -> dict:
        """The chart points of ``function`` over ``window`` (a fixed number, whatever the traffic)."""
        since, step = series_mod.plan(window, now)
        parts: list[list[dict]] = []
        if self.local is not None:
            parts.append(self.local.series(function, since, step))
        jobs = [self._pool.submit(self._ask, edge, "/_/series", {"function": function, "since": since, "step": step})
                for edge in self._sources() if edge != "local"]
        parts.extend(job.result()[1] for job in jobs)
        return {"function": function, "window": window, "step_s": step, "since": since,
                "points": series_mod.merge(parts, since, step)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()
