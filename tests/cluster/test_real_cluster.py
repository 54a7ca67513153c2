"""Conformance run against REAL Nomad and Consul agents (``make test-cluster-real``): the appliance in
cluster mode, as a real ``python -m appliance up`` process, with the agents given by ``NOMAD_ADDR``
and ``CONSUL_ADDR`` (tokens ``NOMAD_TOKEN`` / ``CONSUL_HTTP_TOKEN``) and the S3 store given by the
``APPLIANCE_S3_*`` settings. The points checked are the ones the doubles model and could get
wrong: pool cold starts (claim + self-registration), two top-ups in a row (no deployment blocks
them), a dispatch from a memory-sized copy, a failed placement with Nomad's own reason, scale to
zero.

It touches only what the appliance owns: functions it deploys (named ``conformance-*``, deleted
through the API at the end), the jobs ``function-instance``, ``function-instance-<MB>`` and
``runtime-pool`` (deregistered and purged at the end when this run registered them), and Consul
keys under ``faas/`` that those objects use. Use a test cluster: a running appliance on the same
agents would share the jobs.

Without ``FAAS_REAL_CLUSTER=1`` (the make target sets it) the module is not even collected (see
conftest.py), so ``make test`` neither runs nor skips it; with it, missing addresses fail the run,
so nothing is ever counted as passed by accident.
"""
from __future__ import annotations

import os
import uuid

import pytest
import requests
from helpers import wait_until

from tests.integration.conftest import start_appliance, stop_appliance


NOMAD = os.environ.get("NOMAD_ADDR", "").rstrip("/")
CONSUL = os.environ.get("CONSUL_ADDR", os.environ.get("CONSUL_HTTP_ADDR", "")).rstrip("/")
NOMAD_H = {"X-Nomad-Token": os.environ["NOMAD_TOKEN"]} if os.environ.get("NOMAD_TOKEN") else {}
CONSUL_H = {"X-Consul-Token": os.environ["CONSUL_HTTP_TOKEN"]} if os.environ.get("CONSUL_HTTP_TOKEN") else {}
JOBS = ("function-instance", "runtime-pool")
#: Real scheduling, artifact-free starts and Consul's probe intervals: generous, but bounded.
START_S = 180


def missing() -> list[str]:
    out = [name for name, v in (("NOMAD_ADDR", NOMAD), ("CONSUL_ADDR", CONSUL)) if not v]
    if not (os.environ.get("APPLIANCE_S3_ENDPOINT") or os.environ.get("APPLIANCE_S3_BUCKET")):
        out.append("APPLIANCE_S3_ENDPOINT or APPLIANCE_S3_BUCKET")
    return out


def nomad(method, path, **kw):
    return requests.request(method, NOMAD + path, headers=NOMAD_H, timeout=30, **kw)


def passing(service):
    r = requests.get(f"{CONSUL}/v1/health/service/{service}?passing", headers=CONSUL_H, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if missing():
        pytest.fail("make test-cluster-real needs " + ", ".join(missing()), pytrace=False)
    for base, path in ((NOMAD, "/v1/status/leader"), (CONSUL, "/v1/status/leader")):
        requests.get(base + path, timeout=10).raise_for_status()
    present = {j: nomad("GET", f"/v1/job/{j}").status_code == 200 for j in JOBS}
    env = {
        "APPLIANCE_MODE": "cluster", "APPLIANCE_NOMAD_ADDR": NOMAD, "APPLIANCE_CONSUL_ADDR": CONSUL,
        "APPLIANCE_NOMAD_TOKEN": os.environ.get("NOMAD_TOKEN", ""),
        "APPLIANCE_CONSUL_TOKEN": os.environ.get("CONSUL_HTTP_TOKEN", ""),
        "APPLIANCE_POOL_REFILL_S": "2", "APPLIANCE_QUEUE_TIMEOUT_S": str(START_S),
        "APPLIANCE_START_TIMEOUT_S": str(START_S),
    }
    r = start_appliance(tmp_path_factory.mktemp("real"), env)
    made: list[str] = []
    try:
        wait_until(lambda: passing("faas-pool-python3-11"), START_S, "a free python pool instance")
        yield r, made
    finally:
        for name in made:
            try:
                r.api.delete_function(name)
            except Exception:  # noqa: BLE001 - best effort; reported by the next run's state
                pass
        stop_appliance(r)
        created = [j for j in JOBS if not present[j]]
        sized = [j["ID"] for j in nomad("GET", "/v1/jobs?prefix=function-instance-").json()]
        for job in created + (sized if "function-instance" in created else []):
            allocs = nomad("GET", f"/v1/job/{job}/allocations").json()
            nomad("DELETE", f"/v1/job/{job}?purge=true")
            for a in allocs:
                requests.delete(f"{CONSUL}/v1/kv/faas/pool/claims/{a['ID']}", headers=CONSUL_H, timeout=10)


def deploy(real, **config) -> str:
    r, made = real
    name = f"conformance-{uuid.uuid4().hex[:8]}"
    made.append(name)
    r.deploy(name=name, trigger=("GET", f"/{name}"), **config)
    return name


def test_pool_cold_starts_and_two_top_ups_in_a_row(real):
    r, _ = real
    first = deploy(real, keep_alive_s=600)
    assert r.get(f"/{first}", timeout=START_S).text == "Hello Serverless"
    (entry,) = passing(f"fn-{first}")
    assert "source=pool" in entry["Service"]["Tags"]
    rec = r.api.invocations(first, limit=1)[0]
    assert rec["cold"] is True
    assert r.get(f"/{first}").text == "Hello Serverless"
    assert r.api.invocations(first, limit=1)[0]["instance_id"] == rec["instance_id"]
    # The pool is topped up after each claim; a second claim right after needs a second top-up,
    # which Nomad refuses while a deployment is active: the pool groups must open none.
    wait_until(lambda: passing("faas-pool-python3-11"), START_S, "the pool topped up once")
    second = deploy(real, keep_alive_s=600)
    assert r.get(f"/{second}", timeout=START_S).text == "Hello Serverless"
    wait_until(lambda: passing("faas-pool-python3-11"), START_S, "the pool topped up twice")
    assert nomad("GET", "/v1/job/runtime-pool/deployment").json() is None
    events = nomad("GET", "/v1/job/runtime-pool/scale").json()["TaskGroups"]["python3.11"]["Events"] or []
    assert not [e for e in events if e.get("Error")], events


def test_dispatch_of_a_memory_sized_copy(real):
    r, _ = real
    name = deploy(real, memory_mb=512, keep_alive_s=2)   # more than a pool instance reserves
    assert r.get(f"/{name}", timeout=START_S).text == "Hello Serverless"
    (entry,) = passing(f"fn-{name}")
    assert "source=dispatch" in entry["Service"]["Tags"]
    job = nomad("GET", "/v1/job/function-instance-512").json()
    assert job["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] == 512
    wait_until(lambda: not passing(f"fn-{name}"), START_S, "scale to zero")


def test_a_runtime_that_cannot_start_is_a_placement_failure_with_nomads_reason(real):
    r, _ = real
    name = deploy(real, memory_mb=512)
    r.api.upload_code(name, __import__("tests.integration.conftest", fromlist=["make_zip"]).make_zip(
        {"index.py": "import os\nos._exit(3)\n"}))
    resp = r.get(f"/{name}", timeout=START_S)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "Instance.PlacementFailed", resp.text
    assert "Exit Code: 3" in resp.json()["error"]["message"]
