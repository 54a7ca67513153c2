"""CPU per warm invoke inside one Python runtime instance, A/B between bootstrap files in the same run.

    .venv/bin/python -m bench.runtime_cpu [--requests 20000] [--rounds 8] [--tcp] \\
        base=<path/to/old/bootstrap.py> new=runtimes/python/bootstrap.py

Each round starts every bootstrap (alternating the order) with a hello handler, drives it over one
keep-alive connection (a Unix socket, or TCP with ``--tcp``) with the request ``http.client`` sends for
the edge's invoke, from a minimal client that costs as little as possible, and reads the instance's
CPU time from ``/proc/<pid>/task/*/schedstat`` before and after. Reports medians over rounds: CPU us
per request, requests/s of that client, and the idle USS after the warm-up. Figures for docstrings
and reports, never test thresholds; on a shared machine compare only figures of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HELLO = "def handler(event, context):\n    return 'Hello Serverless'\n"
BODY = b'{"httpMethod":"GET","path":"/hello/serverless","headers":{"host":"x"},"body":null}'


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            pass
    return total


def uss_mb(pid: int) -> float:
    kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb += int(line.split()[1])
    return kb / 1024


def start(path: str, code_dir: str, work: str, tcp: bool):
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_") and k != "PYTHONPATH"}
    env.update(FAAS_HANDLER="index.handler", FAAS_CODE_DIR=code_dir, FAAS_READY_FD=str(w), FAAS_PORT="0")
    if not tcp:
        env["FAAS_SOCKET"] = tempfile.mktemp(suffix=".sock", dir=work)
    proc = subprocess.Popen([sys.executable, path], env=env, pass_fds=(w,), stdout=subprocess.DEVNULL)
    os.close(w)
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(r, 256)
        if not chunk:
            raise RuntimeError(f"{path} exited before listening")
        line += chunk
    os.close(r)
    where = json.loads(line)
    if "socket" in where:
        s = socket.socket(socket.AF_UNIX)
        s.connect(where["socket"])
    else:
        s = socket.create_connection(("127.0.0.1", where["port"]))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return proc, s


def request(i: int) -> bytes:
    return (b"POST /_/invoke HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n"
            b"Content-Length: %d\r\nContent-Type: application/json\r\nX-Request-Id: req-%08d\r\n"
            b"X-Deadline-Ms: %d\r\n\r\n" % (len(BODY), i, int(time.time() * 1000) + 600_000)) + BODY


def exchange(s: socket.socket, data: bytes, buf: bytes) -> tuple[bytes, bytes]:
    """Send one request, read one reply (Content-Length framed); returns (reply body, what follows)."""
    s.sendall(data)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            i = head.find(b"content-length:") + 15
            j = head.find(b"\r\n", i)
            n = int(head[i:j if j > 0 else None])
            if len(buf) >= end + 4 + n:
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(buf[:end].decode("latin-1"))
                return buf[end + 4:end + 4 + n], buf[end + 4 + n:]
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("the instance closed the connection")
        buf += chunk


def one_round(path: str, code_dir: str, work: str, n: int, tcp: bool) -> tuple[float, float, float]:
    proc, s = start(path, code_dir, work, tcp)
    try:
        s.sendall(b"GET /_/ready?waitMs=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
        body, buf = exchange(s, b"", b"")
        reqs = [request(i) for i in range(n)]
        for data in reqs[:500]:  # warm-up
            body, buf = exchange(s, data, buf)
        if b'"ok":true' not in body:
            raise RuntimeError(body)
        time.sleep(0.3)
        uss = uss_mb(proc.pid)
        c0, t0 = cpu_ns(proc.pid), time.perf_counter()
        for data in reqs:
            body, buf = exchange(s, data, buf)
        t1, c1 = time.perf_counter(), cpu_ns(proc.pid)
        return (c1 - c0) / 1000 / n, n / (t1 - t0), uss
    finally:
        s.close()
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bootstraps", nargs="+", metavar="label=path")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1 instead of a Unix socket")
    ap.add_argument("--handler-source", default=HELLO, help="index.py of the function (default: hello)")
    args = ap.parse_args()
    cands = [b.split("=", 1) if "=" in b else (b, b) for b in args.bootstraps]
    with tempfile.TemporaryDirectory(prefix="runtime-cpu-") as work:
        code_dir = os.path.join(work, "code")
        os.mkdir(code_dir)
        with open(os.path.join(code_dir, "index.py"), "w") as f:
            f.write(args.handler_source)
        rows: dict[str, list] = {label: [] for label, _ in cands}
        for r in range(args.rounds):
            for label, path in (cands if r % 2 == 0 else cands[::-1]):
                rows[label].append(one_round(os.path.abspath(path), code_dir, work, args.requests, args.tcp))
    print(f"{args.requests} warm invokes per round, {args.rounds} rounds, {'TCP' if args.tcp else 'Unix socket'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for label, rs in rows.items():
        cpu = [x[0] for x in rs]
        print(f"{label:12s} CPU {statistics.median(cpu):6.1f} us/request (min {min(cpu):.1f})   "
              f"{statistics.median(x[1] for x in rs):8.0f} req/s   idle USS {statistics.median(x[2] for x in rs):.2f} MB")


if __name__ == "__main__":
    main()
