"""The report: Markdown tables (stdout and bench/results/latest.md) and the JSON document."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .runner import BASELINES, METRICS, ORDER
from .stats import fmt_num, fmt_ratio

HEADERS = {"cold_p50_ms": "cold p50 ms", "cold_p99_ms": "cold p99 ms", "warm_p50_ms": "warm p50 ms",
           "warm_p99_ms": "warm p99 ms", "rps_c1": "req/s c=1", "rps_c16": "req/s c=16",
           "idle_uss_mb": "idle USS MB", "idle_pss_mb": "idle PSS MB"}
DIGITS = {"warm_p50_ms": 2, "warm_p99_ms": 2, "idle_uss_mb": 1, "idle_pss_mb": 1}


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(doc: dict) -> str:
    res = doc["results"]
    comp = doc["computed"]
    names = [n for n in ORDER if n in res]
    out = [f"# Benchmark: {doc['mode']} run, {doc['started_at']}", ""]
    env = doc["environment"]
    out.append(f"{env['cpus']} CPUs ({env.get('cpu_model') or '?'}), Linux {env['kernel']}, Python {env['python']}, "
               f"node {env.get('node') or '-'}, load by {env.get('wrk') or 'the Python client'}; "
               f"cold samples per peer: {doc['plan']['cold_runs']}; load: {doc['plan']['rounds']} interleaved rounds of "
               f"{doc['plan']['round_s']:.0f} s per peer and concurrency. Load average before/after the run: "
               f"{env.get('loadavg_before', ['?'])[0]} / {env.get('loadavg_after', ['?'])[0]} (other work on the "
               f"machine shows up as noise; ratios are measured side by side to limit it).")
    out += ["", "## Figures", ""]
    rows = []
    for n in names:
        m = comp["metrics"][n]
        rows.append([res[n]["label"]] + [fmt_num(m[k], DIGITS.get(k, 1)) for k in METRICS])
    out.append(_table(["peer"] + [HEADERS[k] for k in METRICS], rows))
    base_line = ", ".join(f"{HEADERS[k]} / {BASELINES[k]}" for k in ("cold_p50_ms", "warm_p50_ms", "rps_c16",
                                                                       "idle_uss_mb"))
    out += ["", f"## Ratios to the baseline of each column (same run): cold / fresh-python; warm latency, "
                f"throughput and memory / gunicorn", ""]
    rows = []
    for n in names:
        r = comp["ratios"][n]
        rows.append([res[n]["label"]] + [fmt_ratio(r[k]) for k in METRICS])
    out.append(_table(["peer"] + [HEADERS[k] for k in METRICS], rows))
    out += ["", "Latency and memory: below x1 is better than the baseline. Throughput: above x1 is better.",
            f"({base_line}.)"]
    out += ["", "## Targets (issue 3)", ""]
    rows = []
    for t in comp["targets"]:
        v = t["measured"]
        shown = "-" if v is None else (f"{v:.3f} ms" if t["unit"] == "ms" else
                                       f"{v:.1f} MB" if t["unit"] == "MB" else f"x{v:.2f}")
        met = {True: "met", False: "not met", None: "not measured"}[t["met"]]
        rows.append([t["goal"], shown, met])
    out.append(_table(["goal", "measured", ""], rows))
    a = res.get("appliance") or {}
    router = a.get("router")
    if router:
        out += ["", "## Appliance detail", "",
                f"- Router overhead (p50 edge - p50 direct `POST /_/invoke`, {router['client']}): "
                f"**{router['overhead_p50_ms']:.3f} ms** (edge p50 {router['edge']['p50']:.3f} ms, "
                f"direct p50 {router['direct']['p50']:.3f} ms; p99 difference {router['overhead_p99_ms']:.3f} ms)."]
        st = router.get("server_timing_p50_ms") or {}
        if st:
            out.append("- Warm Server-Timing p50 (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in st.items()) + ".")
    if a.get("cold_phases_p50_ms"):
        out.append("- Cold-start Server-Timing p50 (ms): " +
                   ", ".join(f"{k} {v:.3f}" for k, v in a["cold_phases_p50_ms"].items()) + ".")
    if a.get("instances_after_c16") is not None:
        out.append(f"- Instances after the c=16 run: {a['instances_after_c16']}.")
    left = {res[n]["label"]: res[n].get("orphans_ended_after_stop") for n in names
            if res[n].get("orphans_ended_after_stop")}
    if left:
        out.append("- Processes still running after their server exited on SIGTERM (ended by the bench): " +
                   ", ".join(f"{k}: {v}" for k, v in left.items()) + ".")
    mem_rows = []
    for n in names:
        m = res[n].get("memory") or {}
        inst, plat = m.get("instance") or {}, m.get("platform") or {}
        mem_rows.append([res[n]["label"], str(inst.get("instances", "-")), fmt_num(inst.get("uss_mb")),
                         fmt_num(inst.get("pss_mb")), fmt_num(inst.get("rss_mb")), fmt_num(plat.get("uss_mb")),
                         fmt_num(plat.get("pss_mb"))])
    out += ["", "## Memory (idle, after one request)", "",
            _table(["peer", "instances", "instance USS MB", "instance PSS MB", "instance RSS MB",
                    "platform USS MB", "platform PSS MB"], mem_rows)]
    out += ["", "## What each peer is and what cold means", ""]
    for n in names:
        r = res[n]
        out.append(f"- **{r['label']}**: {r.get('describe', '')}. Cold: {r.get('cold_means', '')}.")
        for note in r.get("notes", []):
            out.append(f"  - note: {note}")
        if r.get("error"):
            out.append(f"  - FAILED: {r['error']}")
    return "\n".join(out) + "\n"


def write(doc: dict, results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    j, m = results_dir / "latest.json", results_dir / "latest.md"
    for path, text in ((j, json.dumps(doc, indent=2, default=str) + "\n"), (m, render(doc))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return j, m
