"""Asynchronous events on SQS (moto's server, real boto3): two appliance processes share one
queue; the one that accepted the events is killed with SIGKILL while it runs one, and the other
runs every event, the cut-short one after its visibility timeout, retries included."""

from __future__ import annotations

import os
from collections import Counter

import boto3
import pytest

from tests.cluster.helpers import MotoServer

from .conftest import start_appliance, stop_appliance, wait_for
from .test_async_durability import REACH_HOST, REPORTING, Counting, accept, counter, kill9  # noqa: F401 - counter: fixture

# The accepting process's version of the function: it hangs, so its attempts never end.
HANGING = """
import time, urllib.request

def handler(event, context):
    rid = context.aws_request_id.split(".")[0]
    urllib.request.urlopen(f"{event['counter']}/hang?id={rid}&attempt={context.attempt}", timeout=5).read()
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def moto():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    m = MotoServer()
    yield m
    m.close()


def test_events_on_sqs_survive_the_accepting_process(moto, tmp_path, counter):
    boto3.client("sqs", endpoint_url=moto.url, region_name="us-east-1").create_queue(QueueName="async-events")
    env = {"APPLIANCE_SQS_ENDPOINT": moto.url, "APPLIANCE_SQS_REGION": "us-east-1",
           "APPLIANCE_SQS_ACCESS_KEY": "testing", "APPLIANCE_SQS_SECRET_KEY": "testing",
           "APPLIANCE_SQS_ASYNC_QUEUE": "async-events", "APPLIANCE_SQS_ASYNC_VISIBILITY_S": "3",
           "APPLIANCE_ASYNC_BACKOFF_S": "1", **REACH_HOST}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    a = start_appliance(tmp_path / "a", env)
    try:
        a.deploy({"index.py": HANGING}, name="shared", max_instances=1, timeout_s=60)
        ids = [accept(a, "shared", {"counter": counter, "ok_at": 2 if i == 0 else 1}) for i in range(4)]
        hung = wait_for(lambda: [i for what, i, _ in Counting.runs if what == "hang"], 30,
                        message="the accepting process to start an event")[0]
    finally:
        kill9(a)
    b = start_appliance(tmp_path / "b", env)
    try:
        b.deploy({"index.py": REPORTING}, name="shared", max_instances=2, timeout_s=10)
        ends = lambda: Counter(i for what, i, _ in Counting.runs if what == "end")  # noqa: E731
        wait_for(lambda: set(ends()) == set(ids), 60, message="the other process to run every event")
        assert ends() == {i: 1 for i in ids}
        # The first event failed its first attempt on B and was retried through a delayed message.
        first = [(what, a) for what, i, a in Counting.runs if i == ids[0] and what != "hang"]
        assert ("start", 2) in first and ("end", 2) in first
        assert hung in ids
        out = b.http.get(f"{b.api_url}/v1/functions/shared/events", params={"limit": 100}, timeout=5).json()
        assert out["counts"] == {"succeeded": 4}
    finally:
        stop_appliance(b)
