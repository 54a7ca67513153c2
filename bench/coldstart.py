"""Cold start of one Python hello instance, three ways, measured side by side on this host.

    .venv/bin/python -m bench.coldstart [--runs 30]

For each way, the time from asking for an instance to its ``/_/ready`` answering 200 (the handler is
loaded), then the instance is stopped; p50 and p90 over ``--runs`` starts:

* ``plain``: ``ProcessLauncher``, a fresh interpreter per instance, no isolation (the old default);
* ``bwrap``: a fresh interpreter per instance inside ``bwrap`` with a comparable profile (read-only
  /usr and interpreter prefix, code at /var/task, tmpfs /tmp, new user/pid/ipc/uts/net namespaces);
* ``zygote``: ``ZygoteLauncher``, a fork of the preloaded zygote entering its sandbox in-process
  (with cgroups when the host has them), the appliance's default.

With ``--through-appliance`` it also starts a real appliance (sandbox on, then off) and measures the
first request of each of ``--runs`` freshly deployed hello functions through the edge router's HTTP
trigger, as a client sees it (code already unpacked at deploy, so this is sandbox + runtime + handler
load + routing).

Needs root (the sandbox does). Figures are for the report and docstrings, never test thresholds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.core import codepkg  # noqa: E402
from appliance.instances import cgroups  # noqa: E402
from appliance.core.model import Instance, InstanceSpec  # noqa: E402
from appliance.instances.client import InstanceClient, InstanceUnreachable  # noqa: E402
from appliance.instances.process_launcher import LaunchRequest, ProcessLauncher, runtime_env  # noqa: E402
from appliance.instances.zygote_launcher import ZygoteLauncher, probe_python  # noqa: E402

HELLO = b"def handler(event, context):\n    return 'Hello Serverless'\n"


def wait_ready(client: InstanceClient, address: str, deadline: float) -> None:
    inst = Instance(id="m", function="hello", version=1, address=address)
    while time.monotonic() < deadline:
        try:
            if client.ready(inst, wait_ms=int(max(1, deadline - time.monotonic()) * 1000))[0] == 200:
                client.close(address)
                return
        except InstanceUnreachable:
            pass
        time.sleep(0.0005)
    raise RuntimeError(f"{address} not ready")


def measure_launcher(launcher, spec, code, runs, client) -> list[float]:
    out = []
    for i in range(runs):
        t0 = time.monotonic()
        handle, address, _ = launcher.launch(LaunchRequest(spec=spec, code_dir=code, instance_id=f"m-{i}"), t0 + 30)
        wait_ready(client, address, t0 + 30)
        out.append((time.monotonic() - t0) * 1000)
        handle.signal(signal.SIGKILL)
        handle.wait(10)
    return out


def measure_bwrap(spec, code, runs, client, work: Path) -> list[float]:
    exe, prefix = probe_python(sys.executable)
    bootstrap = REPO / "runtimes" / "python"
    out = []
    for i in range(runs):
        sock_dir = work / f"b{i}"
        sock_dir.mkdir()
        req = LaunchRequest(spec=spec, code_dir=code, instance_id=f"b-{i}")
        env = runtime_env(req, socket_path="/run/faas/instance.sock")
        env["FAAS_CODE_DIR"] = "/var/task"
        cmd = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
               "--unshare-cgroup", "--die-with-parent", "--clearenv",
               "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
               "--symlink", "usr/bin", "/bin", "--ro-bind", prefix, prefix, "--ro-bind", str(code), "/var/task",
               "--ro-bind", str(bootstrap), "/var/runtime", "--bind", str(sock_dir), "/run/faas",
               "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--chdir", "/var/task"]
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        cmd += [exe, "-X", "frozen_modules=on", "/var/runtime/bootstrap.py"]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = f"unix:{sock_dir}/instance.sock"
        deadline = t0 + 30
        while not os.path.exists(sock_dir / "instance.sock"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"bwrap instance did not start (status {proc.poll()})")
            time.sleep(0.0005)
        wait_ready(client, address, deadline)
        out.append((time.monotonic() - t0) * 1000)
        proc.kill()
        proc.wait()
    return out


def start_appliance(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict]:
    """``python -m appliance up`` on free ports with ``env`` added; (process, its appliance.json)."""
    import json

    proc = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--data-dir", str(data), "--edge-port", "0",
                             "--api-port", "0"], cwd=str(REPO),
                            env={**os.environ, "APPLIANCE_LOG_LEVEL": "warning", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info_path = data / "appliance.json"
    deadline = time.monotonic() + 60
    while not info_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the appliance did not start (status {proc.poll()})")
        time.sleep(0.05)
    info = json.loads(info_path.read_text())
    info["token"] = (data / "admin.token").read_text().strip()  # the admin token of its first start
    return proc, info


def measure_appliance(sandbox: str, runs: int, work: Path) -> list[float]:
    import urllib.request

    from appliance.client import ApplianceClient
    proc, info = start_appliance(work / f"appliance-{sandbox}", {"APPLIANCE_SANDBOX": sandbox})
    try:
        api = ApplianceClient(info["api_url"], token=info["token"])
        out = []
        for i in range(runs):
            name = f"cold-{i}"
            api.create_function(name=name)
            api.upload_code(name, HELLO, filename="index.py")
            api.add_trigger(name, "GET", f"/cold/{i}")
            t0 = time.monotonic()
            with urllib.request.urlopen(f"{info['edge_url']}/cold/{i}", timeout=30) as resp:
                assert resp.read() == b"Hello Serverless" and "cold;" in resp.headers["Server-Timing"]
            out.append((time.monotonic() - t0) * 1000)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def summary(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"{name:18s} p50 {statistics.median(ms):7.2f} ms   p90 {p90:7.2f} ms   min {ms[0]:7.2f} ms   (n={len(ms)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--through-appliance", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-cold-"))
    try:
        code = codepkg.unpack(codepkg.zip_single_file("index.py", HELLO), work / "code", codepkg.Limits())
        spec = InstanceSpec(function="hello", version=1, digest="x", runtime="python3.11", handler="index.handler",
                            memory_mb=128, timeout_s=3, concurrency=1, environment={}, network="none")
        client = InstanceClient()
        results = {}
        # The real interpreter, not a version-manager shim on PATH that would add its own start-up.
        os.environ.setdefault("APPLIANCE_PYTHON", probe_python(sys.executable)[0])
        plain = ProcessLauncher(REPO / "runtimes", work / "logs")
        results["plain"] = measure_launcher(plain, spec, code, args.runs, client)
        if shutil.which("bwrap"):
            results["bwrap"] = measure_bwrap(spec, code, args.runs, client, work)
        cg, why = cgroups.detect()
        zyg = ZygoteLauncher(REPO / "runtimes", work / "logs", cgroups=cg)
        try:
            zyg.check()
            results["zygote"] = measure_launcher(zyg, spec, code, args.runs, client)
        finally:
            zyg.close()
            if cg is not None:
                cg.close()
        print(f"python3.11 hello, launch to /_/ready, {args.runs} runs each, cgroups: "
              f"{cg.describe() if cg else 'none (' + why + ')'}")
        for name, ms in results.items():
            print(summary(name, ms))
        if args.through_appliance:
            print("first request of a new hello function through the edge router (client side):")
            for mode in ("on", "off"):
                print(summary(f"edge sandbox={mode}", measure_appliance(mode, args.runs, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
