"""Schedule expressions, next-fire times, catch-up after downtime, and once-per-tick firing."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from appliance.backends.local_blob import LocalBlobStore
from appliance.backends.sqlite_meta import SqliteMetadataStore
from appliance.core import codepkg
from appliance.core import schedule as sched
from appliance.core.errors import ValidationError
from appliance.core.event_triggers import EventTriggerStore, ScheduleLoop
from appliance.core.function_store import FunctionStore
from appliance.core.model import FunctionConfig


def ts(*args, tz=timezone.utc) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None)


def test_rates_tick_from_their_anchor():
    assert sched.parse("rate(5 minutes)") == sched.Rate(300)
    assert sched.parse("rate(1 day)") == sched.Rate(86400)
    assert sched.parse("rate(2 seconds)") == sched.Rate(2)
    r = sched.Rate(300)
    assert r.next_after(1000.0, anchor=1000.0) == 1300.0
    assert r.next_after(1299.9, anchor=1000.0) == 1300.0
    assert r.next_after(1300.0, anchor=1000.0) == 1600.0
    assert r.next_after(10.0, anchor=1000.0) == 1000.0


def test_cron_fields():
    weekdays = sched.parse("cron(0 9 ? * MON-FRI *)")
    saturday = ts(2026, 12, 5, 10)
    assert utc(weekdays.next_after(saturday)) == datetime(2026, 12, 7, 9, 0)  # Monday
    every15 = sched.parse("cron(0/15 * * * ? *)")
    assert utc(every15.next_after(ts(2026, 12, 5, 10, 14, 59))) == datetime(2026, 12, 5, 10, 15)
    assert utc(every15.next_after(ts(2026, 12, 5, 10, 15))) == datetime(2026, 12, 5, 10, 30)
    last_day = sched.parse("cron(30 23 L * ? *)")
    assert utc(last_day.next_after(ts(2027, 2, 1))) == datetime(2027, 2, 28, 23, 30)
    sundays = sched.parse("cron(0 8 ? JAN-MAR 1 2027)")  # 1 = Sunday, as EventBridge numbers days
    assert utc(sundays.next_after(ts(2026, 12, 5))) == datetime(2027, 1, 3, 8, 0)
    listed = sched.parse("cron(5,10 12 1,15 * ? *)")
    assert utc(listed.next_after(ts(2026, 12, 1, 12, 5))) == datetime(2026, 12, 1, 12, 10)
    assert utc(listed.next_after(ts(2026, 12, 1, 12, 10))) == datetime(2026, 12, 15, 12, 5)


def test_cron_in_a_time_zone_skips_a_time_the_clock_jumps_over():
    paris = sched.parse("cron(30 2 * * ? *)", "Europe/Paris")
    # 02:30 in Paris is 01:30 UTC in winter; on 2027-03-28 the clocks jump from 02:00 to 03:00.
    assert utc(paris.next_after(ts(2027, 3, 1))) == datetime(2027, 3, 1, 1, 30)
    assert utc(paris.next_after(ts(2027, 3, 27, 2))) == datetime(2027, 3, 29, 0, 30)


@pytest.mark.parametrize("expr, zone", [
    ("rate(0 minutes)", "UTC"), ("rate(5 weeks)", "UTC"), ("every 5 minutes", "UTC"), ("cron(* * * * *)", "UTC"),
    ("cron(60 * * * ? *)", "UTC"), ("cron(0 0 ? * ? *)", "UTC"), ("cron(0 0 1 * MON *)", "UTC"),
    ("cron(0 0 1W * ? *)", "UTC"), ("cron(0 0 ? * 2#1 *)", "UTC"), ("cron(0 0 * FOO ? *)", "UTC"),
    ("cron(0 5-2 * * ? *)", "UTC"), ("cron(0 0 * * ? *)", "Mars/Olympus"), (5, "UTC"),
])
def test_invalid_expressions_are_refused(expr, zone):
    with pytest.raises(ValidationError):
        sched.parse(expr, zone)


def test_catch_up_fires_at_most_one_missed_tick():
    r = sched.Rate(60)
    assert sched.plan(r, anchor=0.0, last_tick=None, now=59.0) == sched.Plan(None, 60.0)
    assert sched.plan(r, anchor=0.0, last_tick=None, now=60.0) == sched.Plan(60.0, 120.0)
    assert sched.plan(r, anchor=0.0, last_tick=60.0, now=61.0) == sched.Plan(None, 120.0)
    # Down for an hour: the latest missed tick fires once, the other 59 are skipped.
    assert sched.plan(r, anchor=0.0, last_tick=60.0, now=3690.0) == sched.Plan(3660.0, 3720.0)
    c = sched.parse("cron(0 * * * ? *)")
    p = sched.plan(c, anchor=ts(2026, 1, 1), last_tick=ts(2026, 1, 1, 1), now=ts(2026, 1, 2, 5, 30))
    assert (utc(p.fire), utc(p.next)) == (datetime(2026, 1, 2, 5), datetime(2026, 1, 2, 6))


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class Accepting:
    def __init__(self):
        self.events = []

    def accept(self, function, payload, *, event_id, source):
        self.events.append((function, event_id, source, payload))
        return True


def test_two_processes_that_both_lead_fire_each_tick_once(tmp_path):
    meta = SqliteMetadataStore(tmp_path / "meta.sqlite3")
    functions = FunctionStore(meta, LocalBlobStore(tmp_path / "blobs"), codepkg.Limits())
    functions.create(FunctionConfig.from_request({"name": "tick"}))
    clock = Clock(1000.0)
    store = EventTriggerStore(meta, functions, clock=clock)
    t = store.add({"function": "tick", "kind": "schedule", "schedule": "rate(10 seconds)", "event": {"k": 1}})
    assert t["next_run"] == "1970-01-01T00:16:50Z" and t["last_run"] is None
    runner = Accepting()
    a, b = ScheduleLoop(store, runner, None, clock=clock), ScheduleLoop(store, runner, None, clock=clock)
    for now in (1005.0, 1010.0, 1011.0, 1020.0, 1100.0):
        clock.t = now
        a.tick()
        b.tick()
    ticks = [e[1] for e in runner.events]
    # 1010 and 1020 fire; after 80 s away only the latest missed tick (1100) fires.
    assert ticks == [f"{t['id']}-1010000", f"{t['id']}-1020000", f"{t['id']}-1100000"]
    assert {e[3] for e in runner.events} == {b'{"k": 1}'}
    assert store.list("tick")[0]["last_run"] == "1970-01-01T00:18:20Z"
    store.update(t["id"], {"enabled": False})
    clock.t = 2000.0
    assert a.tick() == [] and store.list()[0]["next_run"] is None
    store.remove_function("tick")
    assert store.list() == []
    meta.close()
