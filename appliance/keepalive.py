"""Keep-alive: reclaim idle instances (scale to zero) and keep ``min_instances`` warm.

The decision (``plan``) is a pure function of the pool's slots, the function's settings and
``now``; the loop applies it. Draining is two-phase so no request is lost: the slot is marked
draining under the pool lock (this edge sends it nothing more), then the instance is asked to
drain with the idle time it must have seen itself (it refuses if another edge used it meanwhile),
and only an accepted drain removes it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .activator import Activator, Slot
from .function_store import FunctionStore
from .instance_client import InstanceClient
from .model import FunctionRecord, InstanceSpec
from .ports import Registry, Scheduler

log = logging.getLogger("appliance.keepalive")


@dataclass(frozen=True)
class SlotView:
    id: str
    version: int
    inflight: int
    last_used: float
    reserved: bool = False


def plan(slots: list[SlotView], *, current_version: int | None, keep_alive_s: float, min_instances: int,
         now: float) -> list[tuple[str, float]]:
    """(instance id, minimum idle seconds the instance must confirm) for each one to drain.

    Old versions go as soon as they are idle; newer ones (being pre-warmed by a deploy) stay. Of the current version, instances idle for
    ``keep_alive_s`` go, least recently used first, keeping ``min_instances`` (the most recently
    used ones). A deleted function (``current_version`` None) loses all idle instances.
    """
    out: list[tuple[str, float]] = []
    current = []
    for s in slots:
        if s.inflight:
            if s.version == current_version:
                current.append(s)
            continue
        if current_version is None or s.version < current_version:
            out.append((s.id, 0.0))
        elif s.version > current_version:
            continue  # a deploy pre-warming its version before it takes traffic
        else:
            current.append(s)
    current.sort(key=lambda s: s.last_used)  # least recently used first
    removable = max(0, len(current) - min_instances)
    for s in current:
        if removable <= 0:
            break
        if s.inflight == 0 and now - s.last_used >= keep_alive_s:
            out.append((s.id, keep_alive_s))
            removable -= 1
    return out


class KeepAliveLoop:
    def __init__(self, activator: Activator, store: FunctionStore, scheduler: Scheduler, registry: Registry,
                 client: InstanceClient, *, interval_s: float = 1.0, clock=time.monotonic):
        self.activator = activator
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.client = client
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="keepalive")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the loop must survive one bad sweep
                log.exception("event=keepalive_sweep_failed")

    def sweep(self) -> int:
        """One pass over all functions; returns the number of instances drained."""
        drained = 0
        names = {p.name for p in self.activator.pools()}
        records = {r.name: r for r in self.store.list()}
        for name in names | {n for n, r in records.items() if r.config.min_instances and r.version}:
            drained += self.sweep_function(name, records.get(name))
        return drained

    def sweep_function(self, name: str, record: FunctionRecord | None) -> int:
        pool = self.activator.pool(name)
        now = self.clock()
        with pool.lock:
            views = [SlotView(s.instance.id, s.instance.version, s.inflight, s.last_used, s.reserved)
                     for s in pool.slots.values() if not s.draining]
            decisions = plan(views, current_version=record.version if record else None,
                             keep_alive_s=record.config.keep_alive_s if record else 0,
                             min_instances=record.config.min_instances if record else 0, now=now)
            chosen: list[tuple[Slot, float]] = []
            for iid, min_idle in decisions:
                slot = pool.slots.get(iid)
                if slot is not None and slot.inflight == 0:
                    slot.draining = True
                    chosen.append((slot, min_idle))
        drained = 0
        for slot, min_idle in chosen:
            inst = slot.instance
            if self.client.drain(inst, int(min_idle * 1000)):
                drained += 1
                with pool.lock:
                    pool.slots.pop(inst.id, None)
                self.registry.forget(inst.id)
                mark = getattr(self.scheduler, "mark_stopping", None)
                if mark:
                    mark(inst.id, "drained")
                log.info("event=instance_drained instance=%s function=%s version=%s idle_s=%.1f",
                         inst.id, name, inst.version, now - slot.last_used)
            else:
                with pool.lock:
                    slot.draining = False
        if record is not None and record.version and record.config.min_instances:
            self.activator.ensure_min(InstanceSpec.of(record, reserved=True),
                                      min_instances=record.config.min_instances,
                                      max_instances=record.config.max_instances)
        return drained

    def remove_function(self, name: str) -> None:
        """Stop every instance of a deleted function, whatever it is doing."""
        pool = self.activator.pool(name)
        with pool.lock:
            slots = list(pool.slots.values())
            pool.slots.clear()
            for s in slots:
                s.draining = True
        instances = {s.instance.id: s.instance for s in slots}
        instances.update({i.id: i for i in self.scheduler.instances(name)})
        for inst in instances.values():
            self.registry.forget(inst.id)
            self.scheduler.stop(inst, graceful=True)
