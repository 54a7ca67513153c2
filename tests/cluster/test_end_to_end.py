"""The appliance in cluster mode, as a real ``python -m appliance up`` process, against the Nomad
and Consul doubles and moto's S3: functions are deployed (code to S3, metadata to Consul KV) and
called through the edge router; instances are real runtime processes run by the Nomad double."""
from __future__ import annotations

import pytest
import requests
from helpers import job_vars, moto_s3, wait_until  # noqa: F401 - moto_s3 is a fixture

from tests.integration.conftest import start_appliance, stop_appliance

FAIL_AT_IMPORT = "import os\nos._exit(3)\ndef handler(event, context):\n    return 1\n"
#: The credentials Ansible generates per environment and gives every edge and control plane.
ADMIN_TOKEN = "test-admin-token-0123456789abcdefghijklmnopqrstuvwxyz"
INTERNAL_TOKEN = "test-internal-token-0123456789abcdefghijklmnopqrstuvwxyz"
SECRETS_KEY = "dGVzdC1zZWNyZXRzLWtleS0wMTIzNDU2Nzg5YWJjZGU="
INTERNAL = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}


def cluster_env(consul_double, nomad_double, moto_s3, tmp_path) -> dict:
    vars_file = tmp_path / "jobs.vars.hcl"
    vars_file.write_text(job_vars(consul_double.url, str(tmp_path / "code"), python_count=1, node_count=1))
    env = {
        "APPLIANCE_MODE": "cluster",
        "APPLIANCE_NOMAD_ADDR": nomad_double.url,
        "APPLIANCE_CONSUL_ADDR": consul_double.url,
        "APPLIANCE_S3_ENDPOINT": moto_s3.url,
        "APPLIANCE_S3_BUCKET": "e2e-code",
        "APPLIANCE_S3_ACCESS_KEY": "testing",
        "APPLIANCE_S3_SECRET_KEY": "testing",
        "APPLIANCE_NOMAD_VARS_FILE": str(vars_file),
        "APPLIANCE_POOL_REFILL_S": "0",       # the pool keeps its registered size: one instance
        "APPLIANCE_NOMAD_RETRY_S": "1",
        "APPLIANCE_QUEUE_TIMEOUT_S": "25",
        "APPLIANCE_REAP_INTERVAL_S": "0.2",
        "APPLIANCE_METADATA_CACHE_S": "0.2",
        "APPLIANCE_ADMIN_TOKEN": ADMIN_TOKEN,
        "APPLIANCE_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "APPLIANCE_SECRETS_KEY": SECRETS_KEY,
    }
    return env


@pytest.fixture
def cluster_appliance(consul_double, nomad_double, moto_s3, tmp_path):
    r = start_appliance(tmp_path, cluster_env(consul_double, nomad_double, moto_s3, tmp_path))
    # The edge registers the jobs when it starts; each runtime's one generic pool instance comes up.
    for pool in ("faas-pool-python3-11", "faas-pool-nodejs20"):
        wait_until(lambda: consul_double.passing_instances(pool), 30, f"a free instance in {pool}")
    yield r
    stop_appliance(r)


def entry_of(consul, function):
    entries = consul.passing_instances(f"fn-{function}")
    return entries[0] if len(entries) == 1 else None


def last_record(r, name):
    return r.api.invocations(name, limit=1)[0]


def test_cold_from_pool_dispatch_warm_scale_to_zero_and_failure(cluster_appliance, consul_double, nomad_double):
    r = cluster_appliance
    # Cold start from the pool.
    r.deploy(name="pooled", trigger=("GET", "/pooled"), keep_alive_s=600)
    resp = r.get("/pooled")
    assert resp.status_code == 200 and resp.text == "Hello Serverless"
    assert "source=pool" in entry_of(consul_double, "pooled")["Tags"]
    first = last_record(r, "pooled")
    assert first["cold"] is True
    # Warm start: same instance, no cold start.
    assert r.get("/pooled").text == "Hello Serverless"
    second = last_record(r, "pooled")
    assert second["cold"] is False and second["instance_id"] == first["instance_id"]
    # Node.js functions have their own pool.
    r.deploy({"index.js": "exports.handler = async (event) => `Hello ${event.rawPath}`;\n"}, name="pooled-js",
             runtime="nodejs20", trigger=("GET", "/pooled-js"), keep_alive_s=600)
    assert r.get("/pooled-js").text == "Hello /pooled-js"
    entry = entry_of(consul_double, "pooled-js")
    assert "source=pool" in entry["Tags"] and entry["Meta"]["runtime"] == "nodejs20"
    assert last_record(r, "pooled-js")["cold"] is True

    # The pool is empty now: a cold start dispatches function-instance.
    r.deploy(name="dispatched", trigger=("GET", "/dispatched"), keep_alive_s=1)
    assert r.get("/dispatched").text == "Hello Serverless"
    assert "source=dispatch" in entry_of(consul_double, "dispatched")["Tags"]
    rec = last_record(r, "dispatched")
    assert rec["cold"] is True
    children = [j for j in requests.get(f"{nomad_double.url}/v1/jobs", timeout=5).json()
                if j["ParentID"] == "function-instance"]
    assert len(children) == 1

    # Scale to zero: idle past keep_alive, the instance drains and leaves Consul; its job ends.
    wait_until(lambda: not consul_double.passing_instances("fn-dispatched"), 30, "scale to zero")
    wait_until(lambda: requests.get(f"{nomad_double.url}/v1/job/{children[0]['ID']}", timeout=5).json()["Status"]
               == "dead", 30, "the dispatched job to end")
    assert r.get("/dispatched").text == "Hello Serverless"
    again = last_record(r, "dispatched")
    assert again["cold"] is True and again["instance_id"] != rec["instance_id"]

    # A runtime that cannot start: its allocation fails and the caller gets a clear 503.
    r.deploy(files={"index.py": FAIL_AT_IMPORT}, name="broken", trigger=("GET", "/broken"))
    resp = r.get("/broken")
    assert resp.status_code == 503, resp.text
    err = resp.json()["error"]
    assert err["code"] == "Instance.PlacementFailed"
    assert "Exit Code: 3" in err["message"], err
    assert resp.headers.get("Retry-After")


def test_consul_outage_and_restart_and_nomad_unreachable(cluster_appliance, consul_double, nomad_double):
    r = cluster_appliance
    r.deploy(name="steady", trigger=("GET", "/steady"), keep_alive_s=600)
    r.deploy(name="later", trigger=("GET", "/later"), keep_alive_s=600)
    assert r.get("/steady").text == "Hello Serverless"

    # Consul down: warm instances keep serving from the last view; the edge says so; cold starts
    # fail clearly.
    consul_double.down()
    try:
        assert r.get("/steady").text == "Hello Serverless"
        health = wait_until(lambda: (h := r.get("/_/health").json())["status"] == "degraded" and h, 10,
                            "the edge to report Consul down")
        assert "consul unreachable since" in health["registry"]["message"]
        # Past the metadata cache's lifetime, routes and settings come from the last good reads.
        wait_until(lambda: r.get("/steady").text == "Hello Serverless" and "event=metadata_stale_read" in r.log(),
                   10, "a request served from the last view of the metadata")
        resp = r.get("/later")  # a cold start needs Consul
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "Registry.Unavailable", resp.text
        assert "Consul" in resp.json()["error"]["message"]
        assert r.get("/steady").text == "Hello Serverless"
    finally:
        consul_double.up()
    wait_until(lambda: r.get("/_/health").json()["status"] == "ok", 15, "Consul back in the edge's health")

    # A Consul restart: serving continues without a new cold start.
    before = last_record(r, "steady")["instance_id"]
    consul_double.restart()
    assert r.get("/steady").text == "Hello Serverless"
    wait_until(lambda: consul_double.passing_instances("fn-steady"), 15, "checks passing after the restart")
    assert r.get("/steady").text == "Hello Serverless"
    after = last_record(r, "steady")
    assert after["instance_id"] == before and after["cold"] is False

    # Nomad unreachable: warm starts keep working, a cold start (pool used up) fails clearly.
    nomad_double.down()
    try:
        assert r.get("/steady").text == "Hello Serverless"
        resp = r.get("/later")
        assert resp.status_code == 503, resp.text
        err = resp.json()["error"]
        assert err["code"] == "Scheduler.Unavailable" and "Nomad" in err["message"] and "unreachable" in err["message"]
        assert r.get("/steady").text == "Hello Serverless"
    finally:
        nomad_double.up()
    assert r.get("/later").text == "Hello Serverless"


def test_two_appliances_share_one_cluster(consul_double, nomad_double, moto_s3, tmp_path):
    """No state lives in one process: what one control plane deploys, another edge serves, and an
    edge adopts the warm instance another edge started instead of starting its own."""
    env = cluster_env(consul_double, nomad_double, moto_s3, tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_appliance(tmp_path / "a", env)
    # Both edges' autoscalers run: only the elected one reaps, and it counts both edges' traffic,
    # so the instance a started stays for b to adopt.
    b = start_appliance(tmp_path / "b", env)
    try:
        wait_until(lambda: consul_double.passing_instances("faas-pool-python3-11"), 30, "a free pool instance")
        a.deploy(name="shared", trigger=("GET", "/shared"), keep_alive_s=600)
        assert a.get("/shared").text == "Hello Serverless"
        started = last_record(a, "shared")
        assert started["cold"] is True
        wait_until(lambda: b.get("/_/stats", headers=INTERNAL).json()["functions"].get("shared", {}).get("instances") == 1, 15,
                   "edge b to adopt the instance edge a started")
        assert b.get("/shared").text == "Hello Serverless"
        seen = last_record(b, "shared")
        assert seen["cold"] is False and seen["instance_id"] == started["instance_id"]
        # Deployed through b's control plane, served by a's edge once a's metadata cache
        # (APPLIANCE_METADATA_CACHE_S) has expired.
        b.deploy(name="from-b", trigger=("GET", "/from-b"), keep_alive_s=600)
        wait_until(lambda: a.get("/from-b").text == "Hello Serverless", 15, "edge a to serve what b deployed")
    finally:
        stop_appliance(b)
        stop_appliance(a)
