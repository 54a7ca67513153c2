"""The composition root: builds the platform's parts from Settings.

This is the only module that imports ``appliance.backends``; everything else receives its
Scheduler, Registry, BlobStore and MetadataStore from here.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import codepkg
from .activator import Activator
from .config import Settings
from .errors import ValidationError
from .function_store import FunctionStore
from .instance_client import InstanceClient
from .invoker import Invoker
from .records import RecordStore
from .scaler import PolicyCache, Scaler

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
    #: Ports actually listened on, by role ("edge", "control"), once the server has started.
    ports: dict[str, int] = field(default_factory=dict)
    _closers: list = field(default_factory=list)

    def start(self) -> None:
        self.scaler.start()

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


def build(settings: Settings) -> Components:
    if settings.mode == "cluster":
        raise ValidationError("APPLIANCE_MODE=cluster needs the cluster backends, which this build does not "
                              "include yet; use APPLIANCE_MODE=local", field="mode")
    return _build_local(settings)


def _build_local(settings: Settings) -> Components:
    from .backends.local_blob import LocalBlobStore
    from .backends.local_registry import LocalRegistry
    from .backends.local_scheduler import CodeCache, LocalScheduler
    from .backends.process_launcher import ProcessLauncher
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
    launcher = ProcessLauncher(Path(settings.runtimes_dir), data / "logs" / "instances")
    if settings.sandbox == "on" and not shutil.which("bwrap"):
        raise ValidationError("APPLIANCE_SANDBOX=on but bubblewrap (bwrap) is not installed: "
                              "apt-get install bubblewrap", field="sandbox")
    code_cache = CodeCache(data / "code", blobs, lim)
    scheduler = LocalScheduler(registry=registry, blobs=blobs, code_cache=code_cache, launcher=launcher,
                               client=client, host="127.0.0.1")
    activator = Activator(scheduler, registry, max_queue=settings.max_queue, start_timeout_s=settings.start_timeout_s)
    records = RecordStore(data / "invocations.sqlite3", retention=settings.records_retention)
    policies = policy_cache(settings)
    invoker = Invoker(store, activator, client, scheduler, registry, records, policies,
                      queue_timeout_s=settings.queue_timeout_s)
    scaler = Scaler(activator, store, scheduler, registry, client, policies, interval_s=settings.reap_interval_s)
    comps = Components(settings=settings, store=store, scheduler=scheduler, registry=registry, activator=activator,
                       client=client, records=records, invoker=invoker, scaler=scaler, notes=notes)
    comps._closers = [meta.close, records.close, client.close_all, scheduler.close]
    return comps
