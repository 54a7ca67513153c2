"""Cold starts of the ``provided`` runtime (custom runtimes through the Lambda Runtime API).

    .venv/bin/python -m bench.provided [--runs 20] [--examples shell,go,java,python-ric]  (make bench: --runs 10)

For the examples named (by default shell and Go: examples/shell, examples/go; built by examples/build),
side by side:

* ``edge cold``: the first request of a freshly deployed copy of the example through the edge of a
  real, sandboxed appliance (sandbox, the Runtime API server, the bootstrap's init, the invocation,
  the answer mapped to HTTP), timed by the client; the Server-Timing phases are kept as well.
* ``edge warm``: the next requests to that instance.
* ``fresh process``: the same handler run the way a platform without instances would run it, a new
  process per request: the example's ``bootstrap`` is started as a plain process (no sandbox) against a
  one-shot Runtime API in this process, given the event, and timed until its response arrives, then
  killed. serverless-offline runs neither a shell nor a Go custom runtime without Docker, so this
  is the baseline.

Ratios are reported against the fresh process (below 1: faster). Needs root for the sandbox. Figures
are for the README and the report, never test thresholds.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.coldstart import start_appliance, summary

EXAMPLES = ("shell", "go")
BUILT = {"go", "java", "python-ric"}
EVENT = {"version": "2.0", "rawPath": "/bench", "queryStringParameters": {"name": "bench"}}


def fresh_process(example: Path, runs: int, work: Path) -> list[float]:
    """A new process of the example's bootstrap per request, against a one-shot Runtime API."""
    cfg = json.loads((example / "function.json").read_text())
    out = []
    for _ in range(runs):
        done = threading.Event()

        class Api(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                body = json.dumps(EVENT).encode()
                self.send_response(200)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                             "Lambda-Runtime-Aws-Request-Id": "bench-1",
                             "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 3000),
                             "Lambda-Runtime-Invoked-Function-Arn": "arn:faas:local:function:bench:1",
                             "Lambda-Runtime-Trace-Id": "Root=1-0-0"}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.server.done.set()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
        server.handle_error = lambda *a: None   # the killed bootstrap's connection resets: expected
        server.done = done
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_port}",
               "_HANDLER": cfg["handler"], "LAMBDA_TASK_ROOT": str(example), "TMPDIR": str(work)}
        t0 = time.monotonic()
        proc = subprocess.Popen([str(example / "bootstrap")], cwd=str(example), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        ok = done.wait(30)
        out.append((time.monotonic() - t0) * 1000)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        server.shutdown()
        server.server_close()
        if not ok:
            raise SystemExit(f"{example.name}: the bootstrap did not answer its one invocation")
    return out


def through_edge(examples: list[Path], runs: int, work: Path) -> dict[str, dict]:
    from appliance.cli import _deploy_example
    from appliance.client import ApplianceClient

    proc, info = start_appliance(work / "appliance", {"APPLIANCE_SANDBOX": "on"})
    try:
        api = ApplianceClient(info["api_url"], token=info["token"])
        res = {ex.name: {"cold": [], "warm": [], "phases": []} for ex in examples}
        for i in range(runs):
            for ex in examples:   # interleaved, so both see the same machine
                cfg = json.loads((ex / "function.json").read_text())
                name = f"{cfg['name']}-{i}"
                src = work / f"src-{name}"
                shutil.copytree(ex, src)
                cfg.update(name=name, triggers=[{"method": "GET", "path": f"/{name}"}])
                (src / "function.json").write_text(json.dumps(cfg))
                _deploy_example(api, src)
                url = f"{info['edge_url']}/{name}?name=bench"
                for k in range(4):
                    t0 = time.monotonic()
                    with urllib.request.urlopen(url, timeout=60) as resp:
                        resp.read()
                        timing = resp.headers["Server-Timing"]
                    ms = (time.monotonic() - t0) * 1000
                    if k == 0:
                        if "cold;" not in timing:
                            raise SystemExit(f"{name}: the first request was not a cold start")
                        res[ex.name]["cold"].append(ms)
                        res[ex.name]["phases"].append({
                            p.split(";dur=")[0].strip(): float(p.split(";dur=")[1])
                            for p in timing.split(",") if ";dur=" in p})
                    else:
                        res[ex.name]["warm"].append(ms)
                api.delete_function(name)
        return res
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--examples", default=",".join(EXAMPLES),
                    help="comma-separated: shell, go, java, python-ric (default: shell,go)")
    args = ap.parse_args()
    names = [n.strip() for n in args.examples.split(",") if n.strip()]
    to_build = [n for n in names if n in BUILT]
    if to_build:
        build = subprocess.run(["bash", str(REPO / "examples" / "build"), *to_build], capture_output=True, text=True,
                               check=False, env={**os.environ, "PIP": f"{sys.executable} -m pip"})
        if build.returncode != 0:
            raise SystemExit(f"building the examples failed: {build.stderr.strip()}")
    examples = [REPO / "examples" / name for name in names]
    work = Path(tempfile.mkdtemp(prefix="faas-provided-"))
    try:
        fresh = {ex.name: fresh_process(ex, args.runs, work) for ex in examples}
        edge = through_edge(examples, args.runs, work)
        print(f"custom runtimes (provided), {args.runs} runs each; client-side ms:")
        for ex in examples:
            e, f = edge[ex.name], fresh[ex.name]
            print(summary(f"{ex.name} edge cold", e["cold"]))
            print(summary(f"{ex.name} edge warm", e["warm"]))
            print(summary(f"{ex.name} fresh proc", f))
            phases = {k: statistics.median(p[k] for p in e["phases"]) for k in e["phases"][0]
                      if k in ("placement", "sandbox", "runtime_init", "user_init", "run", "total")}
            print(f"{'':18s} cold phases p50: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
            fp = statistics.median(f)
            print(f"{'':18s} ratios to a fresh process per request (p50): cold x{statistics.median(e['cold']) / fp:.2f}, "
                  f"warm x{statistics.median(e['warm']) / fp:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
