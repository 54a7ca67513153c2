"""The benchmark's pure statistics helpers: percentiles, summaries, ratios and their formatting."""

import math

import pytest

from bench.runner import BASELINES, merge_rounds, metric_rows, targets
from bench.stats import difference, fmt_num, fmt_ratio, percentile, ratio, ratios, summarize


def test_percentile_interpolates_between_closest_ranks():
    xs = [4, 1, 3, 2]                      # sorted: 1 2 3 4
    assert percentile(xs, 0) == 1
    assert percentile(xs, 100) == 4
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 25) == pytest.approx(1.75)   # rank 0.75
    assert percentile(range(1, 101), 99) == pytest.approx(99.01)


def test_percentile_edge_cases():
    assert percentile([], 50) is None
    assert percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        percentile([1, 2], 101)
    with pytest.raises(ValueError):
        percentile([1, 2], -1)


def test_summarize():
    s = summarize([10, 20, 30, 40, 50])
    assert s["n"] == 5 and s["p50"] == 30 and s["min"] == 10 and s["max"] == 50
    assert s["mean"] == pytest.approx(30)
    assert s["p99"] == pytest.approx(49.6)
    assert summarize([]) == {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}


def test_ratio_and_missing_values():
    assert ratio(50, 200) == 0.25
    assert ratio(None, 2) is None
    assert ratio(2, None) is None
    assert ratio(2, 0) is None
    assert ratio(math.nan, 2) is None


def test_ratios_divide_each_metric_by_its_baseline_row():
    rows = {"a": {"cold": 20.0, "rps": 500.0, "x": 1.0},
            "fresh": {"cold": 40.0, "rps": 10.0, "x": 2.0},
            "gun": {"cold": 200.0, "rps": 1000.0}}
    r = ratios(rows, {"cold": "fresh", "rps": "gun"})
    assert r["a"] == {"cold": 0.5, "rps": 0.5, "x": None}
    assert r["fresh"]["cold"] == 1.0 and r["gun"]["rps"] == 1.0
    # A baseline that is missing or failed gives no ratio rather than a wrong one.
    assert ratios({"a": {"cold": 1.0}}, {"cold": "fresh"})["a"]["cold"] is None


def test_difference_of_medians():
    assert difference([1.0, 1.2, 1.1], [0.1, 0.2, 0.3]) == pytest.approx(0.9)
    assert difference([], [1.0]) is None


def test_formatting():
    assert fmt_num(None) == "-"
    assert fmt_num(1234.5) == "1,234"
    assert fmt_num(0.256, 2) == "0.26"
    assert fmt_ratio(None) == "-"
    assert fmt_ratio(0.5) == "x0.50"
    assert fmt_ratio(12.34) == "x12.3"
    assert fmt_ratio(403.2) == "x403"
    assert fmt_ratio(0.0033) == "x0.003"


def test_merge_rounds_weights_by_requests_and_time():
    parts = [{"tool": "wrk", "requests": 100, "errors": 0, "duration_s": 1.0, "rps": 100.0,
              "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "mean_ms": 1.0},
             {"tool": "wrk", "requests": 300, "errors": 1, "duration_s": 1.0, "rps": 299.0,
              "p50_ms": 2.0, "p90_ms": 2.0, "p99_ms": 7.0, "mean_ms": 2.0}]
    m = merge_rounds(parts)
    assert m["requests"] == 400 and m["errors"] == 1 and m["rounds"] == 2
    assert m["rps"] == pytest.approx(199.5)
    assert m["p50_ms"] == pytest.approx(1.75)
    assert m["p99_ms"] == pytest.approx(6.0)


def test_targets_use_the_right_peers():
    results = {
        "appliance": {"cold_ms": {"p50": 10.0}, "c1": {"p50_ms": 1.0, "p99_ms": 2.0, "rps": 900.0},
                      "c16": {"rps": 1500.0}, "memory": {"instance": {"uss_mb": 6.0, "pss_mb": 7.0}},
                      "router": {"overhead_p50_ms": 0.4}},
        "serverless-offline": {"cold_ms": {"p50": 70.0}, "c1": {"rps": 1.0}, "c16": {"rps": 1000.0}},
        "gunicorn": {"cold_ms": {"p50": 200.0}, "c1": {"rps": 1.0}, "c16": {"rps": 2000.0}},
    }
    rows = metric_rows(results)
    assert rows["appliance"]["idle_uss_mb"] == 6.0
    got = {t["goal"]: (round(t["measured"], 3), t["met"]) for t in targets(rows, results)}
    assert list(got.values()) == [(0.143, True), (1.5, True), (0.75, True), (0.4, True), (6.0, True)]
    assert BASELINES["cold_p50_ms"] == "fresh-python" and BASELINES["rps_c16"] == "gunicorn"


def test_failed_peer_has_no_figures():
    rows = metric_rows({"gunicorn": {"label": "g", "error": "boom"}})
    assert all(v is None for v in rows["gunicorn"].values())
