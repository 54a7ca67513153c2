"""Scheduled min_instances: which action is in force, validation, and the policy the scaler uses."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from appliance.core import schedule as sched
from appliance.core import scheduled_min as sm
from appliance.core.errors import ValidationError
from appliance.core.model import FunctionConfig, FunctionRecord
from appliance.core.scaler import PolicyCache

WORKDAY = [{"schedule": "cron(0 8 ? * MON-FRI *)", "min_instances": 5, "timezone": "Europe/Paris"},
           {"schedule": "cron(0 19 ? * MON-FRI *)", "min_instances": 1, "timezone": "Europe/Paris"}]


def ts(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def test_prev_at_or_before():
    c = sched.parse("cron(0 8 ? * MON-FRI *)", "Europe/Paris")
    assert c.prev_at_or_before(ts(2026, 12, 7, 7, 0)) == ts(2026, 12, 7, 7, 0)  # Monday 08:00 in Paris
    assert c.prev_at_or_before(ts(2026, 12, 7, 6, 59)) == ts(2026, 12, 4, 7, 0)  # back to Friday
    assert sched.parse("cron(0 0 1 1 ? 2030)").prev_at_or_before(ts(2026, 1, 1)) is None


def test_the_latest_action_is_in_force():
    validated = sm.validate(WORKDAY, 10)
    assert sm.effective_min(validated, 0, ts(2026, 12, 7, 9, 0))[0] == 5      # Monday 10:00 Paris
    assert sm.effective_min(validated, 0, ts(2026, 12, 7, 18, 30))[0] == 1    # Monday 19:30 Paris
    assert sm.effective_min(validated, 0, ts(2026, 12, 6, 12, 0))[0] == 1    # Sunday: Friday evening's
    assert sm.effective_min([], 3, ts(2026, 12, 6))[0] == 3


@pytest.mark.parametrize("value", [
    "cron(0 8 * * ? *)", [{"schedule": "rate(1 hour)", "min_instances": 1}],
    [{"schedule": "cron(0 8 * * ? *)", "min_instances": 11}], [{"schedule": "cron(0 8 * * ? *)"}],
    [{"schedule": "cron(0 8 * * ? *)", "min_instances": 1, "zone": "UTC"}],
    [{"schedule": "cron(0 8 * * ? *)", "min_instances": 1}] * 11,
])
def test_invalid_schedules(value):
    with pytest.raises(ValidationError) as err:
        FunctionConfig.from_request({"name": "f", "max_instances": 10, "min_instances_schedule": value})
    assert err.value.field == "min_instances_schedule"


def test_policy_follows_the_schedule():
    clock = [ts(2026, 12, 7, 9, 0)]
    cache = PolicyCache(wall=lambda: clock[0])
    record = FunctionRecord(config=FunctionConfig.from_request(
        {"name": "f", "min_instances": 0, "min_instances_schedule": WORKDAY}), version=1)
    assert cache.get(record).min_instances == 5
    assert cache.get(record) is cache.get(record)
    clock[0] = ts(2026, 12, 7, 18, 30)
    assert cache.get(record).min_instances == 1
