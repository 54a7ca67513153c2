import time

import pytest

from appliance.core.errors import ValidationError
from appliance.core.records import InvocationRecord, RecordStore, billed_gb_seconds


def test_billing_rounds_the_duration_up_to_the_millisecond():
    assert billed_gb_seconds(1024, 1.0) == 0.001
    assert billed_gb_seconds(1024, 1.2) == 0.002
    assert billed_gb_seconds(128, 100.0) == pytest.approx(0.0125)
    assert billed_gb_seconds(128, 0.0) == 0.0


@pytest.fixture
def records(tmp_path):
    r = RecordStore(tmp_path / "inv.db")
    yield r
    r.close()


#: Recent enough for the retention by age.
T0 = time.time() - 1000


def rec(i, status="ok", fn="f", t=T0):
    return InvocationRecord(request_id=f"r{i}", function=fn, version=1, started_at=t + i, status=status,
                            billed_gb_s=0.001, cold=i == 0, logs=[f"line {i}"])


def test_records_are_written_and_filtered(records):
    for i in range(5):
        records.add(rec(i, status="error" if i % 2 else "ok"))
    records.add(rec(9, fn="g"))
    assert records.flush()
    assert [r["request_id"] for r in records.query("f", limit=2)] == ["r4", "r3"]
    assert [r["request_id"] for r in records.query("f", status="error")] == ["r3", "r1"]
    assert [r["request_id"] for r in records.query("f", since=T0 + 3)] == ["r4", "r3"]
    first = records.query("f", limit=1000)[-1]
    assert first["cold"] is True and first["logs"] == ["line 0"]
    usage = {u["function"]: u for u in records.usage()}
    assert usage["f"]["invocations"] == 5 and usage["f"]["errors"] == 2 and usage["f"]["cold_starts"] == 1
    assert usage["f"]["gb_seconds"] == pytest.approx(0.005)


def test_following_returns_newer_records_oldest_first(records):
    for i in range(3):
        records.add(rec(i))
    records.flush()
    newest = records.query("f", limit=1)[0]["seq"]
    for i in range(3, 6):
        records.add(rec(i))
    records.flush()
    assert [r["request_id"] for r in records.query("f", after_seq=newest)] == ["r3", "r4", "r5"]


@pytest.mark.parametrize("kw", [{"status": "weird"}, {"limit": 0}, {"limit": 5000}])
def test_bad_filters_are_refused(records, kw):
    with pytest.raises(ValidationError):
        records.query("f", **kw)


def test_old_records_are_pruned_to_the_retention(tmp_path, monkeypatch):
    import appliance.core.records as records_module

    monkeypatch.setattr(records_module, "PRUNE_EVERY", 10)
    r = RecordStore(tmp_path / "inv.db", retention=25)
    try:
        for i in range(60):
            r.add(rec(i))
            if i % 10 == 9:
                assert r.flush()
        kept = r.query("f", limit=1000)
        assert 25 <= len(kept) <= 35
        assert kept[0]["request_id"] == "r59"
    finally:
        r.close()


@pytest.mark.parametrize("one_statement", [True, False], ids=["json-batch", "row-by-row"])
def test_every_field_survives_the_batch_insert_unchanged(records, one_statement):
    """A batch goes to SQLite as one JSON document (or row by row where SQLite has no JSON
    functions): each value must come back as it went in."""
    from dataclasses import asdict

    assert records._batch_json  # this host's SQLite has them: the default path is the JSON one
    records._batch_json = one_statement

    odd = InvocationRecord(
        request_id="r-odd", function="f", version=2 ** 40, started_at=int(time.time()) + 0.123456, duration_ms=0.000123,
        run_ms=12345.678, billed_gb_s=1.5e-06, memory_mb=10240, cold=True, cold_cause="new-version", init_ms=3.25,
        status="error", http_status=502, error_type="Function.Error",
        error_message='quote " backslash \\ newline \n tab \t unicode é 漢 \U0001F600', instance_id=None,
        trigger="GET /a/{b+}", phases={"queue": 0.0, "run": 1.5}, logs=["", "x" * 5000, "\x00 nul", "\ud800"])
    plain = rec(1)
    records.add(odd)
    records.add(plain)
    assert records.flush()
    got = {r["request_id"]: r for r in records.query("f")}
    for want in (odd, plain):
        row = dict(got[want.request_id])
        row.pop("seq")
        assert row == asdict(want)
    assert got["r-odd"]["seq"] < got["r1"]["seq"]  # kept in the order they were added


def test_a_repeated_request_id_never_replaces_the_first_record(records):
    records.add(rec(1, status="error"))
    assert records.flush()
    records.add(rec(1, status="ok"))
    assert records.flush()
    assert [r["status"] for r in records.query("f")] == ["error"]


def test_an_idle_writer_sleeps_long_and_a_flush_still_writes_at_once(tmp_path):
    import threading

    from appliance.core import records as records_mod
    from tests.waiting import wait_for

    timeouts = []

    class Recorded(threading.Event):
        def wait(self, timeout=None):
            timeouts.append(timeout)
            return super().wait(timeout)

    store = RecordStore(tmp_path / "inv.db")
    try:
        store._wake = Recorded()
        wait_for(lambda: records_mod.IDLE_INTERVAL_S in timeouts, 10, message="the writer to go idle")
        assert records_mod.IDLE_INTERVAL_S > records_mod.WRITE_INTERVAL_S
        store.add(rec(1))
        assert store.flush(timeout_s=5.0)  # woken by the flush, not after its idle sleep
        assert [r["request_id"] for r in store.query("f")] == ["r1"]
        wait_for(lambda: timeouts[-1] == records_mod.IDLE_INTERVAL_S, 10, message="idle again")
    finally:
        store.close()
