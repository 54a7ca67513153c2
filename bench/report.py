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
    names = [n for n in ORDER if n in res]
    out = [f"# Benchmark: {doc['mode']} run, {doc['started_at']}", ""]
    env = doc["environment"]
    out.append(f"{env['cpus']} CPUs ({env.get('cpu_model') or '?'}), Linux {env['kernel']}, Python {env['python']}, "
               f"node {env.get('node') or '-'}, load by {env.get('wrk') or 'the Python client'}; "
               f"cold samples per peer: {doc['plan']['cold_runs']}; load: {doc['plan']['rounds']} interleaved rounds of "
               f"{doc['plan']['round_s']:.0f} s per peer and concurrency. Load average before/after the run: "
               f"{env.get('loadavg_before', ['?'])[0]} / {env.get('loadavg_after', ['?'])[0]} (other work on the "
               f"machine shows up as noise; ratios are measured side by side to limit it).")
    if names:
        out += _render_peers(doc, names)
    else:
        out += ["", "Peers: none selected (`--peers none`)."]
    if doc.get("realapps"):
        out += [""] + render_realapps(doc["realapps"])
    return "\n".join(out) + "\n"


def _render_peers(doc: dict, names: list[str]) -> list[str]:
    res = doc["results"]
    comp = doc["computed"]
    out = ["", "## Figures", ""]
    rows = []
    for n in names:
        m = comp["metrics"][n]
        rows.append([res[n]["label"]] + [fmt_num(m[k], DIGITS.get(k, 1)) for k in METRICS])
    out.append(_table(["peer"] + [HEADERS[k] for k in METRICS], rows))
    base_line = ", ".join(f"{HEADERS[k]} / {BASELINES[k]}" for k in ("cold_p50_ms", "warm_p50_ms", "rps_c16",
                                                                       "idle_uss_mb"))
    out += ["", "## Ratios to the baseline of each column (same run): cold / fresh-python; warm latency, "
                "throughput and memory / gunicorn", ""]
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
    return out


def _ms_or(r: dict, value, digits: int = 1, first: bool = False) -> str:
    """A figure of one (app, mode) row; the first column says why a row has none."""
    if not r.get("available") or r.get("error"):
        if not first:
            return "-"
        return "failed" if r.get("error") else "not available"
    return fmt_num(value, digits)


def _target_value(t: dict) -> str:
    v = t["measured"]
    if v is None:
        return "-"
    return f"{v:.1f} ms" if t["unit"] == "ms" else f"x{v:.3f}" if v < 0.1 else f"x{v:.2f}"


def render_realapps(ra: dict) -> list[str]:
    """The real-applications section: figures per app and mode, ratios between modes, targets."""
    from .realapps.evaluate import MODE_LABELS, MODES

    plan = ra.get("plan", {})
    out = ["## Real applications: cold starts with and without snapshots, and serverless-offline", ""]
    if ra.get("error"):
        return out + [f"FAILED: {ra['error']}"]
    out.append(f"Each app is deployed with {plan.get('memory_mb', 256)} MB and an HTTP trigger; every sample is "
               f"`POST <prefix>/orders` with a small JSON order. Cold samples per app and mode: "
               f"{plan.get('cold_runs')} (after {plan.get('cold_discarded')} discarded), interleaved app by app and "
               f"mode by mode; warm p50 over {plan.get('warm_requests')} back-to-back requests on one keep-alive "
               f"connection; memory of the idle instance after one request "
               f"({ra.get('seconds', 0):.0f} s in all, cold phase {ra.get('cold_phase_s', 0):.0f} s).")
    comp = ra.get("computed") or {}
    apps = ra.get("apps") or {}
    rows = []
    for n, a in apps.items():
        for m in MODES:
            r = a["modes"].get(m) or {}
            c, w, mem = r.get("cold_ms") or {}, r.get("warm_ms") or {}, r.get("memory") or {}
            tpl = r.get("template")
            tpl_s = ("n/a" if not tpl else f"{fmt_num(tpl.get('uss_mb'))} / {fmt_num(tpl.get('pss_mb'))}") \
                if m != "serverless-offline" and r.get("available") and not r.get("error") else "-"
            rows.append([a["label"], MODE_LABELS[m], _ms_or(r, c.get("p50"), first=True), _ms_or(r, c.get("p99")),
                         _ms_or(r, w.get("p50"), 2), _ms_or(r, mem.get("uss_mb")), _ms_or(r, mem.get("pss_mb")),
                         tpl_s])
    out += ["", "### Figures", "", _table(["app", "mode", "cold p50 ms", "cold p99 ms", "warm p50 ms",
                                          "instance USS MB", "instance PSS MB", "template USS / PSS MB"], rows)]
    keys = ("cold_p50_ms", "cold_p99_ms", "warm_p50_ms", "uss_mb")
    rows = []
    for n, a in apps.items():
        r = comp.get(n, {}).get("ratios", {})
        rows.append([a["label"]] + [fmt_ratio(r.get(pair, {}).get(k)) for pair in
                                    ("snapshot/no-snapshot", "snapshot/serverless-offline") for k in keys]
                    + [fmt_ratio(r.get("no-snapshot/serverless-offline", {}).get("cold_p50_ms"))])
    head = ["app"] + [f"{pair}: {lbl}" for pair in ("snap/no-snap", "snap/sls")
                      for lbl in ("cold p50", "cold p99", "warm p50", "USS")] + ["no-snap/sls: cold p50"]
    out += ["", "### Ratios between modes (same run; below x1: the first is faster / smaller)", "",
            _table(head, rows)]
    rows = []
    for n, a in apps.items():
        for t in comp.get(n, {}).get("targets", []):
            met = {True: "met", False: "not met", None: "not measured"}[t["met"]]
            limit = f"<= {t['limit']:.0f} ms" if t["unit"] == "ms" else f"<= x{t['limit']:.2f}"
            rows.append([a["label"], t["goal"], limit, _target_value(t), met])
    out += ["", "### Targets (snapshots)", "", _table(["app", "goal", "target", "measured", ""], rows)]
    out += ["", "### Detail", ""]
    for n, a in apps.items():
        for m in MODES:
            r = a["modes"].get(m) or {}
            if not r.get("available"):
                out.append(f"- {a['label']}, {MODE_LABELS[m]}: not available ({r.get('reason', '?')}).")
            elif r.get("error"):
                out.append(f"- {a['label']}, {MODE_LABELS[m]}: FAILED: {r['error']}")
            elif r.get("cold_phases_p50_ms"):
                causes = ", ".join(f"{k} x{v}" for k, v in (r.get("cold_causes") or {}).items())
                out.append(f"- {a['label']}, {MODE_LABELS[m]}: cold Server-Timing p50 (ms): " +
                           ", ".join(f"{k} {v:.1f}" for k, v in r["cold_phases_p50_ms"].items()) +
                           f"; cold causes: {causes or '-'}.")
    builds = ra.get("builds") or {}
    if builds:
        out.append("- Packages (vendored with `pip install --target`, byte-compiled): " + ", ".join(
            f"{apps.get(n, {}).get('label', n)} {b['zip_bytes'] / 2**20:.1f} MB zip, {b['files']} files"
            for n, b in builds.items()) + ".")
    out.append("- Cold means: appliance: `keep_alive_s=0`, wait until the function has no instance and its "
               "process is gone, then one request on a new connection through the edge; `Server-Timing` must say "
               "`cold` (`cold;desc=\"snapshot\"` is a start from the template). serverless-offline: a server with "
               "`--reloadHandler` (a new Python child per request) and `--terminateIdleLambdaTime 1`; wait until "
               "no child of that app is left, one request, and a new child must exist afterwards. Warm figures "
               "and memory come from a second serverless-offline server with default options.")
    for note in ra.get("notes", []):
        out.append(f"- note: {note}")
    if ra.get("orphans_ended_after_stop"):
        out.append(f"- Processes still running after their server exited (ended by the bench): "
                   f"{ra['orphans_ended_after_stop']}.")
    return out


def write(doc: dict, results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    j, m = results_dir / "latest.json", results_dir / "latest.md"
    for path, text in ((j, json.dumps(doc, indent=2, default=str) + "\n"), (m, render(doc))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return j, m
