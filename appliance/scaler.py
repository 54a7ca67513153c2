"""The autoscaler loop of this edge: size each function, keep min_instances, reclaim idle ones.

Every ``interval_s`` and for every function with a pool or reserved instances, it runs the pure
decision (:func:`appliance.autoscaler.decide`) on the pool's observed concurrency and applies it:
start instances up to the desired count, and drain the idle instances
:func:`appliance.autoscaler.plan_reaping` picks (old versions at once; the least recently used
above the desired count; the last ones only after keep-alive). The same decision sizes cold-start
bursts on the request path (``FunctionPool._scale_for_waiters``), so a burst and a tick never
disagree.

Draining is two-phase so no request is lost: the slot is marked draining under the pool lock
(this edge sends it nothing more), then the instance is asked to drain with the idle time it must
have seen itself (it refuses if another edge used it meanwhile), and only an accepted drain
removes it.
"""

from __future__ import annotations

import logging
import threading
import time

from .activator import Activator, FunctionPool, Slot
from .autoscaler import Decision, InstanceView, ScalingPolicy, plan_reaping
from .function_store import FunctionStore
from .instance_client import InstanceClient
from .model import FunctionRecord, InstanceSpec
from .ports import Registry, Scheduler

log = logging.getLogger("appliance.scaler")


class PolicyCache:
    """ScalingPolicy per function, rebuilt only when the function's settings change.

    ``overrides`` are the operator's cluster-wide policy settings (windows, utilisation, rates).
    """

    def __init__(self, **overrides: float) -> None:
        self._overrides = overrides
        self._cache: dict[str, tuple[object, ScalingPolicy]] = {}

    def get(self, record: FunctionRecord) -> ScalingPolicy:
        hit = self._cache.get(record.name)
        if hit is not None and hit[0] is record.config:
            return hit[1]
        policy = ScalingPolicy.for_function(record.config, **self._overrides)
        self._cache[record.name] = (record.config, policy)
        return policy


class Scaler:
    def __init__(self, activator: Activator, store: FunctionStore, scheduler: Scheduler, registry: Registry,
                 client: InstanceClient, policies: PolicyCache, *, interval_s: float = 1.0, clock=time.monotonic):
        self.activator = activator
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.client = client
        self.policies = policies
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="scaler")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must survive one bad tick
                log.exception("event=scaler_tick_failed")

    def tick(self) -> dict[str, Decision]:
        """One pass over all functions; returns the decisions taken."""
        records = {r.name: r for r in self.store.list()}
        names = {p.name for p in self.activator.pools()}
        names |= {n for n, r in records.items() if r.config.min_instances and r.version}
        out = {}
        for name in sorted(names):
            d = self.tick_function(name, records.get(name))
            if d is not None:
                out[name] = d
        return out

    def tick_function(self, name: str, record: FunctionRecord | None) -> Decision | None:
        pool = self.activator.pool(name)
        if record is None or not record.version:
            self._drain(pool, self._all_idle(pool), reason="deleted")
            return None
        policy = self.policies.get(record)
        spec = InstanceSpec.of(record)
        now = self.clock()
        with pool.lock:
            if pool.spec is None or pool.spec.version != spec.version or pool.spec != spec:
                pool.spec = spec
            pool.policy = policy
            pool.max_instances = record.config.max_instances
            d = pool.decide(now)
            live = pool._live_count()
            for _ in range(max(0, d.desired - live)):
                pool._start(spec, reserved=False)
            views = [InstanceView(id=s.instance.id, function=name, version=s.instance.version,
                                  current_version_of_function=record.version, inflight=s.inflight,
                                  last_used=s.last_used) for s in pool.slots.values()
                     # A newer version is a deploy pre-warming before it takes traffic: not ours to reap.
                     if not s.draining and s.instance.version <= record.version]
            ids = plan_reaping(views, {name: policy}, now, {name: d.desired})
            chosen = []
            for iid in ids:
                slot = pool.slots.get(iid)
                if slot is not None and slot.inflight == 0:
                    slot.draining = True
                    idle = 0.0 if slot.instance.version != record.version else max(0.0, now - slot.last_used - 0.05)
                    chosen.append((slot, idle))
        if d.desired > live:
            log.info("event=scale_up function=%s from=%d to=%d mode=%s reason=%r", name, live, d.desired, d.mode,
                     d.reason)
        self._drain(pool, chosen, reason="scale-down" if d.desired else "keep-alive")
        return d

    @staticmethod
    def _all_idle(pool: FunctionPool) -> list[tuple[Slot, float]]:
        with pool.lock:
            chosen = [(s, 0.0) for s in pool.slots.values() if not s.draining and s.inflight == 0]
            for s, _ in chosen:
                s.draining = True
        return chosen

    def _drain(self, pool: FunctionPool, chosen: list[tuple[Slot, float]], *, reason: str) -> int:
        drained = 0
        for slot, min_idle_s in chosen:
            inst = slot.instance
            if self.client.drain(inst, int(min_idle_s * 1000)):
                drained += 1
                with pool.lock:
                    pool.slots.pop(inst.id, None)
                # Closing our connections lets the instance exit now instead of after its grace.
                self.client.close(inst.address)
                self.registry.forget(inst.id)
                mark = getattr(self.scheduler, "mark_stopping", None)
                if mark:
                    mark(inst.id, "drained")
                log.info("event=instance_drained instance=%s function=%s version=%s reason=%s idle_s=%.1f",
                         inst.id, pool.name, inst.version, reason, self.clock() - slot.last_used)
            else:
                with pool.lock:
                    slot.draining = False
        return drained

    def prewarm(self, record: FunctionRecord) -> None:
        """After a deploy: start min_instances of the new version now rather than at the next tick."""
        if record.version and record.config.min_instances:
            self.activator.ensure_min(InstanceSpec.of(record, reserved=True),
                                      min_instances=record.config.min_instances,
                                      max_instances=record.config.max_instances)

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
