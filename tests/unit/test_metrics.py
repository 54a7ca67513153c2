"""Prometheus metrics: what the invoker's record point counts, with bounded labels, and what a
scrape reads from the activator's pools."""

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.backends.local_registry import LocalRegistry
from appliance.backends.prometheus_metrics import Metrics, edge_connections, error_label
from appliance.core.activator import Activator
from appliance.core.errors import PlacementFailed
from appliance.core.invoker import Invoker
from appliance.core.model import FunctionConfig, FunctionRecord, InstanceSpec
from appliance.core.observe import NullObserver
from appliance.core.records import InvocationRecord, RecordStore
from appliance.core.scaler import PolicyCache
from appliance.instances.client import InvokeReply

from .fakes import FakeScheduler


def samples(m: Metrics) -> dict[tuple, float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def rec(function="f", status="ok", error_type=None, cold=False, cause=None, **phases) -> InvocationRecord:
    r = InvocationRecord(request_id="req-1", function=function, version=1, started_at=0.0, duration_ms=12.0,
                         status=status, error_type=error_type, cold=cold, cold_cause=cause)
    r.phases = {"queue": 1.5, **phases}
    return r


def test_an_invocation_is_counted_by_function_status_and_code():
    m = Metrics(process=False)
    m.invocation(rec())
    m.invocation(rec(status="error", error_type="Runtime.HandlerNotFound"))
    m.invocation(rec(status="error", error_type="MyOwnError"))  # a function's own exception name
    m.invocation(rec(cold=True, cause="no-instance", placement=2.0, sandbox=3.0, user_init=1.0))
    s = samples(m)
    assert s[("faas_invocations_total", (("function", "f"), ("status", "ok")))] == 2
    assert s[("faas_invocations_total", (("function", "f"), ("status", "error")))] == 2
    assert s[("faas_invocation_errors_total", (("code", "Runtime.HandlerNotFound"), ("function", "f")))] == 1
    assert s[("faas_invocation_errors_total", (("code", "Function.Error"), ("function", "f")))] == 1
    assert s[("faas_cold_starts_total", (("cause", "no-instance"), ("function", "f")))] == 1
    assert s[("faas_invocation_duration_seconds_count", (("function", "f"),))] == 4
    assert s[("faas_invocation_duration_seconds_sum", (("function", "f"),))] == pytest.approx(0.048)
    assert s[("faas_queue_wait_seconds_count", (("function", "f"),))] == 4
    # 12 ms each: above the 10 ms bound, within the 25 ms one (buckets are cumulative, "le").
    assert s[("faas_invocation_duration_seconds_bucket", (("function", "f"), ("le", "0.01")))] == 0
    assert s[("faas_invocation_duration_seconds_bucket", (("function", "f"), ("le", "0.025")))] == 4
    assert s[("faas_invocation_duration_seconds_bucket", (("function", "f"), ("le", "+Inf")))] == 4
    assert s[("faas_cold_start_phase_seconds_count", (("phase", "sandbox"),))] == 1
    assert s[("faas_cold_start_phase_seconds_sum", (("phase", "placement"),))] == pytest.approx(0.002)
    # Request ids are never labels.
    assert not any("req-1" in str(k) for k in s)


def test_function_labels_are_capped():
    m = Metrics(max_functions=3, process=False)
    for i in range(10):
        m.invocation(rec(function=f"fn-{i}"))
    s = samples(m)
    names = {dict(k[1]).get("function") for k in s if k[0] == "faas_invocations_total"}
    assert names == {"fn-0", "fn-1", "fn-2", "_other"}
    assert s[("faas_invocations_total", (("function", "_other"), ("status", "ok")))] == 7


def test_error_labels_are_a_small_set():
    assert error_label(None) == "none"
    assert error_label("Function.Timeout") == "Function.Timeout"
    assert error_label("KeyError") == "Function.Error"
    assert error_label("Runtime." + "x" * 100) == "Function.Error"


class _Store:
    def __init__(self, fn):
        self.fn = fn

    def get(self, name):
        return self.fn

    def peek(self, name):
        return self.fn


class _Client:
    def invoke(self, instance, body, **kw):
        return InvokeReply(status=200, body={"ok": True, "result": "hi", "durationMs": 0.1})


def test_the_invoker_reports_each_invocation_and_the_scrape_reads_the_pools(tmp_path):
    """The real invoker and activator, with a scheduler that starts nothing real."""
    fn = FunctionRecord(config=FunctionConfig(name="f", max_instances=2), version=1, digest="0" * 64)
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    records = RecordStore(tmp_path / "inv.db")
    m = Metrics(process=False)
    activator = Activator(scheduler, registry, start_timeout_s=5, observer=m)
    inv = Invoker(_Store(fn), activator, _Client(), scheduler, registry, records, PolicyCache(), observer=m)
    m.watch(activator=activator)
    try:
        first = inv.invoke("f", b"{}", request_id="a")
        second = inv.invoke("f", b"{}", request_id="b")
        assert first.ok and second.ok and first.record.cold and not second.record.cold
        s = samples(m)
        assert s[("faas_invocations_total", (("function", "f"), ("status", "ok")))] == 2
        assert s[("faas_cold_starts_total", (("cause", "no-instance"), ("function", "f")))] == 1
        assert s[("faas_instances", (("function", "f"), ("state", "idle")))] == 1
        assert s[("faas_instances", (("function", "f"), ("state", "busy")))] == 0
        assert s[("faas_queued_requests", (("function", "f"),))] == 0
    finally:
        records.close()


def test_a_failed_start_counts_as_a_scheduler_error(tmp_path):
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)

    scheduler.fail_with = PlacementFailed("no node has room")
    m = Metrics(process=False)
    activator = Activator(scheduler, registry, start_timeout_s=5, observer=m)
    fn = FunctionRecord(config=FunctionConfig(name="f"), version=1, digest="0" * 64)
    with pytest.raises(PlacementFailed):
        activator.acquire(InstanceSpec.of(fn), max_instances=1, deadline=activator.clock() + 5)
    assert samples(m)[("faas_backend_errors_total", (("component", "scheduler"),
                                                    ("kind", "Instance.PlacementFailed")))] == 1


def test_a_broken_observer_never_fails_an_invocation(tmp_path):
    class Broken(NullObserver):
        def invocation(self, rec):
            raise RuntimeError("metrics are broken")

    fn = FunctionRecord(config=FunctionConfig(name="f"), version=1, digest="0" * 64)
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    records = RecordStore(tmp_path / "inv.db")
    inv = Invoker(_Store(fn), Activator(scheduler, registry, start_timeout_s=5), _Client(), scheduler, registry,
                  records, PolicyCache(), observer=Broken())
    try:
        assert inv.invoke("f", b"{}", request_id="a").ok
    finally:
        records.close()


def test_edge_connections_counts_established_connections_to_a_port():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    before = edge_connections(port)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [server.accept()[0] for _ in clients]
    try:
        assert edge_connections(port) == before + 3
    finally:
        for s in clients + accepted + [server]:
            s.close()


def test_the_grafana_dashboard_uses_only_exported_metrics():
    import json
    import re
    from pathlib import Path

    m = Metrics(process=False)
    m.watch(edge_port=lambda: 1)
    exported = {fam.name for fam in m.registry.collect()}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name)
            for p in dashboard["panels"] for t in p["targets"] for name in re.findall(r"faas_[a-z_]+", t["expr"])}
    assert used == exported, (used - exported, exported - used)  # every panel works, every metric is shown


def test_the_runtime_pool_is_read_from_the_scheduler_when_scraped():
    class Scheduler:
        pool_sizes = {}

    sched = Scheduler()
    m = Metrics(process=False)
    m.watch(scheduler=sched)
    assert not any(k[0] == "faas_runtime_pool_instances" for k in samples(m))
    sched.pool_sizes = {"python3.11": {"free": 2, "specialised": 3, "desired": 5}}
    s = samples(m)
    assert s[("faas_runtime_pool_instances", (("group", "python3.11"), ("state", "free")))] == 2
    assert s[("faas_runtime_pool_instances", (("group", "python3.11"), ("state", "desired")))] == 5
