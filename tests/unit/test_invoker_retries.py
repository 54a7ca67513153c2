"""Which failed attempts the invoker retries, and how many."""

import pytest

from appliance.backends.local_registry import LocalRegistry
from appliance.core.activator import Activator
from appliance.core.errors import ColdStartTimeout
from appliance.core.invoker import Invoker
from appliance.core.model import FunctionConfig, FunctionRecord, Instance
from appliance.core.records import RecordStore
from appliance.core.scaler import PolicyCache
from appliance.instances.client import InstanceUnreachable, InvokeReply

from .fakes import FakeScheduler

FN = FunctionRecord(config=FunctionConfig(name="f", max_instances=10), version=1, digest="0" * 64)


class Store:
    def get(self, name):
        return FN

    def peek(self, name):
        return FN


class Client:
    """Answers for the instances the scheduler started; the others are gone (nothing listens)."""

    def __init__(self, scheduler, *, started_work=True):
        self.scheduler = scheduler
        self.started_work = started_work
        self.calls = []

    def invoke(self, instance, body, **kw):
        self.calls.append(instance.id)
        if self.started_work and instance in self.scheduler.started:
            return InvokeReply(status=200, body={"ok": True, "result": "hi", "durationMs": 0.1})
        raise InstanceUnreachable(f"cannot connect to {instance.address}")


@pytest.fixture
def parts(tmp_path):
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    records = RecordStore(tmp_path / "inv.db")
    yield registry, scheduler, records
    records.close()


def stale(registry, n):
    """``n`` instances this edge still lists after they ended (a scale to zero not yet heard of)."""
    for i in range(n):
        registry.add(Instance(id=f"gone-{i}", function="f", version=1, address=f"127.0.0.1:{20000 + i}",
                              concurrency=1))


def invoker(registry, scheduler, records, client):
    return Invoker(Store(), Activator(scheduler, registry, start_timeout_s=5), client, scheduler, registry, records,
                   PolicyCache(), max_attempts=5)


def test_stale_slots_past_the_attempt_limit_end_in_a_cold_start_not_a_503(parts):
    registry, scheduler, records = parts
    client = Client(scheduler)
    inv = invoker(registry, scheduler, records, client)
    stale(registry, 8)
    out = inv.invoke("f", b"{}", request_id="r1")
    assert out.ok and out.result == "hi" and out.record.cold
    assert sorted(c for c in client.calls if c.startswith("gone-")) == [f"gone-{i}" for i in range(8)]
    assert registry.ready("f") == scheduler.started  # every stale entry forgotten


def test_instances_that_are_gone_as_soon_as_they_start_are_tried_only_max_attempts_times(parts):
    registry, scheduler, records = parts
    client = Client(scheduler, started_work=False)
    inv = invoker(registry, scheduler, records, client)
    stale(registry, 2)
    out = inv.invoke("f", b"{}", request_id="r2")
    assert isinstance(out.error, ColdStartTimeout)
    assert sorted(c for c in client.calls if c.startswith("gone-")) == ["gone-0", "gone-1"]
    assert len(scheduler.started) == 5  # the two stale slots cost nothing; five cold starts were tried


def test_a_failed_invocations_error_is_written_into_its_log():
    from appliance.core.invoker import MAX_STACK_LINES, error_log_lines
    py = {"errorType": "Function.Error", "errorMessage": "ValueError: bad thing",
          "stackTrace": ['  File "/var/task/index.py", line 3, in handler\n    raise ValueError("bad thing")\n']}
    assert error_log_lines(py) == ["[ERROR] Function.Error: ValueError: bad thing", "Traceback (most recent call last):",
                                   '  File "/var/task/index.py", line 3, in handler', '    raise ValueError("bad thing")']
    node = {"errorType": "Function.Error", "errorMessage": "TypeError: x", "stackTrace": ["at handler (/var/task/index.js:2:9)"]}
    assert error_log_lines(node) == ["[ERROR] Function.Error: TypeError: x", "at handler (/var/task/index.js:2:9)"]
    deep = {"errorType": "Function.Error", "errorMessage": "RecursionError", "stackTrace": ["  File x\n"] * 5000}
    assert len(error_log_lines(deep)) == 2 + MAX_STACK_LINES
    assert error_log_lines({"errorType": "Function.Timeout", "errorMessage": "Task timed out"}) == [
        "[ERROR] Function.Timeout: Task timed out"]
