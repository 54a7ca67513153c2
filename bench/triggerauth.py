"""What a trigger's authentication costs a warm request, per auth type, side by side.

    .venv/bin/python -m bench.triggerauth [--rounds 3] [--duration 4] [--baseline-src DIR]

One appliance of this checkout serves the same hello function behind five triggers: ``auth: none``
(the default), ``none`` with CORS settings, ``bearer`` (one key), and ``jwt`` (an RS256 token and
a PEM key); each is loaded in turn with 16 connections for ``--duration`` seconds, ``--rounds``
times, interleaved so every type sees the same machine. With ``--baseline-src`` (another checkout,
for example one from before trigger auth existed) a second appliance runs that code with the same
function behind ``auth: none``, loaded in the same rounds: the ratio of the two ``none`` figures
is what the check costs a trigger that has none. (HMAC cannot be loaded with wrk: every request
must be signed anew, the replay check refuses a repeated one.)

Figures are for the README and the report, never test thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import httpc, wrk  # noqa: E402
from bench.coldstart import HELLO  # noqa: E402

CONCURRENCY = 16


def start(src: Path, data: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "APPLIANCE_LOG_LEVEL": "warning", "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--data-dir", str(data), "--edge-port", "0",
                             "--api-port", "0"], cwd=str(src), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    info = data / "appliance.json"
    deadline = time.monotonic() + 60
    while not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the appliance in {src} did not start (status {proc.poll()})")
        time.sleep(0.05)
    return proc, json.loads(info.read_text())


def api_call(base: str, method: str, path: str, body=None, data: bytes | None = None, ctype="application/json"):
    import urllib.request
    payload = json.dumps(body).encode() if body is not None else data
    req = urllib.request.Request(base + path, data=payload, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def deploy(info: dict, name: str) -> None:
    api = info["api_url"]
    api_call(api, "POST", "/v1/functions", {"name": name, "concurrency": 16})
    api_call(api, "PUT", f"/v1/functions/{name}/code?filename=index.py", data=HELLO, ctype="application/octet-stream")


def targets(info: dict) -> dict[str, httpc.Target]:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    api, port = info["api_url"], int(info["edge_url"].rsplit(":", 1)[1])
    deploy(info, "hello")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    triggers = {"none": {}, "none+cors": {"cors": {"allow_origins": ["https://app.example"]}},
                "bearer": {"auth": {"type": "bearer"}},
                "jwt": {"auth": {"type": "jwt", "issuer": "https://i.test/", "audience": "bench", "public_key": pem}}}
    out = {}
    for label, extra in triggers.items():
        path = "/t/" + label.replace("+", "-")
        api_call(api, "POST", "/v1/triggers", {"function": "hello", "method": "GET", "path": path, **extra})
        headers = {}
        if label == "bearer":
            headers["Authorization"] = "Bearer " + api_call(api, "POST", "/v1/triggers/keys",
                                                            {"method": "GET", "path": path})["key"]
        elif label == "jwt":
            token = jwt.encode({"iss": "https://i.test/", "aud": "bench", "sub": "b", "exp": int(time.time()) + 3600},
                               key, algorithm="RS256")
            headers["Authorization"] = f"Bearer {token}"
        elif label == "none+cors":
            headers["Origin"] = "https://app.example"
        out[label] = httpc.Target("127.0.0.1", port, path, headers=headers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--baseline-src", type=Path, help="another checkout to run as the auth-less baseline")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-triggerauth-"))
    procs = []
    try:
        proc, info = start(REPO, work / "this")
        procs.append(proc)
        load = targets(info)
        if args.baseline_src:
            proc, base = start(args.baseline_src.resolve(), work / "baseline")
            procs.append(proc)
            deploy(base, "hello")
            api_call(base["api_url"], "POST", "/v1/triggers", {"function": "hello", "method": "GET", "path": "/t/none"})
            load = {"baseline none": httpc.Target("127.0.0.1", int(base["edge_url"].rsplit(":", 1)[1]), "/t/none"),
                    **load}
        for t in load.values():   # warm: the instances are started and the verifiers built
            wrk.run(t, concurrency=CONCURRENCY, duration_s=1)
        rps: dict[str, list[float]] = {k: [] for k in load}
        p50: dict[str, list[float]] = {k: [] for k in load}
        for _ in range(args.rounds):
            for label, t in load.items():
                r = wrk.run(t, concurrency=CONCURRENCY, duration_s=args.duration)
                if r["errors"]:
                    raise SystemExit(f"{label}: {r['errors']} errors")
                rps[label].append(r["rps"])
                p50[label].append(r["p50_ms"])
        ref = statistics.median(rps["baseline none" if args.baseline_src else "none"])
        print(f"warm hello, {CONCURRENCY} connections, {args.rounds} x {args.duration:g} s per trigger (medians):")
        for label in load:
            m = statistics.median(rps[label])
            print(f"{label:14s} {m:9,.0f} req/s  x{m / ref:5.3f}   p50 {statistics.median(p50[label]):6.2f} ms   "
                  f"rounds: {', '.join(f'{x:,.0f}' for x in rps[label])}")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
