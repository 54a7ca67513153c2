"""Table tests of plan_reaping: which idle instances to drain, given the clock."""

from __future__ import annotations

import pytest

from appliance.core.autoscaler import InstanceView, ScalingPolicy, plan_reaping

NOW = 10_000.0


def inst(id, *, function="f", version=2, current=2, inflight=0, idle=0.0, reserved=False):
    """An instance of ``function`` whose last request ended ``idle`` seconds before NOW."""
    return InstanceView(id=id, function=function, version=version, current_version_of_function=current,
                        inflight=inflight, last_used=NOW - idle, reserved=reserved)


def policies(**by_function):
    return {name: ScalingPolicy(**kw) for name, kw in by_function.items()} or {"f": ScalingPolicy()}


@pytest.mark.parametrize("idle, expected", [
    (89.9, []),
    (90.0, ["a"]),
    (5000.0, ["a"]),
])
def test_an_idle_instance_is_reaped_once_keep_alive_has_passed(idle, expected):
    assert plan_reaping([inst("a", idle=idle)], policies(), NOW) == expected


def test_keep_alive_comes_from_each_functions_policy():
    instances = [inst("a", function="short", idle=40), inst("b", function="long", idle=40)]
    plan = plan_reaping(instances, policies(short={"keep_alive_s": 30.0}, long={"keep_alive_s": 300.0}), NOW)
    assert plan == ["a"]


def test_an_instance_with_work_in_flight_is_never_reaped():
    instances = [inst("busy", inflight=1, idle=10_000), inst("old-busy", version=1, inflight=2, idle=10_000)]
    assert plan_reaping(instances, policies(), NOW) == []


def test_idle_instances_go_least_recently_used_first_and_the_most_recent_stay():
    instances = [inst("recent", idle=100), inst("oldest", idle=900), inst("middle", idle=300),
                 inst("fresh", idle=5)]
    plan = plan_reaping(instances, policies(f={"min_instances": 2}), NOW)
    # Four instances, min 2: two may go, and they are the two used longest ago.
    assert plan == ["oldest", "middle"]


def test_never_below_min_instances_of_the_current_version():
    instances = [inst(str(i), idle=1000) for i in range(5)]
    assert len(plan_reaping(instances, policies(f={"min_instances": 3}), NOW)) == 2
    assert plan_reaping(instances, policies(f={"min_instances": 5}), NOW) == []


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_a_function_with_fewer_instances_than_min_instances_loses_none(count):
    instances = [inst(str(i), idle=1000) for i in range(count)]
    assert plan_reaping(instances, policies(f={"min_instances": 5}), NOW) == []
    assert plan_reaping(instances, policies(f={"min_instances": 5}), NOW, {"f": 0}) == []


def test_busy_instances_count_toward_min_instances():
    instances = [inst("busy", inflight=1), inst("idle1", idle=1000), inst("idle2", idle=2000)]
    assert plan_reaping(instances, policies(f={"min_instances": 2}), NOW) == ["idle2"]


def test_reserved_instances_of_the_current_version_are_never_reaped():
    instances = [inst("r1", reserved=True, idle=1e6), inst("r2", reserved=True, idle=1e6),
                 inst("spare", idle=1e6)]
    assert plan_reaping(instances, policies(f={"min_instances": 0}), NOW) == ["spare"]
    assert plan_reaping(instances, policies(f={"min_instances": 0}), NOW, {"f": 0}) == ["spare"]


def test_instances_of_a_replaced_version_are_reaped_as_soon_as_they_are_idle():
    instances = [inst("old", version=1, idle=0.5), inst("new", version=2, idle=0.5)]
    assert plan_reaping(instances, policies(), NOW) == ["old"]


def test_a_reserved_instance_of_a_replaced_version_is_reaped_because_it_can_no_longer_serve():
    instances = [inst("old-reserved", version=1, reserved=True, idle=1), inst("new-reserved", reserved=True)]
    assert plan_reaping(instances, policies(f={"min_instances": 1}), NOW) == ["old-reserved"]


def test_replaced_versions_do_not_count_toward_min_instances():
    instances = [inst("old", version=1, inflight=1), inst("new", idle=1000)]
    assert plan_reaping(instances, policies(f={"min_instances": 1}), NOW) == []


def test_a_function_without_a_policy_keeps_its_current_instances_but_loses_replaced_ones():
    instances = [inst("old", function="g", version=1, current=2, idle=1000),
                 inst("cur", function="g", idle=1000)]
    assert plan_reaping(instances, {}, NOW) == ["old"]


def test_the_autoscalers_desired_count_is_a_floor():
    instances = [inst(str(i), idle=1000) for i in range(4)]
    assert plan_reaping(instances, policies(), NOW, {"f": 4}) == []
    assert len(plan_reaping(instances, policies(), NOW, {"f": 3})) == 1


def test_a_desired_count_below_the_instances_reaps_idle_ones_before_keep_alive_least_recent_first():
    instances = [inst("a", idle=2), inst("b", idle=8), inst("c", idle=4), inst("busy", inflight=1, idle=50)]
    plan = plan_reaping(instances, policies(), NOW, {"f": 1})
    assert plan == ["b", "c", "a"]


def test_min_instances_wins_over_a_lower_desired_count():
    instances = [inst(str(i), idle=1000) for i in range(3)]
    assert len(plan_reaping(instances, policies(f={"min_instances": 2}), NOW, {"f": 0})) == 1


def test_a_function_missing_from_the_desired_counts_gets_the_keep_alive_rule():
    instances = [inst("a", idle=10), inst("b", idle=100)]
    assert plan_reaping(instances, policies(), NOW, {"other": 0}) == ["b"]


def test_ties_in_last_use_are_broken_by_id_so_the_plan_is_repeatable():
    instances = [inst("z", idle=500), inst("m", idle=500), inst("a", idle=500)]
    assert plan_reaping(instances, policies(f={"min_instances": 1}), NOW) == ["a", "m"]


def test_several_functions_are_planned_independently():
    instances = [inst("f1", function="f", idle=1000), inst("g1", function="g", idle=1000),
                 inst("g2", function="g", idle=1000)]
    plan = plan_reaping(instances, policies(f={"min_instances": 1}, g={"min_instances": 1}), NOW)
    assert plan == ["g1"]
