"""Instance sandbox: escapes tried from inside a real sandboxed instance, and refused.

Each test runs user code that tries something it must not be able to do, asserts on the host that the
target really exists (so a refusal is not just a wrong path), and checks the platform keeps serving.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from pathlib import Path

import psutil
import pytest

from .conftest import REPO, start_appliance, stop_appliance, wait_for

PROBE = r'''
import json, os, socket

def _try(fn):
    try:
        return {"ok": True, "value": fn()}
    except OSError as e:
        return {"ok": False, "error": type(e).__name__, "errno": e.errno}

def _read(path):
    with open(path, "rb") as f:
        return f.read(100).decode("latin-1")

def _write(path):
    with open(path, "w") as f:
        f.write("escaped")
    return path

def handler(event, context):
    op, arg = event.get("op"), event.get("arg")
    if op == "read":
        return _try(lambda: _read(arg))
    if op == "listdir":
        return _try(lambda: sorted(os.listdir(arg)))
    if op == "write":
        return _try(lambda: _write(arg))
    if op == "kill":
        return _try(lambda: os.kill(int(arg), 0))
    if op == "connect":
        def connect():
            s = socket.create_connection(("127.0.0.1", int(arg)), timeout=3)
            s.sendall(b"hello from the sandbox")
            s.close()
            return True
        return _try(connect)
    if op == "http":
        import urllib.error, urllib.request
        try:
            with urllib.request.urlopen(arg, timeout=5) as resp:
                return {"status": resp.status, "body": resp.read(200).decode("latin-1")}
        except urllib.error.HTTPError as e:
            return {"status": e.code, "body": e.read(200).decode("latin-1")}
    if op == "whoami":
        return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "hostname": socket.gethostname(),
                "env": dict(os.environ), "cwd": os.getcwd(),
                "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    if op == "syscall":
        return _syscall(arg)
    if op == "ordinary":
        return _ordinary()
    raise ValueError(op)

# Each call is made so that, without the seccomp filter, the kernel would answer something other than
# EPERM (success, or EINVAL/EFAULT/ENOENT/EOPNOTSUPP from a bad argument checked before any privilege):
# an EPERM can only come from the filter.
_NR = {"x86_64": {"ptrace": 101, "bpf": 321, "keyctl": 250, "unshare": 272, "mount": 165, "perf_event_open": 298,
                  "clone": 56, "clone3": 435, "personality": 135, "io_uring_setup": 425, "getpid": 39},
       "aarch64": {"ptrace": 117, "bpf": 280, "keyctl": 219, "unshare": 97, "mount": 40, "perf_event_open": 241,
                   "clone": 220, "clone3": 435, "personality": 92, "io_uring_setup": 425, "getpid": 172}}
_CALLS = {
    "ptrace": (0,),                               # PTRACE_TRACEME
    "bpf": (9999, 0, 0),                          # no such command: EINVAL
    "keyctl": (9999, 0, 0),                       # no such operation: EOPNOTSUPP
    "unshare": (0x10000000,),                     # CLONE_NEWUSER
    "mount": (0, "/nonexistent/target", 0, 0, 0),  # ENOENT before the privilege check
    "perf_event_open": (0, 0, -1, -1, 0),         # attr NULL: EFAULT
    "clone": (0x10000000 | 17,),                  # CLONE_NEWUSER | SIGCHLD
    "clone3": (0, 0),
    "personality": (0x0040000,),                  # ADDR_NO_RANDOMIZE
    "io_uring_setup": (1, 0),                     # params NULL: EFAULT
}

def _syscall(name):
    import ctypes, platform
    libc = ctypes.CDLL(None, use_errno=True)
    args = [ctypes.c_char_p(a.encode()) if isinstance(a, str) else ctypes.c_long(a) for a in _CALLS[name]]
    ret = libc.syscall(ctypes.c_long(_NR[platform.machine()][name]), *args)
    err = ctypes.get_errno() if ret == -1 else 0
    if name == "clone" and ret == 0:
        os._exit(0)                               # the child of an unfiltered clone
    if name == "clone" and ret > 0:
        os.waitpid(ret, 0)
    return {"ret": ret, "errno": err}

def _ordinary():
    import subprocess, threading
    out = {}
    box = []
    t = threading.Thread(target=lambda: box.append(sum(range(1000))))
    t.start()
    t.join()
    out["thread"] = box == [499500]
    out["sh"] = subprocess.run(["/bin/sh", "-c", "echo $((6 * 7))"], capture_output=True, text=True).stdout.strip()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    a, b = socket.socketpair()
    a.sendall(b"ping")
    out["socketpair"] = b.recv(4).decode()
    try:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        c = socket.create_connection(srv.getsockname(), timeout=3)
        conn, _ = srv.accept()
        c.sendall(b"tcp")
        out["tcp"] = conn.recv(3).decode()
    except OSError as e:
        out["tcp"] = f"{type(e).__name__}: {e}"
    out["personality_query"] = ctypes_personality()
    with open("/proc/self/status") as f:
        out["seccomp"] = [line.split()[1] for line in f if line.startswith("Seccomp:")]
    return out

def ctypes_personality():
    import ctypes
    return ctypes.CDLL(None).personality(0xffffffff)
'''


def invoke(r, name, event=None, timeout=60):
    return r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json=event or {}, timeout=timeout)


def call(r, name, op, arg=None):
    resp = invoke(r, name, {"op": op, "arg": arg})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module", params=["mount-api", "binds-before-pivot"])
def appliance(request, tmp_path_factory):
    """Every escape is tried on both ways the sandbox attaches an instance's own directories:
    through the mount API into a root prepared ahead (Linux 5.2+), and by binds before the pivot
    (older kernels, or FAAS_SANDBOX_MOUNT_API=0)."""
    env = {"FAAS_SANDBOX_MOUNT_API": "0"} if request.param == "binds-before-pivot" else None
    r = start_appliance(tmp_path_factory.mktemp("appliance"), env)
    r.mount_path = request.param
    yield r
    stop_appliance(r)


@pytest.fixture(scope="module", params=["fresh", "snapshot"])
def probe(request, appliance):
    """A function that tries things from inside its sandbox; network default. Every escape is tried
    from an ordinary instance and from instances forked from a snapshot template (``snapshot: auto``:
    once the template is ready and the first, ordinary instance is gone, every cold start forks)."""
    if request.param == "fresh":
        return appliance.deploy({"index.py": PROBE})
    name = appliance.deploy({"index.py": PROBE}, snapshot="auto", keep_alive_s=1)
    invoke(appliance, name, {"op": "whoami"})
    wait_for(lambda: any(t["state"] == "ready" for t in _snapshots(appliance, name)), 60, message="template")
    wait_for(lambda: not appliance.instances(name), 30, message="the ordinary instance to go")
    resp = invoke(appliance, name, {"op": "whoami"})
    assert 'cold;desc="snapshot"' in resp.headers["Server-Timing"], resp.headers["Server-Timing"]
    return name


def _snapshots(r, name):
    return r.http.get(f"{r.api_url}/v1/functions/{name}", timeout=5).json()["snapshots"]


def _health(r):
    return r.http.get(f"{r.api_url}/v1/health", timeout=5).json()


def _digest(r, name):
    return r.http.get(f"{r.api_url}/v1/functions/{name}", timeout=5).json()["code_sha256"]


def test_the_appliance_runs_sandboxed_and_says_so(appliance, probe):
    assert not any("sandbox" in n for n in _health(appliance)["notes"]), _health(appliance)
    zygotes = [p for p in psutil.Process(appliance.proc.pid).children(recursive=True)
               if any(a.endswith("zygote.py") for a in p.cmdline())]
    assert zygotes
    forced = [p.environ().get("FAAS_SANDBOX_MOUNT_API") == "0" for p in zygotes]
    assert all(forced) if appliance.mount_path == "binds-before-pivot" else not any(forced)
    me = call(appliance, probe, "whoami")
    assert me["uid"] == 1000 and me["gid"] == 1000   # not root, inside or out
    assert me["pid"] == 1                             # pid 1 of its own pid namespace
    assert me["cwd"] == "/var/task" and me["hostname"] == "faas"


@pytest.mark.parametrize("name", ["ptrace", "bpf", "keyctl", "unshare", "mount", "perf_event_open", "clone",
                                  "personality", "io_uring_setup"])
def test_the_seccomp_filter_refuses_escape_and_attack_surface_calls(appliance, probe, name):
    """Each call is shaped so that without the filter it would succeed or fail with another error."""
    assert call(appliance, probe, "syscall", name) == {"ret": -1, "errno": errno.EPERM}


def test_clone3_looks_absent_so_libc_falls_back_to_clone(appliance, probe):
    assert call(appliance, probe, "syscall", "clone3") == {"ret": -1, "errno": errno.ENOSYS}


def test_ordinary_work_passes_the_seccomp_filter(appliance, probe):
    out = call(appliance, probe, "ordinary")
    assert out == {"thread": True, "sh": "42", "fork": 7, "socketpair": "ping", "tcp": "tcp",
                   "personality_query": 0, "seccomp": ["2"]}
    health = _health(appliance)
    assert health["seccomp"].startswith("active"), health
    import subprocess
    import sys
    doctor = subprocess.run([sys.executable, "-m", "appliance", "--api", appliance.api_url, "--token", appliance.token,
                             "doctor"], cwd=str(REPO),
                            capture_output=True, text=True, timeout=60).stdout
    assert "[ok] instance seccomp filter: active" in doctor, doctor


NODE_PROBE = r'''
const { execFileSync } = require("child_process");
const fs = require("fs");
const net = require("net");
exports.handler = async () => {
  const status = fs.readFileSync("/proc/self/status", "utf8");
  const sh = execFileSync("/bin/sh", ["-c", "echo $((6 * 7))"]).toString().trim();
  const read = await fs.promises.readFile("/var/task/index.js", "utf8");   // libuv's thread pool
  const echoed = await new Promise((resolve, reject) => {
    const srv = net.createServer((c) => c.pipe(c)).listen(0, "127.0.0.1", () => {
      const c = net.connect(srv.address().port, "127.0.0.1", () => c.write("tcp"));
      c.on("data", (d) => { c.end(); srv.close(); resolve(d.toString()); }).on("error", reject);
    });
  });
  return { seccomp: /^Seccomp:\s*(\d)/m.exec(status)[1], sh, read: read.length > 0, echoed };
};
'''


def test_a_nodejs_instance_serves_under_the_seccomp_filter(appliance):
    name = appliance.deploy({"index.js": NODE_PROBE}, runtime="nodejs20")
    resp = invoke(appliance, name)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"seccomp": "2", "sh": "42", "read": True, "echoed": "tcp"}


def test_another_functions_code_cannot_be_read(appliance, probe):
    other = appliance.deploy({"index.py": "SECRET = 'other-function-secret'\ndef handler(e, c):\n    return SECRET\n"})
    assert invoke(appliance, other).json() == "other-function-secret"
    host_copy = appliance.data_dir / "code" / _digest(appliance, other) / "index.py"
    assert "other-function-secret" in host_copy.read_text()   # it is there on the host...
    got = call(appliance, probe, "read", str(host_copy))
    assert got["ok"] is False and got["error"] == "FileNotFoundError"   # ...and has no path inside
    assert call(appliance, probe, "listdir", "/var/task")["value"] == ["__pycache__", "index.py"]
    own = call(appliance, probe, "read", "/var/task/index.py")
    assert own["ok"] and "import json, os, socket" in own["value"]


@pytest.mark.parametrize("path", ["metadata.sqlite3", "appliance.json", "packages", "code"])
def test_the_appliance_data_dir_is_invisible(appliance, probe, path):
    host = appliance.data_dir / path
    assert host.exists()
    got = call(appliance, probe, "read" if host.is_file() else "listdir", str(host))
    assert got["ok"] is False and got["error"] == "FileNotFoundError", got


@pytest.mark.parametrize("path", ["/etc/shadow", str(REPO / "appliance" / "config.py"), "/etc/ssl/private",
                                  "/var/log", "/home"])
def test_host_secrets_settings_and_homes_are_invisible(appliance, probe, path):
    assert os.path.exists(path)
    got = call(appliance, probe, "listdir" if os.path.isdir(path) else "read", path)
    assert got["ok"] is False and got["error"] in ("FileNotFoundError", "PermissionError"), got


def test_the_root_home_shows_at_most_the_path_to_the_interpreter(appliance, probe):
    """The runtime's interpreter may live under /root (pyenv); only the directories leading to it are seen."""
    import sys
    prefix = Path(sys.base_prefix)
    allowed = {prefix.parts[2]} if prefix.parts[1:2] == ("root",) else set()
    host = set(os.listdir("/root"))
    assert host - allowed   # the host's /root has more than that
    got = call(appliance, probe, "listdir", "/root")
    assert not got["ok"] or set(got["value"]) <= allowed, got


@pytest.mark.parametrize("path", ["/var/task/index.py", "/var/task/new.py", "/etc/passwd", "/usr/escaped",
                                  "/escaped", "/var/runtime/bootstrap.py", "/dev/escaped", "/proc/escaped"])
def test_nothing_outside_tmp_is_writable(appliance, probe, path):
    got = call(appliance, probe, "write", path)
    assert got["ok"] is False and got["error"] in ("OSError", "PermissionError", "FileNotFoundError"), got
    assert call(appliance, probe, "write", "/tmp/fine")["ok"] is True


def test_tmp_is_private_to_each_instance(appliance, probe):
    other = appliance.deploy({"index.py": PROBE})
    assert call(appliance, probe, "write", "/tmp/mine")["ok"]
    assert call(appliance, other, "read", "/tmp/mine")["error"] == "FileNotFoundError"


def test_host_processes_are_invisible_and_unreachable(appliance, probe):
    me = call(appliance, probe, "whoami")
    assert me["pids"] == [1]
    appliance_pid = appliance.proc.pid
    assert os.path.exists(f"/proc/{appliance_pid}")
    assert call(appliance, probe, "kill", appliance_pid)["error"] == "ProcessLookupError"


def test_the_environment_holds_only_the_contract_and_the_functions_variables(appliance):
    name = appliance.deploy({"index.py": PROBE}, environment={"GREETING": "hi"})
    env = call(appliance, name, "whoami")["env"]
    assert env["GREETING"] == "hi" and env["FAAS_CODE_DIR"] == "/var/task"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    allowed = {"GREETING", "PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE",
               "PYTHONUNBUFFERED", "MALLOC_ARENA_MAX",
               # the Lambda environment (runtimes/README.md)
               "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
               "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
               "_HANDLER"}
    extra = {k for k in env if not k.startswith("FAAS_")} - allowed
    assert not extra, extra
    assert env["PATH"] != os.environ["PATH"]


class _Listener:
    """A TCP listener on 127.0.0.1 that records what connects to it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.got.append(conn.recv(100))


def test_network_none_cannot_connect_to_a_host_listener(appliance, probe):
    listener = _Listener()
    try:
        isolated = appliance.deploy({"index.py": PROBE}, network="none")
        got = call(appliance, isolated, "connect", listener.port)
        assert got["ok"] is False and got["error"] in ("OSError", "ConnectionRefusedError"), got
        assert listener.got == []
        # With the default network the host's listeners are refused too, by the instances' packet filter
        # (tests/integration/test_instance_network.py); the listener itself answers the host.
        got = call(appliance, probe, "connect", listener.port)
        assert got["ok"] is False and got["error"] == "ConnectionRefusedError", got
        socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()
        wait_for(lambda: listener.got, 10, message="the host's own connection")
        assert listener.got == [b""]
    finally:
        listener.sock.close()


def test_functions_cannot_use_the_control_api_to_read_other_functions_code(appliance, probe):
    other = appliance.deploy({"index.py": "SECRET = 'api-secret'\ndef handler(e, c):\n    return SECRET\n"})
    url = f"{appliance.api_url}/v1/functions/{other}/code"
    assert appliance.http.get(url, timeout=5).status_code == 200   # the API serves the code to a token holder...
    # ...and a function cannot even connect to it: the instances' packet filter refuses the connection.
    for path in (url, f"{appliance.api_url}/v1/functions"):
        resp = invoke(appliance, probe, {"op": "http", "arg": path})
        assert resp.status_code == 502 and "Connection refused" in resp.json()["error"]["message"], resp.text


FORK_BOMB = r'''
import os, time
def handler(event, context):
    n = 0
    try:
        while n < 5000:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError as e:
        return {"forked": n, "error": type(e).__name__}
    return {"forked": n}
'''


def test_a_fork_bomb_is_stopped_and_others_keep_serving(appliance):
    from appliance.instances.zygote_launcher import PIDS_MAX
    bomb = appliance.deploy({"index.py": FORK_BOMB}, memory_mb=1024)   # room for the children's pages
    hello = appliance.deploy()
    resp = invoke(appliance, bomb)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out.get("error") == "BlockingIOError" and out["forked"] < PIDS_MAX, out
    assert len(_sandbox_processes(appliance)) == out["forked"]
    assert invoke(appliance, hello).json() == "Hello Serverless"
    # The sleepers die with the instance (they live in its pid namespace).
    appliance.http.delete(f"{appliance.api_url}/v1/functions/{bomb}", timeout=10)
    wait_for(lambda: not _sandbox_processes(appliance), 20, message="the bomb's processes to be gone")


def _sandbox_processes(r) -> list[int]:
    """Host pids of this appliance's sandboxed processes that are not their instance's pid 1 (the bomb's
    children). Only its own uid block: other appliances on the host run instances of their own."""
    first, last = _health(r)["instance_uids"]
    out = []
    for p in os.listdir("/proc"):
        try:
            if not p.isdigit() or not first <= os.stat(f"/proc/{p}").st_uid <= last:
                continue
            nspid = [line.split()[1:] for line in Path(f"/proc/{p}/status").read_text().splitlines()
                     if line.startswith("NSpid:")]
        except (FileNotFoundError, ProcessLookupError):  # it ended while being looked at
            continue
        if nspid and len(nspid[0]) > 1 and nspid[0][-1] != "1":
            out.append(int(p))
    return out


def _has_memory_cgroup(r) -> bool:
    return not any("no memory cgroup" in n for n in _health(r)["notes"])


HOG = r'''
def handler(event, context):
    chunks = []
    for _ in range(2048):
        chunks.append(bytearray(b"x" * (1 << 20)))   # touched pages, 1 MiB at a time
    return len(chunks)
'''


def test_a_memory_hog_is_killed_by_its_cgroup_as_out_of_memory(appliance):
    if not _has_memory_cgroup(appliance):
        pytest.skip("this host gives the appliance no memory cgroup")
    hog = appliance.deploy({"index.py": HOG}, memory_mb=128)
    hello = appliance.deploy()
    resp = invoke(appliance, hog)
    assert resp.status_code == 502, resp.text
    err = resp.json()["error"]
    assert err["code"] == "Function.OutOfMemory"
    # The platform's message (the instance was killed), not the runtime's MemoryError (an rlimit).
    assert "exceeded 128 MB and was killed" in err["message"], err
    assert invoke(appliance, hello).json() == "Hello Serverless"
    assert invoke(appliance, hog).json()["error"]["code"] == "Function.OutOfMemory"   # and again, fresh


PYC_CHECK = r'''
import importlib.machinery, sys
compiled = []
_orig = importlib.machinery.SourceFileLoader.source_to_code
def _spy(self, data, path, *a, **k):
    compiled.append(path)
    return _orig(self, data, path, *a, **k)
importlib.machinery.SourceFileLoader.source_to_code = _spy
import helper
importlib.machinery.SourceFileLoader.source_to_code = _orig
def handler(event, context):
    return {"compiled": compiled, "cached": helper.__cached__, "dont_write": sys.dont_write_bytecode,
            "answer": helper.answer()}
'''


def test_instances_load_the_byte_code_compiled_at_deploy_time(appliance):
    name = appliance.deploy({"index.py": PYC_CHECK, "helper.py": "def answer():\n    return 42\n"})
    out = invoke(appliance, name).json()
    assert out["answer"] == 42 and out["dont_write"] is True
    assert out["cached"] == "/var/task/__pycache__/helper.cpython-311.pyc"
    assert out["compiled"] == []   # helper came from its .pyc: nothing was compiled from source


def test_sandbox_phases_are_measured(appliance):
    name = appliance.deploy()
    resp = invoke(appliance, name)
    timing = dict(p.strip().split(";dur=") for p in resp.headers["Server-Timing"].split(",") if ";dur=" in p)
    assert float(timing["sandbox"]) > 0 and float(timing["runtime_init"]) > 0 and float(timing["user_init"]) > 0


def _zygote_pid(r) -> int:
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == r.proc.pid and b"zygote.py" in cmd:
            return int(p)
    raise AssertionError("no zygote process under the appliance")


def test_a_killed_zygote_is_restarted_by_the_next_cold_start(appliance):
    warm = appliance.deploy()
    assert invoke(appliance, warm).json() == "Hello Serverless"
    old = _zygote_pid(appliance)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{old}") or "Z" in Path(f"/proc/{old}/stat").read_text().split()[2],
             10, message="the zygote to die")
    # Running instances outlive it...
    assert invoke(appliance, warm).json() == "Hello Serverless"
    # ...and the next cold start gets a new zygote.
    cold = appliance.deploy({"index.py": "def handler(e, c):\n    return 'after the crash'\n"})
    resp = invoke(appliance, cold)
    assert resp.status_code == 200 and resp.json() == "after the crash"
    assert _zygote_pid(appliance) != old
    assert "event=zygote_restart" in appliance.log()


def test_sandbox_on_refuses_to_start_when_the_sandbox_cannot_work(tmp_path):
    import subprocess
    import sys
    env = {**os.environ, "APPLIANCE_SANDBOX": "on", "APPLIANCE_PYTHON": str(tmp_path / "no-such-python")}
    out = subprocess.run([sys.executable, "-m", "appliance", "up", "--data-dir", str(tmp_path / "d"),
                          "--edge-port", "0", "--api-port", "0"], cwd=str(REPO), env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "APPLIANCE_SANDBOX=on" in out.stderr + out.stdout


def test_sandbox_auto_falls_back_to_plain_processes_and_says_so(make_appliance, tmp_path):
    import sys
    # An interpreter that runs programs but cannot be asked where it lives: the sandbox needs that.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$1" in -c) echo "no -c here" >&2; exit 3;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    r = make_appliance({"APPLIANCE_SANDBOX": "auto", "APPLIANCE_PYTHON": str(python)})
    notes = _health(r)["notes"]
    assert any(n.startswith("sandbox unavailable") for n in notes), notes
    assert "event=sandbox_unavailable" in r.log()
    name = r.deploy({"index.py": PROBE})
    assert call(r, name, "whoami")["uid"] == os.getuid()   # a plain process: no uid of its own


MEMORY_SCAN = r'''
def _count(needles):
    counts = [0] * len(needles)
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    with open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in addr.split("-"))
            if "r" not in perms or hi - lo > (256 << 20):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            for i, needle in enumerate(needles):
                counts[i] += data.count(needle)
    return counts

def handler(event, context):
    # both needles are built the same way, so each appears equally often as the needle itself
    return _count([bytes.fromhex(event["secret"]), bytes.fromhex(event["control"])])
'''


def test_an_instance_holds_no_other_functions_environment_in_its_memory(appliance):
    """Instances are forked from a shared zygote: what the zygote handled for one function (its
    launch, with its environment variables) must not be readable in the memory of the next."""
    import secrets as _secrets
    secret = "faas-secret-" + _secrets.token_hex(16)
    control = "faas-secret-" + _secrets.token_hex(16)   # given to nobody
    holder = appliance.deploy({"index.py": "import os\ndef handler(e, c):\n    return os.environ['API_KEY']\n"},
                              environment={"API_KEY": secret})
    assert invoke(appliance, holder).json() == secret   # its own instance sees it
    for _ in range(3):  # cold starts after the holder's, each from a fresh spare of the zygote
        scanner = appliance.deploy({"index.py": MEMORY_SCAN})
        resp = invoke(appliance, scanner, {"secret": secret.encode().hex(), "control": control.encode().hex()})
        assert resp.status_code == 200, resp.text
        found, baseline = resp.json()
        assert found == baseline, f"the other function's secret is in this instance's memory ({found} > {baseline})"


def test_malloc_arenas_are_bounded_from_the_start_of_the_runtime_process(appliance):
    """The address-space rlimit counts reservations, not use, and each glibc thread arena reserves
    64 MB: a 128 MB function failed to start threads once a few arenas existed. glibc reads
    MALLOC_ARENA_MAX only when a program starts, so it must be in the environment the runtime
    process (the zygote instances are forked from) was started with, not just in os.environ."""
    src = ("def handler(event, context):\n"
           "    with open('/proc/self/environ', 'rb') as f:\n"
           "        return [v.decode() for v in f.read().split(b'\\0') if v.startswith(b'MALLOC_ARENA_MAX=')]\n")
    name = appliance.deploy({"index.py": src}, memory_mb=128)
    resp = invoke(appliance, name)
    assert resp.status_code == 200, resp.text
    assert resp.json() and int(resp.json()[0].split("=", 1)[1]) <= 2, resp.json()
