"""A function's invocation records as a time series, for the console's charts.

The console draws invocations, errors, duration p50/p99, cold-start rate and GB-s over a window
the user picks. Sending it the raw records would grow with traffic; instead each edge buckets its
own records in SQLite (one query, window functions for the percentiles) and answers a fixed
number of points, whatever the traffic: ``BUCKETS`` per window, so the answer is bounded.

Merging edges (cluster mode) adds the counts; percentiles cannot be added, so the merged p50 is
the invocation-weighted mean of the edges' medians and the merged p99 the highest edge's p99 (an
upper bound). ``instances`` is how many distinct instances served calls in a bucket (records name
the instance; an idle warm instance is not counted); merged, the highest edge's count, as edges
share instances. In embedded mode there is one edge and all are exact.
"""

from __future__ import annotations

import math
import sqlite3

from appliance.core.errors import ValidationError

#: The windows the API accepts, in seconds.
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600}
#: Points per window: a chart's worth, whatever the traffic.
BUCKETS = 60
FIELDS = ("invocations", "errors", "cold_starts", "gb_seconds", "p50_ms", "p99_ms", "instances")


def plan(window: str, now: float) -> tuple[float, float]:
    """``(since, step)`` of ``window`` ending at ``now``: ``BUCKETS`` buckets of ``step`` seconds,
    aligned to multiples of ``step`` so a chart refreshed a moment later keeps its buckets."""
    if window not in WINDOWS:
        raise ValidationError(f"window must be one of {', '.join(WINDOWS)}; got {window!r}", field="window")
    step = WINDOWS[window] / BUCKETS
    since = math.floor(now / step) * step - (BUCKETS - 1) * step
    return since, step


# The rank of a percentile p among n sorted values is ceil(n * p / 100), in integer arithmetic
# (SQLite's ceil() is an optional extension).
_SQL = """
WITH r AS (
  SELECT CAST((started_at - ?) / ? AS INTEGER) AS bucket, duration_ms, status, cold, billed_gb_s, instance_id,
         ROW_NUMBER() OVER (PARTITION BY CAST((started_at - ?) / ? AS INTEGER) ORDER BY duration_ms) AS rn,
         COUNT(*) OVER (PARTITION BY CAST((started_at - ?) / ? AS INTEGER)) AS n
  FROM invocations WHERE function = ? AND started_at >= ? AND started_at < ?
)
SELECT bucket, count(*), sum(status != 'ok'), sum(cold), sum(billed_gb_s),
       max(CASE WHEN rn = (n * 50 + 99) / 100 THEN duration_ms END),
       max(CASE WHEN rn = (n * 99 + 99) / 100 THEN duration_ms END),
       count(DISTINCT instance_id)
FROM r GROUP BY bucket ORDER BY bucket
"""


def query(db: sqlite3.Connection, function: str, since: float, step: float) -> list[dict]:
    """The buckets of ``function`` from ``since`` that have records (empty ones are left out)."""
    until = since + BUCKETS * step
    rows = db.execute(_SQL, (since, step, since, step, since, step, function, since, until)).fetchall()
    return [{"bucket": b, "invocations": n, "errors": errs or 0, "cold_starts": cold or 0,
             "gb_seconds": gb or 0.0, "p50_ms": p50, "p99_ms": p99, "instances": inst}
            for b, n, errs, cold, gb, p50, p99, inst in rows if 0 <= b < BUCKETS]


def merge(parts: list[list[dict]], since: float, step: float) -> list[dict]:
    """Every bucket of the window (empty ones as zeros, percentiles None), the edges' answers merged."""
    points = [{"t": since + i * step, "invocations": 0, "errors": 0, "cold_starts": 0, "gb_seconds": 0.0,
               "p50_ms": None, "p99_ms": None, "instances": 0, "_p50w": 0.0} for i in range(BUCKETS)]
    for part in parts:
        for b in part:
            i = b.get("bucket")
            if not isinstance(i, int) or not 0 <= i < BUCKETS:
                continue
            p = points[i]
            p["invocations"] += b["invocations"]
            p["errors"] += b["errors"]
            p["cold_starts"] += b["cold_starts"]
            p["gb_seconds"] += b["gb_seconds"]
            p["instances"] = max(p["instances"], b.get("instances") or 0)
            if b.get("p50_ms") is not None:
                p["_p50w"] += b["p50_ms"] * b["invocations"]
            if b.get("p99_ms") is not None:
                p["p99_ms"] = max(p["p99_ms"] or 0.0, b["p99_ms"])
    for p in points:
        w = p.pop("_p50w")
        if p["invocations"]:
            p["p50_ms"] = round(w / p["invocations"], 3)
            p["p99_ms"] = round(p["p99_ms"], 3) if p["p99_ms"] is not None else None
        p["gb_seconds"] = round(p["gb_seconds"], 9)
        p["cold_start_rate"] = round(p["cold_starts"] / p["invocations"], 4) if p["invocations"] else None
    return points
