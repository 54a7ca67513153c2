"""Chart series: a fixed number of aligned buckets, counts and percentiles per bucket, edges merged."""

import time

import pytest

from appliance.core import series
from appliance.core.errors import ValidationError
from appliance.core.records import InvocationRecord, RecordStore


def test_a_window_is_sixty_aligned_buckets_ending_with_the_current_one():
    since, step = series.plan("1h", now=10_000.5)
    assert step == 60 and since % 60 == 0
    assert since <= 10_000.5 < since + series.BUCKETS * step
    assert series.plan("1h", now=10_010.0) == (since, step)  # a refresh a moment later keeps the buckets
    with pytest.raises(ValidationError) as exc:
        series.plan("2y", now=0)
    assert exc.value.field == "window"


@pytest.fixture
def records(tmp_path):
    r = RecordStore(tmp_path / "inv.db")
    yield r
    r.close()


def test_buckets_count_calls_errors_cold_starts_and_take_percentiles(records):
    # Recent times: records past the store's age limit (7 days) are pruned as they are written.
    since, step = series.plan("15m", now=time.time())
    for i in range(100):  # bucket 0: durations 1..100 ms, two errors, one cold start
        records.add(InvocationRecord(request_id=f"a{i}", function="f", version=1, started_at=since + 1,
                                     duration_ms=float(i + 1), billed_gb_s=0.001, cold=i == 0,
                                     status="error" if i < 2 else "ok", instance_id=f"i{i % 3}"))
    records.add(InvocationRecord(request_id="b", function="f", version=1, started_at=since + 5 * step + 1, duration_ms=7.0))
    records.add(InvocationRecord(request_id="old", function="f", version=1, started_at=since - 1))
    records.add(InvocationRecord(request_id="other", function="g", version=1, started_at=since + 1))
    assert records.flush()
    points = series.merge([records.series("f", since, step)], since, step)
    assert len(points) == series.BUCKETS and points[1]["t"] - points[0]["t"] == step
    first = points[0]
    assert (first["invocations"], first["errors"], first["cold_starts"]) == (100, 2, 1)
    assert (first["p50_ms"], first["p99_ms"]) == (50.0, 99.0)
    assert first["gb_seconds"] == pytest.approx(0.1) and first["cold_start_rate"] == 0.01
    assert first["instances"] == 3
    assert points[5]["invocations"] == 1 and points[5]["p50_ms"] == points[5]["p99_ms"] == 7.0
    assert points[1] == {"t": since + step, "invocations": 0, "errors": 0, "cold_starts": 0, "gb_seconds": 0.0,
                         "p50_ms": None, "p99_ms": None, "instances": 0, "cold_start_rate": None}
    assert sum(p["invocations"] for p in points) == 101  # the old record and the other function are left out


def test_edges_merge_by_adding_counts_weighting_medians_and_keeping_the_highest_p99():
    a = [{"bucket": 3, "invocations": 3, "errors": 1, "cold_starts": 0, "gb_seconds": 0.5, "p50_ms": 10.0, "p99_ms": 20.0,
          "instances": 2}]
    b = [{"bucket": 3, "invocations": 1, "errors": 0, "cold_starts": 1, "gb_seconds": 0.25, "p50_ms": 30.0, "p99_ms": 90.0,
          "instances": 1},
         {"bucket": 99, "invocations": 5, "errors": 0, "cold_starts": 0, "gb_seconds": 1.0, "p50_ms": 1.0, "p99_ms": 1.0}]
    p = series.merge([a, b], 0.0, 60.0)[3]
    assert (p["invocations"], p["errors"], p["cold_starts"], p["gb_seconds"]) == (4, 1, 1, 0.75)
    assert p["p50_ms"] == 15.0 and p["p99_ms"] == 90.0 and p["cold_start_rate"] == 0.25
    assert p["instances"] == 2  # edges share instances: the most any edge saw
    assert sum(q["invocations"] for q in series.merge([a, b], 0.0, 60.0)) == 4  # a bucket outside is ignored
