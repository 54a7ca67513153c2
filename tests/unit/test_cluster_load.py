"""Summing the edges' concurrency reports per wall-clock second: pure table tests."""

import pytest

from appliance.core.autoscaler import Observation, ScalerState, ScalingPolicy, decide
from appliance.core.cluster_load import ClusterLoad, EdgeReport, FunctionLoad, report_of, sum_reports, wall_second
from appliance.core.errors import ValidationError

NOW = 1_700_000_100.0  # wall-clock seconds


def edge(name, samples=(), in_flight=0.0, queued=0, starting=0, since=None, function="f"):
    return EdgeReport(edge=name, functions={function: FunctionLoad(
        samples=tuple(samples), in_flight=in_flight, queued=queued, starting=starting, since=since)})


def at(*pairs):
    """Samples at NOW + offset."""
    return [(NOW + dt, v) for dt, v in pairs]


CASES = [
    pytest.param(
        {"a": edge("a", at((-2, 1.0), (-1, 2.0)), in_flight=2, queued=1, since=NOW - 30),
         "b": edge("b", at((-2, 1.0), (-1, 1.5)), in_flight=1, starting=1, since=NOW - 50)},
        ClusterLoad(samples=tuple(at((-2, 2.0), (-1, 3.5))), in_flight=3, queued=1, starting=1, since=NOW - 50,
                    edges=("a", "b")),
        ("a", "b"), (), id="two-edges-add-up-per-second"),
    pytest.param(
        {"a": edge("a", at((-2, 1.0), (-1, 2.0)), in_flight=2), "http://b:8080": None},
        ClusterLoad(samples=tuple(at((-2, 1.0), (-1, 2.0))), in_flight=2, edges=("a",)),
        ("a",), ("http://b:8080",), id="one-edge-missing-is-left-out"),
    pytest.param(
        # b's clock is 0.3 s ahead, c's 0.4 s behind: their seconds still land on a's.
        {"a": edge("a", at((-2, 1.0), (-1, 1.0))),
         "b": edge("b", at((-1.7, 2.0), (-0.7, 2.0))),
         "c": edge("c", at((-2.4, 4.0), (-1.4, 4.0), (-0.4, 4.0)))},
        ClusterLoad(samples=tuple(at((-2, 7.0), (-1, 7.0), (0, 4.0))), edges=("a", "b", "c")),
        ("a", "b", "c"), (), id="clock-skew-under-half-a-second"),
    pytest.param(
        # A clock exactly half a second off: one edge's samples never share a second.
        {"a": edge("a", at((-2.5, 1.0), (-1.5, 2.0), (-0.5, 3.0)))},
        ClusterLoad(samples=tuple(at((-2, 1.0), (-1, 2.0), (0, 3.0))), edges=("a",)),
        ("a",), (), id="half-second-offset-stays-one-to-one"),
    pytest.param(
        {"a": edge("a", at((-200, 5.0), (-1, 1.0), (-3, 0.0)))},
        ClusterLoad(samples=tuple(at((-1, 1.0))), edges=("a",)),
        ("a",), (), id="old-and-zero-samples-dropped"),
    pytest.param(
        {"a": edge("a", at((-1, 1.0)), since=NOW - 5), "b": edge("b", at((-1, 1.0)), since=None)},
        ClusterLoad(samples=tuple(at((-1, 2.0))), edges=("a", "b")),
        ("a", "b"), (), id="one-edge-covering-every-window-covers-the-sum"),
    pytest.param(
        # The same edge listed twice in Consul answers twice: it counts once.
        {"http://a:1": edge("a", at((-1, 2.0)), in_flight=2), "http://a:2": edge("a", at((-1, 2.0)), in_flight=2)},
        ClusterLoad(samples=tuple(at((-1, 2.0))), in_flight=2, edges=("a",)),
        ("a",), (), id="an-edge-listed-twice-counts-once"),
]


@pytest.mark.parametrize("reports, want, edges, missing", CASES)
def test_sum_reports(reports, want, edges, missing):
    got = sum_reports(reports, NOW)
    assert got.load("f") == want
    assert got.edges == edges and got.missing == missing


def test_nothing_reported_sums_to_nothing():
    got = sum_reports({}, NOW)
    assert got.functions == {} and got.edges == () and got.missing == ()
    assert got.load("f") == ClusterLoad()
    assert sum_reports({"http://b": None}, NOW).missing == ("http://b",)


def test_functions_are_summed_separately():
    got = sum_reports({"a": edge("a", at((-1, 1.0)), function="f"), "b": edge("b", at((-1, 3.0)), function="g")}, NOW)
    assert got.load("f").samples == tuple(at((-1, 1.0))) and got.load("f").edges == ("a",)
    assert got.load("g").samples == tuple(at((-1, 3.0))) and got.load("g").edges == ("b",)


@pytest.mark.parametrize("t, second", [(100.0, 100), (100.49, 100), (100.5, 101), (101.5, 102), (102.5, 103),
                                       (99.6, 100)])
def test_wall_second_rounds_halves_up(t, second):
    assert wall_second(t) == second


def test_the_sum_of_two_halves_asks_for_what_the_whole_asks():
    """Each edge holds 2 requests for 10 s: one edge's view asks for 3 instances, the sum for 6,
    the same as one edge seeing all 4 requests."""
    policy = ScalingPolicy()  # 1 request per instance at 70 %
    half = [(NOW - 10 + i, 2.0) for i in range(1, 11)]
    whole = [(t, 4.0) for t, _ in half]
    summed = sum_reports({"a": edge("a", half, in_flight=2, since=NOW - 10),
                          "b": edge("b", half, in_flight=2, since=NOW - 10)}, NOW).load("f")
    alone = decide(Observation(samples=half, instances=3, in_flight=2, observed_since=NOW - 10), policy,
                   ScalerState(), NOW)
    together = decide(summed.observation(3), policy, ScalerState(), NOW)
    everything = decide(Observation(samples=whole, instances=3, in_flight=4, observed_since=NOW - 10), policy,
                        ScalerState(), NOW)
    assert alone.desired == 3
    assert together.desired == everything.desired == 6


def test_report_of_restates_monotonic_samples_in_wall_clock_time():
    views = {"f": Observation(samples=((11.0, 1.0), (12.0, 0.5)), instances=1, in_flight=1, queued=2,
                              observed_since=10.25)}
    r = report_of("a", views, {"f": 1}, now_mono=12.5, now_wall=NOW + 0.5)
    f = r.functions["f"]
    assert f.samples == ((NOW - 1, 1.0), (NOW, 0.5))
    assert (f.in_flight, f.queued, f.starting, f.since) == (1.0, 2, 1, NOW - 1.75)
    assert EdgeReport.from_json(r.to_json()) == r


@pytest.mark.parametrize("doc", [
    None, [], {"functions": {}}, {"edge": ""}, {"edge": "a", "functions": []},
    {"edge": "a", "functions": {"f": {"samples": [[1, "x"]]}}},
    {"edge": "a", "functions": {"f": {"samples": [[1, -1]]}}},
    {"edge": "a", "functions": {"f": {"samples": [[1]]}}},
    {"edge": "a", "functions": {"f": 3}},
])
def test_a_malformed_report_is_refused(doc):
    with pytest.raises(ValidationError):
        EdgeReport.from_json(doc)
