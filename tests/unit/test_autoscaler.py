"""Table tests of the instance autoscaler: decide(), its policy and its concurrency window.

Time is always passed in; a tick is 2 s as in the loop that runs decide() for real.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from appliance.core.autoscaler import (
    PANIC,
    STABLE,
    ConcurrencyWindow,
    Observation,
    ScalerState,
    ScalingPolicy,
    decide,
    window_average,
)
from appliance.core.errors import ValidationError
from appliance.core.model import FunctionConfig

TICK = 2.0


def steady(value: float, start: int, end: int) -> list[tuple[float, float]]:
    """Per-second samples of a constant in-flight value for the seconds (start, end]."""
    return [(float(t), value) for t in range(start + 1, end + 1)]


def drive(policy, load, until, *, instances=0, state=ScalerState(), start=0.0, warmup=0.0):
    """Tick decide() with in-flight = load(t) and as many instances as the last decision asked for.

    ``warmup`` seconds of load are recorded before ``start`` without deciding, so the windows
    hold history. Returns [(t, decision)]. Instances appear at once here; start latency is the
    simulator's job.
    """
    window = ConcurrencyWindow(policy.stable_window_s)
    t = start - warmup
    while t < start:
        window.record(t, load(t))
        t += TICK
    out = []
    t = start
    while t <= until:
        in_flight = load(t)
        window.record(t, in_flight)
        d = decide(Observation(window.samples(t), instances, in_flight=in_flight, observed_since=window.since),
                   policy, state, t)
        out.append((t, d))
        state, instances = d.state, d.desired
        t += TICK
    return out


# --- sizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight, target, utilisation, expected", [
    (7.0, 1, 0.7, 10),     # 7 / 0.7 = 10 exactly: no spurious 11 from float error
    (7.1, 1, 0.7, 11),
    (10.0, 4, 0.5, 5),
    (0.3, 1, 0.7, 1),
    (100.0, 10, 1.0, 10),
])
def test_steady_load_asks_for_average_in_flight_over_target_times_utilisation(in_flight, target, utilisation,
                                                                             expected):
    policy = ScalingPolicy(target_concurrency=target, target_utilisation=utilisation, max_instances=1000)
    d = decide(Observation(steady(in_flight, 0, 120), instances=expected, in_flight=in_flight),
               policy, ScalerState(last_demand_at=120.0), 120.0)
    assert (d.desired, d.mode) == (expected, STABLE)
    assert d.stable_concurrency == pytest.approx(in_flight)
    assert d.reason.startswith(f"stable: {in_flight:.1f} in flight on average over 60 s")


def test_steady_load_keeps_the_same_count_tick_after_tick():
    policy = ScalingPolicy()
    decisions = drive(policy, lambda t: 3.5, until=600, instances=5, warmup=60)
    assert {d.desired for _, d in decisions} == {5}
    assert {d.mode for _, d in decisions} == {STABLE}


def test_ramp_up_grows_monotonically_and_reaches_the_sized_count():
    policy = ScalingPolicy(max_instances=100)
    decisions = drive(policy, lambda t: min(t / 10, 14.0), until=400, instances=1)
    counts = [d.desired for _, d in decisions]
    assert counts == sorted(counts)
    assert counts[-1] == 20          # 14 / 0.7


def test_ramp_down_shrinks_monotonically_and_at_most_halves_per_tick():
    policy = ScalingPolicy(max_instances=100)
    history = steady(14.0, 0, 60)
    state = ScalerState(last_demand_at=60.0)
    window = ConcurrencyWindow(60)
    window.record(0.0, 14.0)
    instances, counts = 20, []
    for t in range(60, 400, 2):
        load = max(14.0 - (t - 60) / 10, 1.0)
        window.record(float(t), load)
        d = decide(Observation(window.samples(float(t)), instances, in_flight=load), policy, state, float(t))
        assert d.desired >= math.floor(instances / 2)
        counts.append(d.desired)
        state, instances = d.state, d.desired
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == 2           # 1 / 0.7
    assert history  # the same shape as the steady test, continued downwards


def test_flapping_load_does_not_make_the_count_oscillate():
    policy = ScalingPolicy(max_instances=100)
    # 2 and 8 in flight, alternating every tick for ten minutes: the average is 5.
    decisions = drive(policy, lambda t: 8.0 if int(t / TICK) % 2 else 2.0, until=600, instances=8,
                      state=ScalerState(last_demand_at=0.0), warmup=60)
    counts = [d.desired for _, d in decisions]
    assert set(counts) == {8}        # ceil(5 / 0.7)
    assert {d.mode for _, d in decisions} == {STABLE}


def test_flapping_between_burst_and_quiet_holds_the_peak_instead_of_oscillating():
    policy = ScalingPolicy(max_instances=100)
    # 30 in flight for 10 s every 30 s, nothing in between.
    decisions = drive(policy, lambda t: 30.0 if t % 30 < 10 else 0.0, until=900, instances=15,
                      state=ScalerState(last_demand_at=0.0), warmup=60)
    counts = [d.desired for _, d in decisions]
    first_peak = counts.index(max(counts))
    assert max(counts) == 43         # 30 / 0.7
    assert counts[first_peak:] == [43] * (len(counts) - first_peak)
    assert any("still asks for 43" in d.reason for _, d in decisions)


# --- panic ----------------------------------------------------------------------------------


def test_a_burst_enters_panic_and_scales_on_the_panic_window():
    policy = ScalingPolicy(max_instances=100)
    samples = steady(1.0, 0, 114) + steady(30.0, 114, 120)
    d = decide(Observation(samples, instances=2, in_flight=30), policy, ScalerState(last_demand_at=114.0), 120.0)
    assert d.mode == PANIC
    assert d.desired == 20           # 30 / 0.7 = 43, limited to 10x of 2
    assert d.state.panic_started_at == 120.0
    assert d.reason.startswith("panic: 30.0 in flight over 6 s is 21.4x the 2 instances' target capacity (1.4")
    assert "scale-up limited to 20" in d.reason


def test_the_panic_reason_reads_as_a_sentence_with_the_numbers_that_drove_it():
    policy = ScalingPolicy(target_concurrency=4, max_instances=100)
    samples = steady(38.0, 114, 120)
    d = decide(Observation(samples, instances=5, in_flight=38), policy, ScalerState(), 120.0)
    assert d.reason.startswith("panic: 38.0 in flight over 6 s is 2.7x the 5 instances' target capacity (14.0) "
                               "and asks for 14, at least 2x of 5")
    assert d.reason.endswith("-> 14 (now 5)")


def test_below_the_threshold_a_rise_is_handled_in_stable_mode():
    policy = ScalingPolicy(max_instances=100)
    samples = steady(2.8, 0, 114) + steady(4.9, 114, 120)   # 4.9 / 0.7 = 7 instances, under 2x of 4
    d = decide(Observation(samples, instances=4, in_flight=4.9), policy, ScalerState(), 120.0)
    assert d.mode == STABLE
    samples = steady(2.8, 0, 114) + steady(5.0, 114, 120)   # 5.0 / 0.7 = 7.1: 8 instances, 2x of 4
    d = decide(Observation(samples, instances=4, in_flight=5.0), policy, ScalerState(), 120.0)
    assert d.mode == PANIC
    assert "asks for 8, at least 2x of 4" in d.reason


def test_no_scale_down_while_panicking_even_when_the_burst_stops():
    policy = ScalingPolicy(max_instances=100)
    decisions = drive(policy, lambda t: 20.0 if 100 <= t < 110 else 1.0, until=300, instances=2, warmup=60,
                      state=ScalerState(last_demand_at=0.0))
    panicking = [(t, d) for t, d in decisions if d.mode == PANIC]
    assert panicking[0][0] == 102    # the second from 100 to 101 is complete at the tick after 100
    counts = [d.desired for _, d in panicking]
    assert counts == sorted(counts)
    assert any("no scale-down while panicking" in d.reason for _, d in panicking)


def test_panic_ends_one_stable_window_after_the_last_trigger_and_then_scales_down():
    policy = ScalingPolicy(max_instances=100)
    decisions = drive(policy, lambda t: 20.0 if 100 <= t < 110 else 1.0, until=400, instances=2, warmup=60,
                      state=ScalerState(last_demand_at=0.0))
    last_trigger = max(d.state.panic_last_trigger_at for _, d in decisions if d.mode == PANIC)
    first_stable_after = next(t for t, d in decisions if t > 100 and d.mode == STABLE)
    assert first_stable_after == last_trigger + policy.stable_window_s
    assert decisions[-1][1].desired == 2     # back to ceil(1 / 0.7)
    assert decisions[-1][1].state == dataclasses.replace(decisions[-1][1].state, panic_started_at=None,
                                                         panic_last_trigger_at=None, panic_peak=0)


# --- scale to zero ------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive, grace", [(30.0, 0.0), (90.0, 0.0), (90.0, 10.0), (300.0, 0.0)])
def test_drop_to_zero_waits_for_keep_alive_plus_grace_after_the_last_demand(keep_alive, grace):
    policy = ScalingPolicy(keep_alive_s=keep_alive, scale_to_zero_grace_s=grace)
    decisions = drive(policy, lambda t: 3.0 if t < 100 else 0.0, until=600, instances=5,
                      state=ScalerState(last_demand_at=0.0))
    # The 3 in flight recorded at t=98 are held until the record at t=100: demand ends at t=100.
    zero_at = next(t for t, d in decisions if d.desired == 0)
    assert zero_at == 100 + keep_alive + grace
    assert all(d.desired >= 1 for t, d in decisions if t < zero_at)
    assert all(d.desired == 0 for t, d in decisions if t >= zero_at)
    zero = next(d for t, d in decisions if t == zero_at)
    assert f"keep-alive {keep_alive + grace:g} s): scale to zero" in zero.reason


def test_keep_alive_shorter_than_the_stable_window_still_scales_to_zero_on_time():
    policy = ScalingPolicy(keep_alive_s=10.0, stable_window_s=60.0)
    decisions = drive(policy, lambda t: 1.0 if t < 100 else 0.0, until=200, instances=2,
                      state=ScalerState(last_demand_at=0.0))
    assert next(t for t, d in decisions if d.desired == 0) == 110
    assert all(d.desired >= 1 for t, d in decisions if t < 110)


def test_the_last_instance_is_kept_until_keep_alive_and_the_reason_says_so():
    policy = ScalingPolicy(keep_alive_s=90.0)
    d = decide(Observation((), instances=1), policy, ScalerState(last_demand_at=100.0), 170.0)
    assert d.desired == 1
    assert "last instance kept: idle 70 s of 90 s keep-alive" in d.reason


def test_a_pre_warmed_instance_is_kept_for_one_keep_alive_after_deploy():
    policy = ScalingPolicy(keep_alive_s=90.0)
    assert decide(Observation((), instances=1), policy, ScalerState(last_demand_at=0.0), 60.0).desired == 1
    assert decide(Observation((), instances=1), policy, ScalerState(last_demand_at=0.0), 90.0).desired == 0
    assert decide(Observation((), instances=1), policy, ScalerState(), 0.0).desired == 0


def test_no_demand_after_scale_to_zero_does_not_start_an_instance_from_the_stable_average():
    policy = ScalingPolicy(keep_alive_s=10.0, stable_window_s=60.0)
    # Demand ended at 100; at 112 the stable window still averages above zero.
    d = decide(Observation(steady(2.0, 40, 100), instances=0), policy, ScalerState(last_demand_at=100.0), 112.0)
    assert d.stable_concurrency > 0
    assert d.desired == 0


def test_in_flight_work_is_demand_even_when_the_samples_have_not_seen_it_yet():
    policy = ScalingPolicy(keep_alive_s=10.0)
    d = decide(Observation((), instances=1, in_flight=1), policy, ScalerState(last_demand_at=0.0), 500.0)
    assert d.desired == 1
    assert d.state.last_demand_at == 500.0


# --- clamps and rate limits ------------------------------------------------------------------------


def test_max_instances_caps_a_large_demand_and_the_reason_names_it():
    policy = ScalingPolicy(max_instances=10)
    d = decide(Observation(steady(100.0, 0, 120), instances=10, in_flight=100), policy, ScalerState(), 120.0)
    assert d.desired == 10
    assert "capped at max_instances 10" in d.reason


def test_min_instances_holds_reserved_instances_with_no_demand():
    policy = ScalingPolicy(min_instances=2, keep_alive_s=0.0)
    d = decide(Observation((), instances=2), policy, ScalerState(), 1000.0)
    assert d.desired == 2
    assert "raised to min_instances 2" in d.reason


def test_min_instances_pre_warms_a_function_that_has_none():
    policy = ScalingPolicy(min_instances=3)
    assert decide(Observation((), instances=0), policy, ScalerState(), 0.0).desired == 3


@pytest.mark.parametrize("current, up_rate, expected", [
    (0, 10.0, 10),        # a cold function counts as one for the rate
    (1, 10.0, 10),
    (2, 10.0, 20),
    (2, 3.0, 6),
    (3, 1.5, 5),          # ceil(4.5)
])
def test_scale_up_is_limited_to_the_rate_times_the_current_count(current, up_rate, expected):
    policy = ScalingPolicy(max_instances=1000, max_scale_up_rate=up_rate)
    d = decide(Observation(steady(500.0, 0, 120), instances=current, in_flight=500), policy, ScalerState(), 120.0)
    assert d.desired == expected


@pytest.mark.parametrize("current, down_rate, expected", [
    (10, 2.0, 5),
    (9, 2.0, 4),
    (10, 4.0, 2),
    (5, 2.0, 2),
])
def test_scale_down_is_limited_to_the_current_count_over_the_rate(current, down_rate, expected):
    policy = ScalingPolicy(max_instances=1000, max_scale_down_rate=down_rate)
    # Demand ended 20 s ago: within keep-alive, and the stable window is nearly empty.
    d = decide(Observation(steady(0.1, 99, 100), instances=current), policy,
               ScalerState(last_demand_at=100.0), 120.0)
    assert d.desired == expected
    assert "scale-down limited" in d.reason


# --- cold bursts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("queued, target, expected", [
    (1, 1, 1),
    (7, 1, 7),        # not ceil(7 / 0.7) = 10: these requests are known, not a forecast
    (12, 4, 3),       # not 12 and not 1
    (13, 4, 4),
    (40, 1, 10),      # 40 wanted, 10x of one is the first step, max_instances 100
])
def test_a_cold_function_with_queued_requests_asks_for_queued_over_target(queued, target, expected):
    policy = ScalingPolicy(target_concurrency=target, max_instances=100)
    d = decide(Observation((), instances=0, queued=queued), policy, ScalerState(), 50.0)
    assert d.desired == expected
    assert f"{queued} queued + 0 in flight need {math.ceil(queued / target)} instances" in d.reason
    assert d.state.last_demand_at == 50.0


def test_a_cold_burst_panics_so_the_new_instances_are_not_scaled_down_while_it_is_served():
    policy = ScalingPolicy(max_instances=100)
    d = decide(Observation((), instances=0, queued=8), policy, ScalerState(), 50.0)
    assert (d.desired, d.mode) == (8, PANIC)
    # Next tick: all 8 are running, the queue is empty, the windows have seen 1 s of it.
    d2 = decide(Observation(steady(8.0, 51, 52), instances=8, in_flight=8), policy, d.state, 52.0)
    assert d2.desired == 8


def test_queued_requests_add_to_the_requests_already_running():
    policy = ScalingPolicy(target_concurrency=2, max_instances=100)
    d = decide(Observation(steady(4.0, 0, 120), instances=2, in_flight=4, queued=5), policy, ScalerState(), 120.0)
    assert d.desired == 5            # (4 + 5) / 2 = 4.5


def test_a_queued_request_gets_an_instance_even_when_the_panic_window_asks_for_more_but_not_2x():
    policy = ScalingPolicy(max_instances=100)
    # Stable window asks for 2, panic window for 5 (under 2x of 3), the queue for 3 + 1 = 4.
    samples = steady(1.0, 0, 114) + steady(3.0, 114, 120)
    d = decide(Observation(samples, instances=3, in_flight=3, queued=1), policy, ScalerState(), 120.0)
    assert d.mode == STABLE
    assert d.desired == 4
    assert d.reason.startswith("stable: 1 queued + 3 in flight need 4 instances")


def test_a_single_request_to_a_cold_function_starts_one_instance_in_stable_mode():
    d = decide(Observation((), instances=0, queued=1), ScalingPolicy(), ScalerState(), 0.0)
    assert (d.desired, d.mode) == (1, STABLE)


# --- policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("target_concurrency", 0), ("target_concurrency", -1.0), ("target_concurrency", "1"),
    ("target_utilisation", 0.0), ("target_utilisation", 1.5), ("stable_window_s", 0.5),
    ("panic_window_s", 0.0), ("panic_window_s", 120.0), ("panic_threshold", 1.0),
    ("min_instances", -1), ("min_instances", 11), ("min_instances", 1.5), ("max_instances", 0),
    ("max_instances", True), ("keep_alive_s", -1.0), ("keep_alive_s", math.inf),
    ("scale_to_zero_grace_s", -0.1), ("max_scale_up_rate", 1.0), ("max_scale_down_rate", 0.5),
])
def test_validate_names_the_bad_field_and_its_value(field, value):
    policy = dataclasses.replace(ScalingPolicy(), **{field: value})
    with pytest.raises(ValidationError) as info:
        policy.validate()
    assert info.value.field == field
    assert info.value.message.startswith(f"{field} ")
    assert repr(getattr(policy, field)) in info.value.message


def test_the_defaults_are_valid_and_are_the_documented_ones():
    policy = ScalingPolicy().validate()
    assert (policy.target_utilisation, policy.stable_window_s, policy.panic_window_s, policy.panic_threshold,
            policy.keep_alive_s, policy.max_scale_up_rate, policy.max_scale_down_rate) == (
        0.7, 60.0, 6.0, 2.0, 90.0, 10.0, 2.0)


def test_a_function_config_gives_its_concurrency_limits_and_keep_alive_to_the_policy():
    config = FunctionConfig(name="resize", concurrency=4, min_instances=1, max_instances=20, keep_alive_s=120)
    policy = ScalingPolicy.for_function(config, stable_window_s=30.0)
    assert (policy.target_concurrency, policy.min_instances, policy.max_instances, policy.keep_alive_s,
            policy.stable_window_s) == (4.0, 1, 20, 120.0, 30.0)


def test_decide_gives_a_value_and_does_not_touch_the_state_it_was_given():
    state = ScalerState(last_demand_at=10.0)
    d = decide(Observation((), instances=0, queued=3), ScalingPolicy(), state, 20.0)
    assert state == ScalerState(last_demand_at=10.0)
    assert d.state.last_demand_at == 20.0
    assert set(d.to_dict()) == {"desired", "mode", "reason", "stable_concurrency", "panic_concurrency"}


# --- concurrency window -----------------------------------------------------------------------------


def test_the_window_weights_each_value_by_how_long_it_was_held():
    w = ConcurrencyWindow(60)
    w.record(10.0, 4.0)
    w.record(10.25, 0.0)      # 4 in flight for a quarter of a second
    w.record(12.5, 2.0)
    assert w.samples(14.0) == ((11.0, 1.0), (13.0, 1.0), (14.0, 2.0))
    assert w.average(14.0, 4.0) == pytest.approx((1.0 + 1.0 + 2.0) / 4)


def test_the_window_counts_a_held_value_up_to_now_without_changing_on_read():
    w = ConcurrencyWindow(60)
    w.record(0.0, 3.0)
    assert w.average(6.0, 6.0) == pytest.approx(3.0)
    assert w.average(6.0, 6.0) == pytest.approx(3.0)
    assert w.samples(6.5) == w.samples(6.0)       # the second from 6 to 7 is not complete
    w.record(7.0, 0.0)
    assert w.average(13.0, 6.0) == 0.0


def test_the_window_memory_is_bounded_however_long_it_runs():
    w = ConcurrencyWindow(10)
    for i in range(100_000):
        w.record(i * 0.05, float(i % 3))
    assert len(w._buckets) <= 12
    assert len(w.samples(5000.0)) <= 10


def test_a_value_held_for_hours_costs_no_more_than_the_horizon():
    w = ConcurrencyWindow(6)
    w.record(0.0, 1.0)
    w.record(36_000.0, 1.0)
    assert len(w._buckets) <= 8
    assert w.average(36_000.0, 6.0) == pytest.approx(1.0)


def test_the_window_refuses_time_going_backwards_and_negative_values():
    w = ConcurrencyWindow(60)
    w.record(5.0, 1.0)
    with pytest.raises(ValueError, match="backwards"):
        w.record(4.0, 1.0)
    with pytest.raises(ValueError, match="negative"):
        w.record(6.0, -1.0)


def test_samples_from_several_routers_add_up():
    a, b = ConcurrencyWindow(60), ConcurrencyWindow(60)
    a.record(0.0, 2.0)
    b.record(0.0, 5.0)
    samples = a.samples(60.0) + b.samples(60.0)
    assert window_average(samples, 60.0, 60.0) == pytest.approx(7.0)
    d = decide(Observation(samples, instances=10, in_flight=7.0), ScalingPolicy(), ScalerState(), 60.0)
    assert d.desired == 10


def test_many_records_within_each_second_add_up_to_the_time_weighted_integral():
    """Under load most records fall in the same second as the one before (the window's fast
    path); the per-second amounts must still be the exact integral of the held values."""
    import random

    rng = random.Random(7)
    w = ConcurrencyWindow(60)
    t, value = 100.0, 0.0
    changes = []
    while t < 110.0:
        changes.append((t, value))
        w.record(t, value)
        t += rng.choice((0.0, 0.0001, 0.003, 0.04, 0.3))
        value = float(rng.randint(0, 16))
    expected = {}
    for (t0, v), (t1, _) in zip(changes, changes[1:] + [(110.0, 0.0)]):
        for k in range(math.floor(t0), math.floor(t1) + 1):
            lo, hi = max(t0, k), min(t1, k + 1)
            if hi > lo and v:
                expected[float(k + 1)] = expected.get(float(k + 1), 0.0) + v * (hi - lo)
    got = dict(w.samples(110.0))
    assert got.keys() == expected.keys()
    for k, amount in expected.items():
        assert got[k] == pytest.approx(amount, rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError, match="negative"):
        w.record(110.0, -1.0)   # refused in the same second too
