"""The systems under test. Each peer starts its server on 127.0.0.1, serves the same hello handler
at ``GET /hello/serverless``, knows how to make its next request a cold start, and knows which of
its processes are idle instances and which are its platform.

What "cold" means for each peer is in its ``cold_means`` (and bench/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import psutil

from . import httpc, procs
from .memory import per_instance, platform

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"
REPO = HERE.parent
HELLO_PATH = "/hello/serverless"
HELLO_BODY = b"Hello Serverless"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peer_env(ctx) -> dict:
    """The environment every peer runs with: ``python3`` is the real interpreter (cache/bin first on
    PATH), no virtualenv leaks in, and nothing can reach a cloud."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    env["PATH"] = f"{ctx.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def sls_env(ctx, home: Path) -> dict:
    """serverless-offline's environment: never reach AWS or the framework's services (fake
    credentials, no telemetry, no notifications, no update checks, no interactive onboarding)."""
    env = peer_env(ctx)
    env.update({
        "AWS_ACCESS_KEY_ID": "AKIABENCHLOCALONLY00", "AWS_SECRET_ACCESS_KEY": "bench-local-only",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "SLS_TELEMETRY_DISABLED": "1", "SLS_TRACKING_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off",
        "SLS_DEPRECATION_DISABLE": "*", "SLS_INTERACTIVE_SETUP_DISABLE": "1", "SLS_AWS_MONITORING_FREQUENCY": "0",
        "SERVERLESS_PLATFORM_STAGE": "bench-local", "CI": "1", "NO_UPDATE_NOTIFIER": "1",
        "HOME": str(home),
    })
    return env


def sls_command(npm_dir: Path, port: int, lambda_port: int, *extra: str) -> list[str]:
    """``serverless offline start`` on 127.0.0.1 (run it in the service directory)."""
    return ["node", str(npm_dir / "node_modules" / "serverless" / "bin" / "serverless.js"),
            "offline", "start", "--host", "127.0.0.1", "--httpPort", str(port),
            "--lambdaPort", str(lambda_port), "--noPrependStageInUrl", *extra]


def _copy_hello(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "hello" / "index.py", dest / "index.py")


def check_hello(r: httpc.Reply, who: str) -> None:
    if r.status != 200 or r.body.strip() != HELLO_BODY:
        raise RuntimeError(f"{who} answered {r.status} {r.body[:300]!r}, not 200 {HELLO_BODY!r}")


class Peer:
    name = "peer"
    label = ""
    describe = ""
    cold_means = ""
    #: restart the server between the cold phase and the warm phases (cold uses special options)
    restart_for_warm = False

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.target: httpc.Target | None = None
        self.workdir = ctx.run_dir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = ctx.run_dir / "logs" / f"{self.name}.log"
        self.extra: dict = {}
        #: descendants that outlived this peer's server process and had to be ended by the bench
        self.orphans = 0

    # lifecycle -----------------------------------------------------------------------------
    def start(self, *, cold_phase: bool = False) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.orphans += procs.stop(self.proc)
        self.proc = None

    def first_request(self, timeout_s: float = 60.0) -> httpc.Reply:
        r = httpc.wait_ok(self.target, timeout_s, interval_s=0.005, proc=self.proc)
        check_hello(r, self.name)
        return r

    # cold ----------------------------------------------------------------------------------
    def cold_once(self) -> float:
        """Make the next request cold, send it, return its latency in ms."""
        raise NotImplementedError

    def _restart_timed(self) -> float:
        """Stop the server, start it again and time from spawn to the first 200 (1 ms polling)."""
        self.stop()
        time.sleep(0.05)
        t0 = time.perf_counter()
        self.start()
        r = httpc.wait_ok(self.target, 60.0, interval_s=0.001, proc=self.proc)
        ms = (time.perf_counter() - t0) * 1000
        check_hello(r, self.name)
        return ms

    # memory --------------------------------------------------------------------------------
    def is_instance(self, p: psutil.Process) -> bool:
        raise NotImplementedError

    def memory(self) -> dict:
        if self.proc is None:
            return {}
        return {"instance": per_instance(self.proc.pid, self.is_instance),
                "platform": platform(self.proc.pid, self.is_instance)}


class Gunicorn(Peer):
    name = "gunicorn"
    label = "gunicorn+Flask"
    cold_means = ("no scale to zero: restart gunicorn (master + workers) and time from spawn to the first "
                  "200 (connect polled every 1 ms)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.workers = 2 * (os.cpu_count() or 1) + 1
        self.describe = (f"gunicorn {self.workers} sync workers (2 x cores + 1, gunicorn's advice), Flask app "
                         "calling the handler in-process; always on")
        _copy_hello(self.workdir)
        shutil.copy(ASSETS / "gunicorn_app.py", self.workdir / "gunicorn_app.py")
        self.port = free_port()
        self.target = httpc.Target("127.0.0.1", self.port, HELLO_PATH)

    def start(self, *, cold_phase: bool = False) -> None:
        venv = self.ctx.installed["venv-gunicorn"]
        cmd = [str(venv / "bin" / "python"), "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
               "--workers", str(self.workers), "--chdir", str(self.workdir), "--log-level", "warning",
               "gunicorn_app:app"]
        self.proc = procs.spawn(cmd, log=self.log, env=peer_env(self.ctx), cwd=self.workdir)

    def cold_once(self) -> float:
        return self._restart_timed()

    def is_instance(self, p):
        return p.ppid() == self.proc.pid


class FunctionsFramework(Peer):
    name = "functions-framework"
    label = "functions-framework"
    describe = ("Google functions-framework 3.x (`functions-framework --target hello`): gunicorn, 1 worker with "
                "cores x 4 threads, its defaults")
    cold_means = ("no scale to zero of its own (Cloud Run scales containers): restart the process and time from "
                  "spawn to the first 200 (connect polled every 1 ms)")

    def __init__(self, ctx):
        super().__init__(ctx)
        _copy_hello(self.workdir)
        shutil.copy(ASSETS / "ff_main.py", self.workdir / "main.py")
        self.port = free_port()
        self.target = httpc.Target("127.0.0.1", self.port, HELLO_PATH)

    def start(self, *, cold_phase: bool = False) -> None:
        venv = self.ctx.installed["venv-ff"]
        cmd = [str(venv / "bin" / "functions-framework"), "--target", "hello", "--source", "main.py",
               "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = procs.spawn(cmd, log=self.log, env=peer_env(self.ctx), cwd=self.workdir)

    def cold_once(self) -> float:
        return self._restart_timed()

    def is_instance(self, p):
        return p.ppid() == self.proc.pid


class FreshPython(Peer):
    name = "fresh-python"
    label = "fresh python3 per request"
    describe = ("stdlib threaded HTTP server that fork+execs `python3 -c` (import index, call handler, print) "
                "per request; nothing is reused")
    cold_means = "every request is cold (a new interpreter); sampled as single requests 50 ms apart"

    def __init__(self, ctx):
        super().__init__(ctx)
        _copy_hello(self.workdir / "code")

    def start(self, *, cold_phase: bool = False) -> None:
        port_file = self.workdir / "port"
        if port_file.exists():
            port_file.unlink()
        py = str(self.ctx.bin_dir / "python3")
        self.proc = procs.spawn([py, str(ASSETS / "fresh_server.py"), py, str(self.workdir / "code"),
                                 str(port_file)], log=self.log, env=peer_env(self.ctx))
        end = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"fresh-python server did not start; see {self.log}")
            time.sleep(0.01)
        self.target = httpc.Target("127.0.0.1", int(port_file.read_text()), HELLO_PATH)

    def cold_once(self) -> float:
        time.sleep(0.05)
        r = httpc.once(self.target)
        check_hello(r, self.name)
        return r.ms

    def is_instance(self, p):
        return False    # between requests nothing but the dispatcher exists

    def memory(self) -> dict:
        d = super().memory()
        d["instance"] = {"instances": 0, "each": [], "uss_mb": 0.0, "pss_mb": 0.0, "rss_mb": 0.0,
                         "note": "no process exists between requests"}
        return d


class ServerlessOffline(Peer):
    name = "serverless-offline"
    label = "serverless-offline"
    restart_for_warm = True
    describe = ("serverless 3 + serverless-offline 13 (`serverless offline start`), python3.11 handler "
                "behind an httpApi route; default options for warm runs (Python child kept warm, "
                "one per concurrent request)")
    cold_means = ("scale to zero with `--terminateIdleLambdaTime 1` (the idle Python child is killed after 1-2 s); "
                  "wait until no Python child is left, then time one request")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.npm_dir: Path = ctx.installed["npm"]
        self.service = self.npm_dir      # the service dir must see node_modules/serverless-offline
        _copy_hello(self.service)
        shutil.copy(ASSETS / "serverless.yml", self.service / "serverless.yml")
        self.port = free_port()
        self.lambda_port = free_port()
        self.target = httpc.Target("127.0.0.1", self.port, HELLO_PATH)

    def _env(self) -> dict:
        return sls_env(self.ctx, self.workdir)

    def start(self, *, cold_phase: bool = False) -> None:
        cmd = sls_command(self.npm_dir, self.port, self.lambda_port)
        if cold_phase:
            cmd += ["--terminateIdleLambdaTime", "1"]
        self.proc = procs.spawn(cmd, log=self.log, env=self._env(), cwd=self.service)

    def is_instance(self, p):
        cmd = p.cmdline()
        return bool(cmd) and "python" in os.path.basename(cmd[0]) and any(c.endswith("invoke.py") for c in cmd)

    def _pythons(self) -> int:
        try:
            return sum(1 for p in psutil.Process(self.proc.pid).children(recursive=True) if self._is_py(p))
        except psutil.NoSuchProcess:
            return 0

    def _is_py(self, p) -> bool:
        try:
            return self.is_instance(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return False

    def cold_once(self) -> float:
        end = time.monotonic() + 30
        while self._pythons():
            if time.monotonic() > end:
                raise RuntimeError("serverless-offline kept its Python child for 30 s with --terminateIdleLambdaTime 1")
            time.sleep(0.02)
        time.sleep(0.05)
        r = httpc.once(self.target)
        check_hello(r, self.name)
        return r.ms


class Appliance(Peer):
    name = "appliance"
    label = "FaaS Appliance (edge)"
    restart_for_warm = False
    cold_means = ("scale to zero: keep_alive_s=0 (reaper every 0.1 s) drains the instance after each request; "
                  "wait until the API lists no instance and its process is gone, then time one request "
                  "through the edge router; the Server-Timing header must say cold")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.data_dir = self.workdir / "data"
        self.api = None
        self.cold_timings: list[dict] = []
        self.describe = ("embedded mode (`python -m appliance up`), hello deployed with function.json's settings "
                         "(python3.11, 128 MB, concurrency 1, max_instances 10), HTTP trigger GET /hello/serverless")

    def start(self, *, cold_phase: bool = False) -> None:
        self.boot()
        fn = json.loads((ASSETS.parent.parent / "examples" / "hello" / "function.json").read_text())
        settings = {k: fn[k] for k in ("runtime", "handler", "memory_mb", "timeout_s", "concurrency") if k in fn}
        self.api.deploy("hello", ASSETS / "hello", keep_alive_s=0, **settings)
        self.api.add_trigger("hello", "GET", HELLO_PATH)

    def boot(self) -> None:
        """Start an appliance with an empty data directory; sets ``proc``, ``target``'s address and ``api``."""
        from appliance.client import ApplianceClient

        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        env = peer_env(self.ctx)
        env["APPLIANCE_REAP_INTERVAL_S"] = "0.1"
        env["PYTHONPATH"] = str(REPO)
        cmd = [sys.executable, "-m", "appliance", "up", "--host", "127.0.0.1", "--edge-port", "0",
               "--api-port", "0", "--data-dir", str(self.data_dir)]
        self.proc = procs.spawn(cmd, log=self.log, env=env, cwd=REPO)
        info_path = self.data_dir / "appliance.json"
        end = time.monotonic() + 60
        while not info_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the appliance exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > end:
                raise RuntimeError(f"the appliance did not write {info_path} in 60 s; see {self.log}")
            time.sleep(0.02)
        info = json.loads(info_path.read_text())
        host, port = info["edge_url"].rsplit("/", 1)[-1].rsplit(":", 1)
        self.target = httpc.Target(host, int(port), HELLO_PATH)
        self.api = ApplianceClient(info["api_url"], token=(self.data_dir / "admin.token").read_text().strip(),
                                   timeout_s=60)
        self.extra["health"] = self._health()

    def _health(self) -> dict:
        try:
            return self.api.health()
        except Exception:  # noqa: BLE001 - informational only
            return {}

    def instances(self) -> list[dict]:
        return self.api._req("GET", "/v1/functions/hello/instances").json()["instances"]

    def set_keep_alive(self, seconds: int) -> None:
        self.api.update_function("hello", keep_alive_s=seconds)

    def is_instance(self, p):
        # Instances are forked from a runtime zygote and share its command line, so the API's
        # host pids say which processes are instances (the zygote and its spare child are not).
        return p.pid in self._instance_pids()

    def _instance_pids(self) -> set[int]:
        try:
            return {i["pid"] for i in self.api.get_function("hello")["instances"] if i.get("pid")}
        except Exception:  # noqa: BLE001 - the appliance is starting or stopping
            return set()

    def _instance_processes(self) -> int:
        return sum(1 for pid in self._instance_pids() if psutil.pid_exists(pid))

    def cold_once(self) -> float:
        end = time.monotonic() + 30
        while self.instances() or self._instance_processes():
            if time.monotonic() > end:
                raise RuntimeError("the appliance kept an instance for 30 s with keep_alive_s=0")
            time.sleep(0.02)
        time.sleep(0.05)
        r = httpc.once(self.target)
        check_hello(r, self.name)
        timing = parse_server_timing(r.headers.get("server-timing", ""))
        if "cold" not in timing:
            raise RuntimeError(f"expected a cold start, Server-Timing says {r.headers.get('server-timing')!r}")
        self.cold_timings.append(timing)
        return r.ms

    def direct_target(self) -> httpc.Target:
        """POST /_/invoke on one instance's own address, with the event the edge would build."""
        inst = self.instances()[0]
        addr = inst["address"]
        body = json.dumps(hello_event(self.target), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if addr.startswith("unix:"):
            return httpc.Target("localhost", 0, "/_/invoke", "POST", body, headers, unix_path=addr[5:])
        host, port = addr.rsplit(":", 1)
        return httpc.Target(host, int(port), "/_/invoke", "POST", body, headers)


def hello_event(t: httpc.Target) -> dict:
    headers = [("Host", f"{t.host}:{t.port}"), ("Accept-Encoding", "identity")]
    try:
        from appliance.edge.events import build_event
        from appliance.edge.request import RawRequest
        req = RawRequest(method="GET", path=HELLO_PATH, query="", headers=tuple((k.lower(), v) for k, v in headers),
                         body=b"", source_ip="127.0.0.1", host=t.host)
        return build_event(req, route_key=f"GET {HELLO_PATH}", path_params={}, request_id="bench-direct")
    except (ImportError, TypeError):
        return {"version": "2.0", "routeKey": f"GET {HELLO_PATH}", "rawPath": HELLO_PATH, "rawQueryString": "",
                "headers": {k.lower(): v for k, v in headers},
                "requestContext": {"http": {"method": "GET", "path": HELLO_PATH}}, "isBase64Encoded": False}


def parse_server_timing(header: str) -> dict:
    """``{"queue": 0.1, ..., "cold": "no-instance"}`` from a Server-Timing header."""
    out: dict = {}
    for part in header.split(","):
        bits = [b.strip() for b in part.strip().split(";")]
        if not bits or not bits[0]:
            continue
        name, val = bits[0], None
        for b in bits[1:]:
            if b.startswith("dur="):
                try:
                    val = float(b[4:])
                except ValueError:
                    pass
            elif b.startswith("desc="):
                val = b[5:].strip('"')
        out[name] = val if val is not None else True
    return out


PEERS = {cls.name: cls for cls in (Appliance, Gunicorn, ServerlessOffline, FunctionsFramework, FreshPython)}
