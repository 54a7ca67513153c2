"""Behaviours of real Consul that the appliance depends on and that the Consul double models (each
against tests/cluster/doubles/README.md "Upstream behaviours", which cites the source): the first
probe of a check after a random stagger, and ACL policies with silently filtered reads."""
from __future__ import annotations

import time
from pathlib import Path

import consul
import pytest
import requests

ACL_DIR = Path("playbooks/roles/appliance/files/acl")


def put(d, path, **kw):
    return requests.put(d.url + path, timeout=10, **kw)


def get(d, path, **kw):
    return requests.get(d.url + path, timeout=10, **kw)


def register(d, sid, name, token=None, interval="30s"):
    body = {"ID": sid, "Name": name, "Address": "127.0.0.1", "Port": 9,
            "Check": {"HTTP": "http://127.0.0.1:9/", "Interval": interval, "Timeout": "1s"}}
    return put(d, "/v1/agent/service/register", json=body, headers={"X-Consul-Token": token} if token else {})


# ------------------------------------------------------------------------------------------ stagger
def test_the_first_probe_of_a_check_comes_after_a_random_stagger(consul_double):
    """agent/checks/check.go CheckHTTP.run: lib.RandomStagger(c.Interval) before the first probe."""
    t0 = time.monotonic()
    for i in range(40):
        register(consul_double, f"s{i}", "s").raise_for_status()
    t1 = time.monotonic()
    firsts = [c.next_probe for c in consul_double.checks.values()]
    assert all(t0 <= f <= t1 + 30 for f in firsts)
    assert max(firsts) - min(firsts) > 1.0   # spread over the 30 s interval, not all at once
    assert all(c.status == "critical" for c in consul_double.checks.values())   # not probed yet


def test_without_the_stagger_the_first_probe_is_due_at_once(make_consul_double):
    d = make_consul_double(probe_stagger=False)
    t0 = time.monotonic()
    register(d, "s1", "s").raise_for_status()
    assert d.checks["service:s1"].next_probe <= time.monotonic() and d.checks["service:s1"].next_probe >= t0


def test_a_check_registered_passing_passes_before_any_probe(consul_double):
    body = {"ID": "fn-a-1", "Name": "fn-a", "Check": {"HTTP": "http://127.0.0.1:9/", "Interval": "30s",
                                                      "Status": "passing"}}
    put(consul_double, "/v1/agent/service/register", json=body).raise_for_status()
    assert [e["ID"] for e in consul_double.passing_instances("fn-a")] == ["fn-a-1"]


# ------------------------------------------------------------------------------------------ ACLs
@pytest.fixture
def acl_consul(make_consul_double):
    rules = {
        "appliance": (ACL_DIR / "consul-appliance.hcl").read_text(),
        "instance": (ACL_DIR / "consul-instance.hcl").read_text(),
        "no-node-read": 'service_prefix "fn-" {\n  policy = "read"\n}\n',
        "exact-deny": 'service_prefix "fn-" {\n  policy = "read"\n}\nservice "fn-secret" {\n  policy = "deny"\n}\n'
                      'node_prefix "" {\n  policy = "read"\n}\n',
        "root": None,
    }
    return make_consul_double(acl_tokens=rules)


def test_reads_without_the_right_policy_are_filtered_not_refused(acl_consul):
    """agent/consul/health_endpoint.go ServiceNodes: entries the token may not read are removed from
    a 200 answer; X-Consul-Results-Filtered-By-ACLs says so to a token (not to anonymous)."""
    d = acl_consul
    assert register(d, "fn-a-1", "fn-a", token="root").status_code == 200
    r = get(d, "/v1/health/service/fn-a", headers={"X-Consul-Token": "no-node-read"})
    assert (r.status_code, r.json(), r.headers.get("X-Consul-Results-Filtered-By-ACLs")) == (200, [], "true")
    r = get(d, "/v1/health/service/fn-a")   # anonymous: nothing, and no header
    assert (r.status_code, r.json(), r.headers.get("X-Consul-Results-Filtered-By-ACLs")) == (200, [], None)
    r = get(d, "/v1/health/service/fn-a", headers={"X-Consul-Token": "appliance"})
    assert [e["Service"]["ID"] for e in r.json()] == ["fn-a-1"] and "X-Consul-Results-Filtered-By-ACLs" not in r.headers
    c = consul.Consul(host=d.host, port=d.port, token="instance")   # fn- write (so read), but no node read
    assert c.health.service("fn-a")[1] == []
    assert c.catalog.services()[1] == {"fn-a": []}


def test_an_exact_rule_beats_a_prefix_rule(acl_consul):
    d = acl_consul
    register(d, "fn-a-1", "fn-a", token="root").raise_for_status()
    register(d, "fn-secret-1", "fn-secret", token="root").raise_for_status()
    services = get(d, "/v1/catalog/services", headers={"X-Consul-Token": "exact-deny"})
    assert set(services.json()) == {"fn-a"} and services.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    assert get(d, "/v1/catalog/service/fn-secret", headers={"X-Consul-Token": "exact-deny"}).json() == []


def test_writes_and_single_key_reads_without_the_right_are_refused(acl_consul):
    d = acl_consul
    r = register(d, "faas-edge-1", "faas-edge", token="instance")
    assert r.status_code == 403 and r.text.startswith("Permission denied")
    assert register(d, "fn-a-1", "fn-a", token="instance").status_code == 200
    inst = {"X-Consul-Token": "instance"}
    assert put(d, "/v1/kv/faas/pool/claims/a1", data=b"x", headers=inst).text == "true"
    assert put(d, "/v1/kv/faas/meta/functions/a", data=b"x", headers=inst).status_code == 403
    app = {"X-Consul-Token": "appliance"}
    assert put(d, "/v1/kv/faas/meta/functions/a", data=b"x", headers=app).text == "true"
    assert put(d, "/v1/kv/other/x", data=b"x", headers={"X-Consul-Token": "root"}).text == "true"
    assert get(d, "/v1/kv/other/x", headers=app).status_code == 403
    r = get(d, "/v1/kv/?recurse", headers=app)
    assert [e["Key"] for e in r.json()] == ["faas/meta/functions/a", "faas/pool/claims/a1"]
    assert r.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    assert put(d, "/v1/session/create", json={"TTL": "15s"}, headers=app).status_code == 200
    assert put(d, "/v1/session/create", json={"TTL": "15s"}, headers=inst).status_code == 403
