"""Sandboxed instances forked from a runtime zygote: the local scheduler's default launcher.

A cold start sends one message to the zygote (``appliance/instances/zygote.py``), which forks; the child enters
the instance's sandbox (``appliance/instances/sandbox.py``: namespaces, a read-only root assembled from host parts,
its code at /var/task, private /tmp, rlimits, its own memory and pids cgroup, an unprivileged uid) and
serves on a Unix socket in a directory bound into the sandbox, since an instance without network has no
loopback the edge could reach.

How fork and sandbox combine, measured on the 2-core build machine (python3.11 hello function, time from
the launcher's call to the instance answering ``/_/ready``, p50 of 30 runs, ``bench/coldstart.py``; the
machine was shared with other work (load 3-6), so absolute figures wander by several ms between runs;
the ratios hold):

* plain process (``ProcessLauncher``, no isolation):                 41-51 ms (min 40)
* ``bwrap`` per instance, then a fresh interpreter:                   46-54 ms (min 42)
* zygote fork, then unshare + mounts in the child (this module):      9.5 ms (min 6)

Through the edge router, first request of a freshly deployed function: 12 ms p50 sandboxed (this path)
against 48 ms with plain processes. An idle instance forked from the zygote has a USS of about 3.4 MB
(PSS 5.3 MB) against 10 MB for a plain interpreter, since it shares the zygote's pages.

Where the time went, and what was done about it: the fork, the namespaces (about 0.2 ms each, 0.5 ms for
the network one) and the second fork cost about 3 ms, so the zygote keeps one child per network profile
already detached into its namespaces (``sandbox.detach``) and hands the next launch to it; moving a
process into a cgroup v1 waits for an RCU grace period (5-15 ms, the largest single cost), so that spare
child joins the *next* instance's cgroups while it waits, and the limits are written when the instance
is known (the cgroups are created, and limited for the size launched last, while the previous instance
starts, so a launch of the same size writes nothing).

Second round, timed step by step in the child (monotonic clock and minor-fault counts at each step,
60 starts, p50, on a machine with load 1-3): of the 4.2 ms sandbox phase, assembling the root took
1.7 ms (detaching the old root 0.07-1.4 ms: it waits for an RCU grace period too; the binds 0.5 ms,
the /etc files 0.15 ms), and the child took about 420 copy-on-write faults of the zygote's pages
between receiving its launch and having loaded the handler, about 3 us each on this VM (1.2 ms).
So the spare also builds the shared part of the root and pivots into it before its launch
(``sandbox.prepare``); the instance's own directories, which it can no longer reach by path, are
handed over as detached mounts (``open_tree`` in the zygote, ``move_mount`` in the child, 0.06 ms);
and it rehearses the bootstrap's start (``bootstrap.rehearse``), which leaves about 165 faults on the
path. The bootstrap reports ready as soon as it listens, before starting its threads (the connection
waits in the backlog), and starts its two service threads without waiting for each to run (0.5-1.2 ms
of handshakes under load). Measured through the edge, A/B in one run (``bench``-style cold samples,
40 each, Server-Timing p50): sandbox 4.3-5.0 -> 1.9-2.3 ms, runtime_init 1.4-2.3 -> 0.7-1.4 ms,
user_init 1.0-1.2 -> 0.5-0.7 ms. What is left of the sandbox phase is mostly the hops between
processes: launcher -> zygote -> spare, about 1 ms with their wake-ups. ``make bench BENCH_ARGS=--quick``
(10 cold samples, load 1-2.6): cold p50 through the edge 9.9 -> 8.1 ms; the rehearsal's copied pages
raise an idle instance's USS there from 4.8 to 6.1 MB.

Why not bubblewrap itself: it can only wrap a new ``exec``, which throws away the preloaded interpreter
(the plain and bwrap rows above cost the same). A zygote living inside one bwrap sandbox per profile was the other
candidate: it would still need a mount namespace, a pid namespace and /tmp per child (so the
same unshare and mounts in the child), a way to hide every other function's code from that shared
view, and it could not join a per-instance cgroup without extra file descriptors passed in. Doing the
whole sandbox in the child is the same system calls with one process fewer in the way, and lets every
instance run as its own unprivileged uid.

Node.js instances use the same path and ``execve`` node inside the sandbox. Node's own start-up (V8,
its bootstrap, the HTTP server) was about 35 of a 47 ms Node cold start, so the launcher keeps one
*Node spare* per network profile: node started through this same path, with the full sandbox (its own
uid, cgroup, rlimits, private /tmp and socket directory), but with an empty /var/task, ``FAAS_POOL=1``
(runtimes/README.md section 6) and none of any function's variables, for the memory size of the last
Node launch (``--max-old-space-size`` is fixed when node starts, so a launch of another size does not
use it, and the spare kept from then on is of that size). A launch that fits has the zygote attach its
code read-only at /var/task inside the spare's mount namespace from outside (``Zygote.attach``:
``open_tree`` in the host's namespace, ``setns`` + ``move_mount`` + a read-only, nosuid, nodev remount
in a helper it forks; the instance itself has no capability in the namespace that owns those mounts),
sets its memory limit and specialises it over its own socket (``POST /_/specialize``, which carries the
function's variables: they reach that instance alone, never the zygote), then starts the next spare in
the background. Without the mount API, or when the spare is of another size or gone, the launch takes
the ordinary path; a spare that dies unused is replaced; the launcher stops its spares when it closes.
The spare answers one ``/_/health`` before it is offered, which compiles node's HTTP paths ahead.

Measured through the edge (``POST /v1/functions/<name>/invocations`` after scale to zero, keep_alive_s=1,
a hello ``index.js``, 20 cold samples, Server-Timing p50, load about 1), before -> after: sandbox
1.8 -> 2.4 ms (now taking the spare and attaching the code, about 1 ms of which is the zygote's helper),
runtime_init 34.8 -> 2.1 ms (the specialise round trip less the code's loading; 5.4 ms before the
warm-up request), user_init 1.0 -> 1.2 ms, cold total 48.8 -> 20.3 ms, as seen by the client 55.7 ->
27.7 ms. The cost is one idle node process per network profile in use, and the spare's start (35 ms of
CPU) right after each Node cold start.
If the zygote dies, instances it started keep running; the next cold start starts a new zygote.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core.errors import PlacementFailed
from appliance.instances import sandbox
from appliance.instances.cgroups import CgroupManager, InstanceCgroup
from appliance.instances.handles import ExitHandle
from appliance.instances.output import OutputPump
from appliance.instances.process_launcher import AS_HEADROOM_MB, PASS_ENV, LaunchRequest, runtime_env, wait_readable
from appliance.instances.templates import Templates

log = logging.getLogger("appliance.instances.sandbox")

ZYGOTE_PY = Path(__file__).resolve().parent / "zygote.py"
#: Processes and threads an instance may have (its pids cgroup, and RLIMIT_NPROC for its own uid).
PIDS_MAX = 256
OPEN_FILES = 1024
#: Size cap of an instance's private /tmp (its pages also count against the memory cgroup).
TMP_MB = 512
#: Size of the instance's socket directory (/run/faas inside), its only writable path besides /tmp.
SOCKET_DIR_KB = 16
UID_BASE, UID_COUNT = sandbox.UID_BASE, sandbox.UID_COUNT
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Exit status reported when the instance outlived its zygote and nobody could read its real one.
LOST_STATUS = 255
ZYGOTE_START_TIMEOUT_S = 20.0


WORK_PREFIX = "faas-sbx-"
#: Node.js spares that die unused are replaced, unless this many in a row died within
#: NODE_SPARE_MIN_LIFE_S of starting (something is wrong with them; the next Node launch tries again).
NODE_SPARE_QUICK_DEATHS = 3
NODE_SPARE_MIN_LIFE_S = 1.0


def _remove_stale_workdirs() -> None:
    """Work directories of appliances that died without closing (their pid is gone): unmount and remove."""
    for d in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*-*"):
        pid = d.name[len(WORK_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        _remove_workdir(d)


def _remove_workdir(d: Path) -> None:
    run = d / "run"
    for path in [*run.glob("*"), run]:
        try:
            sandbox.umount(str(path))
        except sandbox.SandboxError:
            pass
    shutil.rmtree(d, ignore_errors=True)


class _Uids:
    def __init__(self, base: int, count: int):
        self._next, self._base, self._count = 0, base, count
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            for _ in range(self._count):
                uid = self._base + self._next
                self._next = (self._next + 1) % self._count
                if uid not in self._used:
                    self._used.add(uid)
                    return uid
        raise PlacementFailed("no free sandbox uid: too many instances on this host")

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


def probe_python(python: str) -> tuple[str, str]:
    """(the real interpreter binary, its prefix) of ``python``, which may be a venv link or a shim."""
    out = subprocess.run([python, "-c", "import sys, os; print(os.path.realpath(sys.executable)); "
                                        "print(sys.base_prefix)"],
                         capture_output=True, text=True, timeout=30, env={"PATH": os.environ.get("PATH", "")})
    if out.returncode != 0:
        raise PlacementFailed(f"the Python runtime interpreter {python!r} does not run: {out.stderr.strip()}")
    exe, prefix = out.stdout.split("\n")[:2]
    return exe, prefix


def _env_fd(variables: dict[str, str]) -> int:
    """The function's own environment variables in a sealed memory file, for its instance alone.

    Every instance is forked from the same zygote, so whatever the zygote reads stays in the memory
    its later children inherit (freed heap is not cleared): a launch message carrying one function's
    variables could be read by the next function from its own memory (``/proc/self/mem``). The zygote
    passes this descriptor on without reading it; only the instance it is meant for does.
    """
    fd = os.memfd_create("faas-env", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, json.dumps(variables).encode())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK |
                    fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class _NodeSpare:
    """A started, unspecialised Node.js instance (``FAAS_POOL=1``, empty /var/task) kept for the next launch."""
    handle: "ZygoteHandle"
    memory_mb: int
    env: dict
    log_path: Path
    spare_id: str
    started: float = field(default_factory=time.monotonic)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _http(sock_path: Path, method: str, path: str, body: dict | None, deadline: float) -> tuple[int, bytes]:
    conn = _UnixHTTPConnection(str(sock_path), timeout=max(0.05, deadline - time.monotonic()))
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _specialize(sock_path: Path, body: dict, deadline: float) -> dict:
    """``POST /_/specialize`` to a pool instance over its own socket; its answer once the code has loaded."""
    status, text = _http(sock_path, "POST", "/_/specialize", body, deadline)
    if status != 200:
        raise PlacementFailed(f"the spare refused to specialise ({status}): {text[:200]!r}")
    return json.loads(text)


class ZygoteHandle(ExitHandle):
    """An instance forked by the zygote. Its exit status arrives on the launch connection."""

    def __init__(self, pid: int, conn: socket.socket, on_exit):
        super().__init__(pid, on_exit)
        self._conn = conn
        threading.Thread(target=self._wait_exit, daemon=True, name=f"zygote-wait-{pid}").start()

    def _wait_exit(self) -> None:
        rc = None
        try:
            while rc is None:
                data = self._conn.recv(4096)
                if not data:
                    break
                rc = json.loads(data).get("exit")
        except (OSError, ValueError):
            pass
        finally:
            self._conn.close()
        if rc is None:  # the zygote died: wait for the process itself, its status is lost
            if self._pidfd is not None:
                wait_readable(self._pidfd, None)
            rc = LOST_STATUS
            log.warning("event=instance_status_lost pid=%s reason=zygote-gone", self.pid)
        self._finish(rc)


class Zygote:
    """One zygote process, (re)started on demand."""

    def __init__(self, python: str, bootstrap: Path | None, sock_path: Path, log_path: Path):
        self.python = python
        self.bootstrap = bootstrap
        self.sock_path = sock_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.closed = False
        self._lock = threading.Lock()

    def ensure(self) -> None:
        with self._lock:
            if self.closed:
                raise PlacementFailed("the runtime zygote is closed")
            if self.proc is not None and self.proc.poll() is None:
                return
            if self.proc is not None:
                log.warning("event=zygote_restart runtime_python=%s previous_status=%s", self.python,
                            self.proc.returncode)
            self._start()

    @staticmethod
    def _env() -> dict[str, str]:
        # glibc reads MALLOC_ARENA_MAX once, at exec: set for an instance's environment later it is
        # too late, and each thread arena reserves 64 MB of the address space its rlimit allows
        # (three of them filled two thirds of a 128 MB function's budget, and threads failed to start).
        env = {"PATH": SANDBOX_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"), "MALLOC_ARENA_MAX": "2"}
        if os.environ.get("FAAS_SANDBOX_MOUNT_API"):  # see sandbox.MOUNT_API
            env["FAAS_SANDBOX_MOUNT_API"] = os.environ["FAAS_SANDBOX_MOUNT_API"]
        if os.environ.get("FAAS_SANDBOX_SECCOMP"):  # see sandbox.SECCOMP_UNAVAILABLE
            env["FAAS_SANDBOX_SECCOMP"] = os.environ["FAAS_SANDBOX_SECCOMP"]
        return env

    def _start(self) -> None:
        with open(self.log_path, "ab") as err:
            proc = subprocess.Popen(
                [self.python, "-u", "-S", "-B", "-X", "frozen_modules=on", str(ZYGOTE_PY), str(self.sock_path),
                 str(self.bootstrap or "")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd="/", start_new_session=True,
                env=self._env())
        line = proc.stdout.readline() if wait_readable(proc.stdout, ZYGOTE_START_TIMEOUT_S) else b""
        if line != b"ready\n":
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            raise PlacementFailed(f"the runtime zygote did not start (status {proc.returncode}); "
                                  f"see {self.log_path}")
        if self.proc is not None:  # the previous one's pipes
            for pipe in (self.proc.stdin, self.proc.stdout):
                if not pipe.closed:
                    pipe.close()
        self.proc = proc
        self.starts += 1
        log.info("event=zygote_started pid=%s python=%s", proc.pid, self.python)

    def request(self, msg: dict, fds: list[int]) -> tuple[socket.socket, dict]:
        """Send one launch; returns the open connection and the reply. Restarts a dead zygote once."""
        payload = json.dumps(msg).encode()
        for attempt in (1, 2):
            self.ensure()
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                conn.settimeout(30.0)
                conn.connect(str(self.sock_path))
                socket.send_fds(conn, [payload], fds)
                reply = conn.recv(65536)
            except OSError:
                reply = b""
            if reply:
                conn.settimeout(None)
                return conn, json.loads(reply)
            conn.close()
            with self._lock:  # no answer: the zygote is gone or going; make the next ensure() restart it
                if self.proc is not None and self.proc.poll() is None and attempt == 1:
                    self.proc.kill()
                if self.proc is not None:
                    self.proc.wait()
        raise PlacementFailed("the runtime zygote did not answer a launch request twice; see " + str(self.log_path))

    def attach(self, pid: int, mounts: list) -> None:
        """Attach host directories inside the mount namespace of its running instance ``pid`` (see
        ``Zygote.attach`` in appliance/instances/zygote.py); raises PlacementFailed with the reason."""
        self.ensure()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.settimeout(15.0)
            try:
                conn.connect(str(self.sock_path))
                conn.send(json.dumps({"attach": pid, "mounts": mounts}).encode())
                reply = json.loads(conn.recv(65536) or b"{}")
            except (OSError, ValueError) as exc:
                raise PlacementFailed(f"the runtime zygote did not attach: {exc}") from None
        if not reply.get("ok"):
            raise PlacementFailed(f"could not attach to instance {pid}: {reply.get('error') or 'no answer'}")

    def close(self) -> None:
        """Closing its stdin makes the zygote kill the instances it started and exit."""
        with self._lock:
            self.closed = True
            proc = self.proc
            if proc is None:
                return
            proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


class ZygoteLauncher:
    """Launcher of sandboxed instances (see the module docstring)."""

    def __init__(self, runtimes_dir: Path, log_dir: Path, *, cgroups: CgroupManager | None = None,
                 python: str | None = None, uids: range | None = None, log_bytes: int = 10 << 20,
                 snapshot_budget_mb: int = 1024, snapshot_keep_s: float = 600.0):
        self.runtimes_dir = Path(runtimes_dir).resolve()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        #: Instances' stdout and stderr, into log files of bounded size (see output.py).
        self.output = OutputPump(self.log_dir, max_bytes=log_bytes)
        self.cgroups = cgroups
        #: What :meth:`check` found of the seccomp filter in a confined instance ("active: ..." or "inactive: why").
        self.seccomp: str | None = None
        self.python, prefix = probe_python(python or os.environ.get("APPLIANCE_PYTHON") or sys.executable)
        #: Host directories bound read-only at their own path besides /usr: the interpreter's prefix.
        self.extra_ro = [prefix] if not prefix.startswith("/usr/") else []
        # Short paths: a Unix socket path must fit in 108 bytes, and the data directory may be deep.
        _remove_stale_workdirs()
        self.work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        os.chmod(self.work, 0o711)
        self.root_dir = self.work / "root"
        self.root_dir.mkdir()
        self.run_dir = self.work / "run"
        self.run_dir.mkdir()
        # A shared mount: the per-instance socket tmpfs mounted here later also appears in the
        # namespaces of children the zygote detached before it (its spares).
        sandbox.mount(str(self.run_dir), str(self.run_dir), None, sandbox.MS_BIND)
        sandbox.mount(None, str(self.run_dir), None, sandbox.MS_SHARED)
        #: The host uids instances run as: this appliance's own block (see instances/netfilter.py).
        self.uids = uids if uids is not None else range(UID_BASE, UID_BASE + UID_COUNT)
        self._uids = _Uids(self.uids.start, len(self.uids))
        self._cg_lock = threading.Lock()
        self._spare_cg: dict[bool, InstanceCgroup] = {}   # network profile -> cgroups its spare child is in
        self._unused_cg: list[InstanceCgroup] = []
        self._cg_stock: list[InstanceCgroup] = []          # created (and limited) ahead for a next spare
        self._closing = False
        # Node.js spares (see _launch_node_spare): network profile -> the spare, the memory size wanted
        # for it (that of the last Node launch), and the thread starting one.
        self._node_lock = threading.Lock()
        self._node_spares: dict[bool, _NodeSpare] = {}
        self._node_wanted: dict[bool, int] = {}
        self._node_starting: dict[bool, threading.Thread] = {}
        self._node_quick_deaths: dict[bool, int] = {}
        self.node_spares_used = 0
        self._empty_code = self.work / "empty-code"
        self._empty_code.mkdir(mode=0o755)
        self.zygote = Zygote(self.python, self.runtimes_dir / "python" / "bootstrap.py", self.work / "zygote.sock",
                             self.log_dir / "zygote-python.log")
        self.pids_max = PIDS_MAX
        #: Snapshot templates of Python function versions (see appliance/instances/templates.py).
        self.templates = Templates(self, budget_bytes=snapshot_budget_mb << 20, keep_s=snapshot_keep_s,
                                   enabled=self.cgroups is not None)

    # -- checks ------------------------------------------------------------------------------------

    def check(self) -> None:
        """Start the zygote and confine a trivial process with a full profile; raises with the reason.

        The probe also reads its own seccomp mode, and :attr:`seccomp` says what it found."""
        empty = self.work / "probe-code"
        empty.mkdir(exist_ok=True)
        req_env = {"PATH": SANDBOX_PATH}
        script = ("test -d /var/task && test ! -e /etc/shadow || exit 1; "
                  "while read -r k v; do [ \"$k\" = Seccomp: ] && s=$v; done < /proc/self/status; "
                  "[ \"$s\" = 2 ] || exit 3")
        handle, lines = self._start("probe", empty, None, network=False, memory_mb=128, python=False,
                                    env=req_env, argv=["/bin/sh", "-c", script],
                                    deadline=time.monotonic() + ZYGOTE_START_TIMEOUT_S, want_listen=False)
        rc = handle.wait(10)
        filtered = rc == 0
        if rc == 3:                 # confined, but without the filter: say so rather than lose the sandbox
            rc = 0
        if rc != 0:
            raise PlacementFailed(f"a probe instance exited with status {rc}: {lines.get('error') or 'see the log'}")
        if filtered:
            self.seccomp = (f"active: {len(sandbox.SECCOMP_DENY)} system calls refused, namespace flags of clone "
                            f"checked ({platform.machine()}; appliance/instances/sandbox.py SECCOMP_DENY)")
        else:
            self.seccomp = f"inactive: {sandbox.SECCOMP_UNAVAILABLE or 'a confined probe instance had none'}"

    # -- Launcher ----------------------------------------------------------------------------------

    def prepare(self, req: LaunchRequest) -> None:
        """At deploy: start the version's snapshot template now, so even its first cold start after the
        deploy can fork (``snapshot: auto``, Python); returns at once."""
        spec = req.spec
        if not spec.runtime.startswith("python") or getattr(spec, "snapshot", "off") != "auto":
            return
        env = runtime_env(req, socket_path=f"{sandbox.SOCKET_DIR}/instance.sock")
        env.update(FAAS_CODE_DIR=sandbox.TASK_DIR, PATH=SANDBOX_PATH, HOME="/tmp", TMPDIR="/tmp")
        if req.layers_dir is not None:
            env["FAAS_LAYERS_DIR"] = sandbox.LAYERS_DIR
        own = {k: v for k, v in spec.environment.items() if env.get(k) == v}
        self.templates.ensure(req, {k: v for k, v in env.items() if k not in own}, own)

    def launch(self, req: LaunchRequest, deadline: float):
        spec = req.spec
        t0 = time.monotonic()
        lang = ("python" if spec.runtime.startswith("python") else "node" if spec.runtime.startswith("nodejs")
                else "provided" if spec.runtime.startswith("provided") else None)
        if lang is None:
            raise PlacementFailed(f"no bootstrap for runtime {spec.runtime!r}")
        env = runtime_env(req, socket_path=f"{sandbox.SOCKET_DIR}/instance.sock")
        env.update(FAAS_CODE_DIR=sandbox.TASK_DIR, PATH=SANDBOX_PATH, HOME="/tmp", TMPDIR="/tmp")
        if req.layers_dir is not None:
            env["FAAS_LAYERS_DIR"] = sandbox.LAYERS_DIR
        argv = None
        if lang == "node":
            argv = self._node_argv(spec.memory_mb)
            got = self._launch_node_spare(req, env, spec.network != "none", t0, deadline)
            if got is not None:
                self._want_node_spare(spec.network != "none", spec.memory_mb)
                return got
        # The function's own variables (often secrets) do not travel in the launch message: see _env_fd.
        own = {k: v for k, v in spec.environment.items() if env.get(k) == v}
        env = {k: v for k, v in env.items() if k not in own}
        if lang == "python" and getattr(spec, "snapshot", "off") == "auto":
            got = self.templates.launch(req, env, own, deadline)  # None: no template ready (one is made)
            if got is not None:
                return got
        # provided: runtimes/provided/bootstrap.py served by the zygote's preloaded interpreter, which
        # runs the package's own bootstrap (no address-space limit: Go and the JVM reserve large ranges).
        handle, lines = self._start(req.instance_id, req.code_dir, lang, network=spec.network != "none",
                                    memory_mb=spec.memory_mb, python=lang == "python", env=env, argv=argv,
                                    deadline=deadline, want_listen=True, own_env=own, layers_dir=req.layers_dir,
                                    serve="provided" if lang == "provided" else None)
        if lang == "node":  # a spare for the next one, started while this one loads its code
            self._want_node_spare(spec.network != "none", spec.memory_mb)
        at = float(lines.get("sandboxAt", t0))
        now = time.monotonic()
        phases = {"sandbox": round((at - t0) * 1000, 3), "runtime_init": round((now - at) * 1000, 3)}
        return handle, f"unix:{handle.socket_dir}/instance.sock", phases

    def oom_killed(self, handle) -> bool | None:
        return handle.oom if self.cgroups is not None else None

    def close(self) -> None:
        self._closing = True
        self.templates.close()
        with self._node_lock:
            spares = list(self._node_spares.values())
            self._node_spares.clear()
            starters = list(self._node_starting.values())
        for sp in spares:
            sp.handle.signal(signal.SIGKILL)
        for sp in spares:   # their status comes through the zygote: before it goes
            sp.handle.wait(2)
        self.zygote.close()   # kills whatever it started, spares being started included
        for t in starters:
            t.join(5)
        with self._cg_lock:
            for cg in [*self._spare_cg.values(), *self._unused_cg, *self._cg_stock]:
                cg.remove()
            self._spare_cg.clear()
            self._unused_cg.clear()
            self._cg_stock.clear()
        if self.cgroups is not None:
            self.cgroups.close()
        self.output.close()
        _remove_workdir(self.work)

    # -- Node.js spares ----------------------------------------------------------------------------

    @staticmethod
    def _node_argv(memory_mb: int) -> list[str]:
        return [shutil.which("node", path=SANDBOX_PATH) or "/usr/bin/node", f"--max-old-space-size={memory_mb}",
                f"{sandbox.RUNTIME_DIR}/bootstrap.js"]

    def _launch_node_spare(self, req: LaunchRequest, env: dict, network: bool, t0: float, deadline: float):
        """The Node launch through a started spare, or None when there is none that fits (then the
        caller takes the ordinary path): attach the code, set the memory limit, specialise (see the
        module docstring: runtime_init 34.8 -> 2.1 ms p50). The instance's log is the spare's, renamed."""
        spec = req.spec
        with self._node_lock:
            sp = self._node_spares.pop(network, None)
        if sp is None:
            return None
        if sp.memory_mb != spec.memory_mb or sp.handle.returncode is not None:
            # its heap limit (--max-old-space-size) was fixed when node started
            log.info("event=node_spare_discarded pid=%s reason=%s", sp.handle.pid,
                     "gone" if sp.handle.returncode is not None else f"memory-{sp.memory_mb}-not-{spec.memory_mb}")
            self._drop_node_spare(sp)
            return None
        try:
            self.zygote.attach(sp.handle.pid, [[str(req.code_dir), sandbox.TASK_DIR, True]]
                               + ([[str(req.layers_dir), sandbox.LAYERS_DIR, True]] if req.layers_dir else []))
            cg = getattr(sp.handle, "cgroup", None)
            if cg is not None:
                cg.set_limits(spec.memory_mb << 20, PIDS_MAX)
            t_attached = time.monotonic()
            # Everything of today's environment the spare was not started with: the function's own
            # variables (secrets: over the instance's own socket only, never through the zygote) and
            # the contract's per-function ones.
            body = {"function": spec.function, "version": str(spec.version), "handler": spec.handler,
                    "codeDir": sandbox.TASK_DIR, "memoryMb": spec.memory_mb, "timeoutS": spec.timeout_s,
                    "maxInflight": spec.concurrency, "instanceId": req.instance_id,
                    "env": {k: v for k, v in env.items() if sp.env.get(k) != v}}
            out = _specialize(sp.handle.socket_dir / "instance.sock", body, deadline)
        except (PlacementFailed, OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("event=node_spare_failed pid=%s instance=%s error=%r", sp.handle.pid, req.instance_id,
                        str(exc))
            self._drop_node_spare(sp)
            return None
        now = time.monotonic()
        with self._node_lock:
            self._node_quick_deaths[network] = 0
        init_ms = out.get("initDurationMs")
        init_ms = float(init_ms) if isinstance(init_ms, (int, float)) else 0.0
        self.output.rename(sp.spare_id, req.instance_id)   # its log is the instance's from now on
        sp.handle.from_spare = True
        self.node_spares_used += 1
        log.info("event=node_spare_used instance=%s pid=%s memory_mb=%s", req.instance_id, sp.handle.pid,
                 spec.memory_mb)
        # sandbox: taking the spare, attaching the code, the limit; runtime_init: the specialise
        # round trip without the code's own loading, which the scheduler reports as user_init.
        phases = {"sandbox": round((t_attached - t0) * 1000, 3),
                  "runtime_init": round(max(0.0, (now - t_attached) * 1000 - init_ms), 3)}
        return sp.handle, f"unix:{sp.handle.socket_dir}/instance.sock", phases

    def _drop_node_spare(self, sp: _NodeSpare) -> None:
        sp.handle.signal(signal.SIGKILL)
        self.output.remove(sp.spare_id)

    def _want_node_spare(self, network: bool, memory_mb: int) -> None:
        """Keep a spare of this size for this network profile, started in the background."""
        if self._closing or not sandbox.MOUNT_API:
            return
        with self._node_lock:
            self._node_wanted[network] = memory_mb
            cur = self._node_spares.get(network)
            if cur is not None and cur.memory_mb == memory_mb and cur.handle.returncode is None:
                return
            if network in self._node_starting:
                return   # the starter looks at what is wanted once it is done
            t = threading.Thread(target=self._node_spare_loop, args=(network,), daemon=True,
                                 name=f"node-spare-{'net' if network else 'nonet'}")
            self._node_starting[network] = t
        t.start()

    def _node_spare_loop(self, network: bool) -> None:
        while True:
            stale = None
            with self._node_lock:
                want = self._node_wanted.get(network)
                cur = self._node_spares.get(network)
                if self._closing or want is None or (cur is not None and cur.memory_mb == want and
                                                     cur.handle.returncode is None):
                    self._node_starting.pop(network, None)
                    return
                if cur is not None:
                    stale = self._node_spares.pop(network)
            if stale is not None:
                log.info("event=node_spare_discarded pid=%s reason=memory-%s-not-%s", stale.handle.pid,
                         stale.memory_mb, want)
                self._drop_node_spare(stale)
            try:
                sp = self._start_node_spare(network, want)
            except Exception as exc:  # noqa: BLE001 - a launch without a spare takes the ordinary path
                with self._node_lock:
                    self._node_starting.pop(network, None)
                if not self._closing:
                    log.warning("event=node_spare_start_failed network=%s memory_mb=%s error=%r", network, want,
                                str(exc))
                return
            with self._node_lock:
                closing = self._closing
                if not closing:
                    self._node_spares[network] = sp
            if closing:
                sp.handle.signal(signal.SIGKILL)
                continue   # and leaves at the top
            log.info("event=node_spare_ready spare=%s pid=%s network=%s memory_mb=%s", sp.spare_id, sp.handle.pid,
                     network, want)
            threading.Thread(target=self._watch_node_spare, args=(network, sp), daemon=True,
                             name=f"node-spare-watch-{sp.handle.pid}").start()

    def _start_node_spare(self, network: bool, memory_mb: int) -> _NodeSpare:
        """Start node in a full sandbox (its own uid, cgroup, rlimits, /tmp and socket directory), with an
        empty /var/task, ``FAAS_POOL=1`` and no function's variables."""
        spare_id = f"node-spare-{uuid.uuid4().hex[:8]}"
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(FAAS_POOL="1", FAAS_SOCKET=f"{sandbox.SOCKET_DIR}/instance.sock", FAAS_CODE_DIR=sandbox.TASK_DIR,
                   FAAS_MEMORY_MB=str(memory_mb), FAAS_INSTANCE_ID=spare_id, MALLOC_ARENA_MAX="2",
                   PATH=SANDBOX_PATH, HOME="/tmp", TMPDIR="/tmp")
        handle, _ = self._start(spare_id, self._empty_code, "node", network=network, memory_mb=memory_mb,
                                python=False, env=env, argv=self._node_argv(memory_mb),
                                deadline=time.monotonic() + ZYGOTE_START_TIMEOUT_S, want_listen=True, own_env={})
        try:  # its first request compiles node's HTTP paths: let that be this one, not the launch's
            _http(handle.socket_dir / "instance.sock", "GET", "/_/health", None, time.monotonic() + 5)
        except (OSError, http.client.HTTPException) as exc:
            handle.signal(signal.SIGKILL)
            raise PlacementFailed(f"the Node.js spare does not answer: {exc}") from None
        return _NodeSpare(handle=handle, memory_mb=memory_mb, env=env, log_path=self.log_dir / f"{spare_id}.log",
                          spare_id=spare_id)

    def _watch_node_spare(self, network: bool, sp: _NodeSpare) -> None:
        """A spare that dies unused is replaced (unless it died right after starting)."""
        rc = sp.handle.wait(None)
        with self._node_lock:
            if self._node_spares.get(network) is not sp:
                return   # used, replaced or closed
            del self._node_spares[network]
        log.warning("event=node_spare_exit pid=%s returncode=%s", sp.handle.pid, rc)
        self.output.remove(sp.spare_id)
        with self._node_lock:
            quick = time.monotonic() - sp.started < NODE_SPARE_MIN_LIFE_S
            self._node_quick_deaths[network] = self._node_quick_deaths.get(network, 0) + 1 if quick else 0
            again = self._node_quick_deaths[network] < NODE_SPARE_QUICK_DEATHS
        if again:
            self._want_node_spare(network, sp.memory_mb)

    # -- internals ---------------------------------------------------------------------------------

    def _start(self, instance_id: str, code_dir: Path, lang: str | None, *, network: bool, memory_mb: int,
               python: bool, env: dict, argv: list[str] | None, deadline: float, want_listen: bool,
               own_env: dict | None = None, layers_dir: Path | None = None, serve: str | None = None,
               template_fd: int | None = None):
        key = uuid.uuid4().hex[:12]
        uid = self._uids.acquire()
        sock_dir = self.run_dir / key
        cg: InstanceCgroup | None = None
        try:
            sock_dir.mkdir(mode=0o700)
            # The one writable host directory an instance has: a tiny tmpfs of its own, so it cannot
            # fill the host's disk through it.
            sandbox.mount("tmpfs", str(sock_dir), "tmpfs", sandbox.MS_NOSUID | sandbox.MS_NODEV | sandbox.MS_NOEXEC,
                          f"size={SOCKET_DIR_KB}k,nr_inodes=8,mode=0700,uid={uid},gid={uid}")
            if self.cgroups is not None:
                # The cgroups the zygote's spare child already sits in, if any (see appliance/instances/cgroups.py).
                with self._cg_lock:
                    cg = self._spare_cg.pop(network, None)
                if cg is None:
                    cg = self.cgroups.create(key)
                cg.set_limits(memory_mb << 20, PIDS_MAX)
            # A snapshot template's instances share its uid, and RLIMIT_NPROC counts per uid: their own
            # pids cgroups bound each of them (see templates.py).
            limits = {"CORE": 0, "NOFILE": OPEN_FILES, "NPROC": PIDS_MAX * (64 if template_fd is not None else 1)}
            if python:  # Node bounds its heap with --max-old-space-size; V8 reserves address space freely
                limits["AS"] = (memory_mb + AS_HEADROOM_MB) << 20
            prof = sandbox.profile(root=str(self.root_dir), code_dir=str(code_dir),
                                   runtime_dir=str(self.runtimes_dir / lang) if lang else None,
                                   socket_dir=str(sock_dir), uid=uid, network=network, extra_ro=self.extra_ro,
                                   rlimits=limits, cgroup_procs=cg.procs_files if cg else [], tmp_mb=TMP_MB,
                                   layers_dir=str(layers_dir) if layers_dir else None)
        except BaseException:
            self._release(uid, sock_dir, cg)
            raise
        next_cg = self._next_cgroup(network)
        r, w = os.pipe()
        log_path = self.log_dir / f"{instance_id}.log"
        env_fd = out_fd = -1
        try:
            env_fd = _env_fd(own_env or {})
            out_fd = self.output.open(instance_id)
            msg = {"profile": prof, "env": env, "exec": argv, "serve": serve,
                   "next_cgroup": next_cg.procs_files if next_cg else []}
            fds = [w, out_fd, env_fd]
            if template_fd is not None:
                msg["template"] = True
                fds.append(template_fd)
            conn, reply = self.zygote.request(msg, fds)
        except BaseException:
            os.close(r)
            self._release(uid, sock_dir, cg)
            raise
        finally:
            os.close(w)
            for fd in (env_fd, out_fd):
                if fd >= 0:
                    os.close(fd)
        if "pid" not in reply:
            os.close(r)
            conn.close()
            self._release(uid, sock_dir, cg)
            raise PlacementFailed(f"could not create the sandbox of {instance_id}: {reply.get('error')}")

        # The instance is starting in its sandbox now: meanwhile, stock the cgroups of a later spare.
        self._restock_cgroups(memory_mb << 20)

        def on_exit(h: ZygoteHandle) -> None:
            h.oom = cg.oom_killed() if cg is not None else False
            self._release(uid, sock_dir, cg)

        handle = ZygoteHandle(reply["pid"], conn, on_exit)
        handle.uid = uid
        handle.socket_dir = sock_dir
        handle.cgroup = cg
        handle.from_spare = False
        try:
            lines = self._read_ready(r, deadline, handle, want_listen, log_path)
        except BaseException:
            handle.signal(signal.SIGKILL)
            raise
        return handle, lines

    def _next_cgroup(self, network: bool) -> InstanceCgroup | None:
        """Fresh cgroups for the spare child the zygote makes after this launch; it joins them while it
        waits, and the next launch of this network profile gets them with its limits set."""
        if self.cgroups is None:
            return None
        with self._cg_lock:
            cg = self._cg_stock.pop() if self._cg_stock else None
        if cg is None:
            try:
                cg = self.cgroups.create("spare-" + uuid.uuid4().hex[:12])
            except OSError as exc:
                log.warning("event=cgroup_create_failed error=%r", str(exc))
                return None
        with self._cg_lock:
            old = self._spare_cg.pop(network, None)
            self._spare_cg[network] = cg
            if old is not None:  # two launches raced: a spare may still join it, so it goes at close
                self._unused_cg.append(old)
        return cg

    def _restock_cgroups(self, memory_bytes: int) -> None:
        """Create the cgroups :meth:`_next_cgroup` hands out next, limited for ``memory_bytes`` (so a launch
        of the same size writes nothing), while an instance is starting rather than before it: both
        cost 0.1-0.2 ms of the cold start otherwise."""
        if self.cgroups is None or self._closing:
            return
        with self._cg_lock:
            if self._cg_stock:
                return
        try:
            cg = self.cgroups.create("spare-" + uuid.uuid4().hex[:12], memory_bytes, PIDS_MAX)
        except OSError as exc:
            log.warning("event=cgroup_create_failed error=%r", str(exc))
            return
        with self._cg_lock:
            self._cg_stock.append(cg)

    def _release_forked(self, sock_dir: Path, cg: InstanceCgroup | None) -> None:
        """What an instance forked from a snapshot template held: its cgroup and socket directory."""
        if cg is not None and not cg.remove():
            log.warning("event=cgroup_busy dirs=%s", cg.dirs)
        shutil.rmtree(sock_dir, ignore_errors=True)

    def _release(self, uid: int, sock_dir: Path, cg: InstanceCgroup | None) -> None:
        if cg is not None and not cg.remove():
            log.warning("event=cgroup_busy dirs=%s", cg.dirs)
        try:
            sandbox.umount(str(sock_dir))
        except sandbox.SandboxError:
            pass  # not mounted: the start failed before
        shutil.rmtree(sock_dir, ignore_errors=True)
        self._uids.release(uid)

    @staticmethod
    def _read_ready(fd: int, deadline: float, handle: ZygoteHandle, want_listen: bool, log_path: Path) -> dict:
        """Lines on the ready pipe: ``{"sandboxAt"}`` from the child, then the bootstrap's address."""
        seen: dict = {}
        buf = b""
        try:
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        seen.update(json.loads(line))
                    except ValueError:
                        raise PlacementFailed(f"the runtime wrote an unreadable ready line: {line[:200]!r}") from None
                    if "error" in seen:
                        raise PlacementFailed(f"the instance could not start: {seen['error']}")
                    if want_listen and ("socket" in seen or "port" in seen):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PlacementFailed("the runtime did not start listening before the start deadline")
                if not wait_readable(fd, min(left, 0.5)):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    if not want_listen:
                        return seen
                    raise PlacementFailed(f"the runtime exited with status {handle.wait(1.0)} while starting; "
                                          f"see {log_path}")
                buf += chunk
        finally:
            os.close(fd)
