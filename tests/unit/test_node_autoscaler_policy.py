"""Table tests of the node autoscaler's decision: when to add hosts and which one to remove."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.cluster.node_autoscaler_policy import (
    NONE,
    SCALE_IN,
    SCALE_OUT,
    NodeObservation,
    NodePolicy,
    NodeScalerState,
    NodeView,
    decide_nodes,
    emptiest,
    free_slots,
)
from appliance.core.errors import ValidationError

NOW = 100_000.0
# A host holds 32 reference slots: 4096 MB / 128 MB and 3200 MHz / 100 MHz.
POLICY = NodePolicy(min_nodes=1, max_nodes=5, target_headroom_slots=8, scale_in_utilisation=0.5,
                    cooldown_out_s=300, cooldown_in_s=600)


def node(id, *, used_slots=0, instances=None, eligible=True, status="ready", draining=False):
    """A 32-slot host with ``used_slots`` reference instances' worth of allocations."""
    return NodeView(id=id, eligible=eligible, status=status, memory_mb=4096, cpu_mhz=3200,
                    allocated_memory_mb=128 * used_slots, allocated_cpu_mhz=100 * used_slots,
                    instances=used_slots if instances is None else instances, draining=draining)


def decide(nodes, *, policy=POLICY, state=NodeScalerState(), blocked=0, headroom=None, pending=0, now=NOW):
    observed = NodeObservation(nodes=nodes, blocked_evaluations=blocked, headroom_slots=headroom,
                               pending_nodes=pending)
    return decide_nodes(observed, policy, state, now)


# --- steady --------------------------------------------------------------------------------


def test_a_cluster_with_headroom_and_moderate_load_is_left_alone():
    d = decide([node("a", used_slots=20), node("b", used_slots=20)])
    assert d.action == NONE
    assert "would put utilisation at" in d.reason or "free warm slots" in d.reason
    assert d.state == NodeScalerState()


def test_free_slots_are_limited_by_the_scarcer_of_memory_and_cpu():
    n = dataclasses.replace(node("a"), allocated_memory_mb=1024, allocated_cpu_mhz=3000)
    assert free_slots(n, POLICY) == 2
    assert free_slots(node("b", draining=True), POLICY) == 0
    assert free_slots(node("c", eligible=False), POLICY) == 0
    assert free_slots(node("d", status="initializing"), POLICY) == 0


# --- scale out ---------------------------------------------------------------------------------


def test_blocked_evaluations_add_a_host_even_with_headroom():
    d = decide([node("a", used_slots=10)], blocked=3)
    assert (d.action, d.count) == (SCALE_OUT, 1)
    assert "3 evaluations blocked" in d.reason
    assert d.state.last_scale_out_at == NOW


@pytest.mark.parametrize("used, target, expected", [
    (28, 8, 1),       # 4 free, 4 short: one host of 32 covers it
    (32, 8, 1),
    (32, 40, 2),      # 40 short: two hosts
    (25, 8, 1),       # 7 free, 1 short
])
def test_a_headroom_shortfall_adds_enough_hosts_to_cover_it(used, target, expected):
    policy = dataclasses.replace(POLICY, target_headroom_slots=target)
    d = decide([node("a", used_slots=used)], policy=policy)
    assert (d.action, d.count) == (SCALE_OUT, expected)
    assert "warm slots short of the target" in d.reason


def test_the_observed_headroom_wins_over_the_computed_one():
    assert decide([node("a")], headroom=2).action == SCALE_OUT
    assert decide([node("a", used_slots=32)], headroom=20).action != SCALE_OUT


def test_scale_out_stops_at_max_nodes_and_says_so():
    nodes = [node(str(i), used_slots=32) for i in range(5)]
    d = decide(nodes, blocked=1)
    assert d.action == NONE
    assert "already at max_nodes 5" in d.reason


def test_scale_out_is_capped_by_the_room_left_under_max_nodes():
    policy = dataclasses.replace(POLICY, target_headroom_slots=200)
    d = decide([node("a", used_slots=32), node("b", used_slots=32)], policy=policy)
    assert (d.action, d.count) == (SCALE_OUT, 3)
    assert "capped by max_nodes 5" in d.reason


def test_below_min_nodes_hosts_are_added():
    policy = dataclasses.replace(POLICY, min_nodes=3, target_headroom_slots=0)
    d = decide([node("a")], policy=policy)
    assert (d.action, d.count) == (SCALE_OUT, 2)


def test_hosts_still_joining_count_toward_the_headroom_so_none_are_asked_for_twice():
    d = decide([node("a", used_slots=30)], pending=1)
    assert d.action == NONE


# --- cooldowns -------------------------------------------------------------------------------------


@pytest.mark.parametrize("since_out, expected", [(299.0, NONE), (300.0, SCALE_OUT)])
def test_scale_out_waits_for_its_cooldown(since_out, expected):
    state = NodeScalerState(last_scale_out_at=NOW - since_out)
    d = decide([node("a", used_slots=32)], state=state, blocked=1)
    assert d.action == expected
    if expected == NONE:
        assert "cooling down for 1 s more" in d.reason
        assert d.state == state


@pytest.mark.parametrize("state, expected", [
    (NodeScalerState(last_scale_in_at=NOW - 599), NONE),
    (NodeScalerState(last_scale_in_at=NOW - 600), SCALE_IN),
    (NodeScalerState(last_scale_out_at=NOW - 599), NONE),      # no removal right after an addition
    (NodeScalerState(last_scale_out_at=NOW - 600), SCALE_IN),
    (NodeScalerState(), SCALE_IN),
])
def test_scale_in_waits_for_its_cooldown_after_any_action(state, expected):
    d = decide([node("a", used_slots=4), node("b", used_slots=2), node("c", used_slots=1)], state=state)
    assert d.action == expected
    if expected == NONE:
        assert "cooling down" in d.reason


def test_a_scale_in_records_its_time_and_keeps_the_scale_out_time():
    state = NodeScalerState(last_scale_out_at=1.0)
    d = decide([node("a", used_slots=4), node("b", used_slots=2)], state=state)
    assert d.state == NodeScalerState(last_scale_out_at=1.0, last_scale_in_at=NOW)


# --- scale in ---------------------------------------------------------------------------------------


def test_scale_in_picks_the_emptiest_eligible_node_and_gives_the_drain_deadline():
    nodes = [node("busy", used_slots=10), node("quiet", used_slots=1), node("idle-but-ineligible", eligible=False),
             node("idle-but-draining", draining=True, used_slots=0), node("mid", used_slots=5)]
    d = decide(nodes, policy=dataclasses.replace(POLICY, max_nodes=10))
    assert d.action == NONE          # one drain at a time
    nodes = [n for n in nodes if not n.draining]
    d = decide(nodes, policy=dataclasses.replace(POLICY, max_nodes=10))
    assert (d.action, d.node_id, d.drain_deadline_s) == (SCALE_IN, "quiet", 900.0)
    assert d.reason.startswith("scale in quiet, the emptiest host")


def test_the_emptiest_node_is_chosen_by_instances_then_allocation_then_id():
    a = node("a", used_slots=6, instances=1)
    b = node("b", used_slots=2, instances=1)
    c = node("c", used_slots=2, instances=1)
    d = node("d", used_slots=0, instances=3)
    assert emptiest([a, b, c, d]).id == "b"
    assert emptiest([a, d]).id == "a"
    assert emptiest([node("x", status="down")]) is None


def test_a_host_the_actuator_cannot_remove_counts_as_capacity_but_is_never_chosen():
    static = dataclasses.replace(node("static", used_slots=0), removable=False)
    quiet = node("quiet", used_slots=1)
    assert emptiest([static, quiet]).id == "quiet"
    assert emptiest([static]) is None
    d = decide([static, quiet, node("busy", used_slots=4)], policy=dataclasses.replace(POLICY, max_nodes=10))
    assert (d.action, d.node_id) == (SCALE_IN, "quiet")
    other = dataclasses.replace(node("other", used_slots=1), removable=False)
    d = decide([static, other, dataclasses.replace(quiet, removable=False)])
    assert d.action == NONE and d.reason.startswith("no removable schedulable host")


def test_no_scale_in_when_the_headroom_would_fall_below_the_target():
    # Two hosts with 4 and 6 free: removing either leaves fewer than 8 + its instances.
    d = decide([node("a", used_slots=28), node("b", used_slots=26)])
    assert d.action != SCALE_IN


def test_no_scale_in_when_utilisation_would_cross_the_threshold():
    policy = dataclasses.replace(POLICY, target_headroom_slots=0)
    # 3 hosts at 40% each: without one, 2 hosts carry 3 x 12.8 slots of 64 = 60%.
    nodes = [node(x, used_slots=13, instances=0) for x in "abc"]
    d = decide(nodes, policy=policy)
    assert d.action == NONE
    assert "would put utilisation at" in d.reason
    d = decide(nodes, policy=dataclasses.replace(policy, scale_in_utilisation=0.7))
    assert d.action == SCALE_IN


def test_the_instances_on_the_removed_host_are_counted_as_needing_room_elsewhere():
    # a: 30 free; b: 20 instances on it. Without b: 30 - 20 = 10 >= 8. Without a: 12 - 2 < 8.
    nodes = [node("a", used_slots=2), node("b", used_slots=20)]
    d = decide(nodes, policy=dataclasses.replace(POLICY, scale_in_utilisation=1.0))
    assert (d.action, d.node_id) == (SCALE_IN, "a")
    nodes = [node("a", used_slots=2, instances=25), node("b", used_slots=20, instances=26)]
    assert decide(nodes, policy=dataclasses.replace(POLICY, scale_in_utilisation=1.0)).action == NONE


def test_never_below_min_nodes():
    policy = dataclasses.replace(POLICY, min_nodes=2)
    d = decide([node("a"), node("b")], policy=policy)
    assert d.action == NONE
    assert "at min_nodes 2" in d.reason


def test_above_max_nodes_the_emptiest_goes_even_when_busy():
    nodes = [node(str(i), used_slots=30) for i in range(6)]
    d = decide(nodes)
    assert (d.action, d.node_id) == (SCALE_IN, "0")
    assert "above max_nodes 5" in d.reason


def test_no_scale_in_while_hosts_are_joining_or_evaluations_are_blocked():
    nodes = [node("a", used_slots=1), node("b", used_slots=1)]
    assert decide(nodes, pending=1).action == NONE
    state = NodeScalerState(last_scale_out_at=NOW - 10)   # scale-out blocked by its cooldown
    d = decide(nodes, blocked=1, state=state)
    assert d.action == NONE


def test_down_nodes_are_neither_counted_nor_chosen():
    nodes = [node("gone", status="down"), node("a", used_slots=1), node("b", used_slots=3)]
    d = decide(nodes, policy=dataclasses.replace(POLICY, min_nodes=2))
    assert d.action == NONE
    assert "at min_nodes 2" in d.reason


# --- policy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("min_nodes", -1), ("max_nodes", 0), ("min_nodes", 20), ("cooldown_out_s", -1.0), ("cooldown_in_s", -5),
    ("target_headroom_slots", -1), ("target_headroom_slots", 2.5), ("scale_in_utilisation", 0.0),
    ("scale_in_utilisation", 1.2), ("drain_deadline_s", 0), ("slot_memory_mb", 0), ("slot_cpu_mhz", True),
])
def test_validate_names_the_bad_field_and_its_value(field, value):
    policy = dataclasses.replace(NodePolicy(), **{field: value})
    with pytest.raises(ValidationError) as info:
        policy.validate()
    assert info.value.field == field
    assert repr(value) in info.value.message


def test_the_default_node_policy_is_valid():
    assert NodePolicy().validate() == NodePolicy()
    assert NodePolicy().drain_deadline_s == 900.0
