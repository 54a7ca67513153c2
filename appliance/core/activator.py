"""The activator: which instance serves a request, and when to start another.

Per function, this edge keeps a :class:`FunctionPool` of slots (ready instances with this edge's
count of requests in flight on each). A request takes a free slot (a warm start) or joins a
bounded FIFO queue; joining the queue starts exactly as many instances as the queue needs, up to
``max_instances`` (a cold start is single-flight: fifty requests to a cold function with
concurrency 1 and max_instances 5 start five instances, not fifty). When a slot frees, or a new
instance becomes ready, it is handed to the oldest waiter directly, so waiters are served in
arrival order and none is skipped. A waiter that is not served by its deadline leaves the queue
with :class:`ColdStartTimeout`; a full queue refuses at once with :class:`QueueFull`.

The pool never opens sockets itself: instances come from the ``Scheduler`` and the ``Registry``
(instances started by another edge appear through the registry), and the invoker reports back
how each request ended (``release``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from appliance.core.autoscaler import ConcurrencyWindow, Decision, Observation, ScalerState, ScalingPolicy, decide
from appliance.core.errors import ApplianceError, ColdStartTimeout, FunctionError, PlacementFailed, QueueFull
from appliance.core.model import Instance, InstanceSpec
from appliance.core.observe import NULL_OBSERVER, Observer, safely
from appliance.core.ports import Registry, Scheduler

log = logging.getLogger("appliance.core.activator")

#: How long a version whose code failed to load answers with that error without trying again.
#: Stops a broken function from costing a process start per request.
INIT_FAILURE_TTL_S = 2.0
#: Seconds of concurrency history kept per function: the default stable window and a margin.
WINDOW_HORIZON_S = 62.0
#: How long a slot the instance refused for capacity (another edge filled it) is skipped.
REFUSED_BACKOFF_S = 0.05


class ColdCause:
    NO_INSTANCE = "no-instance"
    ALL_BUSY = "all-busy"
    NEW_VERSION = "new-version"
    AFTER_CRASH = "after-crash"


@dataclass
class Slot:
    """An instance as this edge tracks it."""

    instance: Instance
    inflight: int = 0
    last_used: float = 0.0
    #: Being drained by the reaper: takes no new requests.
    draining: bool = False
    #: The instance refused for capacity at this time; skip it briefly.
    refused_at: float = -1.0
    reserved: bool = False
    #: Drain requests it refused in a row although this edge saw it idle (see Scaler._drain).
    drain_refusals: int = 0


@dataclass
class Lease:
    """One request's hold on one slot."""

    slot: Slot
    cold: bool
    cause: str | None = None
    queue_ms: float = 0.0
    #: Cold-start phases (ms) of the instance, when this request waited for its start.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def instance(self) -> Instance:
        return self.slot.instance


class _Waiter:
    """A queued request, woken (lock held, from any thread) once it has a lease or an error: a
    thread waits on an event; a coroutine awaits a future of its event loop."""

    __slots__ = ("event", "fut", "loop", "loop_thread", "lease", "error", "enqueued", "cause")

    def __init__(self, enqueued: float, cause: str, loop=None):
        self.loop = loop
        if loop is None:
            self.event, self.fut = threading.Event(), None
        else:
            self.event, self.fut = None, loop.create_future()
            self.loop_thread = threading.get_ident()
        self.lease: Lease | None = None
        self.error: BaseException | None = None
        self.enqueued = enqueued
        self.cause = cause

    def wake(self) -> None:
        if self.loop is None:
            self.event.set()
        elif threading.get_ident() == self.loop_thread:
            _resolve(self.fut)  # released on the loop itself: no need to wake the loop up
        else:
            self.loop.call_soon_threadsafe(_resolve, self.fut)


def _resolve(fut) -> None:
    if not fut.done():
        fut.set_result(None)


class FunctionPool:
    """Slots, starts and waiters of one function at this edge. ``lock`` guards all of them.

    ``name`` is the pool's key (:func:`~appliance.core.model.pool_key`): the function's name for its
    ``$LATEST`` instances, ``NAME:N`` for the instances of published version N, which have their own
    settings and code and so never serve another version's requests. ``function`` is the bare name."""

    def __init__(self, name: str, activator: Activator):
        self.name = name
        self.function = name.partition(":")[0]
        self.a = activator
        self.lock = threading.Lock()
        self.slots: dict[str, Slot] = {}
        self.starting = 0
        self.waiters: deque[_Waiter] = deque()
        self.spec: InstanceSpec | None = None
        self.max_instances = 1
        self.max_queue = activator.max_queue
        self.last_crash_at = -math.inf
        self.init_failure: tuple[int, float, BaseException] | None = None  # (version, at, error)
        #: Requests in flight on this edge, and its per-second history for the autoscaler.
        self.inflight = 0
        self.window_horizon = WINDOW_HORIZON_S
        self.window = ConcurrencyWindow(horizon_s=WINDOW_HORIZON_S)
        self.policy: ScalingPolicy | None = None
        self.state = ScalerState()
        self.last_decision: Decision | None = None

    def _inflight_changed(self, delta: int, now: float) -> None:
        """Lock held. The clock is read again here, under the lock, so records never go back in
        time when threads that read ``now`` earlier take the lock in another order."""
        self.inflight = max(0, self.inflight + delta)
        self.window.record(self.a.clock(), self.inflight)

    def observe(self, now: float) -> Observation:
        """What the autoscaler needs from this edge. Lock held.

        ``instances`` counts ready instances only: the policy's scale-up rate is relative to what
        already serves, so a burst arriving while instances start cannot compound it request by
        request.
        """
        version = self.spec.version if self.spec is not None else None
        ready = sum(1 for s in self.slots.values()
                    if not s.draining and (version is None or s.instance.version == version))
        return Observation(samples=self.window.samples(now), instances=ready, in_flight=self.inflight,
                           queued=len(self.waiters), observed_since=self.window.since)

    def decide(self, now: float) -> Decision | None:
        """Run the autoscaler's decision on this edge's view and keep its state. Lock held."""
        if self.policy is None:
            return None
        if self.policy.stable_window_s + 2 > self.window_horizon:
            # An operator chose a longer stable window: keep enough history for it.
            self.window_horizon = self.policy.stable_window_s + 2
            self.window = ConcurrencyWindow(horizon_s=self.window_horizon)
        d = decide(self.observe(now), self.policy, self.state, now)
        self.state = d.state
        self.last_decision = d
        return d

    # -- picking ----------------------------------------------------------------------

    def _pick(self, version: int, now: float) -> Slot | None:
        """The most recently used slot of ``version`` with room: packing requests onto few
        instances lets the others go idle and be reclaimed."""
        best = None
        for s in self.slots.values():
            if (s.instance.version != version or s.draining or s.inflight >= s.instance.concurrency
                    or now - s.refused_at < REFUSED_BACKOFF_S):
                continue
            if best is None or s.last_used > best.last_used:
                best = s
        return best

    def _cause(self, version: int) -> str:
        current = [s for s in self.slots.values() if s.instance.version == version and not s.draining]
        if current or self.starting:
            return ColdCause.ALL_BUSY
        if any(s.instance.version != version for s in self.slots.values()):
            return ColdCause.NEW_VERSION
        if self.a.clock() - self.last_crash_at < 60:
            return ColdCause.AFTER_CRASH
        return ColdCause.NO_INSTANCE

    # -- starting ---------------------------------------------------------------------

    def wait_ready(self, version: int, want: int, timeout_s: float) -> int:
        """Ready instances of ``version``, once ``want`` are or no start is under way (or at the timeout).
        For a deploy or an alias move waiting on its pre-warm, not for requests: a short poll of the
        pool is cheap enough there."""
        end = time.monotonic() + timeout_s
        while True:
            with self.lock:
                ready = sum(1 for s in self.slots.values() if s.instance.version == version and not s.draining)
                starting = self.starting
            if ready >= want or not starting or time.monotonic() > end:
                return ready
            time.sleep(0.005)

    def _live_count(self) -> int:
        """Instances of the current version ready or starting (starts are always current)."""
        version = self.spec.version if self.spec is not None else None
        return sum(1 for s in self.slots.values()
                   if not s.draining and (version is None or s.instance.version == version)) + self.starting

    def _scale_for_waiters(self) -> None:
        """Start the instances the queue needs, as the autoscaling policy sizes them. Lock held.

        The policy counts queued requests as demand (ceil((in flight + queued) / concurrency)),
        limited by its scale-up rate and max_instances: a burst of N starts neither N nor 1. Never
        more than the queue itself can use, and at least one when nothing is running or starting.
        """
        spec = self.spec
        if spec is None or not self.waiters:
            return
        live = self._live_count()
        allowed = self.max_instances - live
        coming = self.starting * spec.concurrency
        need = math.ceil(max(0, len(self.waiters) - coming) / spec.concurrency)
        if allowed <= 0 or need <= 0:
            return  # nothing could start: spare the decision (this runs for every queued request)
        d = self.decide(self.a.clock())
        wanted = (d.desired - live) if d is not None else need
        if live == 0:
            wanted = max(wanted, 1)
        for _ in range(max(0, min(wanted, need, allowed))):
            self._start(spec, reserved=False)

    def _start(self, spec: InstanceSpec, *, reserved: bool) -> None:
        self.starting += 1
        threading.Thread(target=self._run_start, args=(spec, reserved), daemon=True,
                         name=f"start-{spec.function}").start()

    def _run_start(self, spec: InstanceSpec, reserved: bool) -> None:
        a = self.a
        t0 = a.clock()
        try:
            instance = a.scheduler.start(spec, deadline=t0 + a.start_timeout_s)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiters
            log.warning("event=cold_start_failed function=%s version=%s error=%s message=%r",
                        spec.function, spec.version, getattr(exc, "code", type(exc).__name__), str(exc))
            if not isinstance(exc, FunctionError):  # the function's own init failure is not the scheduler's
                safely(a.observer.backend_error, "scheduler", getattr(exc, "code", type(exc).__name__))
            with self.lock:
                self.starting -= 1
                if isinstance(exc, FunctionError):
                    self.init_failure = (spec.version, a.clock(), exc)
                if not isinstance(exc, ApplianceError):
                    exc = PlacementFailed(f"could not start an instance of {spec.function!r}: {exc}")
                # Fail the waiters that no instance, running or starting, will serve.
                capacity = self.starting * spec.concurrency + sum(
                    s.instance.concurrency for s in self.slots.values()
                    if s.instance.version == spec.version and not s.draining)
                while len(self.waiters) > capacity:
                    w = self.waiters.pop()
                    w.error = exc
                    w.wake()
                for slot in list(self.slots.values()):
                    self._hand_off(slot, cold=False)
            return
        instance.phases.setdefault("placement", round((a.clock() - t0) * 1000, 3))
        with self.lock:
            self.starting -= 1
            # The registry may already have told us about it (it registers before start returns).
            slot = self.slots.get(instance.id)
            if slot is None:
                slot = self.slots[instance.id] = Slot(instance=instance, last_used=a.clock())
            slot.reserved = slot.reserved or reserved
            slot.instance.phases.update(instance.phases)
            self.init_failure = None
            self._hand_off(slot, cold=True)
            if self.waiters:
                self._scale_for_waiters()

    # -- handing out --------------------------------------------------------------------

    def _hand_off(self, slot: Slot, *, cold: bool) -> None:
        """Give free room on ``slot`` to the oldest waiters. Lock held."""
        now = self.a.clock()
        while self.waiters and not slot.draining and slot.inflight < slot.instance.concurrency:
            if self.spec is not None and slot.instance.version != self.spec.version:
                return
            w = self.waiters.popleft()
            slot.inflight += 1
            slot.last_used = now
            self._inflight_changed(+1, now)
            w.lease = Lease(slot=slot, cold=cold, cause=w.cause if cold else None,
                            queue_ms=round((now - w.enqueued) * 1000, 3),
                            phases=dict(slot.instance.phases) if cold else {})
            w.wake()


class Activator:
    """Hands out instances for requests; see the module docstring."""

    def __init__(self, scheduler: Scheduler, registry: Registry, *, max_queue: int = 100,
                 start_timeout_s: float = 30.0, clock=time.monotonic, observer: Observer = NULL_OBSERVER):
        self.scheduler = scheduler
        self.registry = registry
        #: Requests that may wait per function (Knative's breaker queue depth, per function).
        self.max_queue = max_queue
        #: Longest a scheduler may take to make one instance ready.
        self.start_timeout_s = start_timeout_s
        self.clock = clock
        #: Told of failed instance starts (metrics; see appliance/core/observe.py).
        self.observer = observer
        self._lock = threading.Lock()  # guards _pools and _by_function
        self._pools: dict[str, FunctionPool] = {}
        #: function -> its pools ($LATEST and published versions), for the registry's per-function news.
        self._by_function: dict[str, dict[str, FunctionPool]] = {}
        registry.subscribe(self._registry_changed)

    def pool(self, name: str) -> FunctionPool:
        p = self._pools.get(name)  # pools are never removed: a hit needs no lock
        if p is not None:
            return p
        with self._lock:
            p = self._pools.get(name)
            if p is None:
                p = self._pools[name] = FunctionPool(name, self)
                self._by_function.setdefault(p.function, {})[name] = p
            return p

    def pools_of(self, function: str) -> list[FunctionPool]:
        """The pools of ``function``: its ``$LATEST`` pool and those of its published versions."""
        with self._lock:
            return list(self._by_function.get(function, {}).values())

    def pools(self) -> list[FunctionPool]:
        with self._lock:
            return list(self._pools.values())

    def acquire(self, spec: InstanceSpec, *, max_instances: int, deadline: float,
                policy: ScalingPolicy | None = None) -> Lease:
        """A lease on a slot of ``spec.version``, waiting up to ``deadline`` (monotonic)."""
        p = self.pool(spec.pool)
        now = self.clock()
        with p.lock:
            got = self._take_or_queue(p, spec, max_instances, policy, now, None)
        if isinstance(got, Lease):
            return got
        got.event.wait(max(0.0, deadline - now))
        return self._waited(p, spec, got)

    async def acquire_async(self, spec: InstanceSpec, *, max_instances: int, deadline: float,
                            policy: ScalingPolicy | None = None) -> Lease:
        """:meth:`acquire` for an event loop: the wait is a future, not a blocked thread, so the
        edge's loop keeps serving while requests queue for a slot or a cold start."""
        p = self.pool(spec.pool)
        now = self.clock()
        with p.lock:
            got = self._take_or_queue(p, spec, max_instances, policy, now, asyncio.get_running_loop())
        if isinstance(got, Lease):
            return got
        # The deadline resolves the future empty (then _waited raises the timeout): one timer
        # handle, where asyncio.wait_for would add a wrapping future, callbacks and a timeout
        # task step to every queued request.
        timer = asyncio.get_running_loop().call_later(max(0.0, deadline - now), _resolve, got.fut)
        try:
            await got.fut
        except BaseException:
            # Cancelled while queued: leave the queue, or give back a slot handed over meanwhile.
            with p.lock:
                lease = got.lease
                if lease is None and got in p.waiters:
                    p.waiters.remove(got)
            if lease is not None:
                self.release(lease)
            raise
        finally:
            timer.cancel()
        return self._waited(p, spec, got)

    def _take_or_queue(self, p: FunctionPool, spec: InstanceSpec, max_instances: int, policy, now: float,
                       loop) -> Lease | _Waiter:
        """A lease on a free slot, or the request queued (starting instances for it). Lock held."""
        lease = self._take_free(p, spec, max_instances, policy, now)
        if lease is not None:
            return lease
        failure = p.init_failure
        if failure and failure[0] == spec.version and now - failure[1] < INIT_FAILURE_TTL_S and not p.starting:
            raise failure[2]
        if len(p.waiters) >= p.max_queue:
            raise QueueFull(f"{len(p.waiters)} requests are already waiting for an instance of "
                            f"{spec.function!r} (max_instances={max_instances}); retry later or raise max_instances")
        w = _Waiter(now, p._cause(spec.version), loop)
        p.waiters.append(w)
        p._scale_for_waiters()
        return w

    @staticmethod
    def _waited(p: FunctionPool, spec: InstanceSpec, w: _Waiter) -> Lease:
        """After the wait: the lease handed over, the start's error, or a timeout."""
        with p.lock:
            if w.lease is not None:
                return w.lease
            if w.error is not None:
                raise w.error
            try:
                p.waiters.remove(w)
            except ValueError:
                pass
        raise ColdStartTimeout(f"no instance of {spec.function!r} became free within the queue deadline; "
                               "retry, or raise max_instances or concurrency")

    @staticmethod
    def _take_free(p: FunctionPool, spec: InstanceSpec, max_instances: int, policy, now: float) -> Lease | None:
        """Lock held."""
        p.spec = spec
        p.max_instances = max_instances
        if policy is not None:
            p.policy = policy
        slot = p._pick(spec.version, now)
        if slot is None:
            return None
        slot.inflight += 1
        slot.last_used = now
        p._inflight_changed(+1, now)
        return Lease(slot=slot, cold=False)

    def release(self, lease: Lease, *, outcome: str = "ok") -> None:
        """Return a lease. ``outcome``: ok | refused-capacity | gone | crashed."""
        slot = lease.slot
        p = self.pool(slot.instance.pool)
        now = self.clock()
        with p.lock:
            slot.inflight = max(0, slot.inflight - 1)
            slot.last_used = now
            p._inflight_changed(-1, now)
            if outcome in ("gone", "crashed"):
                if outcome == "crashed":
                    p.last_crash_at = now
                p.slots.pop(slot.instance.id, None)
                slot.draining = True
                p._scale_for_waiters()
                return
            if outcome == "refused-capacity":
                slot.refused_at = now
                return
            p._hand_off(slot, cold=False)

    def forget(self, instance_id: str, function: str) -> None:
        """Drop a slot (its instance went away) and start replacements for waiters."""
        for p in self.pools_of(function) or [self.pool(function)]:
            with p.lock:
                slot = p.slots.pop(instance_id, None)
                if slot is not None:
                    slot.draining = True
                p._scale_for_waiters()

    def _registry_changed(self, function: str) -> None:
        """Sync slots with the registry: adopt instances other edges started, drop gone ones.
        Each of the function's pools takes the instances of its own version."""
        keys = {i.pool for i in self.registry.ready(function)} | {function}
        pools = {p.name: p for p in self.pools_of(function)}
        for key in keys - set(pools):
            pools[key] = self.pool(key)
        for p in pools.values():
            self._sync_pool(p, function)

    def _sync_pool(self, p: FunctionPool, function: str) -> None:
        with p.lock:
            # Read the registry under the pool lock: a snapshot taken before it could predate an
            # instance a start has just added, and would drop that fresh slot.
            ready = {i.id: i for i in self.registry.ready(function) if i.pool == p.name}
            for iid in list(p.slots):
                if iid not in ready:
                    p.slots.pop(iid).draining = True
            for iid, inst in ready.items():
                if iid not in p.slots:
                    slot = p.slots[iid] = Slot(instance=inst, last_used=self.clock())
                    # While this edge is starting instances, the new one is probably its own:
                    # leave the hand-off to the start, which labels those requests cold.
                    if not p.starting:
                        p._hand_off(slot, cold=False)
            p._scale_for_waiters()

    # -- reserved instances and reaping support ------------------------------------------

    def ensure_min(self, spec: InstanceSpec, *, min_instances: int, max_instances: int) -> int:
        """Start instances of ``spec.version`` until ``min_instances`` are running or starting."""
        p = self.pool(spec.pool)
        with p.lock:
            # ``spec`` may be a version that does not take traffic yet (pre-warming a deploy): the spec
            # requests wait for, which decides what their starts launch, stays the one they asked for.
            if p.spec is None:
                p.spec = spec
            p.max_instances = max_instances
            have = sum(1 for s in p.slots.values() if s.instance.version == spec.version and not s.draining)
            missing = max(0, min(min_instances, max_instances) - have - p.starting)
            for _ in range(missing):
                p._start(spec, reserved=True)
            return missing
