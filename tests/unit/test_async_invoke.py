"""Asynchronous invocation's pure rules (retry, backoff, age, settings) and its SQLite queue."""

from __future__ import annotations

import pytest

from appliance.backends.sqlite_queue import SqliteEventQueue
from appliance.core import async_invoke as rules
from appliance.core.errors import EventQueueFull, ValidationError
from appliance.core.model import FunctionConfig
from appliance.core.ports import QueuedEvent

CFG = rules.validate_config({})


def step(status, attempt=1, failures=0, created=0.0, now=10.0, config=CFG, backoff=60.0):
    return rules.after_attempt(status=status, attempt=attempt, failures=failures, created_at=created, now=now,
                               config=config, backoff_s=backoff)


def test_defaults_are_lambdas():
    assert CFG == {"max_retry_attempts": 2, "max_event_age_s": 21600}


def test_function_errors_retry_after_one_then_two_backoffs_then_die():
    assert step("ok") == rules.Step("succeeded", condition="Success")
    first = step("error", attempt=1, failures=0)
    assert (first.action, first.at, first.counted) == ("retry", 70.0, True)
    second = step("timeout", attempt=2, failures=1, now=100.0)
    assert (second.action, second.at) == ("retry", 220.0)
    third = step("error", attempt=3, failures=2)
    assert (third.action, third.condition) == ("dead", "RetriesExhausted")


def test_zero_retries_dies_at_the_first_failure():
    config = rules.validate_config({"max_retry_attempts": 0})
    assert step("error", config=config).action == "dead"


def test_throttling_does_not_count_and_backs_off_exponentially_to_a_cap():
    s = step("throttled", attempt=1, failures=0)
    assert (s.action, s.at, s.counted) == ("retry", 11.0, False)
    assert step("unavailable", attempt=4, failures=1).at == 10.0 + 4.0
    assert step("throttled", attempt=30, failures=0).at == 10.0 + rules.THROTTLE_MAX_S


def test_a_retry_past_the_event_age_is_dead():
    config = rules.validate_config({"max_event_age_s": 60})
    s = step("error", created=0.0, now=30.0, config=config, backoff=40.0)
    assert (s.action, s.condition) == ("dead", "EventAgeExceeded")
    assert rules.expired(0.0, 60.0, config) and not rules.expired(0.0, 59.9, config)


@pytest.mark.parametrize("value, field", [
    ({"max_retry_attempts": 3}, "async.max_retry_attempts"),
    ({"max_retry_attempts": True}, "async.max_retry_attempts"),
    ({"max_event_age_s": 21601}, "async.max_event_age_s"),
    ({"on_success": {"url": "file:///etc/passwd"}}, "async.on_success"),
    ({"on_failure": {"function": "Bad_Name"}}, "async.on_failure"),
    ({"on_failure": {"queue": "a b"}}, "async.on_failure"),
    ({"on_failure": {"topic": "x"}}, "async.on_failure"),
    ({"on_failure": "x"}, "async.on_failure"),
    ({"other": 1}, "async.other"),
    ([], "async"),
])
def test_invalid_settings_name_their_field(value, field):
    with pytest.raises(ValidationError) as err:
        rules.validate_config(value)
    assert err.value.field == field


def test_function_config_carries_async_as_its_api_field():
    cfg = FunctionConfig.from_request({"name": "f", "async": {"max_retry_attempts": 1}})
    assert cfg.to_dict()["async"] == {"max_retry_attempts": 1, "max_event_age_s": 21600}
    patched = FunctionConfig.from_request({"async": {"on_failure": {"function": "g"}}}, base=cfg, name="f")
    assert patched.async_config == {"max_retry_attempts": 1, "max_event_age_s": 21600,
                                    "on_failure": {"function": "g"}}
    assert FunctionConfig.from_dict(patched.to_dict()) == patched
    assert FunctionConfig.from_dict({"name": "old"}).async_config == {}  # stored before async existed


def test_attempt_request_ids_and_share():
    assert [rules.attempt_request_id("e", n) for n in (1, 2, 3)] == ["e", "e.2", "e.3"]
    assert rules.in_flight_cap(1, 1, 0.5) == 1
    assert rules.in_flight_cap(10, 2, 0.5) == 10


def test_destination_record_shape():
    rec = rules.destination_record(event_id="r", function="f", version=3, condition="RetriesExhausted", attempts=3,
                                   payload={"a": 1}, status_code=502, result=None,
                                   error={"errorType": "Function.Error", "errorMessage": "boom", "requestId": "r.3"},
                                   timestamp="2026-01-01T00:00:00.000Z")
    assert set(rec) == {"version", "timestamp", "requestContext", "requestPayload", "responseContext",
                        "responsePayload"}
    assert rec["requestContext"]["approximateInvokeCount"] == 3
    assert rec["responseContext"] == {"statusCode": 502, "executedVersion": "3", "functionError": "Unhandled"}
    assert rec["responsePayload"] == {"errorType": "Function.Error", "errorMessage": "boom"}


def _event(i, fn="f", now=100.0):
    return QueuedEvent(id=f"e{i}", function=fn, payload=b"{}", created_at=now, available_at=now, updated_at=now)


def test_queue_claims_due_events_within_caps_and_survives_reopen(tmp_path):
    q = SqliteEventQueue(tmp_path / "q.sqlite3", max_pending=3)
    assert q.put(_event(1)) and q.put(_event(2))
    assert not q.put(_event(1))  # the same id again: nothing changes
    assert q.put(_event(3, fn="g"))
    with pytest.raises(EventQueueFull):
        q.put(_event(4))
    assert q.claim(99.0, 10, {}, lambda f: 5) == []  # not due yet
    got = q.claim(100.0, 10, {"f": 0}, lambda f: 1)
    assert sorted(e.id for e in got) == ["e1", "e3"] and all(e.attempts == 1 for e in got)
    q.finish("e1", "retrying", now=101.0, available_at=105.0, failures=1, error="boom")
    assert q.next_due() == 100.0  # e2 is still due
    q.close()
    # A process that died mid-attempt left e3 running: the next start makes it due again.
    q = SqliteEventQueue(tmp_path / "q.sqlite3", max_pending=3)
    assert q.recover(200.0) == 1
    assert q.get("e3").state == "retrying"
    got = {e.id: e for e in q.claim(200.0, 10, {}, lambda f: 5)}
    assert (got["e1"].attempts, got["e1"].failures, got["e3"].attempts) == (2, 1, 2)
    q.finish("e1", "dead", now=201.0, error="RetriesExhausted",
             destination={"kind": "queue", "target": "dlq", "record": {"x": 1}})
    (d,) = q.deliveries(10)
    q.complete_delivery(d["id"], message=("dlq", b'{"x": 1}'))
    assert q.deliveries(10) == [] and [m["body"] for m in q.messages("dlq", delete=True)] == ['{"x": 1}']
    assert q.messages("dlq") == []
    assert q.counts("f") == {"dead": 1, "running": 1}
    q.close()
