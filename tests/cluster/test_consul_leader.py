"""Leader election of the edges through a Consul session and KV lock, against the Consul double."""
from __future__ import annotations

import requests

from appliance.backends.consul_leader import KEY, ConsulLeaderLock
from tests.waiting import wait_for


def holder(name):
    return {"edge": name, "url": f"http://{name}:8080"}


def sessions_of(consul_double):
    return requests.get(f"{consul_double.url}/v1/session/list", timeout=5).json()


def lock_session(consul_double):
    resp = requests.get(f"{consul_double.url}/v1/kv/{KEY}", timeout=5)
    return resp.json()[0].get("Session") if resp.status_code == 200 else None


def campaign(consul_double, a, b):
    """a starts and leads; then b starts, opens its session and waits behind a."""
    a.start(holder("a"))
    wait_for(a.is_leader, message="a to lead")
    b.start(holder("b"))
    wait_for(lambda: len(sessions_of(consul_double)) == 2, message="b's session")


def test_one_edge_leads_and_the_other_takes_over_when_it_steps_down(consul_double):
    a, b = ConsulLeaderLock(consul_double.url), ConsulLeaderLock(consul_double.url)
    try:
        campaign(consul_double, a, b)
        # b campaigned (it has a session) and lost: a still holds the lock.
        assert a.leader() == holder("a") == b.leader()
        assert not b.is_leader()
        sessions = {s["Name"]: s for s in sessions_of(consul_double)}
        a_session = sessions["faas-scaler-leader-a"]
        assert a_session["Behavior"] == "delete" and a_session["TTL"] == "15s" and lock_session(consul_double) == \
            a_session["ID"]

        a.close()
        wait_for(b.is_leader, message="b to take over")
        assert b.leader() == holder("b") and not a.is_leader()
        assert [s["Name"] for s in sessions_of(consul_double)] == ["faas-scaler-leader-b"]
    finally:
        a.close()
        b.close()
    assert lock_session(consul_double) is None


def test_a_leader_whose_session_is_invalidated_loses_the_lock_and_the_key(consul_double):
    a, b = ConsulLeaderLock(consul_double.url), ConsulLeaderLock(consul_double.url)
    try:
        campaign(consul_double, a, b)
        first = lock_session(consul_double)
        # What Consul does to a dead leader's session (TTL run out, node failed): invalidate it.
        assert requests.put(f"{consul_double.url}/v1/session/destroy/{first}", timeout=5).json() is True
        assert requests.get(f"{consul_double.url}/v1/kv/{KEY}", timeout=5).status_code == 404  # Behavior=delete
        # After the lock-delay, an edge with a live session holds the lock again, and exactly one leads.
        second = wait_for(lambda: (s := lock_session(consul_double)) and s != first and s, 30,
                          message="a new holder after the lock-delay")
        wait_for(lambda: a.is_leader() != b.is_leader(), 30, message="exactly one edge to lead")
        leader = a if a.is_leader() else b
        assert second in {s["ID"] for s in sessions_of(consul_double)} and leader.leader() == leader._holder
    finally:
        a.close()
        b.close()


def test_a_control_plane_reads_the_leader_without_campaigning(consul_double):
    a, reader = ConsulLeaderLock(consul_double.url), ConsulLeaderLock(consul_double.url)
    try:
        assert reader.leader() is None
        a.start(holder("a"))
        wait_for(a.is_leader, message="a to lead")
        assert reader.leader() == holder("a") and not reader.is_leader()
        assert len(sessions_of(consul_double)) == 1
    finally:
        a.close()
