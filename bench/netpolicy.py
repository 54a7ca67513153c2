"""What keeping instances off the host's own services adds to a cold start, two ways, side by side.

    .venv/bin/python -m bench.netpolicy [--runs 30]

* ``edge filter=auto`` and ``edge filter=off``: two real appliances (sandbox on), one with the
  uid-scoped nftables table (appliance/instances/netfilter.py), one without; the first request of
  ``--runs`` freshly deployed hello functions through each edge, alternating between the two so
  both see the same machine. The filter is installed once at start, so the difference is what a
  packet filter costs per cold start (the instance's Unix socket to the edge is not filtered).
* ``netns+veth``: what the alternative, a network namespace per instance with outbound access,
  costs on its own before any runtime starts: a child enters a new network namespace, and a veth
  pair is made, moved into it, addressed (link-local 169.254.0.0/16, no traffic is sent) and
  brought up with one ``ip -batch`` on each side (a NAT rule for outbound access would come on
  top). Timed from the fork to the namespace being ready, then torn down.

Needs root. Figures are for the README and the report, never test thresholds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.coldstart import HELLO, start_appliance, summary  # noqa: E402

CLONE_NEWNET = 0x40000000


def first_requests(runs: int, work: Path) -> dict[str, list[float]]:
    import urllib.request

    from appliance.client import ApplianceClient

    started = {mode: start_appliance(work / f"appliance-{mode}", {"APPLIANCE_SANDBOX": "on",
                                                                  "APPLIANCE_INSTANCE_NET_FILTER": mode})
               for mode in ("auto", "off")}
    try:
        out: dict[str, list[float]] = {mode: [] for mode in started}
        apis = {mode: ApplianceClient(info["api_url"]) for mode, (_, info) in started.items()}
        status = apis["auto"].health().get("instance_network", "")
        if not status.startswith("filtered"):
            raise SystemExit(f"the filter is not in force: {status}")
        for i in range(runs):
            for mode, (_, info) in started.items():
                api, name = apis[mode], f"cold-{i}"
                api.create_function(name=name)
                api.upload_code(name, HELLO, filename="index.py")
                api.add_trigger(name, "GET", f"/cold/{i}")
                t0 = time.monotonic()
                with urllib.request.urlopen(f"{info['edge_url']}/cold/{i}", timeout=30) as resp:
                    assert resp.read() == b"Hello Serverless" and "cold;" in resp.headers["Server-Timing"]
                out[mode].append((time.monotonic() - t0) * 1000)
        return out
    finally:
        for proc, _ in started.values():
            proc.terminate()
            proc.wait(30)


def netns_veth(runs: int) -> list[float]:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for i in range(runs):
        host, peer = f"fbh{os.getpid() % 10000}x{i}", f"fbp{os.getpid() % 10000}x{i}"
        r, w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            if libc.unshare(CLONE_NEWNET) != 0:
                os._exit(1)
            os.write(w, b"x")
            time.sleep(30)
            os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        try:
            subprocess.run(["ip", "-batch", "-"], check=True, text=True, input=(
                f"link add {host} type veth peer name {peer}\nlink set {peer} netns {pid}\n"
                f"addr add 169.254.{i % 250}.1/30 dev {host}\nlink set {host} up\n"))
            subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-batch", "-"], check=True, text=True, input=(
                f"addr add 169.254.{i % 250}.2/30 dev {peer}\nlink set {peer} up\nlink set lo up\n"
                f"route add default via 169.254.{i % 250}.1\n"))
            out.append((time.monotonic() - t0) * 1000)
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            subprocess.run(["ip", "link", "del", host], capture_output=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-netpolicy-"))
    try:
        print(f"first request of a new hello function through the edge, sandbox on, {args.runs} runs each:")
        for mode, ms in first_requests(args.runs, work).items():
            print(summary(f"edge filter={mode}", ms))
        print("a network namespace with a veth pair per instance, before any runtime starts:")
        print(summary("netns+veth", netns_veth(args.runs)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
