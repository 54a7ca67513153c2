"""Snapshot templates: which to drop (a pure decision), what their seccomp filter lets through, their key."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.core.model import InstanceSpec
from appliance.instances import sandbox
from appliance.instances.templates import Kept, template_key, to_drop
from tests.unit.test_seccomp import ALLOW, EPERM, run

MB = 1 << 20


def test_idle_templates_go_after_the_keep_time():
    kept = [Kept("a", 10 * MB, last_used=0.0, live=0), Kept("b", 10 * MB, last_used=95.0, live=0)]
    assert to_drop(kept, budget_bytes=100 * MB, keep_s=60, now=100.0) == ["a"]
    assert to_drop(kept, budget_bytes=100 * MB, keep_s=200, now=100.0) == []


def test_over_the_budget_the_least_recently_used_go_first_until_the_rest_fit():
    kept = [Kept("new", 40 * MB, 90.0, 0), Kept("old", 40 * MB, 10.0, 0), Kept("mid", 40 * MB, 50.0, 0)]
    assert to_drop(kept, budget_bytes=100 * MB, keep_s=600, now=100.0) == ["old"]
    assert to_drop(kept, budget_bytes=40 * MB, keep_s=600, now=100.0) == ["old", "mid"]


def test_a_template_with_live_instances_is_never_dropped_but_counts():
    kept = [Kept("busy", 80 * MB, 0.0, live=2), Kept("idle", 40 * MB, 50.0, 0)]
    assert to_drop(kept, budget_bytes=100 * MB, keep_s=10, now=100.0) == ["idle"]
    assert to_drop([Kept("busy", 80 * MB, 0.0, 1)], budget_bytes=1, keep_s=1, now=100.0) == []


def _spec(**kw):
    base = dict(function="f", version=1, digest="d" * 64, runtime="python3.11", handler="index.handler",
                memory_mb=128, timeout_s=3, concurrency=1, environment={"A": "1"}, snapshot="auto")
    return InstanceSpec(**{**base, **kw})


def test_the_key_changes_with_whatever_initialisation_depends_on():
    spec = _spec()
    assert template_key(spec) == template_key(dataclasses.replace(spec, reserved=True))
    for change in ({"version": 2}, {"digest": "e" * 64}, {"environment": {"A": "2"}}, {"memory_mb": 256},
                   {"handler": "app.handler"}, {"network": "none"}, {"layers": ("l:1",)}, {"concurrency": 4}):
        assert template_key(dataclasses.replace(spec, **change)) != template_key(spec), change


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_template_filter_allows_namespaces_for_its_children_and_nothing_wider(machine):
    prog = sandbox.seccomp_program(machine, template=True)
    inst = sandbox.seccomp_program(machine)
    table, arch = sandbox._SYSCALLS[machine], sandbox.AUDIT_ARCH[machine]
    newns, newpid, newnet, newuser, newcgroup = 0x00020000, 0x20000000, 0x40000000, 0x10000000, 0x02000000
    for flags in (newns, newpid, newns | newnet | 0x08000000 | 0x04000000):
        assert run(prog, table["unshare"], arch, (flags,)) == ALLOW
        assert run(inst, table["unshare"], arch, (flags,)) == EPERM
    for flags in (newuser, newcgroup, newns | newuser):
        assert run(prog, table["unshare"], arch, (flags,)) == EPERM
    assert run(prog, table["mount"], arch) == ALLOW and run(inst, table["mount"], arch) == EPERM
    sock = sandbox._SOCKET_NR[machine]
    assert run(prog, sock, arch, (16, 3, 12)) == EPERM          # AF_NETLINK, NETLINK_NETFILTER
    assert run(prog, sock, arch, (16, 3, 0)) == ALLOW           # NETLINK_ROUTE
    assert run(prog, sock, arch, (2, 1, 12)) == ALLOW           # AF_INET with protocol 12: not netlink
    for name in sandbox.SECCOMP_DENY:                           # everything else stays refused
        if name in table and name not in sandbox.TEMPLATE_ALLOW:
            assert run(prog, table[name], arch) == EPERM, name
    assert run(prog, table["clone"], arch, (newuser | 17,)) == EPERM
    assert run(prog, table["clone"], arch, (newpid | 17,)) == ALLOW and run(inst, table["clone"], arch, (newpid | 17,)) == EPERM
