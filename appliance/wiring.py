"""The composition root: builds the platform's parts from Settings.

This is the only module that imports ``appliance.backends``; everything else receives its
Scheduler, Registry, BlobStore and MetadataStore from here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cluster.peer_loads import PeerLoads
from appliance.config import Settings
from appliance.control.records_view import RecordsView
from appliance.control.scaling_view import ScalingView
from appliance.core import codepkg
from appliance.core.activator import Activator
from appliance.core.errors import ApplianceError, ValidationError
from appliance.core.function_store import FunctionStore
from appliance.core.invoker import Invoker
from appliance.core.leadership import SoleLeader
from appliance.core.records import RecordStore, Retention
from appliance.core.scaler import PolicyCache, Scaler
from appliance.instances.aio_client import AsyncInstanceClient
from appliance.instances.client import InstanceClient
from appliance.instances.sandbox import UID_BASE, UID_COUNT

log = logging.getLogger("appliance.wiring")


@dataclass
class Components:
    settings: Settings
    store: FunctionStore
    scheduler: object
    registry: object
    activator: Activator
    client: InstanceClient
    records: RecordStore
    invoker: Invoker
    scaler: Scaler
    notes: list[str] = field(default_factory=list)
    #: The instances' seccomp filter as the sandbox probe found it ("active: ..." / "inactive: why"); None
    #: when instances are not sandboxed here (cluster mode: each node's own ``faas doctor`` says).
    seccomp: str | None = None
    #: Ports actually listened on, by role ("edge", "control"), once the server has started.
    ports: dict[str, int] = field(default_factory=dict)
    #: Invocation records as the control API reads them: this process's, and other edges' in cluster mode.
    records_view: RecordsView | None = None
    #: Cluster mode: where edges list themselves so control planes can find their records.
    edge_directory: object | None = None
    #: Which edge decides the scaling (appliance/core/leadership.py): a Consul lock, or this process.
    leadership: object | None = None
    #: The deciding edge's scaling decisions, as the control API shows them.
    scaling_view: ScalingView | None = None
    #: The host uids sandboxed instances run as (the control API refuses their connections).
    instance_uids: range = range(UID_BASE, UID_BASE + UID_COUNT)
    _closers: list = field(default_factory=list)

    def start(self) -> None:
        self.scaler.start()

    def event_loop_client(self) -> AsyncInstanceClient:
        """A client to instances for the edge's event loop (one per loop)."""
        return AsyncInstanceClient(self.settings.max_reply_bytes)

    def close(self) -> None:
        self.scaler.stop()
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - close everything we can
                log.exception("event=close_failed")


def limits(settings: Settings) -> codepkg.Limits:
    return codepkg.Limits(max_zip_bytes=settings.max_code_bytes, max_unpacked_bytes=settings.max_unpacked_bytes,
                          max_files=settings.max_files)


def policy_cache(settings: Settings) -> PolicyCache:
    return PolicyCache(stable_window_s=settings.stable_window_s, panic_window_s=settings.panic_window_s,
                       target_utilisation=settings.target_utilisation, max_scale_up_rate=settings.max_scale_up_rate)


def edge_id(settings: Settings) -> str:
    """This process's name among the edges (in leader election, concurrency reports, pool claims)."""
    import socket
    return f"{settings.node_name or socket.gethostname()}-{os.getpid()}"


def build(settings: Settings) -> Components:
    if settings.mode == "cluster":
        return _build_cluster(settings)
    return _build_local(settings)


def nomad_job_vars(settings: Settings) -> str:
    """The HCL2 variable file sent with the jobspecs (empty: the jobspecs' defaults).

    With a Consul token, ``consul_token`` is added for the instances' own Consul calls (with ACLs on
    and default deny a pool instance could not register itself without one), unless the file sets
    it: ``instance_consul_token``, else the appliance's ``consul_token``."""
    text = ""
    if settings.nomad_vars_file:
        try:
            text = Path(settings.nomad_vars_file).read_text()
        except OSError as exc:
            raise ValidationError(f"APPLIANCE_NOMAD_VARS_FILE={settings.nomad_vars_file!r} cannot be read: {exc}",
                                  field="nomad_vars_file") from None
    token = settings.instance_consul_token or settings.consul_token
    if not token or re.search(r"^\s*consul_token\s*=", text, re.M):
        return text
    if not settings.instance_consul_token:
        log.warning("event=instance_consul_token source=consul_token note=%r",
                    "instances get the appliance's Consul token, stored in the jobs; "
                    "set APPLIANCE_INSTANCE_CONSUL_TOKEN to a narrower one")
    return (text if not text or text.endswith("\n") else text + "\n") + f"consul_token = {hcl_string(token)}\n"


def hcl_string(value: str) -> str:
    """An HCL2 quoted string: JSON's escapes, and template sequences (${, %{) doubled so Nomad keeps
    them literally."""
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


def _build_cluster(settings: Settings) -> Components:
    """Nomad places instances, Consul lists them and holds metadata, S3 holds code. Only the
    invocation records stay on this edge's disk; nothing else lives in one process, so several
    edges and control planes can run against the same cluster."""
    from appliance.backends.consul_edges import EdgeDirectory
    from appliance.backends.consul_kv import ConsulMetadataStore
    from appliance.backends.consul_leader import ConsulLeaderLock
    from appliance.backends.consul_registry import ConsulRegistry
    from appliance.backends.nomad_scheduler import NomadScheduler
    from appliance.backends.s3_blob import S3BlobStore

    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    blobs = S3BlobStore.from_settings(settings)
    try:
        blobs.ensure_bucket()
    except ApplianceError as exc:  # the edge can serve warm instances without S3; say so
        notes.append(exc.message)
        log.warning("event=s3_unavailable error=%r", exc.message)
    meta = ConsulMetadataStore(settings.consul_addr, token=settings.consul_token,
                               stale_limit_s=settings.consul_stale_limit_s)
    store = FunctionStore(meta, blobs, limits(settings), cache_ttl_s=settings.metadata_cache_s)
    registry = ConsulRegistry(settings.consul_addr, token=settings.consul_token,
                              stale_limit_s=settings.consul_stale_limit_s)
    client = InstanceClient(settings.max_reply_bytes)
    edges = EdgeDirectory(settings.consul_addr, token=settings.consul_token)
    me = edge_id(settings)
    scheduler = NomadScheduler(
        nomad_addr=settings.nomad_addr, nomad_token=settings.nomad_token, consul_addr=settings.consul_addr,
        consul_token=settings.consul_token, registry=registry, blobs=blobs, client=client,
        jobspecs_dir=settings.jobspecs_dir, job_vars=nomad_job_vars(settings), code_url_ttl_s=settings.code_url_ttl_s,
        pool_target_free=settings.pool_target_free, pool_refill_s=settings.pool_refill_s,
        retry_s=settings.nomad_retry_s, edge_id=me)
    activator = Activator(scheduler, registry, max_queue=settings.max_queue, start_timeout_s=settings.start_timeout_s)
    records = RecordStore(data / "invocations.sqlite3", retention=retention(settings))
    policies = policy_cache(settings)
    invoker = Invoker(store, activator, client, scheduler, registry, records, policies,
                      queue_timeout_s=settings.queue_timeout_s)
    # Several edges: one, elected through a Consul lock, decides from the sum of every edge's load.
    leadership = ConsulLeaderLock(settings.consul_addr, token=settings.consul_token, ttl_s=settings.leader_ttl_s)
    peers = PeerLoads(edges.edges)
    scaler = Scaler(activator, store, scheduler, registry, client, policies, interval_s=settings.reap_interval_s,
                    edge_id=me, leadership=leadership, peers=peers)
    comps = Components(settings=settings, store=store, scheduler=scheduler, registry=registry, activator=activator,
                       client=client, records=records, invoker=invoker, scaler=scaler, notes=notes,
                       records_view=RecordsView(records, edges.edges), edge_directory=edges, leadership=leadership,
                       scaling_view=ScalingView(scaler, leadership))
    # Closed last to first: the lock is released first, so another edge takes over at once.
    comps._closers = [records.close, client.close_all, scheduler.close, registry.close, comps.records_view.close,
                      edges.deregister, peers.close, comps.scaling_view.close, leadership.close]
    return comps


def collect_unreferenced(store: FunctionStore, blobs, code_cache) -> None:
    """At start (no upload under way): delete packages and unpacked code no version refers to, and
    what a killed upload left half-written (temporary files and directories)."""
    in_use = store.digests_in_use()
    orphans = blobs.digests() - in_use
    for digest in orphans:
        blobs.delete(digest)
    partial = blobs.remove_partial()
    removed = code_cache.collect(in_use, partial=True)
    if orphans or partial or removed:
        log.info("event=code_collected_at_start packages=%d partial=%d unpacked=%d", len(orphans), partial,
                 len(removed))


def retention(settings: Settings) -> Retention:
    """How much of the invocation records is kept (APPLIANCE_RECORDS_*)."""
    return Retention(max_records=settings.records_retention, max_age_s=settings.records_max_age_s,
                     max_bytes=settings.records_max_bytes, max_function_bytes=settings.records_max_function_bytes)


def sandbox_unavailable() -> str | None:
    """Why this host cannot run the instance sandbox, or None when it can (cheap checks only)."""
    import sys
    if not sys.platform.startswith("linux"):
        return "the instance sandbox needs Linux namespaces"
    if os.geteuid() != 0:
        return ("the instance sandbox needs root: it creates namespaces, mounts and per-instance cgroups, and "
                "runs each instance as its own unprivileged uid")
    return None


def _launcher(settings: Settings, log_dir: Path, notes: list[str]):
    """The sandboxed zygote launcher, or the plain one when the sandbox is off or cannot work here.

    ``sandbox=on`` refuses to start without it; ``auto`` falls back to plain processes and says so in
    ``notes`` (shown by ``/v1/health``) and in the log.
    """
    from appliance.instances.process_launcher import ProcessLauncher

    runtimes = Path(settings.runtimes_dir)
    if settings.sandbox == "off":
        notes.append("sandbox off (APPLIANCE_SANDBOX=off): instances run as plain processes with rlimits only")
        return ProcessLauncher(runtimes, log_dir, log_bytes=settings.instance_log_bytes)
    reason = sandbox_unavailable()
    launcher = None
    if reason is None:
        from appliance.instances import cgroups
        from appliance.instances.zygote_launcher import ZygoteLauncher
        cg, cg_reason = cgroups.detect()
        try:
            launcher = ZygoteLauncher(runtimes, log_dir, cgroups=cg, log_bytes=settings.instance_log_bytes)
            launcher.check()
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means no sandbox
            reason = f"the instance sandbox does not work on this host: {exc}"
            if launcher is not None:
                launcher.close()
            if cg is not None:
                cg.close()
            launcher = None
        else:
            if cg is None:
                notes.append(f"no memory cgroup ({cg_reason}): instance memory is bounded by rlimits only")
                log.warning("event=no_memory_cgroup reason=%r", cg_reason)
            log.info("event=sandbox_ready launcher=zygote cgroups=%r seccomp=%r", cg.describe() if cg else None,
                     launcher.seccomp)
            if not (launcher.seccomp or "").startswith("active"):
                notes.append(f"instances run without a seccomp filter: {launcher.seccomp}")
                log.warning("event=seccomp_inactive reason=%r", launcher.seccomp)
            return launcher
    if settings.sandbox == "on":
        raise ValidationError(f"APPLIANCE_SANDBOX=on but {reason}; fix that or set APPLIANCE_SANDBOX=off",
                              field="sandbox")
    notes.append(f"sandbox unavailable, instances run as plain processes: {reason}")
    log.warning("event=sandbox_unavailable fallback=process reason=%r", reason)
    return ProcessLauncher(runtimes, log_dir, log_bytes=settings.instance_log_bytes)


def _build_local(settings: Settings) -> Components:
    from appliance.backends.local_blob import LocalBlobStore
    from appliance.backends.local_registry import LocalRegistry
    from appliance.backends.local_scheduler import CodeCache, LocalScheduler
    from appliance.backends.sqlite_meta import SqliteMetadataStore

    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    lim = limits(settings)
    notes: list[str] = []
    meta = SqliteMetadataStore(data / "metadata.sqlite3")
    blobs = LocalBlobStore(data / "packages")
    store = FunctionStore(meta, blobs, lim, cache_ttl_s=settings.metadata_cache_s)
    registry = LocalRegistry()
    client = InstanceClient(settings.max_reply_bytes)
    launcher = _launcher(settings, data / "logs" / "instances", notes)
    code_cache = CodeCache(data / "code", blobs, lim)
    collect_unreferenced(store, blobs, code_cache)
    scheduler = LocalScheduler(registry=registry, blobs=blobs, code_cache=code_cache, launcher=launcher,
                               client=client, host="127.0.0.1")
    activator = Activator(scheduler, registry, max_queue=settings.max_queue, start_timeout_s=settings.start_timeout_s)
    records = RecordStore(data / "invocations.sqlite3", retention=retention(settings))
    policies = policy_cache(settings)
    invoker = Invoker(store, activator, client, scheduler, registry, records, policies,
                      queue_timeout_s=settings.queue_timeout_s)
    # One edge: it is its own scaling leader and decides from its own pools.
    leadership = SoleLeader(edge_id(settings))
    scaler = Scaler(activator, store, scheduler, registry, client, policies, interval_s=settings.reap_interval_s,
                    edge_id=leadership.holder["edge"], leadership=leadership)
    comps = Components(settings=settings, store=store, scheduler=scheduler, registry=registry, activator=activator,
                       client=client, records=records, invoker=invoker, scaler=scaler, notes=notes,
                       records_view=RecordsView(records), leadership=leadership,
                       scaling_view=ScalingView(scaler, leadership))
    comps.seccomp = getattr(launcher, "seccomp", None)
    comps._closers = [meta.close, records.close, client.close_all, scheduler.close, comps.records_view.close,
                      comps.scaling_view.close]
    return comps


def cluster_checks(settings: Settings) -> list[tuple[str, bool, str]]:
    """``faas doctor`` in cluster mode: (label, ok, detail) per check; never raises.

    Each check builds the same client the appliance builds from the same settings, so a pass
    means the appliance's own calls reach Nomad, Consul and S3 and find its jobs registered."""
    import consul
    import requests

    from appliance.backends.consul_kv import consul_client
    from appliance.backends.consul_registry import ConsulRegistry
    from appliance.backends.nomad_scheduler import NomadScheduler
    from appliance.backends.s3_blob import S3BlobStore

    out: list[tuple[str, bool, str]] = []
    try:
        r = requests.get(f"{settings.nomad_addr.rstrip('/')}/v1/status/leader", timeout=5,
                         headers={"X-Nomad-Token": settings.nomad_token} if settings.nomad_token else {})
        r.raise_for_status()
        out.append(("Nomad", True, f"{settings.nomad_addr} (leader {r.json()})"))
        nomad_ok = True
    except (requests.RequestException, ValueError) as exc:
        out.append(("Nomad", False, f"{settings.nomad_addr} does not answer: {exc}"))
        nomad_ok = False
    try:
        leader = consul_client(settings.consul_addr, settings.consul_token, 5).status.leader()
        out.append(("Consul", True, f"{settings.consul_addr} (leader {leader})"))
    except (requests.RequestException, consul.ConsulException) as exc:
        out.append(("Consul", False, f"{settings.consul_addr} does not answer: {exc}"))
    try:
        detail = S3BlobStore.from_settings(settings).check()
        out.append(("S3 code store", True, detail))
    except ApplianceError as exc:
        out.append(("S3 code store", False, exc.message))
    if nomad_ok:
        registry = ConsulRegistry(settings.consul_addr, token=settings.consul_token)
        sched = NomadScheduler(nomad_addr=settings.nomad_addr, nomad_token=settings.nomad_token,
                               consul_addr=settings.consul_addr, consul_token=settings.consul_token,
                               registry=registry, blobs=None, client=None, retry_s=1.0, maintain=False)
        try:
            for job, status in sched.jobs_status().items():
                good = status != "missing"
                out.append((f"Nomad job {job}", good, status if good else
                            "not registered: start an edge (it registers the jobs) or submit jobspecs/"))
        except ApplianceError as exc:
            out.append(("Nomad jobs", False, exc.message))
        finally:
            registry.close()
    return out
