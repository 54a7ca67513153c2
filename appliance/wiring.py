"""The composition root: builds the platform's parts from Settings.

This is the only module that imports ``appliance.backends``; everything else receives its
Scheduler, Registry, BlobStore and MetadataStore from here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import codepkg
from .activator import Activator
from .config import Settings
from .errors import ValidationError
from .function_store import FunctionStore
from .instance_client import InstanceClient
from .invoker import Invoker
from .keepalive import KeepAliveLoop
from .records import RecordStore

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
    keepalive: KeepAliveLoop
    notes: list[str] = field(default_factory=list)
    _closers: list = field(default_factory=list)

    def start(self) -> None:
        self.keepalive.start()

    def close(self) -> None:
        self.keepalive.stop()
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - close everything we can
                log.exception("event=close_failed")


def limits(settings: Settings) -> codepkg.Limits:
    return codepkg.Limits(max_zip_bytes=settings.max_code_bytes, max_unpacked_bytes=settings.max_unpacked_bytes,
                          max_files=settings.max_files)


def build(settings: Settings) -> Components:
    if settings.mode == "cluster":
        raise ValidationError("APPLIANCE_MODE=cluster needs the cluster backends, which this build does not "
                              "include yet; use APPLIANCE_MODE=local", field="mode")
    return _build_local(settings)


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
    from .backends.process_launcher import ProcessLauncher

    runtimes = Path(settings.runtimes_dir)
    if settings.sandbox == "off":
        notes.append("sandbox off (APPLIANCE_SANDBOX=off): instances run as plain processes with rlimits only")
        return ProcessLauncher(runtimes, log_dir)
    reason = sandbox_unavailable()
    launcher = None
    if reason is None:
        from . import cgroups
        from .backends.zygote_launcher import ZygoteLauncher
        cg, cg_reason = cgroups.detect()
        try:
            launcher = ZygoteLauncher(runtimes, log_dir, cgroups=cg)
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
            log.info("event=sandbox_ready launcher=zygote cgroups=%r", cg.describe() if cg else None)
            return launcher
    if settings.sandbox == "on":
        raise ValidationError(f"APPLIANCE_SANDBOX=on but {reason}; fix that or set APPLIANCE_SANDBOX=off",
                              field="sandbox")
    notes.append(f"sandbox unavailable, instances run as plain processes: {reason}")
    log.warning("event=sandbox_unavailable fallback=process reason=%r", reason)
    return ProcessLauncher(runtimes, log_dir)


def _build_local(settings: Settings) -> Components:
    from .backends.local_blob import LocalBlobStore
    from .backends.local_registry import LocalRegistry
    from .backends.local_scheduler import CodeCache, LocalScheduler
    from .backends.sqlite_meta import SqliteMetadataStore

    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    lim = limits(settings)
    notes: list[str] = []
    meta = SqliteMetadataStore(data / "metadata.sqlite3")
    blobs = LocalBlobStore(data / "packages")
    store = FunctionStore(meta, blobs, lim, cache_ttl_s=settings.metadata_cache_s)
    registry = LocalRegistry()
    client = InstanceClient()
    launcher = _launcher(settings, data / "logs" / "instances", notes)
    code_cache = CodeCache(data / "code", blobs, lim)
    scheduler = LocalScheduler(registry=registry, blobs=blobs, code_cache=code_cache, launcher=launcher,
                               client=client, host="127.0.0.1")
    activator = Activator(scheduler, registry, max_queue=settings.max_queue, start_timeout_s=settings.start_timeout_s)
    records = RecordStore(data / "invocations.sqlite3", retention=settings.records_retention)
    invoker = Invoker(store, activator, client, scheduler, registry, records, queue_timeout_s=settings.queue_timeout_s)
    keepalive = KeepAliveLoop(activator, store, scheduler, registry, client, interval_s=settings.reap_interval_s)
    comps = Components(settings=settings, store=store, scheduler=scheduler, registry=registry, activator=activator,
                       client=client, records=records, invoker=invoker, keepalive=keepalive, notes=notes)
    comps._closers = [meta.close, records.close, client.close_all, scheduler.close]
    return comps
