"""Cost of the instances' seccomp filter: cold start and warm invokes, A/B in the same run.

    .venv/bin/python -m bench.seccomp [--cold 30] [--warm 2000] [--rounds 5]

Starts two appliances, one as configured (filter on) and one with ``FAAS_SANDBOX_SECCOMP=0``, and
alternates between them:

* cold: a hello function with ``keep_alive_s=0``; each sample waits until its instance is reaped, then
  ``POST /v1/functions/<name>/invocations`` and reads the ``sandbox`` phase and the total from
  Server-Timing (the filter is built and installed inside the sandbox phase);
* warm: a hello function kept alive, ``--warm`` sequential invokes per round through the same API,
  client-side latency and the instance's own CPU time per invoke (``/proc/<pid>/task/*/schedstat``).

Needs root (the sandbox does). Figures for reports and docstrings, never test thresholds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import requests

from appliance.instances import sandbox

from .coldstart import start_appliance
from .runtime_cpu import cpu_ns

HELLO = "def handler(event, context):\n    return 'Hello Serverless'\n"


def start(work: Path, env: dict):
    data = work / ("seccomp-off" if env.get("FAAS_SANDBOX_SECCOMP") == "0" else "seccomp-on")
    proc, info = start_appliance(data, {"APPLIANCE_REAP_INTERVAL_S": "0.1", **env})
    TOKENS[info["api_url"]] = info["token"]
    return proc, info["api_url"]


#: The admin token of each appliance started, by API URL.
TOKENS: dict[str, str] = {}


def auth(api: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[api]}"}


def deploy(api: str, name: str, keep_alive_s: int) -> None:
    from appliance.client import ApplianceClient
    c = ApplianceClient(api, token=TOKENS[api])
    c.create_function(name=name, keep_alive_s=keep_alive_s)
    c.upload_code(name, HELLO, filename="index.py")


def timing(resp) -> dict[str, float]:
    return {k.strip(): float(v) for k, v in (p.split(";dur=") for p in resp.headers["Server-Timing"].split(",")
                                             if ";dur=" in p)}


def instance_pids() -> set[int]:
    out = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                uid = os.stat(f"/proc/{p}").st_uid
            except FileNotFoundError:
                continue
            if sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_COUNT:
                out.add(int(p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", type=int, default=30)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import tempfile
    work = Path(tempfile.mkdtemp(prefix="bench-seccomp-"))
    sides = {}
    try:
        for label, env in (("on", {}), ("off", {"FAAS_SANDBOX_SECCOMP": "0"})):
            proc, api = start(work, env)
            health = requests.get(f"{api}/v1/health", timeout=5, headers=auth(api)).json()
            print(f"{label}: seccomp {health.get('seccomp')}")
            deploy(api, "cold", 0)
            deploy(api, "warm", 3600)
            sides[label] = {"proc": proc, "api": api, "sandbox": [], "total": [], "lat": [], "cpu": []}
        s = requests.Session()
        for i in range(args.cold):
            for label in (("on", "off") if i % 2 == 0 else ("off", "on")):
                side = sides[label]
                url = f"{side['api']}/v1/functions/cold/invocations"
                for _ in range(200):      # until the previous instance is reaped
                    time.sleep(0.15)
                    resp = s.post(url, json={}, timeout=30, headers=auth(side["api"]))
                    t = timing(resp)
                    if "cold" in resp.headers["Server-Timing"] and "sandbox" in t:
                        break
                else:
                    raise RuntimeError("no cold start")
                side["sandbox"].append(t["sandbox"])
                side["total"].append(t.get("total", sum(t.values())))
        for side in sides.values():      # warm up, and find the warm instance
            before = instance_pids()
            for _ in range(50):
                s.post(f"{side['api']}/v1/functions/warm/invocations", json={}, timeout=30, headers=auth(side["api"]))
            side["pid"] = max(instance_pids() - before or instance_pids())
        for r in range(args.rounds):
            for label in (("on", "off") if r % 2 == 0 else ("off", "on")):
                side = sides[label]
                url = f"{side['api']}/v1/functions/warm/invocations"
                c0, t0 = cpu_ns(side["pid"]), time.perf_counter()
                for _ in range(args.warm):
                    s.post(url, json={}, timeout=30, headers=auth(side["api"]))
                dt, dc = time.perf_counter() - t0, cpu_ns(side["pid"]) - c0
                side["lat"].append(dt / args.warm * 1e6)
                side["cpu"].append(dc / args.warm / 1000)
        print(f"cold starts: {args.cold} per side, alternating; warm: {args.rounds} rounds x {args.warm} invokes")
        for label, side in sides.items():
            sb, tot = sorted(side["sandbox"]), sorted(side["total"])
            print(f"filter {label:3s}: sandbox phase p50 {statistics.median(sb):6.3f} ms  p90 "
                  f"{sb[int(len(sb) * 0.9)]:6.3f} ms | cold total p50 {statistics.median(tot):6.2f} ms | warm invoke "
                  f"{statistics.median(side['lat']):6.1f} us/req, instance CPU {statistics.median(side['cpu']):5.1f} us/req")
    finally:
        for side in sides.values():
            side["proc"].terminate()
            side["proc"].wait(30)
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
