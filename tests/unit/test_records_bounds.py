"""Records are bounded (count, age, bytes in total and per function), usage is metered apart
and survives their pruning, query answers are bounded in bytes, and a record added before the
answer survives the process being killed (its journal is replayed at the next start)."""

import subprocess
import sys
import textwrap
import time

import pytest

from appliance.core.records import MAX_LOG_BYTES, InvocationRecord, RecordStore, Retention, bound_logs

NOW = time.time()


def rec(i, fn="f", t=None, logs=None, status="ok"):
    return InvocationRecord(request_id=f"{fn}-{i}", function=fn, version=1, started_at=NOW - 100 + i if t is None else t,
                            status=status, billed_gb_s=0.001, cold=i == 0, duration_ms=2.0,
                            logs=logs if logs is not None else [f"line {i}"])


@pytest.fixture
def store_of(tmp_path):
    made = []

    def make(**kw):
        s = RecordStore(tmp_path / "inv.db", retention=Retention(**kw))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_retention_by_total_bytes_keeps_the_newest(store_of):
    s = store_of(max_bytes=200_000, max_function_bytes=10 << 20)
    for i in range(100):
        s.add(rec(i, logs=["x" * 10_000]))
    assert s.flush()
    s.prune(NOW)
    st = s.stats()
    assert 0 < st["bytes"] <= 200_000 and st["records"] < 100
    kept = [r["request_id"] for r in s.query("f", limit=1000)]
    assert kept[0] == "f-99" and kept == [f"f-{i}" for i in range(99, 99 - len(kept), -1)]


def test_retention_per_function_keeps_a_noisy_function_from_pushing_out_the_others(store_of):
    s = store_of(max_bytes=10 << 20, max_function_bytes=100_000)
    for i in range(50):
        s.add(rec(i, fn="quiet"))
    for i in range(100):
        s.add(rec(i, fn="noisy", logs=["y" * 10_000]))
    assert s.flush()
    s.prune(NOW)
    assert len(s.query("quiet", limit=1000)) == 50
    noisy = s.query("noisy", limit=1000)
    assert 0 < len(noisy) <= 10 and noisy[0]["request_id"] == "noisy-99"


def test_retention_by_age(store_of):
    s = store_of(max_age_s=3600)
    s.add(rec(1, t=NOW - 7200))
    s.add(rec(2, t=NOW - 60))
    assert s.flush()
    s.prune(NOW)
    assert [r["request_id"] for r in s.query("f")] == ["f-2"]


def test_usage_never_shrinks_when_records_are_pruned(store_of):
    s = store_of(max_records=5)
    for i in range(40):
        s.add(rec(i, status="error" if i % 4 == 0 else "ok"))
    assert s.flush()
    s.prune(NOW)
    assert s.stats()["records"] <= 5
    assert s.stats()["journal_segments"] == 1   # one segment in use, the written ones gone
    (u,) = s.usage("f")
    assert u["invocations"] == 40 and u["errors"] == 10 and u["cold_starts"] == 1
    assert u["gb_seconds"] == pytest.approx(0.04) and u["avg_duration_ms"] == pytest.approx(2.0)


def test_a_query_answer_is_bounded_in_bytes_and_pages_on(store_of):
    s = store_of()
    for i in range(50):
        s.add(rec(i, logs=["z" * 20_000]))
    assert s.flush()
    page = s.query("f", limit=1000, max_bytes=100_000)
    assert 1 <= len(page) <= 5
    rest = s.query("f", limit=1000, max_bytes=100_000, before_seq=page[-1]["seq"])
    assert rest and rest[0]["request_id"] == f"f-{49 - len(page)}"
    # one row is always given, even when it alone is over the bound
    assert len(s.query("f", limit=1000, max_bytes=10)) == 1


def test_a_records_logs_keep_their_head_and_tail():
    lines = [f"{i:05d} " + "q" * 994 for i in range(1000)]   # 1 MB of output
    kept = bound_logs(lines, 100_000)
    assert sum(len(x) + 1 for x in kept) <= 100_000 + 200
    note = next(i for i, x in enumerate(kept) if "truncated" in x)
    assert kept[0].startswith("00000") and kept[-1].startswith("00999")
    assert f"{1000 - len(kept) + 1} lines" in kept[note]
    assert bound_logs(["a", "b"], 100) == ["a", "b"]


def test_stored_logs_are_bounded(store_of):
    s = store_of()
    s.add(rec(1, logs=["w" * 1000] * 2000))   # 2 MB that a function's own code put in its reply
    assert s.flush()
    (r,) = s.query("f")
    assert sum(len(x) for x in r["logs"]) <= MAX_LOG_BYTES


KILLED = textwrap.dedent("""
    import os, signal, sys
    from appliance.core import records
    records.WRITE_INTERVAL_S = records.IDLE_INTERVAL_S = 3600   # the writer never gets to them
    store = records.RecordStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.add(records.InvocationRecord(request_id=f"k-{i}", function="f", version=1,
                                           started_at=float(sys.argv[3]), billed_gb_s=0.001))
        if i == int(sys.argv[4]):
            store.flush()          # part of them are in the database before the kill
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("flushed_at", [-1, 29], ids=["none-written", "some-written"])
def test_records_added_before_a_kill_9_are_there_after_a_restart(tmp_path, flushed_at):
    db = tmp_path / "inv.db"
    proc = subprocess.run([sys.executable, "-c", KILLED, str(db), "60", str(NOW), str(flushed_at)],
                          capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    s = RecordStore(db)
    try:
        assert s.recovered == 60 - (flushed_at + 1)
        assert len(s.query("f", limit=1000)) == 60
        (u,) = s.usage("f")
        assert u["invocations"] == 60            # the rows written before the kill are not counted twice
        assert s.stats()["journal_segments"] <= 1  # the replayed segments are gone
    finally:
        s.close()
    again = RecordStore(db)
    assert again.recovered == 0
    again.close()


def test_paging_sees_every_record_once_even_when_they_end_out_of_start_order(store_of):
    from appliance.control.records_view import RecordsView, next_page

    s = store_of()
    # recorded as they end: long invocations that started first are written after short ones
    for i in range(60):
        s.add(rec(i, t=NOW - 100 + (i % 7) * 3 - i * 0.01, logs=["p" * 3000]))
    assert s.flush()
    view = RecordsView(s)
    seen, cursor = [], None
    while True:
        page = view.query("f", limit=7, before=cursor, max_bytes=10_000)
        if not page:
            break
        seen += [r["request_id"] for r in page]
        cursor = next_page(page, cursor)
    view.close()
    assert sorted(seen) == sorted(f"f-{i}" for i in range(60))
