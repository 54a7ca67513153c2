"""Queue sources' pure rules (settings, Lambda's SQS event, partial batch failures) and the
embedded queue's visibility timeout."""

from __future__ import annotations

import pytest

from appliance.backends.sqlite_queue import SqliteEventQueue
from appliance.core import queue_source as qs
from appliance.core.errors import ValidationError
from appliance.core.ports import Message


def test_defaults_and_bounds():
    assert qs.validate({"queue": "orders"}) == {
        "queue": "orders", "batch_size": 10, "batching_window_s": 0, "max_concurrency": 2,
        "visibility_timeout_s": 30, "report_batch_item_failures": False, "enabled": True}
    for bad in ({"queue": "orders", "batch_size": 0}, {"queue": "orders", "batch_size": 11},
                {"queue": "orders", "batching_window_s": -1}, {"queue": "orders", "max_concurrency": 21},
                {"queue": "orders", "report_batch_item_failures": "yes"}, {"queue": ""}, {"queue": "ftp://x"}):
        with pytest.raises(ValidationError):
            qs.validate(bad)
    assert qs.validate({"batch_size": 1}, {"queue": "q", "batch_size": 10})["batch_size"] == 1


def test_sqs_event_shape():
    m = Message(id="m1", receipt="r1", body="hello", receive_count=2, sent_at_ms=5, first_receive_ms=6)
    (rec,) = qs.sqs_event([m], "arn:aws:sqs:us-east-1:1:q", "us-east-1")["Records"]
    assert rec["messageId"] == "m1" and rec["receiptHandle"] == "r1" and rec["body"] == "hello"
    assert rec["attributes"]["ApproximateReceiveCount"] == "2" and rec["attributes"]["SentTimestamp"] == "5"
    assert rec["md5OfBody"] == "5d41402abc4b2a76b9719d911017c592"
    assert (rec["eventSource"], rec["eventSourceARN"], rec["awsRegion"]) == ("aws:sqs", "arn:aws:sqs:us-east-1:1:q",
                                                                             "us-east-1")


def test_settle_partial_failures():
    ids = ["a", "b", "c"]
    assert qs.settle(ids, False, None, True) == ([], ids)
    assert qs.settle(ids, True, {"batchItemFailures": [{"itemIdentifier": "b"}]}, True) == (["a", "c"], ["b"])
    assert qs.settle(ids, True, {"batchItemFailures": []}, True) == (ids, [])
    # Without ReportBatchItemFailures the answer is a success, as on Lambda.
    assert qs.settle(ids, True, {"batchItemFailures": [{"itemIdentifier": "b"}]}, False) == (ids, [])
    # An identifier that is not in the batch, or a malformed answer, fails the whole batch.
    assert qs.settle(ids, True, {"batchItemFailures": [{"itemIdentifier": "zz"}]}, True) == ([], ids)
    assert qs.settle(ids, True, {"batchItemFailures": "b"}, True) == ([], ids)
    assert qs.settle(ids, True, "ok", True) == (ids, [])


def test_embedded_queue_hides_received_messages_until_their_visibility_ends(tmp_path):
    clock = [100.0]
    q = SqliteEventQueue(tmp_path / "q.sqlite3", clock=lambda: clock[0])
    for body in ("a", "b", "c"):
        q.send("in", body)
    first = q.receive("in", 2, 0, 30)
    assert [m.body for m in first] == ["a", "b"] and all(m.receive_count == 1 for m in first)
    assert [m.body for m in q.receive("in", 10, 0, 30)] == ["c"]
    assert q.receive("in", 10, 0, 30) == []
    q.delete("in", [first[0].receipt])
    clock[0] = 131.0
    again = q.receive("in", 10, 0, 30)
    assert [(m.body, m.receive_count) for m in again] == [("b", 2), ("c", 2)]
    q.delete("in", [first[1].receipt])  # a stale receipt deletes nothing
    assert q.depth("in") == 2
    q.delete("in", [m.receipt for m in again])
    assert q.depth("in") == 0
    q.close()


def test_embedded_queues_are_bounded(tmp_path, monkeypatch):
    from appliance.backends import sqlite_queue
    from appliance.core.errors import MessageQueueFull

    monkeypatch.setattr(sqlite_queue, "MAX_MESSAGES", 2)
    q = SqliteEventQueue(tmp_path / "q.sqlite3")
    q.send("a", "1")
    q.send("b", "2")
    with pytest.raises(MessageQueueFull):
        q.send("a", "3")
    (m,) = q.receive("a", 1, 0, 30)
    q.delete("a", [m.receipt])
    q.send("a", "3")
    q.close()
