"""How many instances a function should have, and which idle instances may go: pure decisions.

The instance autoscaler follows the shape of Knative's pod autoscaler (KPA), because its two
windows answer the two complaints users have about FaaS scaling at once:

* **Stable mode.** The desired count is the average in-flight concurrency over a long window
  (``stable_window_s``, 60 s) divided by what one instance should carry
  (``target_concurrency * target_utilisation``). A long window means a function whose load
  wobbles does not start and stop instances on every wobble.
* **Panic mode.** A long window reacts slowly to a burst, so the same sum is also taken over a
  short window (``panic_window_s``, 6 s). When the short window asks for ``panic_threshold``
  times (2x) the instances we have, we panic: scale up on the short window and never scale down
  until a whole stable window has passed without panic conditions, so the burst has made its way
  into the stable average before anything is removed. Two additions to Knative's rule keep the
  count from swinging: bursts that keep coming extend the panic, and a panic does not end while
  the load is still climbing faster than the stable window can follow (see :func:`decide`).

Requests queued at the activator (no instance to run them yet) are demand too, counted as what
they are: N known requests need ``ceil(N / target_concurrency)`` instances, not N (that would
start one instance per request even when each instance takes several) and not 1 (the rest would
wait for a second round of cold starts).

Scale to zero is not a consequence of the stable average alone: the last instance is kept until
nothing has been in flight or queued for ``keep_alive_s`` (+ ``scale_to_zero_grace_s``), so the
keep-alive a user sets is the time an idle function stays warm, whatever the window.

Everything here is a function of its inputs and of ``now`` (monotonic seconds, passed in): the
loop that samples the routers and acts through the ``Scheduler`` lives elsewhere, and the tests
and ``bench/simulate.py`` drive these functions with a simulated clock.

``plan_reaping`` is the other half: given the instances that exist, which idle ones to drain
(replaced versions at once, keep-alive expiry least recently used first, never below
``min_instances`` and never one with work in flight).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from appliance.core.errors import ValidationError
from appliance.core.model import FunctionConfig

# Ratios and averages are floats; a demand of exactly 2.0 instances must not become 3 because the
# division left 2.0000000000000004.
_EPSILON = 1e-9

STABLE = "stable"
PANIC = "panic"


def _ceil(x: float) -> int:
    """Ceiling of a non-negative ratio, forgiving float error just above an integer."""
    return math.ceil(x - _EPSILON)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# Policy, observation, state, decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingPolicy:
    """How one function scales. Defaults are the values docs/autoscaling.md justifies.

    Build it with :meth:`for_function` from a :class:`FunctionConfig` and call :meth:`validate`
    once where it is built; :func:`decide` trusts a validated policy and does not re-check it
    on every tick.
    """

    #: Requests one instance runs at once (FunctionConfig.concurrency). > 0.
    target_concurrency: float = 1.0
    #: Fraction of target_concurrency the autoscaler aims to fill, leaving room for growth while
    #: new instances start. 0 < x <= 1.
    target_utilisation: float = 0.7
    #: Seconds of in-flight history averaged in stable mode. >= 1 (samples are per second).
    stable_window_s: float = 60.0
    #: Seconds of history averaged to detect a burst. 1 <= panic_window_s <= stable_window_s.
    panic_window_s: float = 6.0
    #: Panic starts when the panic window asks for this many times the current instances. > 1.
    panic_threshold: float = 2.0
    #: Instances kept even with no demand (reserved, pre-warmed). 0 <= min <= max.
    min_instances: int = 0
    #: Hard ceiling on instances. >= 1.
    max_instances: int = 10
    #: Seconds without any request in flight or queued before the last instance may go. >= 0.
    keep_alive_s: float = 90.0
    #: Extra seconds added to keep_alive_s before scaling to zero; a margin for router reports
    #: that arrive late in cluster mode. >= 0.
    scale_to_zero_grace_s: float = 0.0
    #: One decision asks for at most ceil(rate * max(1, current)) instances. > 1.
    max_scale_up_rate: float = 10.0
    #: One decision keeps at least floor(current / rate) instances (2.0 = at most halve). > 1.
    max_scale_down_rate: float = 2.0

    @classmethod
    def for_function(cls, config: FunctionConfig, **overrides: float) -> ScalingPolicy:
        """The policy of a function: its concurrency, min/max and keep-alive, other fields default."""
        values: dict = dict(
            target_concurrency=float(config.concurrency),
            min_instances=config.min_instances,
            max_instances=config.max_instances,
            keep_alive_s=float(config.keep_alive_s),
        )
        values.update(overrides)
        return cls(**values).validate()

    def validate(self) -> ScalingPolicy:
        """Return self, or raise ValidationError naming the first bad field and its value."""

        def bad(name: str, rule: str) -> ValidationError:
            return ValidationError(f"{name} {rule}, was: {getattr(self, name)!r}", field=name)

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("min_instances", "max_instances"):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise bad(f.name, "must be an integer")
            elif not _is_number(value):
                raise bad(f.name, "must be a finite number")
        if self.target_concurrency <= 0:
            raise bad("target_concurrency", "must be greater than 0")
        if not 0 < self.target_utilisation <= 1:
            raise bad("target_utilisation", "must be greater than 0 and at most 1")
        if self.stable_window_s < 1:
            raise bad("stable_window_s", "must be at least 1 second")
        if self.panic_window_s < 1:
            raise bad("panic_window_s", "must be at least 1 second")
        if self.panic_window_s > self.stable_window_s:
            raise bad("panic_window_s", f"cannot exceed stable_window_s ({self.stable_window_s:g})")
        if self.panic_threshold <= 1:
            raise bad("panic_threshold", "must be greater than 1 (it is a ratio of desired to current)")
        if self.min_instances < 0:
            raise bad("min_instances", "cannot be negative")
        if self.max_instances < 1:
            raise bad("max_instances", "must be at least 1")
        if self.min_instances > self.max_instances:
            raise bad("min_instances", f"cannot exceed max_instances ({self.max_instances})")
        if self.keep_alive_s < 0:
            raise bad("keep_alive_s", "cannot be negative")
        if self.scale_to_zero_grace_s < 0:
            raise bad("scale_to_zero_grace_s", "cannot be negative")
        if self.max_scale_up_rate <= 1:
            raise bad("max_scale_up_rate", "must be greater than 1")
        if self.max_scale_down_rate <= 1:
            raise bad("max_scale_down_rate", "must be greater than 1")
        return self

    @property
    def instance_target(self) -> float:
        """In-flight requests one instance should carry on average (target x utilisation)."""
        return self.target_concurrency * self.target_utilisation


@dataclass(frozen=True)
class Observation:
    """What the routers and the scheduler report for one function at one moment."""

    #: (t, value): average in-flight requests over the second ending at t (monotonic seconds),
    #: as :meth:`ConcurrencyWindow.samples` gives them. Several routers' samples are simply
    #: concatenated: samples with the same t add up. A second with no sample counts as zero.
    samples: Sequence[tuple[float, float]] = ()
    #: Instances ready or starting now; what the scheduler already has or is making.
    instances: int = 0
    #: Requests running on instances now (sum over routers).
    in_flight: float = 0.0
    #: Requests waiting at the activator for an instance now (sum over routers).
    queued: int = 0
    #: Since when the samples cover the function (monotonic s): the earliest first record of the
    #: routers' windows. While that span is shorter than a window, averages divide by the span, so
    #: a function's first seconds are not diluted by seconds nobody measured (Knative does the
    #: same). None: the samples cover every window in full.
    observed_since: float | None = None


@dataclass(frozen=True)
class ScalerState:
    """What one function's autoscaler must remember between ticks.

    Start a function with ``ScalerState()``; after a deploy that pre-warms an instance, start
    with ``ScalerState(last_demand_at=now)`` so the pre-warmed instance is kept for a keep-alive.
    """

    #: When the current panic began (monotonic s); None in stable mode.
    panic_started_at: float | None = None
    #: Last time panic conditions held; panic ends a stable window after it.
    panic_last_trigger_at: float | None = None
    #: Highest count asked for during this panic; a panic never asks for fewer.
    panic_peak: int = 0
    #: Last time anything was in flight or queued (monotonic s); None if never.
    last_demand_at: float | None = None

    @property
    def panicking(self) -> bool:
        return self.panic_started_at is not None


@dataclass(frozen=True)
class Decision:
    """The outcome of one tick: how many instances, in which mode, why, and the state to keep."""

    desired: int                  # instances wanted (ready + starting), already clamped
    state: ScalerState            # pass back into the next decide()
    mode: str                     # "stable" or "panic"
    stable_concurrency: float     # average in flight over the stable window
    panic_concurrency: float      # average in flight over the panic window
    #: Builds the reason on first use (see :attr:`reason`).
    explain: Callable[[], str] = dataclasses.field(default=lambda: "", repr=False, compare=False)

    @functools.cached_property
    def reason(self) -> str:
        """One sentence for `faas describe` and the API: what drove the count, then each limit
        that changed it, then ``-> desired (now current)``."""
        return self.explain()

    def to_dict(self) -> dict:
        return {"desired": self.desired, "mode": self.mode, "reason": self.reason,
                "stable_concurrency": round(self.stable_concurrency, 3),
                "panic_concurrency": round(self.panic_concurrency, 3)}


# --------------------------------------------------------------------------------------------
# Sliding window of in-flight concurrency
# --------------------------------------------------------------------------------------------


def window_average(samples: Iterable[tuple[float, float]], now: float, window_s: float,
                   since: float | None = None) -> float:
    """Average in flight over the ``window_s`` seconds before ``now``.

    Samples are per-second averages stamped with the end of their second, so the window holds
    the samples with ``now - window_s < t <= now``; seconds without a sample count as zero (a
    router that saw nothing sends nothing). With ``since``, seconds before it were not measured
    and do not count: the sum is divided by the measured part of the window (at least 1 s).
    """
    start = now - window_s
    total = 0.0
    for t, value in samples:
        if start < t <= now:
            total += value
    span = window_s
    if since is not None:
        span = min(window_s, max(1.0, now - math.floor(since)))
    return total / span


class ConcurrencyWindow:
    """In-flight requests of one function as seen by one router, bucketed per second.

    ``record(now, value)`` says "from ``now`` on, ``value`` requests are in flight" (call it on
    every change, or on a fixed sampling period: both work). Between records the value is held,
    so each one-second bucket stores the time-weighted average, which sees a 50 ms request that a
    once-a-second sampler would usually miss. Memory is bounded: buckets older than
    ``horizon_s`` are dropped, so a window costs at most ``horizon_s + 2`` buckets however many
    requests pass.
    """

    def __init__(self, horizon_s: float = 60.0):
        if not _is_number(horizon_s) or horizon_s < 1:
            raise ValueError(f"horizon_s must be at least 1 second, was: {horizon_s!r}")
        self._horizon = int(math.ceil(horizon_s))
        # [second index k, request-seconds in [k, k+1)], k increasing; absent seconds are zero.
        self._buckets: deque[list] = deque()
        self._last_t: float | None = None   # time of the last record (monotonic s)
        self._value = 0.0                   # in flight since _last_t
        self._first_t: float | None = None  # time of the first record (monotonic s)

    @property
    def value(self) -> float:
        """In flight as of the last record."""
        return self._value

    @property
    def last_record(self) -> float | None:
        """Time of the latest record."""
        return self._last_t

    @property
    def since(self) -> float | None:
        """Time of the first record: what :attr:`Observation.observed_since` wants."""
        return self._first_t

    def record(self, now: float, value: float) -> None:
        """From ``now`` on, ``value`` requests are in flight. ``now`` must not go backwards."""
        last = self._last_t
        if last is not None and last <= now < math.floor(last) + 1 and value >= 0:
            # Still in the last record's second (under load, nearly every record): the value
            # held since then goes to that second's bucket, and no bucket can have aged out.
            held = self._value
            if held and now > last:
                k = math.floor(last)
                buckets = self._buckets
                if buckets and buckets[-1][0] == k:
                    buckets[-1][1] += held * (now - last)
                else:
                    buckets.append([k, held * (now - last)])
            self._last_t = now
            self._value = float(value)
            return
        if value < 0:
            raise ValueError(f"in-flight value cannot be negative, was: {value!r}")
        if self._last_t is not None:
            if now < self._last_t:
                raise ValueError(f"time went backwards: {now!r} < {self._last_t!r}")
            for k, amount in self._spread(self._last_t, now, self._value):
                if self._buckets and self._buckets[-1][0] == k:
                    self._buckets[-1][1] += amount
                else:
                    self._buckets.append([k, amount])
        else:
            self._first_t = now
        self._last_t = now
        self._value = float(value)
        oldest = math.floor(now) - self._horizon - 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def _spread(self, start: float, end: float, value: float) -> list[tuple[int, float]]:
        """Split ``value`` held over [start, end) into (second, request-seconds) pieces."""
        if value == 0 or end <= start:
            return []
        start = max(start, math.floor(end) - self._horizon - 1)  # older parts would be pruned
        pieces = []
        k = math.floor(start)
        while k < end:
            lo, hi = max(start, k), min(end, k + 1)
            if hi > lo:
                pieces.append((k, value * (hi - lo)))
            k += 1
        return pieces

    def samples(self, now: float) -> tuple[tuple[float, float], ...]:
        """Per-second averages of the complete seconds up to ``now``, for :class:`Observation`.

        The value held since the last record counts up to ``now`` without being recorded, so
        reading never changes the window. The second ``now`` falls in is not complete and is left
        out; it appears on the next read after it ends.
        """
        end = math.floor(now)
        first = end - self._horizon
        # Buckets only ever hold positive amounts, in increasing second order.
        out = [(float(k + 1), amount) for k, amount in self._buckets if first <= k < end]
        if self._last_t is not None:
            for k, amount in self._spread(self._last_t, min(now, end), self._value):
                if first <= k < end:
                    if out and out[-1][0] == k + 1:
                        out[-1] = (out[-1][0], out[-1][1] + amount)
                    else:
                        out.append((float(k + 1), amount))
        return tuple(out)

    def average(self, now: float, window_s: float) -> float:
        """Average in flight over the complete seconds in the ``window_s`` before ``now``."""
        return window_average(self.samples(now), math.floor(now), window_s, self._first_t)


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------


def decide(observed: Observation, policy: ScalingPolicy, state: ScalerState, now: float) -> Decision:
    """Desired instances for one function at ``now``, with the mode, the reason and the new state.

    Steps, in order: window averages -> instances each asks for -> panic bookkeeping -> rate
    limits -> the keep-alive rule for scale to zero -> min/max clamps. The reason names the step
    that set the number.
    """
    p = policy
    current = max(0, observed.instances)
    base = max(1, current)                      # rates and ratios are relative to at least one
    # One pass over the samples for both windows and the last second anything ran (this runs
    # every tick for every function, so it is written for speed; window_average is the spec).
    stable_start, panic_start = now - p.stable_window_s, now - p.panic_window_s
    stable_total = panic_total = 0.0
    last_demand = state.last_demand_at
    for t, value in observed.samples:
        if t <= now:
            if t > stable_start:
                stable_total += value
                if t > panic_start:
                    panic_total += value
            if value > 0 and (last_demand is None or t > last_demand):
                last_demand = t
    stable_span, panic_span = p.stable_window_s, p.panic_window_s
    if observed.observed_since is not None:
        measured = max(1.0, now - math.floor(observed.observed_since))
        stable_span, panic_span = min(stable_span, measured), min(panic_span, measured)
    stable_avg, panic_avg = stable_total / stable_span, panic_total / panic_span
    present = max(0.0, observed.in_flight) + max(0, observed.queued)   # requests here now

    per_instance = p.target_concurrency * p.target_utilisation
    stable_want = _ceil(stable_avg / per_instance)
    panic_want = _ceil(panic_avg / per_instance)
    # Queued requests need slots now, beside the ones running; no utilisation headroom for
    # requests we know about. Without a queue, running requests already have their instances.
    queue_need = present / p.target_concurrency if observed.queued > 0 else 0.0
    queue_want = _ceil(queue_need)

    # Demand bookkeeping: the latest second anything ran, or now if something runs or waits.
    if present > 0:
        last_demand = now

    # Panic bookkeeping (Knative: enter at threshold, extend while over it, leave a stable
    # window after the last time it held). Two additions keep the count from swinging:
    # * While panicking the instances are already sized for the burst, so "over" compared with
    #   them would end the panic between bursts that come back every few seconds. A panic is
    #   also extended while the panic window asks for threshold x what the stable window asks.
    # * Knative leaves panic once "the surge has made its way into the stable metric", which a
    #   stable window guarantees for a step but not for a ramp that is still climbing: leaving
    #   then would drop to the lagging stable count. A panic ends only once the stable window
    #   asks for at least what the panic window asks.
    pressure = max(panic_avg / per_instance, queue_need) / base    # for the reason
    over = max(panic_want, queue_want) >= p.panic_threshold * base
    started, last_trigger, peak = state.panic_started_at, state.panic_last_trigger_at, state.panic_peak
    recurring = (started is not None and not over
                 and max(panic_want, queue_want) >= p.panic_threshold * max(1, stable_want))
    if over or recurring:
        started = now if started is None else started
        last_trigger = now
    elif (started is not None and last_trigger is not None and now - last_trigger >= p.stable_window_s
          and stable_want >= panic_want):
        started, last_trigger, peak = None, None, 0
    idle_for = math.inf if last_demand is None else now - last_demand
    idle_limit = p.keep_alive_s + p.scale_to_zero_grace_s
    if started is not None and present == 0 and idle_for >= idle_limit:
        # Nothing at all for a keep-alive: the burst is over, however recent the trigger was.
        started, last_trigger, peak = None, None, 0
    panicking = started is not None

    # Rate limits apply to each proposal before they are combined, as in Knative.
    up_limit = _ceil(p.max_scale_up_rate * base)
    down_limit = math.floor(current / p.max_scale_down_rate + _EPSILON)

    def limited(want: int) -> int:
        return max(min(want, up_limit), down_limit) if not panicking else min(want, up_limit)

    # Notes are (kind, number) pairs turned into words only if someone reads the reason: the
    # loop runs this for every function every tick, and the reason is read far less often.
    notes: list[tuple[str, float]] = []
    queue_leads = queue_want > 0 and queue_want >= max(stable_want, panic_want)
    if panicking:
        want = max(limited(stable_want), limited(panic_want), limited(queue_want))
        desired = max(want, current, peak)
        if want < desired:
            notes.append(("hold", desired))
        lead = "recurring" if recurring else "holding" if not over else "queue" if queue_leads else "burst"
        if desired > up_limit:
            notes.append(("peak-above-limit", up_limit))
        elif max(stable_want, panic_want, queue_want) > up_limit:
            notes.append(("up-limited", up_limit))
    else:
        if queue_want > stable_want:
            want, lead = queue_want, "queue"
        else:
            want, lead = stable_want, "stable"
        desired = limited(want)
        if desired < want:
            notes.append(("up-limited", desired))
        elif desired > want:
            notes.append(("down-limited", desired))

    if not panicking and present == 0 and idle_for >= idle_limit:
        if desired > 0 or current > 0:
            notes.append(("to-zero", idle_for))
        desired = 0
    elif desired == 0 and current > 0:
        desired = 1
        notes.append(("kept", idle_for))
    if desired < p.min_instances:
        desired = p.min_instances
        notes.append(("min", p.min_instances))
    if desired > p.max_instances:
        desired = p.max_instances
        notes.append(("max", p.max_instances))
    if panicking:
        peak = desired

    def explain() -> str:
        queued = observed.queued
        queue_text = (f"{queued} queued + {present - queued:g} in flight need {queue_want} "
                      f"instances at {p.target_concurrency:g} per instance")
        if lead == "stable":
            text = (f"stable: {stable_avg:.1f} in flight on average over {p.stable_window_s:g} s needs "
                    f"{stable_want} instances at {p.instance_target:.2g} per instance "
                    f"({p.target_concurrency:g} x {p.target_utilisation:g})")
        elif lead == "queue" and not panicking:
            text = f"stable: {queue_text}"
        elif lead == "queue":
            text = f"panic: {queue_text}, at least {p.panic_threshold:g}x of {base}"
        elif lead == "burst":
            text = (f"panic: {panic_avg:.1f} in flight over {p.panic_window_s:g} s is {pressure:.1f}x the "
                    f"{current} instances' target capacity ({base * p.instance_target:.1f}) and asks for "
                    f"{panic_want}, at least {p.panic_threshold:g}x of {base}")
        elif lead == "recurring":
            text = (f"panic: since {now - started:.0f} s; {panic_avg:.1f} in flight over "
                    f"{p.panic_window_s:g} s still asks for {panic_want}, {p.panic_threshold:g}x or more "
                    f"of the {stable_want} the stable window asks for")
        else:
            text = (f"panic: since {now - started:.0f} s, ends {p.stable_window_s:g} s after the last "
                    f"trigger ({now - last_trigger:.0f} s ago) once the stable window asks for as many as "
                    f"the panic window; {panic_avg:.1f} in flight over {p.panic_window_s:g} s asks for "
                    f"{panic_want}, over {p.stable_window_s:g} s for {stable_want}")
        words = {
            "hold": lambda n: f"no scale-down while panicking (holding {n:g})",
            "peak-above-limit": lambda n: f"above the scale-up limit of {n:g} only to hold the peak",
            "up-limited": lambda n: f"scale-up limited to {n:g} ({p.max_scale_up_rate:g}x of {base} per tick)",
            "down-limited": lambda n: f"scale-down limited to {n:g} (at most 1/{p.max_scale_down_rate:g} per tick)",
            "to-zero": lambda s: ("no demand seen" if last_demand is None else f"no demand for {s:.0f} s")
            + f" (keep-alive {idle_limit:g} s): scale to zero",
            "kept": lambda s: f"last instance kept: idle {s:.0f} s of {idle_limit:g} s keep-alive",
            "min": lambda n: f"raised to min_instances {n:g}",
            "max": lambda n: f"capped at max_instances {n:g}",
        }
        return "; ".join([text, *(words[kind](n) for kind, n in notes)]) + f" -> {desired} (now {current})"

    new_state = ScalerState(panic_started_at=started, panic_last_trigger_at=last_trigger,
                            panic_peak=peak if panicking else 0, last_demand_at=last_demand)
    return Decision(desired=desired, state=new_state, mode=PANIC if panicking else STABLE,
                    stable_concurrency=stable_avg, panic_concurrency=panic_avg, explain=explain)


# --------------------------------------------------------------------------------------------
# Reaping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceView:
    """One instance as the reaper needs to see it."""

    id: str
    function: str
    version: int                        # code version this instance runs
    current_version_of_function: int    # the version new requests go to
    inflight: int                       # requests running on it now
    last_used: float                    # monotonic s its last request ended (or it became ready)
    reserved: bool = False              # kept for min_instances; never reaped while current


def plan_reaping(instances: Iterable[InstanceView], policy_by_function: Mapping[str, ScalingPolicy],
                 now: float, desired_by_function: Mapping[str, int] | None = None) -> list[str]:
    """Ids of idle instances to drain now, in the order to drain them.

    * Never one with a request in flight: draining it would only delay that request's end.
    * Instances of a replaced version, once idle, at once: new requests no longer reach them,
      whatever their reserved flag says (the reservation moves to the current version).
    * Current-version instances idle for at least ``keep_alive_s``, least recently used first,
      but never below ``min_instances`` of the current version (busy and reserved ones count
      toward it) and never a reserved one.
    * With ``desired_by_function`` (the autoscaler's latest counts), the floor is also the
      desired count and every idle instance above it is a candidate, least recently used first:
      this is how a stable-mode scale-down removes instances that traffic spread over evenly.
      A function missing from that mapping gets the keep-alive rule only.

    A function missing from ``policy_by_function`` keeps its current-version instances (we do not
    know its minimum), but its replaced versions are still reaped.
    """
    reap: list[str] = []
    by_function: dict[str, list[InstanceView]] = {}
    for inst in instances:
        by_function.setdefault(inst.function, []).append(inst)
    for function in sorted(by_function):
        group = by_function[function]
        old = [i for i in group if i.version != i.current_version_of_function]
        current = [i for i in group if i.version == i.current_version_of_function]
        reap.extend(i.id for i in sorted(old, key=lambda i: (i.last_used, i.id)) if i.inflight <= 0)
        policy = policy_by_function.get(function)
        if policy is None:
            continue
        floor = policy.min_instances
        desired = None if desired_by_function is None else desired_by_function.get(function)
        if desired is not None:
            floor = max(floor, desired)
        budget = len(current) - floor
        if budget <= 0:
            continue
        idle = [i for i in current if i.inflight <= 0 and not i.reserved]
        if desired is None:
            idle = [i for i in idle if now - i.last_used >= policy.keep_alive_s]
        idle.sort(key=lambda i: (i.last_used, i.id))
        reap.extend(i.id for i in idle[:budget])
    return reap
