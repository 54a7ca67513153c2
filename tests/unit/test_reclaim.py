"""The platform decides an instance's life: one that keeps refusing to drain is stopped anyway,
and a deleted function's instances are stopped at the first refusal."""

from appliance.backends.local_registry import LocalRegistry
from appliance.core.activator import Activator
from appliance.core.model import FunctionConfig, FunctionRecord, Instance
from appliance.core.scaler import MAX_DRAIN_REFUSALS, PolicyCache, Scaler
from tests.waiting import wait_for

from .fakes import FakeScheduler


class Refuser:
    def __init__(self):
        self.asked = 0

    def drain(self, instance, min_idle_ms):
        self.asked += 1
        return False   # "recently-used", every time

    def close(self, address):
        pass


class Store:
    def list(self):
        return [FunctionRecord(config=FunctionConfig(name="f"), version=1, digest="0" * 64)]


def setup():
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    activator = Activator(scheduler, registry, start_timeout_s=5)
    client = Refuser()
    scaler = Scaler(activator, Store(), scheduler, registry, client, PolicyCache(), edge_id="me")
    registry.add(Instance(id="i-1", function="f", version=1, address="127.0.0.1:9", concurrency=1))
    pool = activator.pool("f")
    wait_for(lambda: "i-1" in pool.slots, message="the instance to be adopted")
    return scaler, scheduler, client, pool


def test_an_instance_that_keeps_refusing_to_drain_is_stopped():
    scaler, scheduler, client, pool = setup()
    for i in range(MAX_DRAIN_REFUSALS):
        assert scheduler.stopped == []
        scaler._drain(pool, [(pool.slots["i-1"], 0.0)], reason="keep-alive")
    assert client.asked == MAX_DRAIN_REFUSALS
    assert scheduler.stopped == ["i-1"] and "i-1" not in pool.slots


def test_a_deleted_functions_instance_that_refuses_is_stopped_at_once():
    scaler, scheduler, client, pool = setup()
    scaler._drain(pool, [(pool.slots["i-1"], 0.0)], reason="deleted")
    assert scheduler.stopped == ["i-1"]
