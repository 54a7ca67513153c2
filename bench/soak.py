"""``python -m bench.soak`` (``make soak``): a long steady load on one appliance, and what it lost.

Starts an embedded appliance (its own data directory under bench/.work), deploys two functions
(one answers, one also prints a few log lines and sometimes fails), drives them through the edge
at a steady rate from a few keep-alive clients for ``--duration`` seconds, then checks:

- requests answered and errors (any answer but 200, or a broken connection);
- lost: answered requests without an invocation record (the records are read back by paging
  ``GET /v1/functions/<name>/invocations?before=``), and usage invocations short of the answers;
- duplicated: request ids answered twice, or recorded twice;
- the appliance's memory (RSS of its process) after the warm-up and at the end, sampled on the way.

Prints a table and writes bench/results/soak.{json,md}. Loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

HELLO = "def handler(event, context):\n    return 'Hello Serverless'\n"
CHATTY = ("import json\n"
          "def handler(event, context):\n"
          "    q = event.get('queryStringParameters') or {}\n"
          "    for i in range(5):\n"
          "        print('line', i, q.get('n'))\n"
          "    if q.get('n', '').endswith('7'):\n"
          "        raise ValueError('seven')\n"
          "    return {'n': q.get('n')}\n")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


#: The control API's session: it sends the admin token the appliance writes at its first start.
API = requests.Session()


def start(work: Path, env: dict) -> tuple[subprocess.Popen, dict]:
    data = work / "data"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--data-dir", str(data), "--edge-port", "0",
                             "--api-port", "0"], cwd=str(REPO), env={**os.environ, **env},
                            stdout=open(work / "appliance.log", "wb"), stderr=subprocess.STDOUT)
    info = data / "appliance.json"
    deadline = time.monotonic() + 60
    while not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the appliance did not start; see {work / 'appliance.log'}")
        time.sleep(0.05)
    token = data / "admin.token"
    while not token.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    API.headers["Authorization"] = f"Bearer {token.read_text().strip()}"
    return proc, json.loads(info.read_text())


def deploy(api: str, name: str, source: str, path: str) -> None:
    API.post(f"{api}/v1/functions", json={"name": name, "max_instances": 4, "concurrency": 2},
                  timeout=30).raise_for_status()
    API.put(f"{api}/v1/functions/{name}/code", json={"files": {"index.py": source}}, timeout=60).raise_for_status()
    API.post(f"{api}/v1/triggers", json={"function": name, "method": "GET", "path": path},
                  timeout=30).raise_for_status()


class Load:
    """``clients`` keep-alive clients sharing a steady ``rate`` (requests per second)."""

    def __init__(self, edge: str, paths: list[str], rate: float, clients: int):
        self.host, port = edge.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.paths = paths
        self.interval = clients / rate
        self.clients = clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered: dict[str, list[str]] = {p: [] for p in paths}
        self.statuses: dict[int, int] = {}
        self.broken = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        n = 0
        next_at = time.monotonic() + k * self.interval / self.clients
        while not self.stop.is_set():
            path = self.paths[n % len(self.paths)]
            n += 1
            try:
                conn.request("GET", f"{path}?n={k}-{n}")
                resp = conn.getresponse()
                resp.read()
                rid = resp.getheader("X-Request-Id")
                with self.lock:
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                    if rid and resp.status in (200, 502):   # 502: the chatty function's own failures
                        self.answered[path].append(rid)
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.broken += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_at = time.monotonic()   # behind: do not burst to catch up
        conn.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def recorded(api: str, name: str) -> list[str]:
    ids, before = [], None
    while True:
        params = {"limit": 1000, **({"before": before} if before else {})}
        page = API.get(f"{api}/v1/functions/{name}/invocations", params=params, timeout=60).json()
        if not page["invocations"]:
            return ids
        ids += [r["request_id"] for r in page["invocations"]]
        before = page["next"]


def soak(duration_s: float, rate: float, clients: int, warmup_s: float, work: Path) -> dict:
    proc, info = start(work, {"APPLIANCE_RECORDS_RETENTION": str(int(rate * (duration_s + warmup_s) * 2) + 1000)})
    try:
        api, edge = info["api_url"], info["edge_url"]
        functions = {"soak-hello": "/soak/hello", "soak-chatty": "/soak/chatty"}
        for name, path in functions.items():
            deploy(api, name, HELLO if name == "soak-hello" else CHATTY, path)
        load = Load(edge, list(functions.values()), rate, clients)
        load.start()
        time.sleep(warmup_s)
        mem_start = rss_mb(proc.pid)
        samples = [mem_start]
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s:
            time.sleep(min(10.0, max(0.0, duration_s - (time.monotonic() - t0))))
            samples.append(rss_mb(proc.pid))
        load.finish()
        mem_end = rss_mb(proc.pid)
        API.get(f"{api}/v1/functions/soak-hello/invocations?limit=1", timeout=30)   # flushes the records
        lost = duplicated = 0
        usage = {u["function"]: u for u in API.get(f"{api}/v1/usage", timeout=30).json()["usage"]}
        usage_short = 0
        answered_total = 0
        for name, path in functions.items():
            answered = load.answered[path]
            answered_total += len(answered)
            rec = recorded(api, name)
            rec_set = set(rec)
            lost += sum(1 for rid in answered if rid not in rec_set)
            duplicated += (len(answered) - len(set(answered))) + (len(rec) - len(rec_set))
            usage_short += max(0, len(answered) - usage.get(name, {}).get("invocations", 0))
        total = sum(load.statuses.values()) + load.broken
        errors = load.broken + sum(n for s, n in load.statuses.items() if s not in (200, 502))
        return {"duration_s": duration_s, "rate": rate, "clients": clients, "requests": total,
                "answered": answered_total, "errors": errors, "statuses": load.statuses, "lost": lost,
                "usage_short": usage_short, "duplicated": duplicated, "rss_mb_start": mem_start,
                "rss_mb_end": mem_end, "rss_mb_max": max(samples), "rss_mb_samples": samples}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of measured load (default 300)")
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second, all clients (default 300)")
    ap.add_argument("--clients", type=int, default=4, help="keep-alive clients (default 4)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of load before memory is first read")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("--work-dir", type=Path, default=HERE / ".work" / "soak")
    args = ap.parse_args(argv)
    out = soak(args.duration, args.rate, args.clients, args.warmup, args.work_dir)
    lines = ["| requests | answered | errors | lost | usage short | duplicated | RSS start | RSS end | RSS max |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {out['requests']} | {out['answered']} | {out['errors']} | {out['lost']} | {out['usage_short']} | "
             f"{out['duplicated']} | {out['rss_mb_start']} MB | {out['rss_mb_end']} MB | {out['rss_mb_max']} MB |"]
    table = "\n".join(lines)
    print(table)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "soak.json").write_text(json.dumps(out, indent=1))
    (args.results_dir / "soak.md").write_text(
        f"# Soak: {out['duration_s']:g} s at {out['rate']:g} req/s, {out['clients']} clients\n\n{table}\n")
    return 0 if out["lost"] == 0 and out["duplicated"] == 0 and out["usage_short"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
