"""The scaler with several edges: only the leader scales and reaps, from the sum of every edge's load."""

import pytest

from appliance.backends.local_registry import LocalRegistry
from appliance.core.activator import Activator
from appliance.core.cluster_load import EdgeReport, FunctionLoad
from appliance.core.errors import RegistryUnavailable
from appliance.core.model import FunctionConfig, FunctionRecord, Instance
from appliance.core.scaler import PolicyCache, Scaler
from tests.waiting import wait_for

from .fakes import FakeScheduler

NOW = 1_700_000_000.0  # the scaler's wall clock in these tests


class Store:
    def __init__(self, *records):
        self.records = list(records)

    def list(self):
        return self.records


class Client:
    def __init__(self):
        self.drained = []

    def drain(self, instance, min_idle_ms):
        self.drained.append(instance.id)
        return True

    def close(self, address):
        pass


class Leadership:
    def __init__(self, leading):
        self.leading = leading

    def is_leader(self):
        return self.leading

    def leader(self):
        return {"edge": "me", "url": "http://me"} if self.leading else None


class Peers:
    def __init__(self, reports):
        self.reports = reports

    def collect(self):
        return dict(self.reports)


def busy_peer(edge, in_flight, seconds=10):
    """A peer that has held ``in_flight`` requests of f for the last ``seconds``."""
    samples = tuple((NOW - i, float(in_flight)) for i in range(seconds))
    return EdgeReport(edge=edge, functions={"f": FunctionLoad(samples=samples, in_flight=in_flight,
                                                              since=NOW - seconds)})


@pytest.fixture
def make():
    def build(*, leading=True, peers=None, keep_alive_s=90):
        registry = LocalRegistry()
        scheduler = FakeScheduler(registry)
        activator = Activator(scheduler, registry, start_timeout_s=5)
        record = FunctionRecord(config=FunctionConfig(name="f", keep_alive_s=keep_alive_s, max_instances=10),
                                version=1, digest="0" * 64)
        client = Client()
        leadership = Leadership(leading)
        scaler = Scaler(activator, Store(record), scheduler, registry, client, PolicyCache(), edge_id="me",
                        leadership=leadership, peers=Peers(peers or {}), wall=lambda: NOW)
        return scaler, scheduler, registry, client, leadership
    return build


def adopt_idle_instance(registry, scaler):
    registry.add(Instance(id="i-1", function="f", version=1, address="127.0.0.1:9", concurrency=1))
    wait_for(lambda: "i-1" in scaler.activator.pool("f").slots, message="the instance to be adopted")


def test_the_leader_decides_from_the_sum_of_every_edge_and_starts_ahead_of_traffic(make):
    scaler, scheduler, *_ = make(peers={"http://b": busy_peer("b", 2), "http://c": busy_peer("c", 2)})
    decisions = scaler.tick()
    # 4 requests in flight over two other edges need ceil(4 / 0.7) = 6 instances; this edge has none.
    assert decisions["f"].desired == 6
    wait_for(lambda: len(scheduler.started) == 6, message="six starts")
    record = scaler.decision("f").to_dict()
    assert record["decided_by"] == "me" and record["edges"] == 3 and record["concurrency"] == 4
    assert record["edges_missing"] == [] and record["desired"] == 6 and "-> 6" in record["reason"]


def test_an_edge_that_does_not_answer_is_left_out_and_named(make):
    scaler, *_ = make(peers={"http://b": busy_peer("b", 2), "http://c": None})
    assert scaler.tick()["f"].desired == 3
    record = scaler.decision("f").to_dict()
    assert record["edges"] == 2 and record["edges_missing"] == ["http://c"]


def test_starts_other_edges_have_under_way_are_not_repeated(make):
    peer = EdgeReport(edge="b", functions={"f": FunctionLoad(samples=((NOW - 1, 1.0),), queued=2, starting=2,
                                                             since=NOW - 1)})
    scaler, scheduler, *_ = make(peers={"http://b": peer})
    assert scaler.tick()["f"].desired == 2
    assert scheduler.started == [] and scaler.activator.pool("f").starting == 0


def test_a_follower_neither_starts_nor_reaps(make):
    scaler, scheduler, registry, client, _ = make(leading=False, peers={"http://b": busy_peer("b", 4)},
                                                  keep_alive_s=0)
    adopt_idle_instance(registry, scaler)
    assert scaler.tick() == {}
    assert scheduler.started == [] and client.drained == [] and scaler.decision("f") is None


def test_a_new_leader_keeps_idle_instances_for_a_keep_alive_then_reaps(make):
    scaler, scheduler, registry, client, leadership = make(keep_alive_s=90)
    adopt_idle_instance(registry, scaler)
    d = scaler.tick()["f"]
    # Nothing in flight anywhere, but this leader cannot know for how long: it keeps the instance.
    assert d.desired == 1 and client.drained == [] and "keep-alive" in d.reason
    # Past the keep-alive, the same leader reaps it.
    scaler.wall = lambda: NOW + 91
    assert scaler.tick()["f"].desired == 0 and client.drained == ["i-1"]


def test_losing_the_lead_forgets_the_decisions(make):
    scaler, _, _, _, leadership = make(peers={"http://b": busy_peer("b", 1)})
    scaler.tick()
    assert scaler.decision("f") is not None
    leadership.leading = False
    assert scaler.tick() == {} and scaler.decision("f") is None


class LaggingStore:
    """A store whose list lags behind (the last good view a metadata store serves while Consul is
    down), and whose direct read answers ``direct``: a record, None, or an error to raise."""

    def __init__(self, direct):
        self.direct = direct
        self.finds = []

    def list(self):
        return []

    def find(self, name, *, fresh=False):
        self.finds.append((name, fresh))
        if isinstance(self.direct, Exception):
            raise self.direct
        return self.direct


RECORD = FunctionRecord(config=FunctionConfig(name="f", keep_alive_s=90, max_instances=10), version=1, digest="0" * 64)


@pytest.mark.parametrize("direct, drained", [
    (RECORD, []),                                                  # deployed after the listed view was taken
    (RegistryUnavailable("Consul at x did not answer a metadata request"), []),  # cannot tell: keep it
    (None, ["i-1"]),                                               # really deleted
])
def test_instances_of_a_function_missing_from_the_list_are_drained_only_once_a_direct_read_says_it_is_gone(
        direct, drained):
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    store, client = LaggingStore(direct), Client()
    scaler = Scaler(Activator(scheduler, registry, start_timeout_s=5), store, scheduler, registry, client,
                    PolicyCache(), edge_id="me", leadership=Leadership(True), peers=Peers({}), wall=lambda: NOW)
    adopt_idle_instance(registry, scaler)
    scaler.tick()
    assert client.drained == drained and store.finds == [("f", True)]
    assert ("i-1" in scaler.activator.pool("f").slots) == (not drained)
