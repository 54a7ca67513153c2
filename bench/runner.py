"""Runs the phases against each peer, one peer at a time, and gathers the figures.

Per peer: start -> cold phase (discarded warm-up cold starts, then ``cold_runs`` samples) ->
warm phases with the user-facing options (restart if the cold phase needed special ones) ->
c=1 warm-up, c=1 measured run (latency and throughput) -> idle memory -> (appliance: router
overhead) -> c=16 warm-up, c=16 measured run -> stop. Only one peer runs at a time, so peers do
not compete for the two cores.
"""

from __future__ import annotations

import platform as _platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import httpc, procs, wrk
from .peers import PEERS, Appliance, parse_server_timing
from .stats import difference, percentile, ratios, summarize

ORDER = ["appliance", "gunicorn", "serverless-offline", "functions-framework", "fresh-python"]
METRICS = ["cold_p50_ms", "cold_p99_ms", "warm_p50_ms", "warm_p99_ms", "rps_c1", "rps_c16", "idle_uss_mb",
           "idle_pss_mb"]
#: Which peer each metric is divided by.
BASELINES = {"cold_p50_ms": "fresh-python", "cold_p99_ms": "fresh-python",
             "warm_p50_ms": "gunicorn", "warm_p99_ms": "gunicorn", "rps_c1": "gunicorn", "rps_c16": "gunicorn",
             "idle_uss_mb": "gunicorn", "idle_pss_mb": "gunicorn"}


@dataclass
class Plan:
    quick: bool = False
    cold_runs: int = 30
    cold_discard: int = 2
    cold_budget_s: float = 120.0
    warm_s: float = 10.0
    warmup_s: float = 3.0
    overhead_rounds: int = 6
    overhead_n: int = 300
    concurrency: tuple = (1, 16)
    peers: list = field(default_factory=lambda: list(ORDER))
    use_wrk: bool = True

    @classmethod
    def make(cls, quick: bool, **over) -> Plan:
        p = cls(quick=True, cold_runs=10, cold_discard=1, cold_budget_s=30.0, warm_s=3.0, warmup_s=1.0,
                overhead_rounds=4, overhead_n=150) if quick else cls()
        for k, v in over.items():
            if v is not None:
                setattr(p, k, v)
        return p


class Ctx:
    def __init__(self, run_dir: Path, installed: dict, log):
        self.run_dir = run_dir
        self.installed = installed
        self.bin_dir = installed["bin"]
        self.log = log


def run_peer(name: str, ctx: Ctx, plan: Plan) -> dict:
    log = ctx.log
    cls = PEERS[name]
    out: dict = {"label": cls.label, "cold_means": cls.cold_means}
    peer = cls(ctx)
    out["describe"] = peer.describe
    t_peer = time.monotonic()
    try:
        # -- cold ----------------------------------------------------------------------------
        log(f"[{name}] starting")
        peer.start(cold_phase=True)
        peer.first_request()
        samples: list[float] = []
        t0 = time.monotonic()
        for i in range(plan.cold_discard + plan.cold_runs):
            if i >= plan.cold_discard + 5 and time.monotonic() - t0 > plan.cold_budget_s:
                out.setdefault("notes", []).append(
                    f"cold phase stopped after {len(samples)} samples (budget {plan.cold_budget_s:.0f} s)")
                break
            ms = peer.cold_once()
            if i >= plan.cold_discard:
                samples.append(ms)
        out["cold_ms"] = summarize(samples)
        out["cold_ms"]["samples"] = [round(x, 3) for x in samples]
        log(f"[{name}] cold p50 {out['cold_ms']['p50']:.1f} ms p99 {out['cold_ms']['p99']:.1f} ms "
            f"({len(samples)} samples, {time.monotonic() - t0:.0f} s)")
        if isinstance(peer, Appliance):
            out["cold_phases_p50_ms"] = _phase_medians(peer.cold_timings)
            peer.set_keep_alive(600)
        if peer.restart_for_warm:
            peer.stop()
            peer.start(cold_phase=False)
            peer.first_request()

        # -- warm, c=1 -----------------------------------------------------------------------
        t = peer.target
        wrk.run(t, concurrency=1, duration_s=plan.warmup_s, use_wrk=plan.use_wrk)
        out["c1"] = wrk.run(t, concurrency=1, duration_s=plan.warm_s, use_wrk=plan.use_wrk)
        log(f"[{name}] c=1: {out['c1']['rps']:.0f} req/s, p50 {out['c1']['p50_ms']:.2f} ms, "
            f"p99 {out['c1']['p99_ms']:.2f} ms ({out['c1']['tool']})")

        # -- idle memory ---------------------------------------------------------------------
        httpc.once(t)
        time.sleep(0.5)
        out["memory"] = peer.memory()
        inst = out["memory"].get("instance") or {}
        log(f"[{name}] idle instance USS {_f(inst.get('uss_mb'))} MB PSS {_f(inst.get('pss_mb'))} MB "
            f"({inst.get('instances', 0)} instance(s))")

        # -- router overhead (appliance) ----------------------------------------------------
        if isinstance(peer, Appliance):
            out["router"] = router_overhead(peer, plan)
            log(f"[{name}] router overhead p50 {out['router']['overhead_p50_ms']:.3f} ms "
                f"(edge {out['router']['edge']['p50']:.3f} ms, direct {out['router']['direct']['p50']:.3f} ms)")

        # -- warm, c=16 ----------------------------------------------------------------------
        for c in plan.concurrency:
            if c == 1:
                continue
            wrk.run(t, concurrency=c, duration_s=plan.warmup_s, use_wrk=plan.use_wrk)
            r = wrk.run(t, concurrency=c, duration_s=plan.warm_s, use_wrk=plan.use_wrk)
            out[f"c{c}"] = r
            log(f"[{name}] c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"{r['errors']} errors")
            if isinstance(peer, Appliance):
                out[f"instances_after_c{c}"] = len(peer.instances())
        out.update(peer.extra)
    except (KeyboardInterrupt, procs.Interrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - one failing peer must not lose the others' figures
        out["error"] = f"{exc.__class__.__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        log(f"[{name}] FAILED: {out['error']} (log: {peer.log})")
    finally:
        peer.stop()
    out["seconds"] = round(time.monotonic() - t_peer, 1)
    return out


def router_overhead(peer: Appliance, plan: Plan) -> dict:
    """p50 of edge round trips minus p50 of direct POST /_/invoke round trips to the same instance,
    same client, alternating blocks so drift hits both sides alike."""
    edge_t = peer.target
    direct_t = peer.direct_target()
    httpc.sequential(edge_t, count=50)
    httpc.sequential(direct_t, count=50)
    edge: list[float] = []
    direct: list[float] = []
    for _ in range(plan.overhead_rounds):
        edge += httpc.sequential(edge_t, count=plan.overhead_n)
        direct += httpc.sequential(direct_t, count=plan.overhead_n)
    # What the edge itself says it spent (Server-Timing) on a few warm requests.
    conn = httpc.connection(edge_t)
    timings = []
    try:
        for _ in range(100):
            r = httpc.send(conn, edge_t)
            timings.append(parse_server_timing(r.headers.get("server-timing", "")))
    finally:
        conn.close()
    e, d = summarize(edge), summarize(direct)
    return {"client": "python http.client, one keep-alive connection, sequential",
            "direct_address": direct_t.url, "edge": _round(e), "direct": _round(d),
            "overhead_p50_ms": difference(edge, direct),
            "overhead_p99_ms": (e["p99"] - d["p99"]) if e["p99"] is not None and d["p99"] is not None else None,
            "server_timing_p50_ms": _phase_medians(timings)}


def _phase_medians(timings: list[dict]) -> dict:
    keys = sorted({k for t in timings for k, v in t.items() if isinstance(v, float)})
    return {k: round(percentile([t[k] for t in timings if isinstance(t.get(k), float)], 50), 3) for k in keys}


def _round(s: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def metric_rows(results: dict) -> dict[str, dict]:
    rows = {}
    for name, r in results.items():
        if "error" in r and "c1" not in r:
            rows[name] = {m: None for m in METRICS}
            continue
        cold = r.get("cold_ms") or {}
        c1 = r.get("c1") or {}
        c16 = r.get("c16") or {}
        inst = (r.get("memory") or {}).get("instance") or {}
        rows[name] = {"cold_p50_ms": cold.get("p50"), "cold_p99_ms": cold.get("p99"),
                      "warm_p50_ms": c1.get("p50_ms"), "warm_p99_ms": c1.get("p99_ms"),
                      "rps_c1": c1.get("rps"), "rps_c16": c16.get("rps"),
                      "idle_uss_mb": inst.get("uss_mb"), "idle_pss_mb": inst.get("pss_mb")}
    return rows


def targets(rows: dict, results: dict) -> list[dict]:
    """The issue's goals, each as measured in this run."""
    a = rows.get("appliance", {})
    sls = rows.get("serverless-offline", {})
    g = rows.get("gunicorn", {})
    router = (results.get("appliance") or {}).get("router") or {}

    def r(x, y):
        return None if x is None or y is None or y == 0 else x / y

    out = []
    v = r(a.get("cold_p50_ms"), sls.get("cold_p50_ms"))
    out.append({"goal": "cold start p50 through the edge <= 1/5 of serverless-offline's",
                "measured": v, "unit": "ratio", "limit": 0.2, "met": None if v is None else v <= 0.2})
    v = r(a.get("rps_c16"), sls.get("rps_c16"))
    out.append({"goal": "warm throughput at c=16 >= serverless-offline's", "measured": v, "unit": "ratio",
                "limit": 1.0, "met": None if v is None else v >= 1.0})
    v = r(a.get("rps_c16"), g.get("rps_c16"))
    out.append({"goal": "warm throughput at c=16 >= 0.7 x gunicorn's", "measured": v, "unit": "ratio",
                "limit": 0.7, "met": None if v is None else v >= 0.7})
    v = router.get("overhead_p50_ms")
    out.append({"goal": "edge router warm p50 overhead over calling the instance directly < 0.5 ms",
                "measured": v, "unit": "ms", "limit": 0.5, "met": None if v is None else v < 0.5})
    v = a.get("idle_uss_mb")
    out.append({"goal": "idle Python instance USS < 8 MB", "measured": v, "unit": "MB", "limit": 8.0,
                "met": None if v is None else v < 8.0})
    return out


def environment() -> dict:
    def ver(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "kernel": _platform.release(),
            "python": sys.version.split()[0], "node": ver(["node", "--version"]) if shutil.which("node") else None,
            "wrk": ver(["wrk", "--version"]) if wrk.available() else None}


def compute(results: dict) -> dict:
    rows = metric_rows(results)
    return {"metrics": rows, "ratios": ratios(rows, BASELINES), "baselines": BASELINES,
            "targets": targets(rows, results)}
