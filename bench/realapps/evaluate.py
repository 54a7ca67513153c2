"""Pure evaluation of the real-application figures: per-mode rows, ratios between modes, the
issue's targets, and finding a snapshot template in the API's answers. No I/O: unit-tested in
tests/unit/test_bench_realapps.py."""

from __future__ import annotations

from ..stats import ratio

#: The three ways each application runs, in report order.
MODES = ("snapshot", "no-snapshot", "serverless-offline")
MODE_LABELS = {"snapshot": "appliance, snapshot auto", "no-snapshot": "appliance, snapshot off",
               "serverless-offline": "serverless-offline"}
METRICS = ("cold_p50_ms", "cold_p99_ms", "warm_p50_ms", "uss_mb", "pss_mb")
#: The issue's goals for a snapshot cold start of a real application.
COLD_P50_LIMIT_MS = 20.0
VS_NO_SNAPSHOT_LIMIT = 1 / 10
VS_SERVERLESS_OFFLINE_LIMIT = 1 / 20


def row(result: dict | None) -> dict:
    """The figures of one (app, mode) result; all ``None`` when the mode was not available or failed."""
    r = result or {}
    if not r.get("available", False) or r.get("error"):
        return {m: None for m in METRICS}
    cold = r.get("cold_ms") or {}
    warm = r.get("warm_ms") or {}
    inst = r.get("memory") or {}
    return {"cold_p50_ms": cold.get("p50"), "cold_p99_ms": cold.get("p99"), "warm_p50_ms": warm.get("p50"),
            "uss_mb": inst.get("uss_mb"), "pss_mb": inst.get("pss_mb")}


def mode_ratios(rows: dict[str, dict], over: str, under: str) -> dict:
    """Each metric of mode ``over`` divided by the same metric of mode ``under``."""
    a, b = rows.get(over) or {}, rows.get(under) or {}
    return {m: ratio(a.get(m), b.get(m)) for m in METRICS}


def _target(goal: str, measured, unit: str, limit: float) -> dict:
    return {"goal": goal, "measured": measured, "unit": unit, "limit": limit,
            "met": None if measured is None else measured <= limit}


def targets(rows: dict[str, dict]) -> list[dict]:
    """The issue's three goals for one application (``met`` is None when not measured)."""
    snap = (rows.get("snapshot") or {}).get("cold_p50_ms")
    off = (rows.get("no-snapshot") or {}).get("cold_p50_ms")
    sls = (rows.get("serverless-offline") or {}).get("cold_p50_ms")
    return [
        _target(f"snapshot cold p50 <= {COLD_P50_LIMIT_MS:.0f} ms", snap, "ms", COLD_P50_LIMIT_MS),
        _target("snapshot cold p50 <= 1/10 of no-snapshot", ratio(snap, off), "ratio", VS_NO_SNAPSHOT_LIMIT),
        _target("snapshot cold p50 <= 1/20 of serverless-offline", ratio(snap, sls), "ratio",
                VS_SERVERLESS_OFFLINE_LIMIT),
    ]


def compute(apps: dict[str, dict]) -> dict:
    """``apps`` maps an app to ``{"modes": {mode: result}}``; per app: rows, ratios and targets."""
    out = {}
    for name, a in apps.items():
        rows = {m: row((a.get("modes") or {}).get(m)) for m in MODES}
        out[name] = {"metrics": rows,
                     "ratios": {"snapshot/no-snapshot": mode_ratios(rows, "snapshot", "no-snapshot"),
                                "snapshot/serverless-offline": mode_ratios(rows, "snapshot", "serverless-offline"),
                                "no-snapshot/serverless-offline": mode_ratios(rows, "no-snapshot",
                                                                              "serverless-offline")},
                     "targets": targets(rows)}
    return out


def cold_kinds(timings: list[dict]) -> dict[str, int]:
    """How many cold samples each ``cold;desc=...`` cause had (``snapshot`` marks a restore)."""
    out: dict[str, int] = {}
    for t in timings:
        kind = t.get("cold")
        key = kind if isinstance(kind, str) else ("cold" if kind else "warm")
        out[key] = out.get(key, 0) + 1
    return out


TEMPLATE_KEYS = ("snapshot", "template", "snapshots", "templates")
MEMORY_KEYS = ("uss_mb", "pss_mb", "rss_mb", "memory_mb", "uss_bytes", "pss_bytes", "rss_bytes", "memory_bytes")


def find_template(doc) -> dict | None:
    """The snapshot template's description in an API answer (GET /v1/functions/{name} or
    /v1/health), if it has one: the first dict found under a ``snapshot``/``template`` key (also
    one level down, and the first element of a list), with any ``pid`` and memory fields. ``None``
    when the answer says nothing about templates (appliances without snapshots)."""
    if not isinstance(doc, dict):
        return None
    for key in TEMPLATE_KEYS:
        v = doc.get(key)
        if isinstance(v, list) and v and isinstance(v[0], dict):
            v = v[0]
        if isinstance(v, dict):
            found = {"source": key, "raw": v}
            pid = v.get("pid")
            if pid is None and isinstance(v.get("template"), dict):
                pid = v["template"].get("pid")
            if isinstance(pid, int) and pid > 0:
                found["pid"] = pid
            for mk in MEMORY_KEYS:
                val = v.get(mk)
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    found[mk.replace("_bytes", "_mb")] = val / (1024 * 1024) if mk.endswith("_bytes") else val
            return found
    for v in doc.values():
        if isinstance(v, dict) and any(k in v for k in TEMPLATE_KEYS):
            return find_template(v)
    return None
