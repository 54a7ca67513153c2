"""``python -m bench`` (``make bench``): the appliance against peers and baselines, same run, loopback only.

See bench/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    from .runner import ORDER

    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the appliance (embedded mode, through the edge router) against gunicorn+Flask, "
                    "serverless-offline, functions-framework and a fresh-python-per-request baseline, all on "
                    "127.0.0.1 in one run. Prints a table and writes bench/results/latest.{json,md}.")
    ap.add_argument("--quick", action="store_true",
                    help="short run (~2.5 minutes once installed): 10 cold samples, 2 x 2 s load rounds; 6 per real app and mode")
    ap.add_argument("--peers", default=",".join(ORDER),
                    help=f"comma-separated subset of: {', '.join(ORDER)} (default: all), or none (only the "
                         "real applications)")
    ap.add_argument("--cold-runs", type=int, help="cold-start samples per peer (default 30, --quick 10)")
    ap.add_argument("--duration", type=float, dest="warm_s", help="seconds of measured load per peer and concurrency, split in rounds (default 9 in 3 rounds, --quick 4 in 2)")
    ap.add_argument("--no-wrk", action="store_true", help="use the Python load client even if wrk is installed")
    ap.add_argument("--cache-dir", type=Path, help="where peers are installed (default $FAAS_BENCH_CACHE or "
                                                   "~/.cache/faas-appliance/bench)")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results",
                    help="where latest.json and latest.md go (default bench/results)")
    ap.add_argument("--work-dir", type=Path, default=HERE / ".work",
                    help="run directory: data dirs, peer logs (default bench/.work)")
    ap.add_argument("--install-only", action="store_true",
                    help="install the peers (and vendor the real applications' dependencies) and exit")
    ap.add_argument("--realapps", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the real-applications cold-start benchmark (Flask, FastAPI, Powertools, "
                         "pydantic+requests through the appliance with snapshot auto/off and serverless-offline; "
                         "~1.5 minutes, --quick ~1; default: on)")
    ap.add_argument("--realapps-cold-runs", type=int, help="cold samples per app and mode (default 20, --quick 6)")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    from . import install, procs, report, runner

    names = [n.strip() for n in args.peers.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in runner.ORDER]
    if unknown:
        print(f"unknown peer(s): {', '.join(unknown)}; choose from {', '.join(runner.ORDER)}", file=sys.stderr)
        return 2
    for opt in ("cold_runs", "realapps_cold_runs"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            print(f"--{opt.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if not names and not args.realapps:
        print("nothing to run: --peers none and --no-realapps", file=sys.stderr)
        return 2
    plan = runner.Plan.make(args.quick, cold_runs=args.cold_runs, warm_s=args.warm_s)
    plan.peers = [n for n in runner.ORDER if n in names]
    plan.use_wrk = not args.no_wrk
    procs.install_handlers()
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    t0 = time.monotonic()
    cache = args.cache_dir or install.default_cache()
    try:
        # The real applications run under serverless-offline too.
        installed = install.install_all(cache, log, set(plan.peers) | ({"serverless-offline"} if args.realapps
                                                                      else set()))
    except install.InstallError as exc:
        print(f"installing the peers failed: {exc}", file=sys.stderr)
        return 1
    if args.install_only:
        if args.realapps:
            from .realapps import build
            try:
                build.build_all(cache, log)
            except build.BuildError as exc:
                print(f"vendoring the real applications failed: {exc}", file=sys.stderr)
                return 1
        log(f"installed under {cache}")
        return 0
    run_dir = args.work_dir / started.strftime("run-%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = runner.Ctx(run_dir, installed, log)
    if not plan.use_wrk or not runner.wrk.available():
        log("wrk is not installed (Debian: apt-get install wrk): using the Python load client")
    results: dict = {}
    realapps_doc = None
    load_before = os.getloadavg()
    try:
        runnable = []
        for name in plan.peers:
            if name in installed["notes"]:
                results[name] = {"label": runner.PEERS[name].label, "error": installed["notes"][name]}
                log(f"[{name}] skipped: {installed['notes'][name]}")
            else:
                runnable.append(name)
        if runnable:
            results.update(runner.run_all(runnable, ctx, plan))
        results = {n: results[n] for n in plan.peers if n in results}
        if args.realapps:
            from .realapps import run as realapps
            realapps_doc = realapps.run(ctx, realapps.Plan.make(plan.quick, args.realapps_cold_runs), cache)
    except (KeyboardInterrupt, procs.Interrupted):
        log("interrupted: stopping everything this run started; no results written")
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
    doc = {"mode": "quick" if plan.quick else "full", "started_at": started.isoformat(),
           "seconds": round(time.monotonic() - t0, 1),
           "plan": {"cold_runs": plan.cold_runs, "cold_discarded": plan.cold_discard, "warm_s": plan.warm_s,
                    "rounds": plan.rounds, "round_s": plan.round_s, "warmup_s": plan.warmup_s,
                    "concurrency": list(plan.concurrency), "peers": plan.peers},
           "environment": dict(runner.environment(), loadavg_before=[round(x, 2) for x in load_before],
                               loadavg_after=[round(x, 2) for x in os.getloadavg()]), "results": results, "computed": runner.compute(results),
           "logs": str(run_dir)}
    if realapps_doc is not None:
        doc["realapps"] = realapps_doc
    text = report.render(doc)
    print(text)
    j, m = report.write(doc, args.results_dir)
    log(f"wrote {j} and {m} ({doc['seconds']:.0f} s)")
    ok = all("error" not in r for r in results.values())
    if realapps_doc is not None:
        from .realapps.run import failed
        ok = ok and not failed(realapps_doc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
