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
from appliance.backends.prometheus_metrics import Metrics
from appliance.core import codepkg
from appliance.core.activator import Activator
from appliance.core.async_runner import AsyncRunner
from appliance.core.event_triggers import EventTriggerStore, ScheduleLoop
from appliance.core.queue_source import QueuePoller, QueueRouter
from appliance.core.errors import ApplianceError, Conflict, ValidationError
from appliance.core.function_store import FunctionStore
from appliance.core.invoker import Invoker
from appliance.core.layers import LayerStore
from appliance.core.leadership import SoleLeader
from appliance.core.records import RecordStore, Retention
from appliance.core.scaler import PolicyCache, Scaler
from appliance.core.tokens import TokenStore
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
    #: Invocation records as the control API reads them: this process's, and other edges' in cluster mode
    #: (``appliance.control.records_view``, set by the control API when this process serves it).
    records_view: object | None = None
    #: Cluster mode: where edges list themselves so control planes can find their records.
    edge_directory: object | None = None
    #: Which edge decides the scaling (appliance/core/leadership.py): a Consul lock, or this process.
    leadership: object | None = None
    #: The deciding edge's scaling decisions, as the control API shows them (set like ``records_view``).
    scaling_view: object | None = None
    #: Runs asynchronous events (queued in SQLite on this process's disk).
    async_runner: AsyncRunner | None = None
    #: Schedule triggers, and the loop that fires them while this process leads.
    event_triggers: EventTriggerStore | None = None
    schedules: ScheduleLoop | None = None
    #: Queue triggers' pollers, and which backend serves a queue name (embedded or SQS).
    queue_poller: QueuePoller | None = None
    queues: QueueRouter | None = None
    #: The host uids sandboxed instances run as (the control API refuses their connections).
    instance_uids: range = range(UID_BASE, UID_BASE + UID_COUNT)
    #: The packet filter keeping network-default instances off this host's services
    #: (appliance/instances/netfilter.py); None when instances are not sandboxed here.
    netfilter: object | None = None
    #: What is in force for instances' connections to this host, as /v1/health and faas doctor show it.
    instance_network: str | None = None
    #: API tokens (in the metadata store, so every control plane sees the same ones).
    tokens: TokenStore | None = None
    #: The credential edges and control planes show each other on the edge's internal /_/ paths.
    internal_token: str = ""
    #: Prometheus metrics (appliance/backends/prometheus_metrics.py): the core's observer, served on /metrics and /_/metrics.
    metrics: Metrics | None = None
    _closers: list = field(default_factory=list)

    def install_net_filter(self) -> None:
        """Install the instances' packet filter, allowing the edge's trigger port (once it is known:
        port 0 picks one). ``APPLIANCE_INSTANCE_NET_FILTER=on`` refuses to run without it."""
        nf = self.netfilter
        if nf is None:
            return
        if self.settings.instance_net_filter == "off":
            self.instance_network = "unfiltered: APPLIANCE_INSTANCE_NET_FILTER=off"
            self.notes.append("instances with network default can reach this host's services "
                              "(APPLIANCE_INSTANCE_NET_FILTER=off)")
            return
        ok = nf.install((self.ports["edge"],) if "edge" in self.ports else ())
        self.instance_network = nf.status
        if not ok:
            if self.settings.instance_net_filter == "on":
                raise ValidationError(f"APPLIANCE_INSTANCE_NET_FILTER=on but the filter cannot be installed: "
                                      f"{nf.status}", field="instance_net_filter")
            self.notes.append(nf.status)

    def start(self) -> None:
        self.scaler.start()
        if self.async_runner is not None:
            self.async_runner.start()
        if self.schedules is not None:
            self.schedules.start()
        if self.queue_poller is not None:
            self.queue_poller.start()

    def add_closer(self, close) -> None:
        """Close ``close`` with the rest, before everything added earlier."""
        self._closers.append(close)

    def event_loop_client(self) -> AsyncInstanceClient:
        """A client to instances for the edge's event loop (one per loop)."""
        return AsyncInstanceClient(self.settings.max_reply_bytes)

    def close(self) -> None:
        if self.queue_poller is not None:
            self.queue_poller.stop()
        if self.schedules is not None:
            self.schedules.stop()
        if self.async_runner is not None:
            self.async_runner.stop()
        self.scaler.stop()
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - close everything we can
                log.exception("event=close_failed")


#: Files of the data directory that hold credentials (each 0600).
ADMIN_TOKEN_FILE = "admin.token"
INTERNAL_TOKEN_FILE = "internal.token"
SECRETS_KEY_FILE = "secrets.key"
INTERNAL_TOKEN_KEY = "internal/credential"


def private_dir(path: Path) -> None:
    """The data directory, readable by its owner alone: it holds the databases and credentials."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def private_file(path: Path, make=None) -> str | None:
    """Make an existing file 0600 and return its text; or, with ``make``, create it 0600 (never
    readable by others, not even for a moment) with ``make()``'s content when it is missing."""
    try:
        os.chmod(path, 0o600)
        return path.read_text().strip() if make is not None else None
    except FileNotFoundError:
        if make is None:
            return None
    value = make()
    value = value.decode() if isinstance(value, bytes) else value
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def private_db(path: Path) -> None:
    """A SQLite database and its journal files, 0600 (SQLite gives later journals the database's mode)."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        private_file(p)


def new_internal_token() -> str:
    import secrets
    return secrets.token_urlsafe(32)


def shared_internal_token(meta) -> str:
    """Cluster mode without APPLIANCE_INTERNAL_TOKEN: one credential for every edge and control
    plane, made by whichever starts first and kept in the metadata store (Consul KV, readable only
    with the appliance's own Consul token)."""
    from appliance.core.errors import RevisionConflict

    for _ in range(3):
        got = meta.get(INTERNAL_TOKEN_KEY)
        if got and isinstance(got[0].get("token"), str):
            return got[0]["token"]
        try:
            meta.put(INTERNAL_TOKEN_KEY, {"token": new_internal_token()}, expected_revision=0)
        except RevisionConflict:
            continue
    got = meta.get(INTERNAL_TOKEN_KEY)
    if not got:
        raise ValidationError("could not agree on the internal credential through the metadata store; "
                              "set APPLIANCE_INTERNAL_TOKEN", field="internal_token")
    return got[0]["token"]


def ensure_admin_token(c: Components) -> Path | None:
    """First start: an admin token when none exists, written to ``<data_dir>/admin.token`` (0600);
    with APPLIANCE_ADMIN_TOKEN (cluster mode, from Ansible), that token is seeded instead. Only the
    file's path is ever logged. Returns the file written, if any."""
    import time as _time

    from appliance.core import tokens

    s = c.settings
    if s.admin_token:
        value = s.admin_token
        sha = value[7:].lower() if value.startswith("sha256:") else tokens.digest(value)
        if c.tokens.put_hash(tokens.ADMIN_NAME, "admin", sha, created_by="APPLIANCE_ADMIN_TOKEN"):
            log.info("event=admin_token_seeded source=APPLIANCE_ADMIN_TOKEN token=%s", tokens.ADMIN_NAME)
        return None
    path = s.data_path / ADMIN_TOKEN_FILE
    for _ in range(5):
        if c.tokens.has_admin(_time.time()):
            return None
        name = tokens.ADMIN_NAME
        existing = {t.name for t in c.tokens.list(fresh=True)}
        n = 1
        while name in existing:  # an expired admin token keeps its name until revoked
            n += 1
            name = f"{tokens.ADMIN_NAME}-{n}"
        try:
            _, secret = c.tokens.create(name, "admin", created_by="first start")
            break
        except Conflict:  # another control plane made one at the same moment: use theirs
            continue
    else:
        return None
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, path)
    log.info("event=admin_token_created token=%s path=%s", name, path)
    return path


def layer_resolver(layers: LayerStore):
    """``NAME:VERSION`` -> digest, remembered: a layer version never changes while a function uses it."""
    known: dict[str, str] = {}

    def digest(ref: str) -> str:
        if ref not in known:
            known[ref] = layers.get(ref).digest
        return known[ref]
    return digest


def instance_platform_env(settings: Settings) -> dict[str, str]:
    """The runtime contract's variables that come from the appliance's settings (the Lambda environment)."""
    return {"FAAS_REGION": settings.region, "FAAS_ACCOUNT_ID": settings.account_id}


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
    comps = _build_cluster(settings) if settings.mode == "cluster" else _build_local(settings)
    _add_async(comps)
    return comps


def _add_async(c: Components) -> None:
    """The asynchronous-event queue and its runner: SQLite in the data directory, in both modes
    (in cluster mode each process keeps the events it accepted; see the README)."""
    from appliance.backends.sqlite_queue import SqliteEventQueue

    s = c.settings
    sqs = None
    if s.sqs_region or s.sqs_endpoint or s.sqs_async_queue:
        from appliance.backends.sqs_queue import SqsQueues
        sqs = SqsQueues.from_settings(s)
    queue = SqliteEventQueue(s.data_path / "events.sqlite3", max_pending=s.async_max_pending,
                             retention=s.async_retention, ledger=bool(s.sqs_async_queue))
    events = queue
    if s.sqs_async_queue:
        from appliance.backends.sqs_event_queue import SqsEventQueue
        events = SqsEventQueue(sqs, s.sqs_async_queue, queue, visibility_s=s.sqs_async_visibility_s)
    c.async_runner = AsyncRunner(events, c.store, c.invoker, workers=s.async_workers, share=s.async_share,
                                 backoff_s=s.async_backoff_s)
    c._closers.insert(0, queue.close)
    c.event_triggers = EventTriggerStore(c.store.meta, c.store)
    # A published version or alias a schedule or a queue trigger targets is in use (not deletable).
    c.store.published.trigger_users = c.event_triggers.users_of
    c.schedules = ScheduleLoop(c.event_triggers, c.async_runner, c.leadership)
    c.queues = QueueRouter(queue, sqs if (s.sqs_region or s.sqs_endpoint) else None)
    c.async_runner.queues = c.queues
    c.event_triggers.queue_check = c.queues.pick
    c.queue_poller = QueuePoller(c.event_triggers, c.queues, c.invoker, region=s.sqs_region or "local")


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
    from appliance.backends.fernet_secrets import FernetSecretBox
    from appliance.backends.nomad_scheduler import NomadScheduler
    from appliance.backends.s3_blob import S3BlobStore

    data = settings.data_path
    private_dir(data)
    notes: list[str] = []
    blobs = S3BlobStore.from_settings(settings)
    try:
        blobs.ensure_bucket()
    except ApplianceError as exc:  # the edge can serve warm instances without S3; say so
        notes.append(exc.message)
        log.warning("event=s3_unavailable error=%r", exc.message)
    meta = ConsulMetadataStore(settings.consul_addr, token=settings.consul_token,
                               stale_limit_s=settings.consul_stale_limit_s)
    store = FunctionStore(meta, blobs, limits(settings), cache_ttl_s=settings.metadata_cache_s,
                          secrets=FernetSecretBox(settings.secrets_key or None))
    internal = settings.internal_token or shared_internal_token(meta)
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
        retry_s=settings.nomad_retry_s, edge_id=me, region=settings.region, account_id=settings.account_id,
        layer_digest=layer_resolver(LayerStore(meta, blobs, limits(settings))))
    metrics = Metrics()
    activator = Activator(scheduler, registry, max_queue=settings.max_queue, start_timeout_s=settings.start_timeout_s,
                          observer=metrics)
    records = RecordStore(data / "invocations.sqlite3", retention=retention(settings))
    private_db(data / "invocations.sqlite3")
    policies = policy_cache(settings)
    invoker = Invoker(store, activator, client, scheduler, registry, records, policies,
                      queue_timeout_s=settings.queue_timeout_s, observer=metrics)
    # Several edges: one, elected through a Consul lock, decides from the sum of every edge's load.
    leadership = ConsulLeaderLock(settings.consul_addr, token=settings.consul_token, ttl_s=settings.leader_ttl_s)
    peers = PeerLoads(edges.edges, credential=internal)
    scaler = Scaler(activator, store, scheduler, registry, client, policies, interval_s=settings.reap_interval_s,
                    edge_id=me, leadership=leadership, peers=peers)
    comps = Components(settings=settings, store=store, scheduler=scheduler, registry=registry, activator=activator,
                       client=client, records=records, invoker=invoker, scaler=scaler, notes=notes,
                       edge_directory=edges, leadership=leadership,
                       tokens=TokenStore(meta, cache_ttl_s=settings.token_cache_s), internal_token=internal,
                       metrics=metrics)
    scheduler.observer = metrics
    metrics.watch(activator=activator, scheduler=scheduler, edge_port=lambda: comps.ports.get("edge"))
    # Closed last to first: the lock is released first, so another edge takes over at once.
    comps._closers = [records.close, client.close_all, scheduler.close, registry.close, edges.deregister, peers.close,
                      leadership.close]
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
        from appliance.instances.netfilter import claim_uid_block
        from appliance.instances.zygote_launcher import ZygoteLauncher
        cg, cg_reason = cgroups.detect()
        block = claim_uid_block(UID_BASE, UID_COUNT)
        try:
            launcher = ZygoteLauncher(runtimes, log_dir, cgroups=cg, uids=block.uids,
                                      log_bytes=settings.instance_log_bytes,
                                      snapshot_budget_mb=settings.snapshot_budget_mb,
                                      snapshot_keep_s=settings.snapshot_keep_s)
            launcher.uid_block = block
            launcher.check()
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means no sandbox
            reason = f"the instance sandbox does not work on this host: {exc}"
            if launcher is not None:
                launcher.close()
            if cg is not None:
                cg.close()
            block.release()
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
    from appliance.backends.fernet_secrets import FernetSecretBox
    from appliance.backends.local_blob import LocalBlobStore
    from appliance.backends.local_registry import LocalRegistry
    from appliance.backends.local_scheduler import CodeCache, LocalScheduler
    from appliance.backends.sqlite_meta import SqliteMetadataStore

    data = settings.data_path
    private_dir(data)
    lim = limits(settings)
    notes: list[str] = []
    meta = SqliteMetadataStore(data / "metadata.sqlite3")
    private_db(data / "metadata.sqlite3")
    blobs = LocalBlobStore(data / "packages")
    key = settings.secrets_key or private_file(data / SECRETS_KEY_FILE, FernetSecretBox.generate_key)
    store = FunctionStore(meta, blobs, lim, cache_ttl_s=settings.metadata_cache_s, secrets=FernetSecretBox(key))
    internal = settings.internal_token or private_file(data / INTERNAL_TOKEN_FILE, new_internal_token)
    registry = LocalRegistry()
    client = InstanceClient(settings.max_reply_bytes)
    launcher = _launcher(settings, data / "logs" / "instances", notes)
    code_cache = CodeCache(data / "code", blobs, lim)
    collect_unreferenced(store, blobs, code_cache)
    scheduler = LocalScheduler(registry=registry, blobs=blobs, code_cache=code_cache, launcher=launcher,
                               client=client, host="127.0.0.1", platform_env=instance_platform_env(settings),
                               layer_digest=layer_resolver(LayerStore(meta, blobs, lim)))
    metrics = Metrics()
    activator = Activator(scheduler, registry, max_queue=settings.max_queue, start_timeout_s=settings.start_timeout_s,
                          observer=metrics)
    records = RecordStore(data / "invocations.sqlite3", retention=retention(settings))
    private_db(data / "invocations.sqlite3")
    policies = policy_cache(settings)
    invoker = Invoker(store, activator, client, scheduler, registry, records, policies,
                      queue_timeout_s=settings.queue_timeout_s, observer=metrics)
    # One edge: it is its own scaling leader and decides from its own pools.
    leadership = SoleLeader(edge_id(settings))
    scaler = Scaler(activator, store, scheduler, registry, client, policies, interval_s=settings.reap_interval_s,
                    edge_id=leadership.holder["edge"], leadership=leadership)
    comps = Components(settings=settings, store=store, scheduler=scheduler, registry=registry, activator=activator,
                       client=client, records=records, invoker=invoker, scaler=scaler, notes=notes,
                       leadership=leadership,
                       tokens=TokenStore(meta, cache_ttl_s=settings.token_cache_s), internal_token=internal,
                       metrics=metrics)
    metrics.watch(activator=activator, scheduler=scheduler, edge_port=lambda: comps.ports.get("edge"))
    comps.seccomp = getattr(launcher, "seccomp", None)
    comps._closers = [meta.close, records.close, client.close_all, scheduler.close]
    block = getattr(launcher, "uid_block", None)
    if block is not None:
        from appliance.instances.netfilter import HostNetFilter
        comps.instance_uids = block.uids
        comps.netfilter = HostNetFilter(block)
        # Closed last: the rule stays until every instance has stopped.
        comps._closers.insert(0, comps.netfilter.remove)
    else:
        comps.instance_network = ("unfiltered: instances run as plain processes with the appliance's own uid, "
                                  "which no packet filter can tell apart")
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
