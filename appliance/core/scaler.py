"""The autoscaler loop of this edge: size each function, keep min_instances, reclaim idle ones.

Every ``interval_s`` and for every function with a pool or reserved instances, it runs the pure
decision (:func:`appliance.core.autoscaler.decide`) on the pool's observed concurrency and applies it:
start instances up to the desired count, and drain the idle instances
:func:`appliance.core.autoscaler.plan_reaping` picks (old versions at once; the least recently used
above the desired count; the last ones only after keep-alive). The same decision sizes cold-start
bursts on the request path (``FunctionPool._scale_for_waiters``), so a burst and a tick never
disagree.

Draining is two-phase so no request is lost: the slot is marked draining under the pool lock
(this edge sends it nothing more), then the instance is asked to drain with the idle time it must
have seen itself (it refuses if another edge used it meanwhile), and only an accepted drain
removes it.

Several edges (cluster mode): each edge sees only its share of the traffic, so one elected edge
(``leadership``, see :mod:`appliance.core.leadership`) decides for the cluster. On every tick it asks
the other edges for their concurrency (``peers``, :mod:`appliance.cluster.peer_loads`), sums them per
wall-clock second (:func:`appliance.core.cluster_load.sum_reports`) and runs the same ``decide`` on
the sum. Only the leader starts instances ahead of traffic and reaps; the other edges' ticks do
nothing (their requests still start what they wait for, on the request path). The cluster
decision keeps its own :class:`ScalerState` per function, in wall-clock seconds, started afresh
when this edge becomes leader, with ``last_demand_at`` = the moment it took over: a new leader
knows nothing of the past keep-alive, so it keeps every instance for one keep-alive first.

Embedded mode has no peers: the one edge decides from its pools as it always has.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

from appliance.core import scheduled_min
from appliance.core.activator import Activator, FunctionPool, Slot
from appliance.core.autoscaler import Decision, InstanceView, ScalerState, ScalingPolicy, decide, plan_reaping
from appliance.core.cluster_load import EdgeReport, SummedLoad, report_of, sum_reports
from appliance.core.errors import ApplianceError
from appliance.core.function_store import FunctionStore
from appliance.core.leadership import SoleLeader
from appliance.core.model import FunctionRecord, InstanceSpec
from appliance.core.observe import safely
from appliance.core.ports import InstanceClient, Registry, Scheduler

log = logging.getLogger("appliance.core.scaler")


class PolicyCache:
    """ScalingPolicy per function, rebuilt only when the function's settings change.

    ``overrides`` are the operator's cluster-wide policy settings (windows, utilisation, rates).
    """

    def __init__(self, wall=time.time, **overrides: float) -> None:
        self._overrides = overrides
        self._cache: dict[str, tuple[object, ScalingPolicy]] = {}
        self._wall = wall

    def get(self, record: FunctionRecord, pool: str | None = None) -> ScalingPolicy:
        """``pool``: the pool's key (``NAME:N`` for a published version, whose settings are its own)."""
        config = record.config
        pool = pool or record.name
        schedule = getattr(config, "min_instances_schedule", None)
        # A scheduled min_instances changes at most once a minute (cron's resolution).
        key = (config, int(self._wall() // 60)) if schedule else config
        hit = self._cache.get(pool)
        if hit is not None and (hit[0] is key if not schedule else hit[0] == key and hit[0][0] is config):
            return hit[1]
        policy = ScalingPolicy.for_function(config, **self._overrides)
        if schedule:
            n, _ = scheduled_min.effective_min(schedule, config.min_instances, self._wall())
            policy = dataclasses.replace(policy, min_instances=min(n, config.max_instances))
        self._cache[pool] = (key, policy)
        return policy


@dataclass(frozen=True)
class ScalingRecord:
    """A function's latest scaling decision as `faas describe` and the API show it: who decided,
    from how many edges' load, and what."""

    decided_by: str
    edges: tuple[str, ...]               # edges whose load was summed
    missing: tuple[str, ...]             # edges asked that did not answer
    concurrency: float                   # requests in flight now, summed over the edges
    queued: int                          # requests waiting for an instance now, summed
    current: int                         # instances ready (cluster-wide)
    decision: Decision
    at: float | None                     # wall-clock time of the decision

    def to_dict(self) -> dict:
        d = self.decision
        return {"decided_by": self.decided_by, "edges": len(self.edges), "edge_ids": list(self.edges),
                "edges_missing": list(self.missing), "concurrency": round(self.concurrency, 3),
                "queued": self.queued, "current": self.current, "desired": d.desired, "mode": d.mode,
                "reason": d.reason, "stable_concurrency": round(d.stable_concurrency, 3),
                "panic_concurrency": round(d.panic_concurrency, 3), "decided_at": self.at}


#: Drain requests an instance may refuse in a row, each after this edge saw it idle for its
#: keep-alive, before it is stopped all the same (in cluster mode other edges' traffic can make
#: a refusal honest, so more than one).
MAX_DRAIN_REFUSALS = 3


class Scaler:
    def __init__(self, activator: Activator, store: FunctionStore, scheduler: Scheduler, registry: Registry,
                 client: InstanceClient, policies: PolicyCache, *, interval_s: float = 1.0, clock=time.monotonic,
                 edge_id: str = "local", leadership=None, peers=None, wall=time.time):
        self.activator = activator
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.client = client
        self.policies = policies
        self.interval_s = interval_s
        self.clock = clock
        self.wall = wall
        #: This edge's name in reports and decisions.
        self.edge_id = edge_id
        self.leadership = leadership if leadership is not None else SoleLeader(edge_id)
        #: Cluster mode: the other edges' loads (PeerLoads); None: this edge is all the traffic.
        self.peers = peers
        self._leading: bool | None = None  # unknown until the first tick, which logs the role
        self._lock = threading.Lock()  # guards the two maps below
        self._states: dict[str, ScalerState] = {}
        self._decisions: dict[str, ScalingRecord] = {}
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
            except Exception as exc:  # noqa: BLE001 - the loop must survive one bad tick
                log.exception("event=scaler_tick_failed")
                safely(self.activator.observer.backend_error, "scaler", getattr(exc, "code", type(exc).__name__))

    def tick(self) -> dict[str, Decision]:
        """One pass over all functions; returns the decisions taken (none unless this edge leads)."""
        leading = self.leadership.is_leader()
        if leading != self._leading:
            self._leading = leading
            with self._lock:  # a new term starts from nothing; a follower has no decisions to show
                self._states.clear()
                self._decisions.clear()
            log.info("event=scaler_role edge=%s role=%s", self.edge_id, "leader" if leading else "follower")
        if not leading:
            return {}
        records = {r.name: r for r in self.store.list()}
        names = {p.name for p in self.activator.pools()}
        names |= {n for n, r in records.items() if (r.config.min_instances or r.config.min_instances_schedule)
                  and r.version}
        names |= self._aliased_with_min(records)
        summed = own = None
        if self.peers is not None:
            summed, own = self._sum_loads()
            names |= set(summed.functions)
        out = {}
        for name in sorted(names):
            d = self.tick_function(name, self._record_of(name, records), summed, own)
            if d is not None:
                out[name] = d
        return out

    def _record_of(self, name: str, records: dict[str, FunctionRecord]) -> FunctionRecord | None:
        """What the pool ``name`` runs: the function's record, or for ``NAME:N`` its published version N
        (None when either is gone)."""
        base, _, number = name.partition(":")
        record = records.get(base)
        if not number or record is None:
            return record
        try:
            return self.store.published.build(record, int(number))
        except (ApplianceError, ValueError):
            return None

    def _aliased_with_min(self, records: dict[str, FunctionRecord]) -> set[str]:
        """Pools of published versions an alias routes to whose settings keep min_instances."""
        if not getattr(self.scheduler, "supports_published", False):
            return set()
        out = set()
        for r in records.values():
            for number in r.routing.routed():
                got = self._record_of(f"{r.name}:{number}", records)
                if got is not None and (got.config.min_instances or got.config.min_instances_schedule):
                    out.add(f"{r.name}:{number}")
        return out

    def report(self) -> EdgeReport:
        """This edge's concurrency per function, in wall-clock seconds (``GET /_/concurrency``)."""
        views, starting = {}, {}
        now_mono, now_wall = self.clock(), self.wall()
        for pool in self.activator.pools():
            with pool.lock:
                views[pool.name] = pool.observe(now_mono)
                starting[pool.name] = pool.starting
        return report_of(self.edge_id, views, starting, now_mono, now_wall)

    def _sum_loads(self) -> tuple[SummedLoad, EdgeReport]:
        own = self.report()
        reports: dict[str, EdgeReport | None] = {self.edge_id: own}
        reports.update(self.peers.collect())
        return sum_reports(reports, self.wall()), own

    def decision(self, name: str) -> ScalingRecord | None:
        """The latest decision for ``name`` this process knows: its own cluster decision when it
        leads, its pool's decision in embedded mode, None otherwise."""
        if self.peers is not None:
            with self._lock:
                return self._decisions.get(name)
        pool = self.activator.pool(name)
        with pool.lock:
            d = pool.last_decision
            if d is None:
                return None
            return ScalingRecord(decided_by=self.edge_id, edges=(self.edge_id,), missing=(),
                                 concurrency=float(pool.inflight), queued=len(pool.waiters),
                                 current=pool._live_count(), decision=d, at=None)

    def tick_function(self, name: str, record: FunctionRecord | None, summed: SummedLoad | None = None,
                      own: EdgeReport | None = None) -> Decision | None:
        pool = self.activator.pool(name)
        if record is None or not record.version:
            with pool.lock:
                serving = any(not s.draining for s in pool.slots.values())
            if serving and not self._gone(name):
                return None
            self._drain(pool, self._all_idle(pool), reason="deleted")
            return None
        policy = self.policies.get(record, name)
        spec = InstanceSpec.of(record, published=_published_of(name))
        now = self.clock()
        with pool.lock:
            if pool.spec is None or pool.spec.version != spec.version or pool.spec != spec:
                pool.spec = spec
            pool.policy = policy
            pool.max_instances = record.config.max_instances
            if summed is None:
                d = pool.decide(now)
                live = pool._live_count()
            else:
                d, live = self._decide_for_cluster(name, pool, policy, summed, own)
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

    def _decide_for_cluster(self, name: str, pool: FunctionPool, policy: ScalingPolicy, summed: SummedLoad,
                            own: EdgeReport | None) -> tuple[Decision, int]:
        """The leader's decision from every edge's load. Pool lock held. Returns it and the
        instances live or starting anywhere (other edges' starts are not in Consul yet)."""
        load = summed.load(name)
        mine = own.functions.get(name) if own is not None else None
        starting_elsewhere = max(0, load.starting - (mine.starting if mine is not None else 0))
        ready = pool.observe(self.clock()).instances
        now_wall = self.wall()
        with self._lock:
            state = self._states.get(name) or ScalerState(last_demand_at=now_wall)
        d = decide(load.observation(ready), policy, state, now_wall)
        rec = ScalingRecord(decided_by=self.edge_id, edges=summed.edges, missing=summed.missing,
                            concurrency=load.in_flight, queued=load.queued, current=ready, decision=d, at=now_wall)
        with self._lock:
            self._states[name] = d.state
            self._decisions[name] = rec
        return d, pool._live_count() + starting_elsewhere

    def _gone(self, name: str) -> bool:
        """Whether ``name`` is really deleted, asked directly before its instances are drained.

        The tick's list may be the last good view a metadata store serves while Consul does not
        answer, and that view lacks functions deployed after it was taken: draining their warm
        instances would turn an outage the edge rides out into failed requests. When the store
        cannot say, the function is kept; the next tick asks again."""
        base, _, number = name.partition(":")
        try:
            record = self.store.find(base, fresh=True)
        except ApplianceError as exc:
            log.info("event=delete_check_deferred function=%s error=%s", name, exc.code)
            return False
        if number and record is not None and int(number) not in record.routing.published:
            return True  # the published version was deleted
        return record is None or not record.version

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
                    slot.drain_refusals += 1
                    refusals = slot.drain_refusals
                    slot.draining = False
                    # It refused because it is busy or was just used (by another edge, or it
                    # would have been busy here): treat it as used now, so the next pass picks
                    # another idle instance instead of asking this one again.
                    slot.last_used = max(slot.last_used, self.clock())
                    forced = refusals >= MAX_DRAIN_REFUSALS or reason == "deleted"
                    if forced:
                        pool.slots.pop(inst.id, None)
                if forced:
                    # The platform decides an instance's life: one that keeps refusing to drain
                    # (or whose function is gone) is stopped: SIGTERM, then SIGKILL after a grace.
                    self.registry.forget(inst.id)
                    self.client.close(inst.address)
                    self.scheduler.stop(inst, graceful=True)
                    log.warning("event=instance_reclaimed instance=%s function=%s refusals=%d reason=%s",
                                inst.id, pool.name, refusals, reason)
        return drained

    def prewarm(self, record: FunctionRecord) -> None:
        """After a deploy: start min_instances of the new version now rather than at the next tick."""
        if record.version and record.config.min_instances:
            self.activator.ensure_min(InstanceSpec.of(record, reserved=True),
                                      min_instances=record.config.min_instances,
                                      max_instances=record.config.max_instances)

    def remove_function(self, name: str) -> None:
        """Stop every instance of a deleted function (of every version), whatever it is doing."""
        slots = []
        for pool in self.activator.pools_of(name) or [self.activator.pool(name)]:
            with pool.lock:
                slots += list(pool.slots.values())
                pool.slots.clear()
                for s in slots:
                    s.draining = True
        instances = {s.instance.id: s.instance for s in slots}
        instances.update({i.id: i for i in self.scheduler.instances(name)})
        for inst in instances.values():
            self.registry.forget(inst.id)
            self.scheduler.stop(inst, graceful=True)


def _published_of(pool: str) -> int:
    """The published version a pool key names (``NAME:N``), 0 for ``$LATEST``."""
    _, _, number = pool.partition(":")
    return int(number) if number else 0
