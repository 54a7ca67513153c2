"""Queue triggers: an embedded queue and SQS (moto's server, real boto3) read in batches with
Lambda's SQS event, processed messages deleted, failed ones left for redrive, partial batch
failures, bounded concurrency shown by `faas describe`."""

from __future__ import annotations

import json
import os

import boto3
import pytest

from tests.cluster.helpers import MotoServer

from .conftest import start_appliance, stop_appliance, wait_for
from .test_async_events import faas

# Reports the messages whose body contains "bad" as failures; raises for a body of "crash".
PARTIAL = """
def handler(event, context):
    records = event["Records"]
    assert all(r["eventSource"] == "aws:sqs" for r in records)
    if any(r["body"] == "crash" for r in records):
        raise RuntimeError("crash")
    print("batch", len(records), ",".join(sorted(r["body"] for r in records)))
    return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records if "bad" in r["body"]]}
"""


def peek(r, queue):
    out = r.http.get(f"{r.api_url}/v1/queues/{queue}/messages", params={"limit": 100}, timeout=5).json()
    return sorted(m["body"] for m in out["messages"])


def test_embedded_queue_partial_failures_stay_for_redrive(appliance):
    name = appliance.deploy({"index.py": PARTIAL})
    q = f"in-{name}"
    out = faas(appliance, "trigger", "add", name, "--queue", q, "--batch-size", "10", "--batching-window", "1",
               "--max-concurrency", "1", "--visibility-timeout", "1", "--report-batch-item-failures").stdout
    trigger_id = out.split()[0]
    for body in ("a", "bad-1", "b", "bad-2", "c"):
        faas(appliance, "queue", "send", q, "--data", body)
    # Good ones are deleted; the reported failures stay and come back after the visibility timeout.
    wait_for(lambda: peek(appliance, q) == ["bad-1", "bad-2"], 30,
             message="the good messages to be deleted")
    src = wait_for(lambda: [s for s in appliance.api.get_function(name)["queue_sources"]
                            if s["messages_failed"] >= 4], 30, message="a redelivery of the failures")[0]
    assert (src["id"], src["queue"], src["max_concurrency"], src["batch_size"]) == (trigger_id, q, 1, 10)
    # At least once: a message whose batch outlived the 1 s visibility timeout may be processed again.
    assert src["messages_deleted"] >= 3 and src["in_flight"] in (0, 1)
    recs = appliance.api.invocations(name)
    assert recs and all(x["trigger"] == f"queue:{trigger_id}" for x in recs)
    assert "QUEUE" in faas(appliance, "trigger", "ls", name).stdout
    faas(appliance, "trigger", "rm", trigger_id)


def test_a_failed_batch_deletes_nothing(appliance):
    name = appliance.deploy({"index.py": PARTIAL})
    q = f"all-{name}"
    appliance.api.add_queue_source(name, q, batch_size=10, batching_window_s=1, visibility_timeout_s=60,
                                   report_batch_item_failures=True)
    for body in ("x", "crash"):
        appliance.api.send_message(q, body)
    wait_for(lambda: [s for s in appliance.api.get_function(name)["queue_sources"] if s["batches"] >= 1], 30)
    assert peek(appliance, q) == ["crash", "x"]
    src = appliance.api.get_function(name)["queue_sources"][0]
    assert src["messages_deleted"] == 0 and src["last_error"].startswith("Function.Error")


def test_queue_trigger_input_errors(appliance):
    name = appliance.deploy({"index.py": PARTIAL})
    url = f"{appliance.api_url}/v1/triggers"
    for extra, field in (({"batch_size": 11}, "batch_size"), ({"batching_window_s": 21}, "batching_window_s"),
                         ({"max_concurrency": 0}, "max_concurrency"), ({"queue": "a b"}, "queue"),
                         ({"queue": "https://sqs.example.com/1/q"}, "queue"), ({"delay": 1}, "delay")):
        body = {"function": name, "kind": "queue", "queue": "q", **extra}
        resp = appliance.http.post(url, json=body, timeout=5)
        assert (resp.status_code, resp.json()["error"]["field"]) == (400, field), body
    resp = appliance.http.post(f"{appliance.api_url}/v1/queues/a%20b/messages", data=b"x", timeout=5)
    assert resp.status_code == 400


@pytest.fixture(scope="module")
def moto():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    m = MotoServer()
    yield m
    m.close()


def test_sqs_source_with_partial_failures_redrive_and_an_sqs_destination(moto, tmp_path):
    sqs = boto3.client("sqs", endpoint_url=moto.url, region_name="us-east-1")
    dlq = sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    src = sqs.create_queue(QueueName="orders", Attributes={
        "VisibilityTimeout": "1", "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
    })["QueueUrl"]
    failures = sqs.create_queue(QueueName="async-failures")["QueueUrl"]
    r = start_appliance(tmp_path, {"APPLIANCE_SQS_ENDPOINT": moto.url, "APPLIANCE_SQS_REGION": "us-east-1",
                                   "APPLIANCE_SQS_ACCESS_KEY": "testing", "APPLIANCE_SQS_SECRET_KEY": "testing",
                                   "APPLIANCE_ASYNC_BACKOFF_S": "0.1"})
    try:
        name = r.deploy({"index.py": PARTIAL})
        t = r.api.add_queue_source(name, src, batch_size=5, batching_window_s=1, report_batch_item_failures=True)
        for body in ("a", "bad-1", "b"):
            sqs.send_message(QueueUrl=src, MessageBody=body)

        def dead_letters():
            got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
            return [m["Body"] for m in got]
        # bad-1 is reported failed, so it is not deleted; once received more than maxReceiveCount times,
        # SQS's redrive policy moves it to the dead-letter queue. a and b were deleted.
        assert wait_for(dead_letters, 60, message="the redrive to the dead-letter queue") == ["bad-1"]
        stats = r.api.get_function(name)["queue_sources"][0]
        assert stats["id"] == t["id"] and stats["messages_deleted"] >= 2 and stats["messages_failed"] >= 1
        attrs = sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["All"])["Attributes"]
        assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
        # An async failure destination of kind queue, by name, goes to SQS too.
        r.api.update_function(name, **{"async": {"max_retry_attempts": 0, "on_failure": {"queue": "async-failures"}}})
        rid = r.api.invoke_raw(name, {"Records": [{"eventSource": "aws:sqs", "body": "crash"}]},
                               asynchronous=True).json()["requestId"]
        got = wait_for(lambda: sqs.receive_message(QueueUrl=failures, WaitTimeSeconds=1).get("Messages"), 60,
                       message="the failure record in SQS")
        record = json.loads(got[0]["Body"])
        assert record["requestContext"]["requestId"] == rid
        assert record["requestContext"]["condition"] == "RetriesExhausted"
    finally:
        stop_appliance(r)
