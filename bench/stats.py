"""Pure statistics helpers: percentiles, summaries and ratios to a baseline.

Nothing here does I/O, so the numbers the report prints can be checked by unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) with linear interpolation between closest ranks.

    Matches numpy's default ("linear") method: rank ``(n - 1) * p / 100`` of the sorted values.
    ``None`` for no values.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    rank = (len(xs) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    frac = rank - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def summarize(values: Sequence[float]) -> dict:
    """n, p50, p90, p99, mean, min, max of ``values`` (``None`` fields when empty)."""
    xs = [float(v) for v in values]
    if not xs:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    return {"n": len(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99),
            "mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)}


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``; ``None`` when either is missing or the baseline is not positive."""
    if value is None or baseline is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if baseline <= 0:
        return None
    return value / baseline


def ratios(rows: dict[str, dict], baselines: dict[str, str]) -> dict[str, dict]:
    """Each metric of each row divided by the same metric of that metric's baseline row.

    ``rows`` maps a peer to ``{metric: value}``; ``baselines`` maps a metric to the peer it is
    compared with. Metrics without a baseline, or whose baseline row lacks them, get ``None``.
    """
    out: dict[str, dict] = {}
    for peer, metrics in rows.items():
        out[peer] = {}
        for metric, value in metrics.items():
            base_peer = baselines.get(metric)
            base = rows.get(base_peer, {}).get(metric) if base_peer else None
            out[peer][metric] = ratio(value, base)
    return out


def difference(a: Sequence[float], b: Sequence[float]) -> float | None:
    """p50(a) - p50(b): the median cost ``a`` adds over ``b`` (``None`` if either is empty)."""
    pa, pb = percentile(a, 50), percentile(b, 50)
    if pa is None or pb is None:
        return None
    return pa - pb


def fmt_num(value: float | None, digits: int = 1) -> str:
    """A number for a table: ``-`` when missing, thousands grouped, ``digits`` decimals below 100."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio for a table: ``x0.42`` style, ``-`` when missing."""
    if value is None:
        return "-"
    if value >= 100:
        return f"x{value:.0f}"
    if value >= 10:
        return f"x{value:.1f}"
    if value < 0.01 and value != 0:
        return f"x{value:.1g}"
    return f"x{value:.2f}"
