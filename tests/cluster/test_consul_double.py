"""The Consul double against the reference (nomad-consul-api.md §15-§21, checklist §25 9-14),
through py-consul 1.8.0 and raw HTTP."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import consul
import pytest
import requests


@pytest.fixture
def c(consul_double):
    return consul.Consul(host=consul_double.host, port=consul_double.port)


def put(d, path, **kw):
    return requests.put(d.url + path, timeout=10, **kw)


def get(d, path, **kw):
    return requests.get(d.url + path, timeout=30, **kw)


class _Web:
    """A real HTTP server whose status for every GET can be changed by the test."""

    def __init__(self):
        self.status = 200
        web = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"hi"
                self.send_response(web.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def web():
    w = _Web()
    yield w
    w.close()


# --------------------------------------------------------------------------- agent services (§16)
def test_register_with_py_consul_lowercase_keys_new_check_is_critical(consul_double, c):
    assert c.agent.service.register("fn-a", service_id="a1", address="127.0.0.1", port=2000,
                                    tags=["v1"], meta={"version": "1"}, check={"TTL": "30s"})
    _, entries = c.health.service("fn-a")
    assert len(entries) == 1
    svc = entries[0]["Service"]
    assert (svc["ID"], svc["Service"], svc["Port"], svc["Tags"], svc["Meta"]) == ("a1", "fn-a", 2000, ["v1"], {"version": "1"})
    checks = {ch["CheckID"]: ch for ch in entries[0]["Checks"]}
    assert checks["serfHealth"]["Status"] == "passing"
    assert checks["service:a1"]["Status"] == "critical"  # a new check starts critical (§16)
    _, passing = c.health.service("fn-a", passing=True)
    assert passing == []


def test_register_returns_200_empty_body_and_answers_are_plain_text(consul_double):
    r = put(consul_double, "/v1/agent/service/register", json={"Name": "x"})
    assert r.status_code == 200 and r.text == ""
    r = put(consul_double, "/v1/agent/service/deregister/nope")
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == 'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.'


def test_strict_decoding_unknown_field_is_400_but_case_and_snake_aliases_are_accepted(consul_double):
    r = put(consul_double, "/v1/agent/service/register", json={"Name": "x", "Bogus": 1})
    assert r.status_code == 400
    assert r.text == 'Request decode failed: json: unknown field "Bogus"'
    r = put(consul_double, "/v1/agent/service/register",
            json={"NAME": "x", "id": "x1", "enable_tag_override": True,
                  "check": {"ttl": "10s", "deregister_critical_service_after": "1m"}})
    assert r.status_code == 200, r.text
    assert consul_double.services["x1"]["EnableTagOverride"] is True


@pytest.mark.parametrize("body, message", [
    ({"Name": "x", "Check": {"TTL": "10s", "Interval": "10s", "HTTP": "http://127.0.0.1:1/"}},
     "Invalid check: Interval and TTL cannot both be set"),
    ({"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/"}},
     "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP or UDP checks"),
    ({"Name": ""}, "Missing service name"),
    ({"Name": "x", "Address": "0.0.0.0"}, "Invalid service address"),
])
def test_register_validation_errors_are_400(consul_double, body, message):
    r = put(consul_double, "/v1/agent/service/register", json=body)
    assert (r.status_code, r.text) == (400, message)


def test_durations_as_strings_or_nanoseconds(consul_double):
    put(consul_double, "/v1/agent/service/register",
        json={"Name": "x", "Check": {"HTTP": "http://127.0.0.1:9/", "Interval": 10_000_000_000}}).raise_for_status()
    assert consul_double.checks["service:x"].interval == 10.0


def test_check_ids_default_and_reregister_keeps_status(consul_double, c):
    c.agent.service.register("m", service_id="m1", check={"TTL": "30s"}, extra_checks=[{"TTL": "30s"}])
    assert {"service:m1:1", "service:m1:2"} <= set(consul_double.checks)
    c.agent.service.register("s", service_id="s1", check={"TTL": "30s"})
    assert c.agent.check.ttl_pass("service:s1", "fine")
    c.agent.service.register("s", service_id="s1", port=99, check={"TTL": "30s"})
    assert consul_double.check_status("service:s1") == "passing"
    assert c.agent.services()["s1"]["Port"] == 99


def test_deregister_removes_checks_and_unknown_gives_false(consul_double, c):
    c.agent.service.register("d", service_id="d1", check={"TTL": "30s"})
    assert c.agent.service.deregister("d1") is True
    assert "service:d1" not in consul_double.checks
    assert c.agent.service.deregister("d1") is False  # 404 -> False in py-consul (§16)


def test_wrong_method_is_405(consul_double):
    r = get(consul_double, "/v1/agent/service/register")
    assert r.status_code == 405


# --------------------------------------------------------------------------- TTL checks (§17)
def test_ttl_pass_warn_fail_and_passing_filter_drops_warning(consul_double, c):
    c.agent.service.register("t", service_id="t1", check={"TTL": "30s"})
    assert c.agent.check.ttl_pass("service:t1", "ok")
    _, entries = c.health.service("t", passing=True)
    assert [e["Service"]["ID"] for e in entries] == ["t1"]
    out = [ch for ch in entries[0]["Checks"] if ch["CheckID"] == "service:t1"][0]["Output"]
    assert out == "ok"
    assert c.agent.check.ttl_warn("service:t1")
    assert c.health.service("t", passing=True)[1] == []  # warning counts as failing (§18)
    assert c.agent.check.ttl_fail("service:t1")
    assert consul_double.check_status("service:t1") == "critical"
    assert c.agent.check.ttl_pass("nope") is False
    r = put(consul_double, "/v1/agent/check/pass/nope")
    assert (r.status_code, r.text) == (404, 'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.')


def test_check_update_endpoint(consul_double, c):
    c.agent.service.register("u", service_id="u1", check={"TTL": "30s"})
    r = put(consul_double, "/v1/agent/check/update/service:u1", json={"Status": "passing", "Output": "up"})
    assert r.status_code == 200
    assert consul_double.check_status("service:u1") == "passing"
    r = put(consul_double, "/v1/agent/check/update/service:u1", json={"Status": "bogus"})
    assert (r.status_code, r.text) == (400, "Invalid check status: 'bogus'")


def test_ttl_expiry_turns_critical_with_output(consul_double, c):
    c.agent.service.register("e", service_id="e1", check={"TTL": "0.2s"})
    assert c.agent.check.ttl_pass("service:e1", "last words")
    consul_double.wait_for(lambda: consul_double.check_status("service:e1") == "critical", what="TTL expiry")
    out = consul_double.checks["service:e1"].output
    assert out == "TTL expired (last output before timeout follows): last words"


def test_check_register_for_unknown_service_is_404(consul_double):
    r = put(consul_double, "/v1/agent/check/register", json={"Name": "c", "ServiceID": "ghost", "TTL": "10s"})
    assert (r.status_code, r.text) == (404, 'ServiceID "ghost" does not exist')
    r = put(consul_double, "/v1/agent/check/register", json={"TTL": "10s"})
    assert (r.status_code, r.text) == (400, "Missing check name")


# --------------------------------------------------------------------------- HTTP checks, reaping
def test_http_check_probes_the_real_server(consul_double, c, web):
    url = f"http://127.0.0.1:{web.port}/_/ready"
    c.agent.service.register("h", service_id="h1", address="127.0.0.1", port=web.port,
                             check=consul.Check.http(url, "0.1s", timeout="1s"))
    consul_double.wait_for(lambda: consul_double.check_status("service:h1") == "passing", what="passing")
    assert consul_double.checks["service:h1"].output.startswith(f"HTTP GET {url}: 200 OK Output: hi")
    web.status = 429
    consul_double.wait_for(lambda: consul_double.check_status("service:h1") == "warning", what="warning")
    web.status = 503
    consul_double.wait_for(lambda: consul_double.check_status("service:h1") == "critical", what="critical")


def test_deregister_critical_service_after_reaps_the_service(make_consul_double):
    d = make_consul_double(min_deregister_after=0.3, reap_interval=0.05)
    put(d, "/v1/agent/service/register",
        json={"Name": "r", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "0.3s"}}).raise_for_status()
    d.wait_for(lambda: "r" not in d.services, what="reap")
    assert "service:r" not in d.checks


def test_deregister_after_honours_the_one_minute_minimum_by_default(make_consul_double):
    d = make_consul_double(min_deregister_after=60.0, reap_interval=0.05)
    put(d, "/v1/agent/service/register",
        json={"Name": "r", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "0.1s"}}).raise_for_status()
    # Several reaper passes run; the service stays because the minimum is 1 min.
    first = d._last_reap
    d.wait_for(lambda: d._last_reap > first + 0.2, what="reaper passes")
    assert "r" in d.services


# --------------------------------------------------------------------------- health / catalog (§18, §21)
def test_index_header_always_present_and_known_leader(consul_double):
    for path in ("/v1/health/service/none", "/v1/catalog/services", "/v1/kv/missing"):
        r = get(consul_double, path)
        assert int(r.headers["X-Consul-Index"]) >= 1
        assert r.headers["X-Consul-KnownLeader"] == "true"
        assert r.headers["X-Consul-Default-ACL-Policy"] == "allow"
    r = get(consul_double, "/v1/kv/missing")
    assert (r.status_code, r.text) == (404, "")
    assert get(consul_double, "/v1/health/service/none").json() == []


def test_blocking_health_query_returns_at_change(consul_double, c):
    idx, _ = c.health.service("late")
    result = {}

    def watch():
        result["value"] = c.health.service("late", index=idx, wait="60s")
    t = threading.Thread(target=watch)
    t.start()
    consul_double.wait_for(lambda: consul_double.blocked_queries == 1, what="a blocked query")
    c.agent.service.register("late", service_id="late1")
    t.join(30)
    new_idx, entries = result["value"]
    assert int(new_idx) > int(idx)
    assert [e["Service"]["ID"] for e in entries] == ["late1"]


def test_blocking_query_returns_after_wait_without_change(consul_double, c):
    idx, _ = c.health.service("quiet")
    again, entries = c.health.service("quiet", index=idx, wait="0.2s")
    assert again == idx and entries == []


def test_blocking_query_ignores_unrelated_services(consul_double, c):
    c.agent.service.register("mine", service_id="mine1")
    idx, _ = c.health.service("mine")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", c.health.service("mine", index=idx, wait="60s")))
    t.start()
    consul_double.wait_for(lambda: consul_double.blocked_queries == 1, what="a blocked query")
    c.agent.service.register("other", service_id="other1")
    assert consul_double.blocked_queries == 1  # still waiting: not its service
    c.agent.service.register("mine", service_id="mine2")
    t.join(30)
    assert sorted(e["Service"]["ID"] for e in result["v"][1]) == ["mine1", "mine2"]


def test_bad_wait_and_passing_values(consul_double):
    assert get(consul_double, "/v1/health/service/x?index=1&wait=soon").status_code == 400
    r = get(consul_double, "/v1/health/service/x?passing=maybe")
    assert (r.status_code, r.text) == (400, "Invalid value for ?passing")


def test_catalog_services_and_service(consul_double, c):
    c.agent.service.register("cat", service_id="cat1", address="10.0.0.5", port=81, tags=["a", "b"])
    _, services = c.catalog.services()
    assert services["cat"] == ["a", "b"] and services["consul"] == []
    _, nodes = c.catalog.service("cat")
    assert (nodes[0]["ServiceID"], nodes[0]["ServiceAddress"], nodes[0]["ServicePort"]) == ("cat1", "10.0.0.5", 81)
    assert c.catalog.service("cat", tag="zzz")[1] == []


def test_status_leader_and_agent_self(consul_double, c):
    assert c.status.leader() == "127.0.0.1:8300"
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1" and me["Config"]["NodeName"] == consul_double.default_node


# --------------------------------------------------------------------------- KV (§19)
def test_kv_put_get_and_base64_values(consul_double, c):
    r = put(consul_double, "/v1/kv/fn/a", data=b"\x00\x01bin")
    assert r.text == "true"
    raw = get(consul_double, "/v1/kv/fn/a").json()
    assert isinstance(raw, list) and raw[0]["Value"] == base64.b64encode(b"\x00\x01bin").decode()
    assert "Session" not in raw[0]
    _, item = c.kv.get("fn/a")
    assert item["Value"] == b"\x00\x01bin"
    assert get(consul_double, "/v1/kv/fn/a?raw").content == b"\x00\x01bin"
    assert c.kv.get("fn/missing") == (c.kv.get("fn/missing")[0], None)


def test_kv_check_and_set(consul_double, c):
    assert c.kv.put("meta/f", "v1", cas=0) is True
    assert c.kv.put("meta/f", "again", cas=0) is False  # cas=0: create only
    _, item = c.kv.get("meta/f")
    assert c.kv.put("meta/f", "v2", cas=item["ModifyIndex"]) is True
    assert c.kv.put("meta/f", "lost update", cas=item["ModifyIndex"]) is False
    assert c.kv.get("meta/f")[1]["Value"] == b"v2"
    assert c.kv.delete("meta/f", cas=item["ModifyIndex"]) is False
    assert c.kv.delete("meta/f", cas=c.kv.get("meta/f")[1]["ModifyIndex"]) is True


def test_kv_recurse_keys_separator_and_delete(consul_double, c):
    for k in ("app/a", "app/b/c", "app/b/d", "other"):
        c.kv.put(k, "x")
    _, items = c.kv.get("app/", recurse=True)
    assert [i["Key"] for i in items] == ["app/a", "app/b/c", "app/b/d"]
    _, keys = c.kv.get("app/", keys=True, separator="/")
    assert keys == ["app/a", "app/b/"]
    r = get(consul_double, "/v1/kv/nothing/?keys")
    assert r.status_code == 404
    idx = int(get(consul_double, "/v1/kv/app/?recurse").headers["X-Consul-Index"])
    assert idx == max(i["ModifyIndex"] for i in items)
    assert c.kv.delete("app/", recurse=True)
    assert c.kv.get("app/", recurse=True)[1] is None
    assert c.kv.get("other")[1]["Value"] == b"x"


def test_kv_conflicting_flags(consul_double):
    r = put(consul_double, "/v1/kv/k?cas=0&release=abc", data=b"v")
    assert r.status_code == 400 and r.text.startswith("Conflicting flags")


def test_kv_blocking_get_until_key_appears(consul_double, c):
    idx, item = c.kv.get("later")
    assert item is None
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", c.kv.get("later", index=idx, wait="60s")))
    t.start()
    consul_double.wait_for(lambda: consul_double.blocked_queries == 1, what="a blocked query")
    c.kv.put("later", "now")
    t.join(30)
    assert result["v"][1]["Value"] == b"now"


# --------------------------------------------------------------------------- sessions and locks (§19, §20)
def test_locks_acquire_release_and_lock_index(consul_double, c):
    s1 = c.session.create(name="one", lock_delay=0)
    s2 = c.session.create(name="two", lock_delay=0)
    assert c.kv.put("lock/x", "a", acquire=s1) is True
    assert c.kv.get("lock/x")[1]["LockIndex"] == 1
    assert c.kv.put("lock/x", "a", acquire=s1) is True  # same holder: LockIndex unchanged
    assert c.kv.get("lock/x")[1]["LockIndex"] == 1
    assert c.kv.put("lock/x", "b", acquire=s2) is False
    assert c.kv.put("lock/x", "b", release=s2) is False
    assert c.kv.put("lock/x", "a", release=s1) is True
    item = c.kv.get("lock/x")[1]
    assert "Session" not in item and item["LockIndex"] == 1
    assert c.kv.put("lock/x", "b", acquire=s2) is True
    assert c.kv.get("lock/x")[1]["LockIndex"] == 2
    assert c.kv.put("lock/x", "overwrite") is True  # a plain PUT overwrites a locked key
    assert c.kv.get("lock/x")[1]["Session"] == s2


def test_destroyed_session_releases_and_lock_delay_applies(consul_double, c):
    s1 = c.session.create()  # default lock delay 15 s
    s2 = c.session.create()
    assert c.kv.put("lock/y", "a", acquire=s1)
    assert c.session.destroy(s1) is True
    assert "Session" not in c.kv.get("lock/y")[1]
    assert c.kv.put("lock/y", "b", acquire=s2) is False  # within the lock-delay


def test_session_behavior_delete(consul_double, c):
    s = c.session.create(behavior="delete", lock_delay=0)
    assert c.kv.put("eph", "x", acquire=s)
    c.session.destroy(s)
    assert c.kv.get("eph")[1] is None


def test_session_renew_info_and_errors(consul_double, c):
    s = c.session.create(ttl=10)
    renewed = c.session.renew(s)
    assert renewed["ID"] == s and renewed["TTL"] == "10s"
    with pytest.raises(consul.NotFound):
        c.session.renew("00000000-0000-0000-0000-000000000000")
    r = put(consul_double, "/v1/session/renew/nope")
    assert (r.status_code, r.text) == (404, "Session id 'nope' not found")
    assert get(consul_double, "/v1/session/info/nope").json() == []
    info = c.session.info(s)[1]
    assert info["LockDelay"] == 15_000_000_000 and info["NodeChecks"] == ["serfHealth"]
    r = put(consul_double, "/v1/session/create", json={"TTL": "5s"})
    assert r.status_code == 400 and r.text.startswith("Invalid Session TTL '5s'")
    r = put(consul_double, "/v1/session/create", json={"Behavior": "explode"})
    assert (r.status_code, r.text) == (400, "Invalid Behavior setting 'explode'")


def test_session_ttl_expiry_releases_locks(make_consul_double):
    d = make_consul_double(min_session_ttl=0.1, session_ttl_multiplier=2)
    sid = put(d, "/v1/session/create", json={"TTL": "0.2s", "LockDelay": "0s"}).json()["ID"]
    assert put(d, f"/v1/kv/held?acquire={sid}", data=b"v").text == "true"
    d.wait_for(lambda: sid not in d.sessions, what="session expiry")
    assert "Session" not in get(d, "/v1/kv/held").json()[0]


def test_session_bound_to_a_check_is_invalidated_when_it_goes_critical(consul_double, c):
    c.agent.service.register("sv", service_id="sv1", check={"TTL": "30s"})
    c.agent.check.ttl_pass("service:sv1")
    sid = put(consul_double, "/v1/session/create",
              json={"ServiceChecks": [{"ID": "service:sv1"}], "LockDelay": 0}).json()["ID"]
    assert c.kv.put("claim/i1", "mine", acquire=sid)
    c.agent.check.ttl_fail("service:sv1")
    consul_double.wait_for(lambda: sid not in consul_double.sessions, what="invalidation")
    assert "Session" not in c.kv.get("claim/i1")[1]


# --------------------------------------------------------------------------- outages
def test_down_refuses_connections_and_up_serves_again(consul_double, c):
    c.kv.put("k", "v")
    consul_double.down()
    with pytest.raises(requests.ConnectionError):
        requests.get(consul_double.url + "/v1/kv/k", timeout=5)
    consul_double.up()
    assert c.kv.get("k")[1]["Value"] == b"v"


def test_down_cuts_blocking_queries_in_flight(consul_double, c):
    idx, _ = c.health.service("x")
    errors = []

    def watch():
        try:
            c.health.service("x", index=idx, wait="60s")
        except Exception as e:  # the connection is cut without an answer
            errors.append(e)
    t = threading.Thread(target=watch)
    t.start()
    consul_double.wait_for(lambda: consul_double.blocked_queries == 1, what="a blocked query")
    consul_double.down()
    t.join(30)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], requests.ConnectionError)


def test_restart_keeps_state_by_default(consul_double, c, web):
    url = f"http://127.0.0.1:{web.port}/"
    c.agent.service.register("keep", service_id="k1", check=consul.Check.http(url, "0.1s"))
    consul_double.wait_for(lambda: consul_double.check_status("service:k1") == "passing", what="passing")
    c.kv.put("persist", "yes")
    before = int(c.kv.get("persist")[0])
    port = consul_double.port
    consul_double.restart()
    assert consul_double.port == port
    assert c.kv.get("persist")[1]["Value"] == b"yes"
    assert "k1" in c.agent.services()
    assert int(c.health.service("keep")[0]) >= before  # the index never goes backwards
    consul_double.wait_for(lambda: consul_double.check_status("service:k1") == "passing", what="re-probed")


def test_restart_losing_agent_state_keeps_kv(consul_double, c):
    c.agent.service.register("gone", service_id="g1")
    c.kv.put("persist", "yes")
    consul_double.restart(lose="agent")
    assert c.agent.services() == {}
    assert c.kv.get("persist")[1]["Value"] == b"yes"


def test_restart_losing_everything_moves_the_index_backwards(consul_double, c):
    for i in range(5):
        c.kv.put(f"k{i}", "v")
    before = int(c.kv.get("k0")[0])
    consul_double.restart(lose="all")
    idx, item = c.kv.get("k0")
    assert item is None and int(idx) < before


def test_json_bodies_are_real_json(consul_double, c):
    c.agent.service.register("j", service_id="j1")
    r = get(consul_double, "/v1/health/service/j")
    assert r.headers["Content-Type"] == "application/json"
    assert json.loads(r.text)[0]["Service"]["Address"] == ""  # empty: use Node.Address (§18)


def test_tagged_addresses_must_be_objects(consul_double, c):
    with pytest.raises(consul.ConsulException):
        c.agent.service.register("ta", tagged_addresses={"lan": "10.0.0.1"})
    assert c.agent.service.register("ta", tagged_addresses={"lan": {"Address": "10.0.0.1", "Port": 80}})


def test_agent_local_health_status_codes(consul_double, c):
    c.agent.service.register("al", service_id="al1", check={"TTL": "30s"})
    assert get(consul_double, "/v1/agent/health/service/id/al1").status_code == 503
    c.agent.check.ttl_warn("service:al1")
    assert get(consul_double, "/v1/agent/health/service/id/al1").status_code == 429
    c.agent.check.ttl_pass("service:al1")
    r = get(consul_double, "/v1/agent/health/service/name/al?format=text")
    assert (r.status_code, r.text) == (200, "passing")
    assert get(consul_double, "/v1/agent/health/service/id/zz").status_code == 404


def test_kv_value_size_limit(consul_double):
    r = put(consul_double, "/v1/kv/big", data=b"x" * (512 * 1024 + 1))
    assert r.status_code == 413
    assert put(consul_double, "/v1/kv/big", data=b"x" * (512 * 1024)).text == "true"


# --------------------------------------------------------------------------- ACLs (§15)
def test_acls_off_by_default_and_tokens_are_logged(consul_double):
    assert put(consul_double, "/v1/kv/open", data=b"1").text == "true"
    assert get(consul_double, "/v1/kv/open").headers["X-Consul-Default-ACL-Policy"] == "allow"
    put(consul_double, "/v1/kv/open", data=b"2", headers={"X-Consul-Token": "t1"})
    assert consul_double.request_tokens[0] == ("PUT", "/v1/kv/open", "")
    assert consul_double.request_tokens[-1] == ("PUT", "/v1/kv/open", "t1")


def test_acls_on_refuse_missing_and_unknown_tokens(make_consul_double):
    d = make_consul_double(acl_tokens={"secret-1"})
    r = put(d, "/v1/kv/k", data=b"1")
    assert (r.status_code, r.text) == (403, "Permission denied: anonymous token lacks permission 'key:write' on \"k\"")
    assert r.headers["Content-Type"].startswith("text/plain") and r.headers["X-Consul-Default-ACL-Policy"] == "deny"
    r = put(d, "/v1/agent/service/register", json={"Name": "s"}, headers={"X-Consul-Token": "nope"})
    assert (r.status_code, r.text) == (403, "ACL not found")
    assert "s" not in {s["Service"] for s in d.services.values()}
    assert get(d, "/v1/status/leader").status_code == 200  # needs no ACL
    # Every way of sending the token: header, Bearer, legacy query parameter.
    assert put(d, "/v1/kv/k", data=b"1", headers={"X-Consul-Token": "secret-1"}).text == "true"
    assert get(d, "/v1/kv/k", headers={"Authorization": "Bearer secret-1"}).status_code == 200
    assert requests.delete(d.url + "/v1/kv/k?token=secret-1", timeout=10).text == "true"
    c = consul.Consul(host=d.host, port=d.port, token="secret-1")
    c.agent.service.register("s", service_id="s1")
    assert "s1" in d.services
