"""Runs the phases against each peer, one peer at a time, and gathers the figures.

All peers start together (cold-phase options), then: cold samples, peer after peer in each
iteration (the first ``cold_discard`` iterations are discarded) -> switch to the user-facing
options (restart where the cold phase needed special ones) -> c=1 warm-up, c=1 measured rounds
(latency, throughput) -> idle memory -> appliance router overhead -> c=16 warm-up, c=16 measured
rounds -> stop. Only one peer is driven at a time; rounds interleave the peers so background
load on the machine is shared out evenly instead of landing on whichever peer ran at that moment.
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
    warm_s: float = 9.0
    rounds: int = 3
    warmup_s: float = 3.0
    overhead_rounds: int = 6
    overhead_n: int = 300
    concurrency: tuple = (1, 16)
    peers: list = field(default_factory=lambda: list(ORDER))
    use_wrk: bool = True

    @classmethod
    def make(cls, quick: bool, **over) -> Plan:
        p = cls(quick=True, cold_runs=10, cold_discard=1, cold_budget_s=40.0, warm_s=4.0, rounds=2, warmup_s=1.0,
                overhead_rounds=4, overhead_n=150) if quick else cls()
        for k, v in over.items():
            if v is not None:
                setattr(p, k, v)
        return p

    @property
    def round_s(self) -> float:
        return max(1.0, round(self.warm_s / self.rounds))


class Ctx:
    def __init__(self, run_dir: Path, installed: dict, log):
        self.run_dir = run_dir
        self.installed = installed
        self.bin_dir = installed["bin"]
        self.log = log


class PeerRun:
    """One peer's state across the phases; a peer that fails is stopped and left out of later phases."""

    def __init__(self, name: str, ctx: Ctx):
        cls = PEERS[name]
        self.name = name
        self.peer = cls(ctx)
        self.out: dict = {"label": cls.label, "cold_means": cls.cold_means, "describe": self.peer.describe}
        self.cold: list[float] = []
        self.rounds: dict[int, list[dict]] = {}
        self.failed = False

    def fail(self, exc: BaseException, log) -> None:
        self.failed = True
        self.out["error"] = f"{exc.__class__.__name__}: {exc}"
        self.out["traceback"] = traceback.format_exc()
        log(f"[{self.name}] FAILED: {self.out['error']} (log: {self.peer.log})")
        self.peer.stop()


def _each(runs: list[PeerRun], log, fn) -> None:
    for r in runs:
        if r.failed:
            continue
        try:
            fn(r)
        except (KeyboardInterrupt, procs.Interrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - one failing peer must not lose the others' figures
            r.fail(exc, log)


def merge_rounds(parts: list[dict]) -> dict:
    """One figure from interleaved rounds: total requests over total time; latency percentiles are the
    request-weighted mean of each round's percentile."""
    n = sum(p["requests"] for p in parts)
    dur = sum(p["duration_s"] for p in parts)
    ok = sum(p["rps"] * p["duration_s"] for p in parts)
    out = {"tool": parts[0]["tool"], "rounds": len(parts), "requests": n,
           "errors": sum(p["errors"] for p in parts), "duration_s": dur, "rps": ok / dur if dur else 0.0}
    for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        vals = [(p[k], p["requests"]) for p in parts if p.get(k) is not None]
        w = sum(c for _, c in vals)
        out[k] = sum(v * c for v, c in vals) / w if w else None
    out["per_round"] = [{k: p[k] for k in ("rps", "p50_ms", "p99_ms")} for p in parts]
    return out


def run_all(names: list[str], ctx: Ctx, plan: Plan) -> dict:
    """Every peer runs at once (idle ones cost nothing measurable); the phases interleave the peers
    round by round, so a change in the machine's background load hits all of them alike."""
    log = ctx.log
    runs = [PeerRun(n, ctx) for n in names]
    try:
        # -- cold: start in cold mode, then interleave the samples ---------------------------------
        def start_cold(r: PeerRun):
            log(f"[{r.name}] starting")
            r.peer.start(cold_phase=True)
            r.peer.first_request()
        _each(runs, log, start_cold)
        t0 = time.monotonic()
        total = plan.cold_discard + plan.cold_runs
        for i in range(total):
            if i >= plan.cold_discard + 5 and time.monotonic() - t0 > plan.cold_budget_s:
                for r in runs:
                    r.out.setdefault("notes", []).append(
                        f"cold phase stopped after {len(r.cold)} samples (budget {plan.cold_budget_s:.0f} s)")
                break

            def sample(r: PeerRun, keep=i >= plan.cold_discard):
                ms = r.peer.cold_once()
                if keep:
                    r.cold.append(ms)
            _each(runs, log, sample)
            if (i + 1) % 10 == 0:
                log(f"cold samples {i + 1}/{total} ({time.monotonic() - t0:.0f} s)")
        for r in runs:
            if r.failed:
                continue
            r.out["cold_ms"] = summarize(r.cold)
            r.out["cold_ms"]["samples"] = [round(x, 3) for x in r.cold]
            log(f"[{r.name}] cold p50 {r.out['cold_ms']['p50']:.1f} ms p99 {r.out['cold_ms']['p99']:.1f} ms "
                f"({len(r.cold)} samples)")

        def to_warm(r: PeerRun):
            if isinstance(r.peer, Appliance):
                r.out["cold_phases_p50_ms"] = _phase_medians(r.peer.cold_timings)
                r.peer.set_keep_alive(600)
            if r.peer.restart_for_warm:
                r.peer.stop()
                r.peer.start(cold_phase=False)
                r.peer.first_request()
        _each(runs, log, to_warm)

        # -- warm: c=1 (latency, throughput), idle memory, router overhead, then c=16 -------------
        for c in plan.concurrency:
            _each(runs, log, lambda r: wrk.run(r.peer.target, concurrency=c, duration_s=plan.warmup_s,
                                               use_wrk=plan.use_wrk))
            for _ in range(plan.rounds):
                def measure(r: PeerRun):
                    r.rounds.setdefault(c, []).append(
                        wrk.run(r.peer.target, concurrency=c, duration_s=plan.round_s, use_wrk=plan.use_wrk))
                _each(runs, log, measure)
            for r in runs:
                if r.failed:
                    continue
                m = r.out[f"c{c}"] = merge_rounds(r.rounds[c])
                log(f"[{r.name}] c={c}: {m['rps']:.0f} req/s, p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, "
                    f"{m['errors']} errors ({m['tool']}, {m['rounds']} rounds)")
                if c > 1 and isinstance(r.peer, Appliance):
                    r.out[f"instances_after_c{c}"] = len(r.peer.instances())
            if c == 1:
                def mem(r: PeerRun):
                    httpc.once(r.peer.target)
                    time.sleep(0.3)
                    r.out["memory"] = r.peer.memory()
                    inst = r.out["memory"].get("instance") or {}
                    log(f"[{r.name}] idle instance USS {_f(inst.get('uss_mb'))} MB PSS {_f(inst.get('pss_mb'))} MB "
                        f"({inst.get('instances', 0)} instance(s))")
                _each(runs, log, mem)

                def router(r: PeerRun):
                    if isinstance(r.peer, Appliance):
                        ro = r.out["router"] = router_overhead(r.peer, plan)
                        log(f"[{r.name}] router overhead p50 {ro['overhead_p50_ms']:.3f} ms (edge "
                            f"{ro['edge']['p50']:.3f} ms, direct {ro['direct']['p50']:.3f} ms)")
                _each(runs, log, router)
        for r in runs:
            r.out.update(r.peer.extra)
    finally:
        for r in runs:
            r.peer.stop()
            r.out["orphans_ended_after_stop"] = r.peer.orphans
    return {r.name: r.out for r in runs}


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
