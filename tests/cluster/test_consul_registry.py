"""ConsulRegistry against the Consul double: passing entries are the ready set, refreshed by
blocking queries; forget; Consul outage (last good view, then dropped); Consul restart."""
from __future__ import annotations

import threading

import pytest
import requests
from helpers import wait_until

from appliance.backends.consul_registry import ConsulRegistry
from appliance.core.errors import RegistryUnavailable


def register(consul, function, iid, port, status="passing", version="3"):
    body = {"ID": f"fn-{function}-{iid}", "Name": f"fn-{function}", "Address": "127.0.0.9", "Port": port,
            "Tags": ["faas"], "Meta": {"function": function, "version": version, "instance_id": iid,
                                       "concurrency": "4"},
            "Check": {"CheckID": f"chk-{iid}", "TTL": "300s", "Status": status}}
    requests.put(f"{consul.url}/v1/agent/service/register", json=body, timeout=5).raise_for_status()


def ttl(consul, iid, verb):
    requests.put(f"{consul.url}/v1/agent/check/{verb}/chk-{iid}", timeout=5).raise_for_status()


class Changes:
    def __init__(self, registry):
        self.seen: list[str] = []
        self.cond = threading.Condition()
        registry.subscribe(self)

    def __call__(self, function):
        with self.cond:
            self.seen.append(function)
            self.cond.notify_all()


@pytest.fixture
def registry(consul_double):
    r = ConsulRegistry(consul_double.url, wait_s=30, stale_limit_s=60, removal_grace_s=0.2)
    yield r
    r.close()


def test_passing_entries_are_the_ready_set(consul_double, registry):
    register(consul_double, "hello", "i-1", 20001)
    register(consul_double, "hello", "i-2", 20002, status="critical")
    (inst,) = registry.ready("hello")
    assert (inst.id, inst.function, inst.version, inst.address, inst.concurrency) == \
        ("i-1", "hello", 3, "127.0.0.9:20001", 4)
    assert registry.ready("other") == []


def test_changes_arrive_by_blocking_query_and_notify(consul_double, registry):
    changes = Changes(registry)
    assert registry.ready("hello") == []
    # The watcher is parked in a blocking query (no polling per request).
    wait_until(lambda: consul_double.blocked_queries >= 1, what="a blocking query in flight")
    register(consul_double, "hello", "i-1", 20001)
    wait_until(lambda: [i.id for i in registry.ready("hello")] == ["i-1"], what="i-1 listed")
    assert "hello" in changes.seen
    ttl(consul_double, "i-1", "fail")
    wait_until(lambda: registry.ready("hello") == [], what="i-1 dropped after its check failed")


def test_functions_started_elsewhere_are_adopted_from_the_catalog(consul_double, registry):
    changes = Changes(registry)
    register(consul_double, "seen-elsewhere", "i-9", 20009)
    wait_until(lambda: "seen-elsewhere" in changes.seen, what="a notification for a function never asked about")


def test_forget_hides_an_instance_until_consul_stops_listing_it(consul_double, registry):
    register(consul_double, "hello", "i-1", 20001)
    register(consul_double, "hello", "i-2", 20002)
    wait_until(lambda: len(registry.ready("hello")) == 2, what="two listed")
    registry.forget("i-1")
    assert [i.id for i in registry.ready("hello")] == ["i-2"]
    requests.put(f"{consul_double.url}/v1/agent/service/deregister/fn-hello-i-1", timeout=5)
    wait_until(lambda: "i-1" not in registry._forgotten, what="forgotten entry cleared once Consul dropped it")
    register(consul_double, "hello", "i-1", 20001)  # the same id, registered again: listed again
    wait_until(lambda: len(registry.ready("hello")) == 2, what="listed again")


def test_outage_serves_the_last_view_then_drops_it(consul_double):
    r = ConsulRegistry(consul_double.url, wait_s=30, stale_limit_s=1.0)
    try:
        changes = Changes(r)
        register(consul_double, "hello", "i-1", 20001)
        wait_until(lambda: r.ready("hello"), what="listed")
        r.require_available()
        assert r.status()["consul"] == "ok"
        consul_double.down()
        wait_until(lambda: r.status()["consul"] == "unreachable", what="outage noticed")
        st = r.status()
        assert st["view"] == "serving last view" and "consul unreachable since" in st["message"]
        assert [i.id for i in r.ready("hello")] == ["i-1"]  # warm instances keep serving
        with pytest.raises(RegistryUnavailable, match="unreachable since"):
            r.require_available()
        n = len(changes.seen)
        wait_until(lambda: r.status().get("view") == "dropped", what="view dropped after the limit")
        assert r.ready("hello") == []
        assert len(changes.seen) > n  # subscribers were told, so edges forget those slots
        consul_double.up()
        wait_until(lambda: r.status()["consul"] == "ok", what="Consul back")
        wait_until(lambda: r.ready("hello"), what="view restored")
        r.require_available()
    finally:
        r.close()


def test_consul_restart_keeps_warm_instances_listed(consul_double, registry):
    """After an agent restart every HTTP check is critical until probed again: that blip must not
    drop instances that are in fact fine."""
    import http.server

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    # The first probe after the restart comes after a random stagger of up to the interval (1 s),
    # then within the timeout: the grace must cover both (the default, 5 s, covers 2 s + 1 s).
    registry.removal_grace_s = 2.5
    try:
        body = {"ID": "fn-hello-i-1", "Name": "fn-hello", "Address": "127.0.0.1", "Port": port,
                "Meta": {"function": "hello", "version": "1", "instance_id": "i-1"},
                "Check": {"HTTP": f"http://127.0.0.1:{port}/_/ready", "Interval": "1s", "Timeout": "1s"}}
        requests.put(f"{consul_double.url}/v1/agent/service/register", json=body, timeout=5).raise_for_status()
        wait_until(lambda: registry.ready("hello"), what="listed")
        sizes = []
        registry.subscribe(lambda f: sizes.append(len(registry.ready("hello"))) if f == "hello" else None)
        consul_double.restart()
        wait_until(lambda: consul_double.passing_instances("fn-hello"), what="check passing again after restart")
        wait_until(lambda: registry.status()["consul"] == "ok", what="registry reconnected")
        assert [i.id for i in registry.ready("hello")] == ["i-1"]
        assert 0 not in sizes, f"the instance was dropped during the restart: {sizes}"
    finally:
        srv.shutdown()
        srv.server_close()
