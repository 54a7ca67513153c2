"""The scaling simulation keeps its books: no request lost, no negative idle time, and the
keep-alive trade-off it reports points the right way on a fixed trace."""

from __future__ import annotations

import json

import pytest

from bench.simulate import (
    KEEP_ALIVES_S,
    FunctionTrace,
    PlatformModel,
    Setting,
    Stats,
    TraceConfig,
    format_table,
    generate_trace,
    main,
    simulate,
    simulate_function,
    summarise,
)

TINY = TraceConfig(seed=7, functions=8, horizon_s=2 * 3600.0, max_per_day=5_000.0)


@pytest.fixture(scope="module")
def tiny_trace():
    return generate_trace(TINY)


@pytest.fixture(scope="module")
def tiny_runs(tiny_trace):
    """Per (keep-alive, stable window): per-function stats over the tiny trace."""
    return {(k, w): [simulate_function(t, Setting(k, w), horizon_s=TINY.horizon_s) for t in tiny_trace]
            for w in (30.0, 60.0) for k in KEEP_ALIVES_S}


def trace(*arrivals, duration=0.5, concurrency=1):
    return FunctionTrace(name="f", kind="event", arrivals=tuple(arrivals), durations=(duration,) * len(arrivals),
                         concurrency=concurrency)


def test_the_tiny_trace_is_not_trivial(tiny_trace):
    arrivals = sum(len(t.arrivals) for t in tiny_trace)
    assert arrivals > 100
    assert {t.kind for t in tiny_trace} == {"event", "timer"}


def test_no_request_is_lost_served_plus_still_queued_equals_arrived(tiny_runs):
    for stats_list in tiny_runs.values():
        for stats in stats_list:
            assert stats.served + stats.queued_at_end == stats.arrived
            assert stats.completed <= stats.served
            assert len(stats.delays) == stats.served


def test_idle_time_is_never_negative_and_never_more_than_the_time_instances_existed(tiny_runs):
    for stats_list in tiny_runs.values():
        for stats in stats_list:
            assert stats.idle_instance_s >= 0
            assert stats.idle_instance_s <= stats.instance_s + 1e-6
            assert min(stats.delays, default=0.0) >= 0


def test_no_request_waits_for_more_than_one_instance_start_below_max_instances(tiny_runs):
    start = PlatformModel().start_latency_s
    for stats_list in tiny_runs.values():
        for stats in stats_list:
            assert max(stats.delays, default=0.0) <= start + 1e-9


def test_a_longer_keep_alive_never_raises_the_cold_start_count_on_the_same_trace(tiny_runs, tiny_trace):
    for window in (30.0, 60.0):
        for i, fn in enumerate(tiny_trace):
            colds = [tiny_runs[(k, window)][i].cold_starts for k in KEEP_ALIVES_S]
            assert colds == sorted(colds, reverse=True), (fn.name, window, colds)
        totals = [sum(s.cold_starts for s in tiny_runs[(k, window)]) for k in KEEP_ALIVES_S]
        assert totals[0] > totals[-1]


def test_a_longer_keep_alive_holds_more_idle_instance_time(tiny_runs):
    for window in (30.0, 60.0):
        idle = [sum(s.idle_instance_s for s in tiny_runs[(k, window)]) for k in KEEP_ALIVES_S]
        assert idle == sorted(idle)


def test_skipping_ticks_whose_outcome_is_known_changes_no_result(tiny_trace):
    setting = Setting(90.0, 60.0)
    for fn in tiny_trace:
        fast = simulate_function(fn, setting, horizon_s=TINY.horizon_s)
        slow = simulate_function(fn, setting, horizon_s=TINY.horizon_s, skip_idle_ticks=False)
        assert fast.decisions <= slow.decisions
        fast.decisions = slow.decisions = 0
        assert fast == slow, fn.name


def test_a_cold_burst_starts_one_instance_per_request_it_needs_and_each_waits_one_start():
    model = PlatformModel(start_latency_s=1.0)
    stats = simulate_function(trace(100.0, 100.0, 100.0, 100.0, 100.0), Setting(90.0, 60.0), model, 200.0)
    assert (stats.arrived, stats.served, stats.cold_starts, stats.instances_started) == (5, 5, 5, 5)
    assert stats.delays == [1.0] * 5


def test_a_cold_burst_on_a_concurrent_function_starts_queued_over_concurrency_instances():
    stats = simulate_function(trace(*([100.0] * 9), concurrency=4), Setting(90.0, 60.0), PlatformModel(), 200.0)
    assert stats.instances_started == 3
    assert stats.cold_starts == 9


@pytest.mark.parametrize("gap, cold", [(60.0, 1), (200.0, 2)])
def test_a_request_within_keep_alive_of_the_last_one_is_warm_and_one_after_it_is_cold(gap, cold):
    stats = simulate_function(trace(10.0, 10.0 + gap), Setting(90.0, 60.0), PlatformModel(), 400.0)
    assert stats.cold_starts == cold


def test_a_request_still_waiting_at_the_end_is_counted_as_queued_not_lost():
    stats = simulate_function(trace(10.0, 99.5), Setting(30.0, 30.0), PlatformModel(start_latency_s=1.0), 100.0)
    assert (stats.arrived, stats.served, stats.queued_at_end) == (2, 1, 1)


def test_the_trace_is_the_same_for_the_same_seed_and_differs_for_another():
    assert generate_trace(TINY) == generate_trace(TINY)
    other = generate_trace(TraceConfig(seed=8, functions=8, horizon_s=2 * 3600.0, max_per_day=5_000.0))
    assert other != generate_trace(TINY)


def test_the_trace_has_the_heavy_tail_and_timer_share_it_documents():
    traces = generate_trace(TraceConfig(functions=100, horizon_s=3600.0))
    assert sum(t.kind == "timer" for t in traces) == 15
    counts = sorted((len(t.arrivals) for t in traces), reverse=True)
    assert sum(counts[:10]) > 0.7 * sum(counts)      # a few hot functions carry most invocations
    assert counts.count(0) > 20                      # and many see no call at all in an hour


def test_the_summary_and_the_table_report_every_setting(tiny_trace):
    rows = []
    for setting in (Setting(30.0, 60.0), Setting(300.0, 60.0)):
        stats = simulate(tiny_trace, setting, horizon_s=TINY.horizon_s)
        assert isinstance(stats, Stats)
        rows.append(summarise(setting, stats))
    assert rows[0]["cold_start_rate"] > rows[1]["cold_start_rate"]
    assert 0 < rows[0]["mean_queue_delay_ms"] <= rows[0]["p99_queue_delay_ms"] <= rows[0]["max_queue_delay_ms"]
    table = format_table({"results": rows})
    assert "      300s    60s" in table


def test_the_command_writes_the_json_and_the_plot(tmp_path, capsys):
    assert main(["--functions", "4", "--hours", "0.5", "--workers", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "simulation.json").read_text())
    assert len(report["results"]) == 10
    assert {(r["keep_alive_s"], r["stable_window_s"]) for r in report["results"]} == {
        (k, w) for k in KEEP_ALIVES_S for w in (30.0, 60.0)}
    assert (tmp_path / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "keep-alive" in capsys.readouterr().out
