"""Snapshot templates: one initialised process per function version, forked for each cold start.

A Python function's cold start is mostly its own imports (Flask, FastAPI, pydantic, Powertools: 0.3 to
1.2 s measured), not the platform's phases. So a deploy of a version with the ``snapshot`` setting
``auto`` (or its first cold start, when there is none) starts a *template*: an instance sandboxed like
any other (its own root, pid, ipc,
uts and mount namespaces, its own uid, cgroup and rlimits, a seccomp filter) that imports the handler,
runs the module-level code and the ``snapshot_restore_py`` before-snapshot hooks, checks that it is fit
to be forked (:func:`bootstrap.snapshot_refusal`: no threads, no other processes, no descriptors opened
by the initialisation) and then waits on its control socket. The template keeps one child forked
ahead (a *spare*, :meth:`Templates._refill`), and each cold start of that version hands it its socket
and log (:meth:`Templates.launch`; without a spare the template forks one there and then). The child
is born in a pid namespace of its own (``sandbox.fork_into_pid_namespace``), then takes new
mount, ipc and uts namespaces (and a network namespace without ``network``), a fresh /tmp and /proc,
drops every capability, stacks the full instance filter on the template's, runs the after-restore hooks
and serves. Its memory is the template's pages, shared copy-on-write; the template's own pages stay
charged to the template's cgroup (counted once, reported as ``memory_bytes``), and every page an
instance writes is charged to the instance's.

Isolation, and the trade-off made for it. A forked instance needs namespaces of its own, and making
them takes a capability. The template keeps the capabilities its own user namespace gave it (they
reach only namespaces that user namespace owns: none of the host's, not the template's own mount,
pid or network namespaces, which root made before) and a seccomp filter that additionally allows
``unshare`` (never of a user or cgroup namespace), ``mount`` and ``umount2``, and refuses netfilter
netlink sockets. So during initialisation, and only then, a function's code could make namespaces
and mounts of its own (what an unprivileged user may do on most distributions); it never gets a host
capability, another uid, or a path it could not reach. Every instance forked from the template runs
with exactly an ordinary instance's confinement. The other options, measured or weighed: forking
instances without new namespaces (they would share /tmp, /run and the process view: refused); running
the initialisation with the full filter and a seccomp user-notification supervisor in the zygote that
admits the namespace calls only for a fork it ordered (no wider privilege at all; about 3 notification
round trips per cold start; the design for a later version); a template per instance (no sharing).
What instances forked from one template share that ordinary instances do not: their host uid (the
template's, inside this appliance's uid block, so the network policy applies unchanged), and with it
RLIMIT_NPROC, which counts per uid (the per-instance bound is the pids cgroup).

Cgroups: a process joins a cgroup v1 with an RCU grace period (5-15 ms), so the template waits in the
cgroup of its *next* instance (created and limited ahead): the child is born in it, and the template
moves on to a fresh one in the background. The template's OOM score is -1000, so an instance's
out-of-memory kill never picks it; the child restores its own to 0.

Life: the template lives longer than instances (``APPLIANCE_SNAPSHOT_KEEP_S``, 600 s idle by default),
and templates together stay under ``APPLIANCE_SNAPSHOT_BUDGET_MB`` (least recently used dropped first,
:func:`to_drop`). A template is pid 1 of the pid namespace its instances live in, so it is dropped
only once its last instance has ended. A refused snapshot (and why) is remembered per version and
shown by ``faas describe``; that version then cold-starts the ordinary way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core.errors import PlacementFailed
from appliance.instances import sandbox
from appliance.instances.handles import ExitHandle

log = logging.getLogger("appliance.instances.templates")

#: How long a template may take to import and initialise the function.
BUILD_TIMEOUT_S = 120.0
#: A fork request's answer (the template forks and replies at once).
FORK_REPLY_TIMEOUT_S = 5.0
#: How often the keeper looks at idle time and the memory budget.
KEEP_INTERVAL_S = 2.0
#: Refusals and failures are remembered this long per version, then a template is tried again.
REFUSAL_TTL_S = 600.0


def template_key(spec) -> str:
    """What a template's initialisation depends on: the code, its settings, its variables."""
    doc = {"f": spec.function, "v": spec.version, "d": spec.digest, "r": spec.runtime, "h": spec.handler,
           "m": spec.memory_mb, "t": spec.timeout_s, "c": spec.concurrency, "e": sorted(spec.environment.items()),
           "n": spec.network, "l": list(spec.layers), "p": getattr(spec, "published", 0)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Kept:
    """A template as :func:`to_drop` sees it."""
    key: str
    memory_bytes: int
    last_used: float
    live: int


def to_drop(kept: list[Kept], *, budget_bytes: int, keep_s: float, now: float) -> list[str]:
    """Templates to drop: those idle longer than ``keep_s``, then the least recently used until the
    rest fit ``budget_bytes``. A template with live instances is never chosen (they live in its pid
    namespace); it counts against the budget all the same."""
    out = [k.key for k in kept if k.live == 0 and now - k.last_used > keep_s]
    left = [k for k in kept if k.key not in out]
    total = sum(k.memory_bytes for k in left)
    for k in sorted(left, key=lambda k: k.last_used):
        if total <= budget_bytes:
            break
        if k.live == 0:
            out.append(k.key)
            total -= k.memory_bytes
    return out


@dataclass
class _Spare:
    """A child the template forked and confined ahead of a launch (pid in the template's namespace)."""
    pid: int
    cgroup: object
    host_pid: int
    moving: threading.Thread | None


@dataclass
class _Template:
    key: str
    function: str
    version: int
    published: int = 0               # the published version it runs (0: $LATEST)
    digest: str = ""
    #: Its code is no function's any more: dropped once its last instance has ended.
    retired: bool = False
    state: str = "building"          # building, ready, refused, failed, dropping
    reason: str | None = None
    handle: object = None            # the template process (a ZygoteHandle)
    ctl: socket.socket | None = None
    uid: int = 0
    env: dict = field(default_factory=dict)
    cgroup: object = None            # where its own pages are charged
    next_cgroup: object = None       # where it waits: its next instance's
    spare: _Spare | None = None
    moving: threading.Thread | None = None
    created: float = 0.0
    last_used: float = 0.0
    forks: int = 0
    init_ms: float | None = None
    children: dict = field(default_factory=dict)   # pid in its namespace -> _ForkedHandle
    early_exits: dict = field(default_factory=dict)
    replies: list = field(default_factory=list)
    reply_ready: threading.Condition = field(default_factory=threading.Condition)
    lock: threading.Lock = field(default_factory=threading.Lock)
    memory_bytes: int = 0

    def describe(self) -> dict:
        return {"version": self.version, "published": self.published or None, "state": self.state, "reason": self.reason, "forks": self.forks,
                "memory_bytes": self.memory_bytes, "init_ms": self.init_ms, "instances": len(self.children),
                "pid": getattr(self.handle, "pid", None) if self.state == "ready" else None}


class _ForkedHandle(ExitHandle):
    """An instance forked from a template. The template reaps it and reports its exit status."""

    from_spare = False

    def finish(self, rc: int) -> None:
        self._finish(rc)


class Templates:
    """The templates of one launcher (see the module docstring)."""

    def __init__(self, launcher, *, budget_bytes: int, keep_s: float, enabled: bool = True):
        self.launcher = launcher
        self.budget_bytes = budget_bytes
        self.keep_s = keep_s
        self.enabled = enabled and sandbox.SECCOMP_UNAVAILABLE is None
        self._lock = threading.Lock()
        self._by_key: dict[str, _Template] = {}
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- reading -----------------------------------------------------------------------------------

    def describe(self, function: str) -> list[dict]:
        with self._lock:
            found = [t for t in self._by_key.values() if t.function == function]
        for t in found:
            t.memory_bytes = self._memory(t)
        return [t.describe() for t in sorted(found, key=lambda t: -t.version)]

    def total_bytes(self) -> int:
        with self._lock:
            found = list(self._by_key.values())
        return sum(self._memory(t) for t in found if t.state == "ready")

    @staticmethod
    def _memory(t: _Template) -> int:
        cg = t.cgroup
        if cg is None or t.state not in ("ready", "dropping"):
            return 0
        name = "memory.usage_in_bytes" if cg.version == 1 else "memory.current"
        try:
            return int((cg.dirs[0] / name).read_text())
        except (OSError, ValueError, IndexError):
            return 0

    # -- launching ---------------------------------------------------------------------------------

    def ensure(self, req, env: dict, own: dict) -> _Template | None:
        """This version's template: the one there is, or one started now in the background."""
        if not self.enabled:
            return None
        key = template_key(req.spec)
        with self._lock:
            t = self._by_key.get(key)
            if t is not None and t.state in ("refused", "failed") and time.monotonic() - t.created > REFUSAL_TTL_S:
                del self._by_key[key]   # tried again
                t = None
            if t is None:
                t = _Template(key=key, function=req.spec.function, version=req.spec.version,
                              published=getattr(req.spec, "published", 0), digest=req.spec.digest,
                              created=time.monotonic(), last_used=time.monotonic())
                self._by_key[key] = t
                threading.Thread(target=self._build, args=(t, req, env, own), daemon=True,
                                 name=f"template-{req.spec.function}").start()
                self._ensure_keeper()
            return t

    def launch(self, req, env: dict, own: dict, deadline: float):
        """Fork an instance from this version's template: ``(handle, address, phases)``, or None when
        there is no ready template (one is then started in the background)."""
        t = self.ensure(req, env, own)
        if t is None:
            return None
        with self._lock:
            if t.state != "ready" or t.retired:
                return None
            t.last_used = time.monotonic()
        try:
            return self._fork(t, req, env, deadline)
        except PlacementFailed as exc:
            log.warning("event=snapshot_fork_failed function=%s version=%s error=%r",
                        t.function, t.version, str(exc))
            return None

    def _build(self, t: _Template, req, env: dict, own: dict) -> None:
        la = self.launcher
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            handle, lines = la._start(f"{req.instance_id}-template", req.code_dir, "python",
                                      network=req.spec.network != "none", memory_mb=req.spec.memory_mb,
                                      python=True, env=env, argv=None, deadline=time.monotonic() + BUILD_TIMEOUT_S,
                                      want_listen=False, own_env=own, layers_dir=req.layers_dir,
                                      template_fd=theirs.fileno())
        except PlacementFailed as exc:
            mine.close()
            t.state, t.reason = "failed", str(exc)
            log.warning("event=snapshot_build_failed function=%s version=%s error=%r", t.function, t.version, str(exc))
            return
        finally:
            theirs.close()
        t.handle, t.ctl, t.env, t.cgroup = handle, mine, dict(env), handle.cgroup
        t.uid = getattr(handle, "uid", 0)
        if "refused" in lines or "template" not in lines:
            t.state = "refused"
            t.reason = lines.get("refused") or lines.get("error") or "the template ended before its snapshot"
            log.info("event=snapshot_refused function=%s version=%s reason=%r", t.function, t.version, t.reason)
            handle.signal(signal.SIGKILL)
            mine.close()
            return
        t.init_ms = lines.get("initDurationMs")
        try:
            Path(f"/proc/{handle.pid}/oom_score_adj").write_text("-1000")
        except OSError:
            pass
        threading.Thread(target=self._read, args=(t,), daemon=True, name=f"template-read-{t.function}").start()
        self._move_to_next(t, req.spec.memory_mb)
        if t.moving is not None:
            t.moving.join()
        t.state = "ready"
        log.info("event=snapshot_ready function=%s version=%s init_ms=%s", t.function, t.version, t.init_ms)
        self._refill(t, req.spec.memory_mb)

    def _read(self, t: _Template) -> None:
        """The template's messages: fork replies, and its children's exits."""
        ctl = t.ctl
        while True:
            try:
                data = ctl.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if "exit" in msg:
                child = t.children.pop(msg["exit"], None)
                if child is None:
                    t.early_exits[msg["exit"]] = msg.get("status")
                else:
                    child.finish(msg.get("status"))
            else:
                with t.reply_ready:
                    t.replies.append(msg)
                    t.reply_ready.notify_all()
        # the template is gone, and every instance in its pid namespace with it
        t.state = "failed" if t.state != "dropping" else "dropped"
        t.reason = t.reason or "the template ended"
        for child in list(t.children.values()):
            child.finish(-signal.SIGKILL)
        t.children.clear()
        with t.reply_ready:
            t.reply_ready.notify_all()
        with self._lock:
            if self._by_key.get(t.key) is t and t.state == "dropped":
                del self._by_key[t.key]
        if t.cgroup is not None:
            t.cgroup.remove()
        spare, t.spare = t.spare, None
        for cg in (spare.cgroup if spare else None, t.next_cgroup):
            if cg is not None:
                cg.remove()

    def _move_to_next(self, t: _Template, memory_mb: int) -> None:
        """In the background: a fresh cgroup limited for the next instance, and the template into it."""
        la = self.launcher

        def move():
            if la.cgroups is None:
                return
            try:
                cg = la.cgroups.create("snap-" + uuid.uuid4().hex[:12], memory_mb << 20, la.pids_max)
                for procs in cg.procs_files:
                    with open(procs, "w") as f:
                        f.write(str(t.handle.pid))
            except OSError as exc:
                log.warning("event=snapshot_cgroup_failed function=%s error=%r", t.function, str(exc))
                return
            t.next_cgroup = cg
        t.moving = threading.Thread(target=move, daemon=True, name=f"template-cg-{t.function}")
        t.moving.start()

    def _ask(self, t: _Template, msg: dict, fds: list[int]) -> dict:
        """One request to the template and its answer (callers hold ``t.lock``: one at a time)."""
        with t.reply_ready:
            t.replies.clear()
        socket.send_fds(t.ctl, [json.dumps(msg).encode()], fds)
        with t.reply_ready:
            t.reply_ready.wait_for(lambda: t.replies or t.state not in ("ready", "dropping"), FORK_REPLY_TIMEOUT_S)
            return t.replies.pop(0) if t.replies else {"error": "the template did not answer"}

    def _refill(self, t: _Template, memory_mb: int) -> None:
        """In the background: a child forked and confined ahead of the next cold start (a *spare*), in
        the cgroup the template waits in, which then moves on to a fresh one. A cold start that finds
        the spare only hands it its descriptors: no fork, no namespaces, no mounts on its path."""
        def refill():
            with t.lock:
                if t.spare is not None or t.state != "ready" or t.ctl is None:
                    return
                if t.moving is not None:
                    t.moving.join()
                cg, t.next_cgroup = t.next_cgroup, None
                if cg is None:
                    return
                try:
                    reply = self._ask(t, {"spare": True}, [])
                    if "spare" not in reply:
                        raise PlacementFailed(str(reply.get("error")))
                    host_pid = self._host_pid(t, cg)
                except (OSError, PlacementFailed) as exc:
                    log.warning("event=snapshot_spare_failed function=%s error=%r", t.function, str(exc))
                    cg.remove()
                    self._move_to_next(t, memory_mb)
                    return
                self._move_to_next(t, memory_mb)
                t.spare = _Spare(reply["spare"], cg, host_pid, t.moving)
        threading.Thread(target=refill, daemon=True, name=f"template-spare-{t.function}").start()

    def _fork(self, t: _Template, req, env: dict, deadline: float):
        la = self.launcher
        t0 = time.monotonic()
        instance_id = req.instance_id
        with t.lock:
            spare, t.spare = t.spare, None
            if spare is not None:
                cg, moving = spare.cgroup, spare.moving
            else:
                if t.moving is not None:
                    t.moving.join()
                cg, t.next_cgroup = t.next_cgroup, None
                if la.cgroups is not None and cg is None:
                    raise PlacementFailed("the template has no cgroup for its next instance")
            key = uuid.uuid4().hex[:12]
            sock_dir = la.run_dir / key
            sock_dir.mkdir(mode=0o700)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            r, w = os.pipe()
            out_fd = -1
            try:
                listener.bind(str(sock_dir / "instance.sock"))
                listener.listen(1024)
                out_fd = la.output.open(instance_id)
                extra = {k: v for k, v in env.items() if t.env.get(k) != v}
                msg = {"fork": {"env": extra, "instance_id": instance_id,
                                "socket": f"{sandbox.SOCKET_DIR}/instance.sock"}}
                reply = self._ask(t, msg, [w, out_fd, listener.fileno()])
                if "pid" not in reply:
                    raise PlacementFailed(f"the template could not fork: {reply.get('error')}")
                host_pid = spare.host_pid if spare is not None else self._host_pid(t, cg)
            except BaseException:
                os.close(r)
                la._release_forked(sock_dir, cg)
                if spare is None and cg is not None:
                    self._move_to_next(t, req.spec.memory_mb)
                raise
            finally:
                os.close(w)
                if out_fd >= 0:
                    os.close(out_fd)
                listener.close()
            t.forks += 1
            if spare is None:
                self._move_to_next(t, req.spec.memory_mb)
                moving = t.moving
        self._refill(t, req.spec.memory_mb)

        def on_exit(h: _ForkedHandle) -> None:
            if moving is not None:
                moving.join()   # the template must have left this cgroup before it is emptied
            h.oom = cg.oom_killed() if cg is not None else False
            la._release_forked(sock_dir, cg)

        handle = _ForkedHandle(host_pid, on_exit)
        handle.socket_dir = sock_dir
        handle.cgroup = cg
        handle.from_spare = spare is not None
        tpid = reply["pid"]
        t.children[tpid] = handle
        if tpid in t.early_exits:
            t.children.pop(tpid, None)
            handle.finish(t.early_exits.pop(tpid))
        try:
            lines = la._read_ready(r, deadline, handle, True, la.log_dir / f"{instance_id}.log")
        except BaseException:
            handle.signal(signal.SIGKILL)
            raise
        at = float(lines.get("sandboxAt", t0))
        now = time.monotonic()
        restore = float(lines.get("restoreMs") or 0.0)
        phases = {"sandbox": round((at - t0) * 1000, 3), "restore": round(restore, 3),
                  "runtime_init": round(max(0.0, (now - at) * 1000 - restore), 3)}
        return handle, f"unix:{sock_dir}/instance.sock", phases

    @staticmethod
    def _host_pid(t: _Template, cg) -> int:
        """The child's pid on the host: the one process of its cgroup that is not the template."""
        if cg is None:
            raise PlacementFailed("snapshots need cgroups to find a forked instance")
        me = t.handle.pid
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                pids = [int(p) for p in Path(cg.procs_files[0]).read_text().split()]
            except (OSError, ValueError):
                pids = []
            others = [p for p in pids if p != me]
            if others:
                return min(others)
            time.sleep(0.0005)
        raise PlacementFailed("the forked instance did not appear in its cgroup")

    # -- keeping -----------------------------------------------------------------------------------

    def _ensure_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, daemon=True, name="template-keeper")
            self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(KEEP_INTERVAL_S):
            self.tidy(time.monotonic())

    def retire(self, digests_in_use: set[str]) -> None:
        """Templates of code no function (or published version) points at any more: dropped now, or
        once their last instance has ended (a deleted function's template must not wait for the
        keep time)."""
        with self._lock:
            found = [t for t in self._by_key.values() if t.digest and t.digest not in digests_in_use]
        for t in found:
            t.retired = True
            if t.state == "ready":
                self.drop(t, "its code is no longer used")
            elif t.state in ("refused", "failed"):
                with self._lock:
                    if self._by_key.get(t.key) is t:
                        del self._by_key[t.key]

    def tidy(self, now: float) -> list[str]:
        """Drop what :func:`to_drop` says, and retired templates whose instances have ended; returns
        the keys dropped."""
        with self._lock:
            ready = [t for t in self._by_key.values() if t.state == "ready"]
        for t in ready:
            if t.retired and not t.children:
                self.drop(t, "its code is no longer used")
        ready = [t for t in ready if not t.retired]
        kept = [Kept(t.key, self._memory(t), t.last_used, len(t.children)) for t in ready]
        keys = to_drop(kept, budget_bytes=self.budget_bytes, keep_s=self.keep_s, now=now)
        for key in keys:
            with self._lock:
                t = self._by_key.get(key)
            if t is not None:
                self.drop(t, "idle" if now - t.last_used > self.keep_s else "memory budget")
        return keys

    def drop(self, t: _Template, why: str) -> None:
        with t.lock:
            if t.children:
                return
            t.state, t.reason = "dropping", f"dropped ({why})"
            log.info("event=snapshot_dropped function=%s version=%s why=%s", t.function, t.version, why)
            if t.handle is not None:
                t.handle.signal(signal.SIGKILL)
            if t.moving is not None:
                t.moving.join()
            if t.next_cgroup is not None:
                t.next_cgroup.remove()
                t.next_cgroup = None

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            found = list(self._by_key.values())
        for t in found:
            if t.handle is not None:
                t.handle.signal(signal.SIGKILL)
            if t.ctl is not None:
                try:
                    t.ctl.close()
                except OSError:
                    pass
