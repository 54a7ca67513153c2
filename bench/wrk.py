"""Load with wrk (Debian package ``wrk``) when installed, else the threaded Python client.

wrk runs one thread per connection up to the number of cores; a Lua ``done`` hook prints the
figures as one JSON line, so nothing is scraped from its human-readable output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from . import httpc
from .stats import summarize

_LUA = r"""
wrk.method = %(method)s
wrk.body = %(body)s
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "status_errors": %%d, ' ..
    '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "mean_us": %%f, "max_us": %%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def run(t: httpc.Target, *, concurrency: int, duration_s: float, use_wrk: bool = True) -> dict:
    """{tool, requests, errors, rps, p50_ms, p90_ms, p99_ms, mean_ms} for a closed-loop load."""
    if use_wrk and available() and not t.unix_path:
        return _run_wrk(t, concurrency, duration_s)
    r = httpc.load(t, concurrency=concurrency, duration_s=duration_s)
    s = summarize(r.pop("latencies_ms"))
    r.update({"p50_ms": s["p50"], "p90_ms": s["p90"], "p99_ms": s["p99"], "mean_ms": s["mean"]})
    return r


def _run_wrk(t: httpc.Target, concurrency: int, duration_s: float) -> dict:
    headers = "\n".join(f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in t.headers.items())
    script = _LUA % {"method": _lua_str(t.method), "body": _lua_str(t.body.decode()) if t.body else "nil",
                     "headers": headers}
    threads = max(1, min(concurrency, os.cpu_count() or 1))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        secs = max(1, round(duration_s))
        proc = subprocess.run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{secs}s",
                               "--timeout", "30s", "-s", path, t.url],
                              capture_output=True, text=True, timeout=secs + 60, check=False)
    finally:
        os.unlink(path)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]} {proc.stdout[-500:]}")
    d = json.loads(line[len("BENCHJSON "):])
    dur = d["duration_us"] / 1e6
    ok = d["requests"] - d["status_errors"]
    return {"tool": "wrk", "requests": d["requests"], "errors": d["errors"] + d["status_errors"], "duration_s": dur,
            "rps": ok / dur if dur > 0 else 0.0, "p50_ms": d["p50_us"] / 1000, "p90_ms": d["p90_us"] / 1000,
            "p99_ms": d["p99_us"] / 1000, "mean_ms": d["mean_us"] / 1000}
