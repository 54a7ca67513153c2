"""Behaviours of real Nomad that the appliance depends on and that the Nomad double models (each one
against the section of tests/cluster/doubles/README.md "Upstream behaviours" that cites its source):
deployments of service jobs, the client's max_kill_timeout, ACL tokens, strict jobspec attributes,
the job structure GET /v1/job returns, restart budgets with real delays."""
from __future__ import annotations

import sys

import pytest
import requests
from doubles.nomad import NS, FakeNode

SLEEPER = [sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"]


def get(d, path, **kw):
    return requests.get(d.url + path, timeout=30, **kw)


def post(d, path, body=None, **kw):
    return requests.post(d.url + path, json=body, timeout=30, **kw)


def service_job(command, job_id="svc", count=1, check_path="/_/health", update=None, kill_timeout=5):
    group = {"Name": "g", "Count": count, "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
             "Scaling": {"Min": 0, "Max": 10, "Enabled": True},
             "Tasks": [{"Name": "t", "Driver": "raw_exec",
                        "Config": {"command": command[0], "args": command[1:]},
                        "KillSignal": "SIGTERM", "KillTimeout": kill_timeout * NS,
                        "Services": [{"Name": "svc", "PortLabel": "http",
                                      "Checks": [{"Name": "c", "Type": "http", "Path": check_path,
                                                  "Interval": NS, "Timeout": NS}]}]}]}
    if update is not None:
        group["Update"] = update
    return {"ID": job_id, "Type": "service", "TaskGroups": [group]}


def deployment(d, job_id="svc"):
    return get(d, f"/v1/job/{job_id}/deployment").json()


def scale(d, count, job_id="svc"):
    return post(d, f"/v1/job/{job_id}/scale", {"Count": count, "Target": {"Group": "g"}})


# ------------------------------------------------------------------------------------------ deployments
def test_service_jobs_get_the_default_update_strategy(nomad_double, tiny_server):
    """api/jobs.go Job.Canonicalize + command/agent/job_endpoint.go ApiJobToStructJob."""
    post(nomad_double, "/v1/jobs", {"Job": service_job(tiny_server)}).raise_for_status()
    job = get(nomad_double, "/v1/job/svc").json()
    assert job["Update"] == {"Stagger": 30 * NS, "MaxParallel": 1, "HealthCheck": "", "MinHealthyTime": 0,
                             "HealthyDeadline": 0, "ProgressDeadline": 0, "AutoRevert": False,
                             "AutoPromote": False, "Canary": 0}
    tg = job["TaskGroups"][0]["Update"]
    assert (tg["MaxParallel"], tg["HealthCheck"], tg["MinHealthyTime"], tg["HealthyDeadline"],
            tg["ProgressDeadline"]) == (1, "checks", 10 * NS, 300 * NS, 600 * NS)


def test_scaling_is_refused_while_a_deployment_is_active(nomad_double, tiny_server):
    """nomad/job_endpoint.go Job.Scale: 400 "job scaling blocked due to active deployment". The
    allocation's check fails (404 path), so the registration's deployment never turns healthy."""
    job = service_job(tiny_server, check_path="/missing",
                      update={"MaxParallel": 1, "HealthyDeadline": 3000 * NS, "ProgressDeadline": 3600 * NS})
    post(nomad_double, "/v1/jobs", {"Job": job}).raise_for_status()
    dep = deployment(nomad_double)
    assert dep["Status"] == "running" and dep["StatusDescription"] == "Deployment is running"
    assert dep["TaskGroups"]["g"]["DesiredTotal"] == 1
    r = scale(nomad_double, 2)
    assert (r.status_code, r.text) == (400, "job scaling blocked due to active deployment")
    assert get(nomad_double, "/v1/job/svc/scale").json()["TaskGroups"]["g"]["Desired"] == 1


def test_a_deployment_fails_at_its_progress_deadline_and_scaling_is_allowed_again(nomad_double, tiny_server):
    job = service_job(tiny_server, check_path="/missing",
                      update={"MaxParallel": 1, "MinHealthyTime": 0, "HealthyDeadline": 10 * NS,
                              "ProgressDeadline": 20 * NS})   # x delay_scale 0.01: 0.2 s
    post(nomad_double, "/v1/jobs", {"Job": job}).raise_for_status()
    nomad_double.wait_for(lambda: deployment(nomad_double)["Status"] == "failed", what="the deadline")
    assert deployment(nomad_double)["StatusDescription"] == "Failed due to progress deadline"
    assert scale(nomad_double, 2).status_code == 200
    assert deployment(nomad_double)["Status"] == "running"   # the scale opened the next one


def test_a_healthy_deployment_succeeds_and_each_scale_opens_another(nomad_double, tiny_server):
    post(nomad_double, "/v1/jobs", {"Job": service_job(tiny_server)}).raise_for_status()
    nomad_double.wait_for(lambda: deployment(nomad_double)["Status"] == "successful", what="healthy")
    first = deployment(nomad_double)
    assert first["TaskGroups"]["g"]["HealthyAllocs"] == 1
    alloc = nomad_double.allocations("svc")[0]
    assert alloc["DeploymentID"] == first["ID"] and alloc["DeploymentStatus"]["Healthy"] is True
    assert scale(nomad_double, 2).status_code == 200
    second = deployment(nomad_double)
    assert second["ID"] != first["ID"] and second["JobVersion"] == first["JobVersion"] + 1
    assert scale(nomad_double, 3).status_code == 400
    assert [x["ID"] for x in get(nomad_double, "/v1/job/svc/deployments").json()] == [second["ID"], first["ID"]]


def test_max_parallel_zero_means_no_deployments_and_free_scaling(nomad_double, tiny_server):
    """nomad/structs/structs.go UpdateStrategy.IsEmpty; the update block's documented max_parallel = 0."""
    job = service_job(tiny_server, check_path="/missing", update={"MaxParallel": 0})
    post(nomad_double, "/v1/jobs", {"Job": job}).raise_for_status()
    for count in (2, 3, 1):
        assert scale(nomad_double, count).status_code == 200
    assert deployment(nomad_double) is None
    assert get(nomad_double, "/v1/job/svc").json()["TaskGroups"][0]["Update"]["MaxParallel"] == 0


def test_update_blocks_are_refused_on_batch_jobs(nomad_double, tiny_server):
    job = service_job(tiny_server, update={"MaxParallel": 1})
    job["Type"] = "batch"
    r = post(nomad_double, "/v1/jobs", {"Job": job})
    assert r.status_code == 500 and 'Job type "batch" does not allow update block' in r.text


def test_the_runtime_pool_jobspec_has_no_deployments(nomad_double):
    hcl = open("jobspecs/runtime-pool.nomad.hcl").read()
    job = post(nomad_double, "/v1/jobs/parse", {"JobHCL": hcl, "Canonicalize": True}).json()
    post(nomad_double, "/v1/jobs", {"Job": {**job, "TaskGroups": [{**g, "Count": 0} for g in job["TaskGroups"]]}})
    assert all(g["Update"]["MaxParallel"] == 0 for g in get(nomad_double, "/v1/job/runtime-pool").json()["TaskGroups"])
    for count in (1, 2):
        assert post(nomad_double, "/v1/job/runtime-pool/scale",
                    {"Count": count, "Target": {"Group": "nodejs20"}}).status_code == 200


# ------------------------------------------------------------------------------------------ kill timeout
def test_the_client_caps_kill_timeout_at_its_max_kill_timeout(make_nomad_double):
    """client/allocrunner/taskrunner/driver_handle.go: min(task.KillTimeout, maxKillTimeout). The
    task ignores SIGTERM and asks for 60 s; the node's cap (0.3 s here, 30 s by default) wins."""
    d = make_nomad_double(nodes=[FakeNode("node-1", max_kill_timeout=0.3)])
    job = service_job(SLEEPER, kill_timeout=60)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = []
    post(d, "/v1/jobs", {"Job": job}).raise_for_status()
    d.wait_for(lambda: d.allocations("svc") and d.allocations("svc")[0]["ClientStatus"] == "running", what="running")
    requests.delete(d.url + "/v1/job/svc", timeout=10).raise_for_status()
    a = d.wait_for(lambda: [a for a in d.allocations("svc") if a["ClientStatus"] == "complete"], what="killed")[0]
    killing = next(e for e in a["TaskStates"]["t"]["Events"] if e["Type"] == "Killing")
    assert killing["KillTimeout"] == int(0.3 * NS)
    assert get(d, "/v1/job/svc").json()["TaskGroups"][0]["Tasks"][0]["KillTimeout"] == 60 * NS   # the job keeps its ask


def test_the_default_cap_is_thirty_seconds():
    assert FakeNode("n").max_kill_timeout == 30.0


# ------------------------------------------------------------------------------------------ restarts
def test_restart_budget_with_real_delays(make_nomad_double):
    """client/allocrunner/taskrunner/restarts/restarts.go, at real speed (delay_scale 1): two restarts
    within the interval after the 0.5 s delay, then (mode delay) a wait for the rest of the 3 s
    interval, then counting starts again."""
    d = make_nomad_double(delay_scale=1.0)
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    job = service_job(crash, update={"MaxParallel": 0})
    g = job["TaskGroups"][0]
    g["Tasks"][0]["Services"] = []
    g["RestartPolicy"] = {"Attempts": 2, "Interval": 3 * NS, "Delay": NS // 2, "Mode": "delay"}
    post(d, "/v1/jobs", {"Job": job}).raise_for_status()

    def restarting():
        a = d.allocations("svc")[0]
        return [e for e in a["TaskStates"]["t"]["Events"] if e["Type"] == "Restarting"]
    events = d.wait_for(lambda: len(r := restarting()) >= 4 and r, timeout=30, what="four restarts")
    reasons = [e["RestartReason"] for e in events[:4]]
    assert reasons == ["Restart within policy", "Restart within policy",
                       "Exceeded allowed attempts, applying a delay", "Restart within policy"]
    assert [e["StartDelay"] for e in events[:2]] == [NS // 2, NS // 2]
    # The third waits for the rest of the interval: longer than the delay, at most the interval.
    assert NS // 2 < events[2]["StartDelay"] <= 3 * NS
    assert d.allocations("svc")[0]["ClientStatus"] in ("pending", "running")   # mode delay never fails


def test_drained_pool_instances_do_not_use_the_restart_budget(make_nomad_double, consul_double, tmp_path):
    """The runtime-pool job as shipped, at real speed (delay_scale 1, the job's 1 s restart delay):
    a pool instance drained again and again is replaced in place by its launcher; Nomad records no
    restart, the allocation stays the same and keeps running."""
    from helpers import alloc_logs, job_vars, wait_until
    d = make_nomad_double(delay_scale=1.0)
    hcl = open("jobspecs/runtime-pool.nomad.hcl").read()
    variables = job_vars(consul_double.url, str(tmp_path / "code"), python_count=1, node_count=0)
    job = post(d, "/v1/jobs/parse", {"JobHCL": hcl, "Canonicalize": True, "Variables": variables}).json()
    post(d, "/v1/jobs", {"Job": job}).raise_for_status()
    entry = consul_double.wait_for(lambda: consul_double.passing_instances("faas-pool-python3-11"),
                                   timeout=30, what="a free pool instance")[0]
    url = f"http://{entry['Address']}:{entry['Port']}"
    pids = [requests.get(url + "/_/health", timeout=5).json()["pid"]]
    for turn in range(3):
        assert requests.post(url + "/_/drain", json={}, timeout=5).json() == {"drained": True}

        def fresh():
            h = requests.get(url + "/_/health", timeout=1).json()
            return h["state"] == "pool" and h["pid"] not in pids and h["pid"]
        pids.append(wait_until(fresh, 30, f"a fresh generic instance (turn {turn})"))
    assert "pool_instance_recycled" in alloc_logs(d)
    (alloc,) = d.allocations("runtime-pool")
    assert alloc["ID"] == entry["Meta"]["instance_id"] and alloc["ClientStatus"] == "running"
    ts = alloc["TaskStates"]["runtime"]
    assert ts["Restarts"] == 0 and not [e for e in ts["Events"] if e["Type"] in ("Restarting", "Terminated")]


# ------------------------------------------------------------------------------------------ ACL tokens
def _policy(name):
    return open(f"playbooks/roles/appliance/files/acl/{name}").read()


def test_tokens_are_checked_against_their_policies(make_nomad_double, tiny_server):
    """§1/§11: an unknown token is 403 "ACL token not found"; a token whose policies lack the
    endpoint's capability (or no token: anonymous) is 403 "Permission denied"."""
    d = make_nomad_double(acl_tokens={"appliance": _policy("nomad-appliance.hcl"),
                                      "autoscaler": _policy("nomad-autoscaler.hcl"), "root": None})
    app, scaler = {"X-Nomad-Token": "appliance"}, {"X-Nomad-Token": "autoscaler"}
    job = service_job(tiny_server, update={"MaxParallel": 0})
    r = post(d, "/v1/jobs", {"Job": job})
    assert (r.status_code, r.text) == (403, "Permission denied")
    r = post(d, "/v1/jobs", {"Job": job}, headers={"X-Nomad-Token": "nope"})
    assert (r.status_code, r.text) == (403, "ACL token not found")
    assert post(d, "/v1/jobs", {"Job": job}, headers=scaler).status_code == 403
    assert post(d, "/v1/jobs", {"Job": job}, headers={"Authorization": "Bearer appliance"}).status_code == 200
    assert post(d, "/v1/job/svc/scale", {"Count": 2, "Target": {"Group": "g"}}, headers=app).status_code == 200
    assert get(d, "/v1/job/svc", headers=scaler).status_code == 200
    node = get(d, "/v1/nodes", headers=scaler).json()[0]["ID"]
    assert get(d, "/v1/nodes", headers=app).status_code == 403
    body = {"NodeID": node, "Eligibility": "ineligible"}
    assert post(d, f"/v1/node/{node}/eligibility", body, headers=app).status_code == 403
    assert post(d, f"/v1/node/{node}/eligibility", body, headers=scaler).status_code == 200
    assert get(d, "/v1/status/leader").status_code == 200   # needs no token
    assert ("POST", "/v1/jobs", "appliance") in d.request_tokens


# ------------------------------------------------------------------------------------------ jobspec schema
BASE_HCL = '''job "x" {
  group "g" {
    network {
      port "http" {}
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      service {
        name = "x"
        port = "http"
      }
    }
  }
}
'''


@pytest.mark.parametrize("old, new, message", [
    ('driver = "raw_exec"', 'driver = "raw_exec"\n      kill_timout = "5s"',
     'Unsupported argument; An argument named "kill_timout" is not expected here.'),
    ('group "g" {', 'group "g" {\n    bogus_field = 1', 'An argument named "bogus_field" is not expected here.'),
    ('port = "http"', 'port = "http"\n        static = 8080', 'An argument named "static" is not expected here.'),
    ('task "t" {', 'task "t" {\n      restarts {\n        attempts = 1\n      }',
     'Unsupported block type; Blocks of type "restarts" are not expected here.'),
])
def test_unknown_attributes_and_blocks_are_refused_per_block(nomad_double, old, new, message):
    """jobspec2 decodes each block into its Go struct (jobspec2/parse_job.go, gohcl): anything the
    block does not define is a parse error (400), not silently dropped."""
    assert post(nomad_double, "/v1/jobs/parse", {"JobHCL": BASE_HCL}).status_code == 200
    r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": BASE_HCL.replace(old, new, 1)})
    assert r.status_code == 400 and r.text.startswith("Failed to parse job: ") and message in r.text, r.text


def test_every_shipped_jobspec_passes_the_strict_schema(nomad_double):
    import glob
    for f in sorted(glob.glob("jobspecs/*.nomad.hcl")):
        r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": open(f).read()})
        assert r.status_code == 200, (f, r.text)


# ------------------------------------------------------------------------------------------ job structure
def test_get_job_returns_the_internal_structure_and_it_registers_again(nomad_double):
    """GET /v1/job/<id> answers with structs.Job (zero values present, job-level Update reduced to
    Stagger/MaxParallel, full Resources); sized_job re-registers it and gets the same job back."""
    from appliance.backends.nomad_scheduler import sized_job
    hcl = open("jobspecs/function-instance.nomad.hcl").read()
    job = post(nomad_double, "/v1/jobs/parse", {"JobHCL": hcl, "Canonicalize": True}).json()
    assert "NomadTokenID" not in job   # the API shape
    post(nomad_double, "/v1/jobs", {"Job": job}).raise_for_status()
    stored = get(nomad_double, "/v1/job/function-instance").json()
    task = stored["TaskGroups"][0]["Tasks"][0]
    assert stored["NomadTokenID"] == "" and stored["Multiregion"] is None
    assert stored["Update"]["MaxParallel"] == 0 and stored["TaskGroups"][0]["Update"] is None
    assert {"IOPS", "Networks", "Devices", "SecretsMB"} <= set(task["Resources"])
    copy_ = sized_job(stored, "function-instance-1024", 1024, str(stored["JobModifyIndex"]))
    r = post(nomad_double, "/v1/jobs", {"Job": copy_})
    assert r.status_code == 200, r.text
    again = get(nomad_double, "/v1/job/function-instance-1024").json()
    assert again["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] == 1024

    def same(j):
        j = {k: v for k, v in j.items() if k not in ("ID", "Name", "Meta", "CreateIndex", "ModifyIndex",
                                                      "JobModifyIndex", "SubmitTime", "Version", "Status")}
        j["TaskGroups"][0]["Tasks"][0]["Resources"].pop("MemoryMB")
        return j
    assert same(again) == same(stored)


def test_service_job_structure_carries_the_migrate_strategy(nomad_double, tiny_server):
    post(nomad_double, "/v1/jobs", {"Job": service_job(tiny_server)}).raise_for_status()
    tg = get(nomad_double, "/v1/job/svc").json()["TaskGroups"][0]
    assert tg["Migrate"] == {"MaxParallel": 1, "HealthCheck": "checks", "MinHealthyTime": 10 * NS,
                             "HealthyDeadline": 300 * NS}
