"""Embedded-mode scheduler: instances are runtime processes on this host.

A start is: make sure the code is unpacked (once per digest, into a read-only cache), launch the
runtime's bootstrap through a :class:`Launcher`, wait for it to report its port and then to answer
``/_/ready``, register it. Each process has a watcher thread that deregisters it when it exits and
remembers why it ended (drained, killed, out of memory, crashed), so a request that lost its
instance can say which.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.backends.local_registry import LocalRegistry
from appliance.core import codepkg
from appliance.core.errors import CodeNotFound, NotFound, PlacementFailed, function_error
from appliance.core.model import Instance, InstanceSpec
from appliance.core.ports import BlobStore
from appliance.instances.client import InstanceClient, InstanceLost, InstanceUnreachable
from appliance.instances.process_launcher import Launcher, LaunchRequest

log = logging.getLogger("appliance.scheduler")

READY_POLL_S = 0.002
#: Seconds past its function's timeout a stopped instance has to finish in-flight work after
#: SIGTERM; then SIGKILL (its cgroup's processes too). The platform, not the instance, decides.
STOP_GRACE_S = 2.0
#: Seconds an instance that accepted a drain has to exit (the runtime contract's DRAIN_GRACE is 2 s);
#: then SIGKILL: an instance that says it drained but keeps running is not left behind.
DRAIN_EXIT_S = 5.0
#: Longest one ``/_/ready?waitMs=`` call holds while the handler loads (the runtime answers as soon as it is loaded).
READY_WAIT_S = 1.0


@dataclass
class _Proc:
    instance: Instance
    handle: object          # launcher handle: has .pid, .wait(), .returncode, .signal(sig)
    spec: InstanceSpec
    stopping: str | None = None    # why we stop it, when we do


class CodeCache:
    """Unpacked packages by digest, fetched from the BlobStore at most once each."""

    def __init__(self, root: Path, blobs: BlobStore, limits: codepkg.Limits):
        self.root = Path(root)
        self.blobs = blobs
        self.limits = limits
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetches = 0

    def path(self, digest: str) -> Path:
        return self.root / digest

    def ensure_layers(self, digests: list[str]) -> Path | None:
        """The directory an instance sees as ``/opt``: its layers' packages unpacked in order, a later
        one's files replacing an earlier one's (Lambda's rule). One layer is its unpacked package as is;
        several are merged once per ordered list of digests (:func:`codepkg.merge_layers`)."""
        if not digests:
            return None
        dirs = [self.ensure(d)[0] for d in digests]
        key = ",".join(digests)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            return codepkg.merge_layers(dirs, self.root)

    def collect(self, keep: set[str], *, partial: bool = False) -> list[str]:
        """Remove the unpacked directories of digests not in ``keep``; with ``partial`` also the
        temporary directories of unpacks a killed process left (only safe while none is under
        way: at start). Returns what was removed."""
        removed = []
        if not self.root.exists():
            return removed
        for p in self.root.iterdir():
            if p.name.startswith("."):
                if partial:
                    codepkg.remove_tree(p)
                    removed.append(p.name)
                continue
            if p.name.startswith("layers-"):
                continue  # merged layer lists: one per distinct list of published layers, kept
            if p.name not in keep:
                with self._guard:
                    lock = self._locks.setdefault(p.name, threading.Lock())
                with lock:
                    codepkg.remove_tree(p)
                with self._guard:
                    self._locks.pop(p.name, None)
                removed.append(p.name)
        return removed

    def collect_one(self, digest: str) -> None:
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            codepkg.remove_tree(self.path(digest))
        log.info("event=code_collected digests=%s", digest[:12])

    def ensure(self, digest: str) -> tuple[Path, bool]:
        """(directory, fetched now?)"""
        dest = self.path(digest)
        if dest.exists():
            return dest, False
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            if dest.exists():
                return dest, False
            data = self.blobs.get(digest)
            codepkg.unpack(data, dest, self.limits)
            self.fetches += 1
            return dest, True


class LocalScheduler:
    #: Instances carry the published version they run (``InstanceSpec.published``), so the activator
    #: keeps a pool per version (README "Versions and aliases").
    supports_published = True

    def __init__(self, *, registry: LocalRegistry, blobs: BlobStore, code_cache: CodeCache, launcher: Launcher,
                 client: InstanceClient, host: str = "127.0.0.1", platform_env: dict[str, str] | None = None,
                 layer_digest=None):
        self.registry = registry
        #: FAAS_REGION and FAAS_ACCOUNT_ID for every instance (the Lambda environment).
        self.platform_env = dict(platform_env or {})
        #: ``NAME:VERSION`` -> package digest (appliance.core.layers.LayerStore), for functions with layers.
        self.layer_digest = layer_digest
        self.blobs = blobs
        self.code = code_cache
        self.launcher = launcher
        self.client = client
        self.host = host
        self._lock = threading.Lock()   # guards _procs and _exit_causes
        self._procs: dict[str, _Proc] = {}
        self._exit_causes: dict[str, str] = {}
        #: Unpacked code no version needs, kept while an instance still ran it.
        self._collect_after: set[str] = set()
        self._closed = False

    # -- Scheduler port -----------------------------------------------------------------

    def prepare(self, spec: InstanceSpec) -> float:
        """Unpack and byte-compile the code ahead of the first start (deploy-time pre-warm), and start
        the version's snapshot template when it has ``snapshot: auto`` (in the background)."""
        ms = self.prepare_digest(spec.digest)
        prepare = getattr(self.launcher, "prepare", None)
        if prepare is not None and spec.snapshot == "auto" and not self._closed:
            try:
                code_dir, _ = self.code.ensure(spec.digest)
                layers_dir = (self.code.ensure_layers([self.layer_digest(ref) for ref in spec.layers])
                              if spec.layers else None)
                prepare(LaunchRequest(spec=spec, code_dir=code_dir, instance_id=f"{spec.function}-{spec.version}-"
                                      f"{uuid.uuid4().hex[:8]}", host=self.host, platform_env=self.platform_env,
                                      layers_dir=layers_dir))
            except (CodeNotFound, NotFound, OSError) as exc:
                log.warning("event=snapshot_prepare_failed function=%s error=%r", spec.function, str(exc))
        return ms

    def prepare_digest(self, digest: str) -> float:
        t0 = time.monotonic()
        self.code.ensure(digest)
        return (time.monotonic() - t0) * 1000

    def collect_code(self, in_use: set[str]) -> list[str]:
        """Remove unpacked code that neither ``in_use`` (the digests functions point at) nor a
        running instance needs; what a running instance needs goes when its last one ends."""
        with self._lock:
            running = {p.spec.digest for p in self._procs.values()}
            self._collect_after = (self._collect_after | (running - in_use)) - in_use
        removed = self.code.collect(in_use | running)
        if removed:
            log.info("event=code_collected digests=%s", ",".join(d[:12] for d in removed))
        templates = getattr(self.launcher, "templates", None)
        if templates is not None:  # a template of code no function uses any more serves nothing
            templates.retire(in_use)
        return removed

    def start(self, spec: InstanceSpec, deadline: float) -> Instance:
        if self._closed:
            raise PlacementFailed("the appliance is shutting down")
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            code_dir, fetched = self.code.ensure(spec.digest)
        except CodeNotFound as exc:
            raise PlacementFailed(f"code of {spec.function!r} version {spec.version} is missing: {exc}") from None
        layers_dir = None
        if spec.layers:
            try:
                layers_dir = self.code.ensure_layers([self.layer_digest(ref) for ref in spec.layers])
            except (CodeNotFound, NotFound) as exc:
                raise PlacementFailed(f"a layer of {spec.function!r} is missing: {exc}") from None
        phases["code_fetch"] = round((time.monotonic() - t0) * 1000, 3)
        instance_id = f"{spec.function}-{spec.version}-{uuid.uuid4().hex[:8]}"
        req = LaunchRequest(spec=spec, code_dir=code_dir, instance_id=instance_id, host=self.host,
                            platform_env=self.platform_env, layers_dir=layers_dir)
        t1 = time.monotonic()
        try:
            handle, address, launch_phases = self.launcher.launch(req, deadline)
        except PlacementFailed:
            raise
        except OSError as exc:
            raise PlacementFailed(f"could not launch the {spec.runtime} runtime: {exc}") from None
        phases.update(launch_phases)
        phases.setdefault("runtime_init", round((time.monotonic() - t1) * 1000, 3))
        instance = Instance(id=instance_id, function=spec.function, version=spec.version, address=address,
                            concurrency=spec.concurrency, node="local", phases=phases,
                            pid=getattr(handle, "pid", None), published=spec.published)
        proc = _Proc(instance=instance, handle=handle, spec=spec)
        with self._lock:
            self._procs[instance_id] = proc
        threading.Thread(target=self._watch, args=(proc,), daemon=True, name=f"watch-{instance_id}").start()
        # Wait for the handler to load.
        t2 = time.monotonic()
        while True:
            try:
                wait_ms = int(max(0.0, min(READY_WAIT_S, deadline - time.monotonic())) * 1000)
                status, body = self.client.ready(instance, wait_ms=wait_ms)
            except (InstanceUnreachable, InstanceLost):
                status, body = 0, {}
            if status == 200:
                break
            if status == 500 and body.get("state") == "failed":
                self._kill(proc, "init-failed")
                raise function_error(body.get("error") or {"errorType": "Runtime.InitError",
                                                           "errorMessage": "the code failed to load"})
            if handle.returncode is not None:
                raise PlacementFailed(f"the {spec.runtime} runtime exited with status {handle.returncode} "
                                      f"before it was ready; see the instance log of {instance_id}")
            if time.monotonic() > deadline:
                self._kill(proc, "start-timeout")
                raise PlacementFailed(f"instance {instance_id} was not ready before the start deadline")
            time.sleep(READY_POLL_S)
        # The runtime's own measure of loading the handler when it reports one; else what we waited.
        init_ms = body.get("initDurationMs")
        if "restore" not in phases:  # restored from a snapshot: nothing was initialised here
            phases["user_init"] = round(float(init_ms) if isinstance(init_ms, (int, float)) else
                                        (time.monotonic() - t2) * 1000, 3)
        self.registry.add(instance)
        log.info("event=instance_ready instance=%s function=%s version=%s address=%s phases=%s",
                 instance_id, spec.function, spec.version, address, json.dumps(phases, separators=(",", ":")))
        return instance

    def stop(self, instance: Instance, *, graceful: bool = True) -> None:
        with self._lock:
            proc = self._procs.get(instance.id)
        if proc is None:
            return
        if graceful:
            proc.stopping = proc.stopping or "stopped"
            proc.handle.signal(signal.SIGTERM)
            timer = threading.Timer(proc.spec.timeout_s + STOP_GRACE_S, self._escalate, args=(proc,))
            timer.daemon = True
            timer.start()
        else:
            self._kill(proc, "killed")

    def _escalate(self, proc: _Proc, reason: str = "ignored-sigterm") -> None:
        """SIGKILL an instance still alive a grace period after SIGTERM or an accepted drain."""
        if proc.handle.returncode is None and proc.handle.wait(0) is None:
            log.warning("event=instance_killed instance=%s reason=%s", proc.instance.id, reason)
            proc.handle.signal(signal.SIGKILL)

    def snapshots_unavailable(self) -> str | None:
        """Why cold starts cannot fork from snapshot templates here, or None when they can."""
        templates = getattr(self.launcher, "templates", None)
        if templates is None:
            return "snapshots need the instance sandbox (APPLIANCE_SANDBOX); instances here are plain processes"
        if not templates.enabled:
            return "snapshots need memory cgroups and the seccomp filter on this host (faas doctor)"
        return None

    def snapshots(self, function: str) -> list[dict]:
        """The snapshot templates of ``function``'s versions on this host, and refusals with their reason."""
        templates = getattr(self.launcher, "templates", None)
        return templates.describe(function) if templates is not None else []

    def instances(self, function: str | None = None) -> list[Instance]:
        with self._lock:
            return [p.instance for p in self._procs.values() if function in (None, p.instance.function)]

    def exit_cause(self, instance_id: str, wait_s: float = 1.0) -> str | None:
        """Why an instance ended; waits briefly for its process to be reaped."""
        end = time.monotonic() + wait_s
        while True:
            with self._lock:
                cause = self._exit_causes.get(instance_id)
                alive = instance_id in self._procs
            if cause or not alive or time.monotonic() > end:
                return cause
            time.sleep(0.005)

    def mark_stopping(self, instance_id: str, why: str) -> None:
        """Tell the watcher an exit is expected (drained, timed out), so it is not a crash."""
        with self._lock:
            proc = self._procs.get(instance_id)
            if proc is not None:
                proc.stopping = proc.stopping or why
        if proc is not None and why == "drained":
            timer = threading.Timer(DRAIN_EXIT_S, self._escalate, args=(proc, "drained-but-running"))
            timer.daemon = True
            timer.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every instance: SIGTERM, then SIGKILL what is left after ``timeout_s``."""
        self._closed = True
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            p.stopping = p.stopping or "shutdown"
            p.handle.signal(signal.SIGTERM)
        end = time.monotonic() + timeout_s
        for p in procs:
            remaining = max(0.0, end - time.monotonic())
            if p.handle.wait(remaining) is None:
                p.handle.signal(signal.SIGKILL)
                p.handle.wait(2.0)
        self.launcher.close()

    # -- internals ----------------------------------------------------------------------

    def _kill(self, proc: _Proc, why: str) -> None:
        proc.stopping = proc.stopping or why
        proc.handle.signal(signal.SIGKILL)

    def _watch(self, proc: _Proc) -> None:
        rc = proc.handle.wait(None)
        # True/False when the launcher knows (a memory cgroup records its kills); None when it cannot
        # tell, and then an unexplained SIGKILL is most likely the kernel's OOM killer.
        oom = self.launcher.oom_killed(proc.handle)
        if proc.stopping:
            cause = proc.stopping
        elif oom or (oom is None and rc in (-signal.SIGKILL, 128 + signal.SIGKILL)):
            cause = "oom"
        elif rc == 0:
            cause = "exited"
        else:
            cause = "crashed"
        with self._lock:
            self._procs.pop(proc.instance.id, None)
            self._exit_causes[proc.instance.id] = cause
            if len(self._exit_causes) > 10000:
                for k in list(self._exit_causes)[:5000]:
                    del self._exit_causes[k]
        self.registry.forget(proc.instance.id)
        self.client.close(proc.instance.address)
        digest = proc.spec.digest
        with self._lock:
            last = digest in self._collect_after and not any(p.spec.digest == digest for p in self._procs.values())
            if last:
                self._collect_after.discard(digest)
        if last:
            self.code.collect_one(digest)
        level = logging.INFO if cause in ("drained", "stopped", "shutdown", "exited", "timeout", "init-failed") else logging.WARNING
        log.log(level, "event=instance_exit instance=%s function=%s returncode=%s cause=%s",
                proc.instance.id, proc.instance.function, rc, cause)
