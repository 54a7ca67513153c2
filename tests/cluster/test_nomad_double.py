"""The Nomad double against the reference (nomad-consul-api.md §1-§14, checklist §25 1-8),
through python-nomad 2.1.0 and raw HTTP. Allocations run real processes."""
from __future__ import annotations

import base64
import json
import os
import re
import threading

import consul
import nomad
import pytest
import requests
from doubles.nomad import NS, FakeNode
from nomad.api.exceptions import BadRequestNomadException, BaseNomadException, URLNotFoundNomadException


@pytest.fixture
def n(nomad_double):
    return nomad.Nomad(host=nomad_double.host, port=nomad_double.port, timeout=30)


def post(d, path, body=None, **kw):
    return requests.post(d.url + path, json=body, timeout=30, **kw)


def get(d, path, **kw):
    return requests.get(d.url + path, timeout=30, **kw)


def task(command, name="t", env=None, **extra):
    t = {"Name": name, "Driver": "raw_exec", "Config": {"command": command[0], "args": command[1:]},
         "Env": env or {}, "KillSignal": "SIGTERM", "KillTimeout": 5 * NS}
    t.update(extra)
    return t


def param_job(command, job_id="fn", meta_required=("function",), meta_optional=("handler",), **group_extra):
    group = {"Name": "g", "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
             "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
             "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
             "Tasks": [task(command)]}
    group.update(group_extra)
    return {"ID": job_id, "Type": "batch",
            "ParameterizedJob": {"Payload": "optional", "MetaRequired": list(meta_required),
                                 "MetaOptional": list(meta_optional)},
            "TaskGroups": [group]}


def service_job(command, job_id="svc", count=1, **group_extra):
    group = {"Name": "g", "Count": count, "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
             "Tasks": [task(command)]}
    group.update(group_extra)
    return {"ID": job_id, "Type": "service", "TaskGroups": [group]}


def allocs_of(d, job_id, status=None):
    return [a for a in d.allocations(job_id) if status is None or a["ClientStatus"] == status]


# --------------------------------------------------------------------------- errors (§1, §2)
def test_register_errors_are_plain_text_with_nomad_status_codes(nomad_double):
    r = post(nomad_double, "/v1/jobs", {})
    assert (r.status_code, r.text) == (400, "Job must be specified")
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    r = post(nomad_double, "/v1/jobs", {"Job": {"Type": "batch"}})
    assert (r.status_code, r.text) == (400, "Job ID hasn't been provided")
    r = requests.post(nomad_double.url + "/v1/jobs", data=b"", timeout=10)
    assert (r.status_code, r.text) == (400, "Request body is empty")
    r = post(nomad_double, "/v1/jobs", {"Job": {"ID": "x"}})
    assert (r.status_code, r.text) == (500, "1 error occurred:\n\t* Missing job task groups\n\n")
    r = post(nomad_double, "/v1/job/other", {"Job": {"ID": "x", "TaskGroups": []}})
    assert (r.status_code, r.text) == (400, "Job ID does not match name")


def test_validation_failures_are_500_and_python_nomad_raises_base_exception(nomad_double, n, tiny_server):
    job = service_job(tiny_server)
    job["ParameterizedJob"] = {"Payload": "optional"}
    with pytest.raises(BaseNomadException) as e:
        n.jobs.register_job({"Job": job})
    assert not isinstance(e.value, BadRequestNomadException)
    assert e.value.nomad_resp.status_code == 500
    assert 'Parameterized job can only be used with "batch" or "sysbatch" scheduler' in e.value.nomad_resp.text
    bad = service_job(tiny_server, count=5, Scaling={"Min": 1, "Max": 3, "Enabled": True})
    r = post(nomad_double, "/v1/jobs", {"Job": bad})
    assert r.status_code == 500 and "greater than maximum count in scaling policy" in r.text


def test_service_names_must_be_rfc1123_after_placeholder_substitution(nomad_double, tiny_server):
    job = service_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [{"Name": "pool-python3.11"}]
    r = post(nomad_double, "/v1/jobs", {"Job": job})
    assert r.status_code == 500
    assert 'Service name must be valid per RFC 1123 and can contain only alphanumeric characters or dashes: "pool-python3.11"' in r.text
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [{"Name": "fn-${NOMAD_META_function}"}]
    assert post(nomad_double, "/v1/jobs", {"Job": job}).status_code == 200


def test_unknown_route_and_wrong_method(nomad_double):
    assert get(nomad_double, "/v1/nope").status_code == 404
    assert get(nomad_double, '/v1/jobs?filter=Status=="running"').status_code == 400  # not implemented here
    r = requests.delete(nomad_double.url + "/v1/jobs", timeout=10)
    assert (r.status_code, r.text) == (405, "Invalid method")


# --------------------------------------------------------------------------- register, read, canonicalize (§2, §6)
def test_register_parameterized_job_canonicalizes_and_keys_are_case_insensitive(nomad_double, n, tiny_server):
    body = {"job": {"id": "fn", "type": "batch", "parameterizedjob": {"metarequired": ["function"]},
                    "taskgroups": [{"name": "g", "tasks": [{"name": "t", "driver": "raw_exec",
                                                            "config": {"command": tiny_server[0]}}]}]},
            "SomethingUnknown": True}
    r = post(nomad_double, "/v1/jobs", body)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["EvalID"] == "" and res["EvalCreateIndex"] == 0  # parameterized: no eval
    assert r.headers["X-Nomad-Index"] == str(res["Index"])
    job = n.job.get_job("fn")
    assert (job["Name"], job["Priority"], job["Region"], job["Namespace"], job["Datacenters"]) == \
        ("fn", 50, "global", "default", ["*"])
    assert job["Status"] == "running"  # a parameterized parent runs until stopped
    tg = job["TaskGroups"][0]
    assert tg["Count"] == 1
    assert tg["RestartPolicy"] == {"Attempts": 3, "Interval": 86400 * NS, "Delay": 15 * NS, "Mode": "fail",
                                   "RenderTemplates": False}
    assert tg["ReschedulePolicy"]["Attempts"] == 1 and tg["ReschedulePolicy"]["DelayFunction"] == "constant"
    t = tg["Tasks"][0]
    assert t["KillTimeout"] == 5 * NS
    assert (t["Resources"]["CPU"], t["Resources"]["MemoryMB"]) == (100, 300)
    assert t["Config"] == {"command": tiny_server[0]}  # free-form keys kept verbatim
    assert job["ParameterizedJob"]["Payload"] == "optional"
    assert allocs_of(nomad_double, "fn") == []


def test_service_defaults_and_eval_for_normal_jobs(nomad_double, n, tiny_server):
    res = n.jobs.register_job({"Job": service_job(tiny_server)})
    assert re.fullmatch(r"[0-9a-f-]{36}", res["EvalID"])
    job = n.job.get_job("svc")
    rp = job["TaskGroups"][0]["ReschedulePolicy"]
    assert (rp["Unlimited"], rp["Delay"], rp["DelayFunction"], rp["MaxDelay"]) == (True, 30 * NS, "exponential", 3600 * NS)
    assert job["TaskGroups"][0]["RestartPolicy"]["Attempts"] == 2


def test_read_headers_and_unknown_job(nomad_double, n):
    r = get(nomad_double, "/v1/jobs")
    assert r.headers["X-Nomad-KnownLeader"] == "true" and r.headers["X-Nomad-LastContact"] == "0"
    assert int(r.headers["X-Nomad-Index"]) >= 1
    r = get(nomad_double, "/v1/job/ghost")
    assert (r.status_code, r.text) == (404, "job not found")
    with pytest.raises(URLNotFoundNomadException):
        n.job.get_job("ghost")
    r = get(nomad_double, "/v1/job/ghost/allocations")
    assert (r.status_code, r.json()) == (200, [])


def test_list_jobs_with_prefix_and_meta(nomad_double, n, tiny_server):
    j = param_job(tiny_server, job_id="alpha")
    j["Meta"] = {"owner": "faas"}
    n.jobs.register_job({"Job": j})
    n.jobs.register_job({"Job": param_job(tiny_server, job_id="beta")})
    stubs = n.jobs.get_jobs(prefix="al", meta=True)
    assert [s["ID"] for s in stubs] == ["alpha"]
    assert stubs[0]["Meta"] == {"owner": "faas"} and stubs[0]["ParameterizedJob"] is True


# --------------------------------------------------------------------------- parse (§3)
HCL = """
variable "cmd" {
  type = string
}
variable "n" {
  type    = number
  default = 2
}
job "parsed" {
  type = "service"
  group "g" {
    count = var.n
    network {
      port "http" {}
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = var.cmd
        args    = ["--port", "${NOMAD_PORT_http}"]
      }
      kill_timeout = "9s"
      resources {
        memory = 64
      }
    }
  }
}
"""


def test_parse_returns_bare_job_with_variables(nomad_double, tiny_server):
    r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": HCL, "Variables": f'cmd = "{tiny_server[0]}"\nn = 3\n'})
    assert r.status_code == 200, r.text
    job = r.json()
    assert "Job" not in job and job["ID"] == "parsed"
    tg = job["TaskGroups"][0]
    assert tg["Count"] == 3
    assert tg["Networks"][0]["DynamicPorts"][0]["Label"] == "http"
    t = tg["Tasks"][0]
    assert t["Config"] == {"command": tiny_server[0], "args": ["--port", "${NOMAD_PORT_http}"]}
    assert t["KillTimeout"] == 9 * NS and t["Resources"] == {"MemoryMB": 64}
    canon = post(nomad_double, "/v1/jobs/parse",
                 {"JobHCL": HCL, "Variables": 'cmd = "/bin/true"', "Canonicalize": True}).json()
    assert canon["TaskGroups"][0]["Tasks"][0]["Resources"] == {"CPU": 100, "MemoryMB": 64}
    assert canon["Priority"] == 50


def test_parse_errors(nomad_double, n):
    r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": ""})
    assert (r.status_code, r.text) == (400, "Job spec is empty")
    r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": 'job "x" { a = '})
    assert r.status_code == 400 and r.text.startswith("Failed to parse job: ")
    r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": HCL})
    assert r.status_code == 400 and 'Unset variable "cmd"' in r.text
    # A var-file assigning an undeclared variable is only a warning (jobspec2/types.variables.go).
    r = post(nomad_double, "/v1/jobs/parse", {"JobHCL": HCL, "Variables": 'cmd = "x"\nbogus = 1'})
    assert r.status_code == 200
    with pytest.raises(BadRequestNomadException):
        n.jobs.parse('job "x" {')


def test_python_nomad_parse_then_register(nomad_double, n):
    hcl = HCL.replace('type = string\n}', 'type = string\n  default = "/bin/true"\n}', 1)
    job = n.jobs.parse(hcl)
    assert job["ID"] == "parsed" and job["TaskGroups"][0]["Tasks"][0]["Config"]["command"] == "/bin/true"
    res = n.jobs.register_job({"Job": job})
    assert res["EvalID"]


# --------------------------------------------------------------------------- dispatch (§5)
def test_dispatch_child_id_meta_and_idempotency_from_query_string(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    r = post(nomad_double, "/v1/job/fn/dispatch?idempotency_token=tok-1", {"Meta": {"function": "hello"}})
    assert r.status_code == 200, r.text
    first = r.json()
    assert re.fullmatch(r"fn/dispatch-\d+-[0-9a-f]{8}", first["DispatchedJobID"])
    assert first["EvalID"] and first["Index"] >= first["JobCreateIndex"]
    again = post(nomad_double, "/v1/job/fn/dispatch?idempotency_token=tok-1", {"Meta": {"function": "hello"}}).json()
    assert again["DispatchedJobID"] == first["DispatchedJobID"] and again["EvalID"] == ""
    # A body-level token is ignored (python-nomad's bug): every call is a new child.
    a = n.job.dispatch_job("fn", meta={"function": "x"}, idempotency_token="tok-2")
    b = n.job.dispatch_job("fn", meta={"function": "x"}, idempotency_token="tok-2")
    assert a["DispatchedJobID"] != b["DispatchedJobID"]
    child = n.job.get_job(first["DispatchedJobID"])
    assert (child["ParentID"], child["Dispatched"], child["Meta"]["function"]) == ("fn", True, "hello")
    assert child["DispatchIdempotencyToken"] == "tok-1"
    pref = n.job.dispatch_job("fn", meta={"function": "x"}, id_prefix_template="inv-7")
    assert re.fullmatch(r"fn/dispatch-inv-7-\d+-[0-9a-f]{8}", pref["DispatchedJobID"])


@pytest.mark.parametrize("job_id, body, message", [
    ("ghost", {"Meta": {"function": "f"}}, "parameterized job not found"),
    ("plain", {}, 'Specified job "plain" is not a parameterized job'),
    ("fn", {"Meta": {}}, "Dispatch did not provide required meta keys: ['function']"),
    ("fn", {"Meta": {"function": "f", "evil": "1"}}, "Dispatch request included unpermitted metadata keys: ['evil']"),
    ("forbid", {"Meta": {"function": "f"}, "Payload": base64.b64encode(b"x").decode()},
     "Payload provided but forbidden by parameterized job"),
    ("require", {"Meta": {"function": "f"}}, "Payload is not provided but required by parameterized job"),
    ("fn", {"Meta": {"function": "f"}, "Payload": base64.b64encode(b"x" * 16385).decode()},
     "Payload exceeds maximum size; 16385 > 16384"),
])
def test_dispatch_errors_are_500(nomad_double, n, tiny_server, job_id, body, message):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    plain = service_job(tiny_server, job_id="plain", count=0)
    n.jobs.register_job({"Job": plain})
    forbid = param_job(tiny_server, job_id="forbid")
    forbid["ParameterizedJob"]["Payload"] = "forbidden"
    n.jobs.register_job({"Job": forbid})
    require = param_job(tiny_server, job_id="require")
    require["ParameterizedJob"]["Payload"] = "required"
    n.jobs.register_job({"Job": require})
    r = post(nomad_double, f"/v1/job/{job_id}/dispatch", body)
    assert (r.status_code, r.text) == (500, message)


def test_dispatch_of_a_stopped_job_and_bad_inputs(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    r = post(nomad_double, "/v1/job/fn/dispatch", {"Meta": {"function": 1}})
    assert r.status_code == 400
    r = post(nomad_double, "/v1/job/fn/dispatch", {"JobID": "other", "Meta": {"function": "f"}})
    assert (r.status_code, r.text) == (400, "Job ID does not match")
    n.job.deregister_job("fn")
    r = post(nomad_double, "/v1/job/fn/dispatch", {"Meta": {"function": "f"}})
    assert (r.status_code, r.text) == (500, 'Specified job "fn" is stopped')


def test_child_routes_by_suffix_with_raw_or_encoded_slash(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    child = n.job.dispatch_job("fn", meta={"function": "f"})["DispatchedJobID"]
    nomad_double.wait_for(lambda: allocs_of(nomad_double, child), what="an allocation")
    raw = get(nomad_double, f"/v1/job/{child}/allocations").json()
    enc = get(nomad_double, "/v1/job/" + child.replace("/", "%2F") + "/allocations").json()
    assert len(raw) == 1 and [a["ID"] for a in raw] == [a["ID"] for a in enc]
    assert n.job.get_allocations(child)[0]["JobID"] == child
    summary = get(nomad_double, f"/v1/job/{child}/summary").json()
    assert summary["JobID"] == child


# --------------------------------------------------------------------------- allocations as processes (§6, §12)
def test_allocation_runs_a_real_process_with_nomad_environment(nomad_double, n, tiny_server):
    job = param_job(tiny_server, meta_optional=("handler", "memory"))
    job["Meta"] = {"memory": "128"}
    job["TaskGroups"][0]["Tasks"][0]["Env"] = {"FAAS_FUNCTION_NAME": "${NOMAD_META_function}",
                                               "LISTEN": "${NOMAD_ADDR_http}", "NODE": "${node.unique.name}"}
    n.jobs.register_job({"Job": job})
    child = n.job.dispatch_job("fn", meta={"function": "hello", "memory": "512"})["DispatchedJobID"]
    stub = nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "running"), what="running")[0]
    alloc = n.allocation.get_allocation(stub["ID"])
    port = alloc["AllocatedResources"]["Shared"]["Ports"][0]
    assert (port["Label"], port["HostIP"]) == ("http", "127.0.0.1") and 20000 <= port["Value"] <= 32000
    env = nomad_double.wait_for(lambda: _get_env(port), what="the server answering")
    assert env["NOMAD_ALLOC_ID"] == stub["ID"]
    assert env["NOMAD_PORT_http"] == str(port["Value"])
    assert env["NOMAD_ADDR_http"] == env["LISTEN"] == f"127.0.0.1:{port['Value']}"
    assert env["NOMAD_META_function"] == env["NOMAD_META_FUNCTION"] == env["FAAS_FUNCTION_NAME"] == "hello"
    assert env["NOMAD_META_memory"] == "512"  # dispatch meta is merged over the job meta
    assert env["NOMAD_META_handler"] == ""  # optional keys not sent are pre-set to ""
    assert env["NOMAD_JOB_PARENT_ID"] == "fn" and env["NOMAD_JOB_ID"] == child
    assert env["NODE"] == "node-1"
    assert os.path.isdir(env["NOMAD_ALLOC_DIR"]) and env["NOMAD_TASK_DIR"].endswith("/t/local")
    assert env["PATH"] == os.environ["PATH"]  # raw_exec passes the host environment
    events = [e["Type"] for e in alloc["TaskStates"]["t"]["Events"]]
    assert events == ["Received", "Task Setup", "Started"]
    assert "AllocatedResources" not in n.job.get_allocations(child)[0]  # stubs carry no ports (§6)


def _get_env(port):
    try:
        return requests.get(f"http://{port['HostIP']}:{port['Value']}/env", timeout=5).json()
    except requests.ConnectionError:
        return None


def test_exit_zero_completes_and_nonzero_fails_with_exit_code(nomad_double, n, tiny_server):
    job = param_job(tiny_server, meta_optional=("code",))
    job["TaskGroups"][0]["Tasks"][0]["Env"] = {"TINY_EXIT": "${NOMAD_META_code}"}
    n.jobs.register_job({"Job": job})
    ok = n.job.dispatch_job("fn", meta={"function": "f", "code": "0"})["DispatchedJobID"]
    bad = n.job.dispatch_job("fn", meta={"function": "f", "code": "3"})["DispatchedJobID"]
    done = nomad_double.wait_for(lambda: allocs_of(nomad_double, ok, "complete"), what="complete")[0]
    assert done["TaskStates"]["t"]["State"] == "dead" and done["TaskStates"]["t"]["Failed"] is False
    failed = nomad_double.wait_for(lambda: allocs_of(nomad_double, bad, "failed"), what="failed")[0]
    assert failed["ClientDescription"] == "Failed tasks"
    ts = failed["TaskStates"]["t"]
    assert ts["Failed"] is True
    term = [e for e in ts["Events"] if e["Type"] == "Terminated"][0]
    assert term["Details"]["exit_code"] == "3" and term["ExitCode"] == 3
    assert ts["Events"][-1]["Type"] == "Not Restarting"
    assert ts["Events"][-1]["DisplayMessage"] == "Policy allows no restarts"
    nomad_double.wait_for(lambda: n.job.get_job(bad)["Status"] == "dead", what="dead child")
    assert n.job.get_job(ok)["Status"] == "dead"


def test_missing_command_is_a_driver_failure(nomad_double, n):
    n.jobs.register_job({"Job": param_job(["/nonexistent/binary"])})
    child = n.job.dispatch_job("fn", meta={"function": "f"})["DispatchedJobID"]
    failed = nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "failed"), what="failed")[0]
    types = [e["Type"] for e in failed["TaskStates"]["t"]["Events"]]
    assert "Driver Failure" in types and "Started" not in types


def test_pending_then_running_transitions_are_observable_with_blocking_queries(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    child = n.job.dispatch_job("fn", meta={"function": "f"})["DispatchedJobID"]
    seen = []
    index = 0
    while "running" not in seen:
        r = n.job.request(child, "allocations", method="get", params={"index": index, "wait": "10s"}, timeout=30)
        index = int(r.headers["X-Nomad-Index"])
        for a in r.json():
            if not seen or seen[-1] != a["ClientStatus"]:
                seen.append(a["ClientStatus"])
    assert seen[-1] == "running"
    assert set(seen) <= {"pending", "running"}


def test_dispatch_payload_is_written_to_the_task_dir(nomad_double, n, tiny_server):
    job = param_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["DispatchPayload"] = {"File": "input.json"}
    n.jobs.register_job({"Job": job})
    child = n.job.dispatch_job("fn", meta={"function": "f"},
                               payload=base64.b64encode(b'{"a": 1}').decode())["DispatchedJobID"]
    stub = nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "running"), what="running")[0]
    path = os.path.join(nomad_double.data_dir, "alloc", stub["ID"], "t", "local", "input.json")
    assert open(path, "rb").read() == b'{"a": 1}'
    assert base64.b64decode(n.job.get_job(child)["Payload"]) == b'{"a": 1}'


# --------------------------------------------------------------------------- stop, deregister, purge (§7)
def test_deregister_stops_processes_and_purge_forgets_the_job(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    child = n.job.dispatch_job("fn", meta={"function": "f"})["DispatchedJobID"]
    stub = nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "running"), what="running")[0]
    port = n.allocation.get_allocation(stub["ID"])["AllocatedResources"]["Shared"]["Ports"][0]
    nomad_double.wait_for(lambda: _get_env(port), what="the server up (its SIGTERM handler installed)")
    proc = nomad_double.processes()[0]
    res = n.job.deregister_job(child)
    assert res["EvalID"]
    done = nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "complete"), what="stopped")[0]
    assert done["DesiredStatus"] == "stop"
    assert [e["Type"] for e in done["TaskStates"]["t"]["Events"]][-2:] == ["Killing", "Killed"]
    assert proc.poll() == 0  # SIGTERM (the job's KillSignal) ended it cleanly
    job = n.job.get_job(child)
    assert job["Stop"] is True and job["Status"] == "dead"
    n.job.deregister_job(child, purge=True)
    r = get(nomad_double, "/v1/job/" + child)
    assert (r.status_code, r.text) == (404, "job not found")


def test_deregister_unknown_job_is_200_with_empty_fields(nomad_double, n):
    res = n.job.deregister_job("ghost", purge=True)
    assert (res["EvalID"], res["EvalCreateIndex"], res["JobModifyIndex"]) == ("", 0, 0)


def test_allocation_stop_replaces_a_service_allocation(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": service_job(tiny_server)})
    first = nomad_double.wait_for(lambda: allocs_of(nomad_double, "svc", "running"), what="running")[0]
    r = post(nomad_double, f"/v1/allocation/{first['ID']}/stop")
    assert r.status_code == 200 and r.json()["EvalID"]
    nomad_double.wait_for(lambda: [a for a in allocs_of(nomad_double, "svc", "running") if a["ID"] != first["ID"]],
                          what="a replacement")
    assert n.allocation.get_allocation(first["ID"])["NextAllocation"]
    assert get(nomad_double, "/v1/allocation/nope").status_code == 404


# --------------------------------------------------------------------------- service jobs, scale (§4b, §8)
def test_service_job_keeps_count_and_scales(nomad_double, n, tiny_server):
    job = service_job(tiny_server, count=2, Scaling={"Min": 0, "Max": 3, "Enabled": True})
    n.jobs.register_job({"Job": job})
    nomad_double.wait_for(lambda: len(allocs_of(nomad_double, "svc", "running")) == 2, what="2 running")
    # Registering a service job opens a deployment; scaling waits until it is over.
    nomad_double.wait_for(lambda: get(nomad_double, "/v1/job/svc/deployment").json()["Status"] == "successful",
                          what="the first deployment to succeed")

    def scale(body):
        return n.job.request("svc", "scale", method="post", json=body)
    r = scale({"Count": 3, "Target": {"Group": "g"}, "Message": "more"})
    assert r.status_code == 200 and r.json()["EvalID"]
    nomad_double.wait_for(lambda: len(allocs_of(nomad_double, "svc", "running")) == 3, what="3 running")
    # Each scale opens another one.
    nomad_double.wait_for(lambda: get(nomad_double, "/v1/job/svc/deployment").json()["Status"] == "successful",
                          what="the deployment of the scale to succeed")
    scale({"Count": 1, "Target": {"Group": "g"}})
    nomad_double.wait_for(lambda: len(allocs_of(nomad_double, "svc", "running")) == 1
                          and len(allocs_of(nomad_double, "svc", "complete")) == 2, what="1 running")
    status = get(nomad_double, "/v1/job/svc/scale").json()
    assert status["TaskGroups"]["g"]["Desired"] == 1
    assert [e["Count"] for e in status["TaskGroups"]["g"]["Events"]] == [1, 3]


@pytest.mark.parametrize("job_id, body, status, message", [
    ("ghost", {"Count": 1, "Target": {"Group": "g"}}, 404, 'job "ghost" not found'),
    ("svc", {"Count": 1, "Target": {}}, 400, "missing task group name for scaling action"),
    ("svc", {"Count": -1, "Target": {"Group": "g"}}, 400, "scaling action count can't be negative"),
    ("svc", {"Count": 1, "Target": {"Group": "zz"}}, 400, 'task group "zz" specified for scaling does not exist in job'),
    ("svc", {"Count": 9, "Target": {"Group": "g"}}, 400, "group count was greater than scaling policy maximum: 9 > 3"),
    ("svc", {"Count": 1, "Target": {"Group": "g", "Job": "other"}}, 400, "job ID in payload did not match URL"),
    ("svc", {"Count": 1, "Error": "boom", "Target": {"Group": "g"}}, 400, None),
])
def test_scale_errors(nomad_double, n, tiny_server, job_id, body, status, message):
    n.jobs.register_job({"Job": service_job(tiny_server, count=0, Scaling={"Min": 0, "Max": 3, "Enabled": True})})
    r = post(nomad_double, f"/v1/job/{job_id}/scale", body)
    assert r.status_code == status
    if message:
        assert r.text == message


def test_failing_service_task_restarts_then_is_rescheduled(nomad_double, n, tiny_server):
    job = service_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Env"] = {"TINY_EXIT": "1"}
    n.jobs.register_job({"Job": job})
    first = nomad_double.wait_for(lambda: allocs_of(nomad_double, "svc", "failed"), what="failed")[0]
    ts = first["TaskStates"]["t"]
    assert ts["Restarts"] == 2  # service default: 2 attempts (§2)
    assert [e["Type"] for e in ts["Events"]].count("Restarting") == 2
    assert ts["Events"][-1]["DisplayMessage"] == 'Exceeded allowed attempts 2 in interval 30m0s and mode is "fail"'
    second = nomad_double.wait_for(lambda: [a for a in allocs_of(nomad_double, "svc") if a["PreviousAllocation"] == first["ID"]],
                                   what="rescheduled")[0]
    assert second["RescheduleTracker"]["Events"][0]["PrevAllocID"] == first["ID"]


# --------------------------------------------------------------------------- blocking queries (§9)
def test_blocking_read_returns_at_change(nomad_double, n, tiny_server):
    n.jobs.register_job({"Job": param_job(tiny_server)})
    r = get(nomad_double, "/v1/job/fn")
    index = int(r.headers["X-Nomad-Index"])
    result = {}

    def watch():
        result["r"] = get(nomad_double, f"/v1/job/fn?index={index}&wait=60s")
    t = threading.Thread(target=watch)
    t.start()
    nomad_double.wait_for(lambda: nomad_double.blocked_queries == 1, what="a blocked query")
    job = n.job.get_job("fn")
    job["Meta"] = {"changed": "yes"}
    n.jobs.register_job({"Job": job})
    t.join(30)
    assert int(result["r"].headers["X-Nomad-Index"]) > index
    assert result["r"].json()["Meta"] == {"changed": "yes"}


def test_blocking_read_returns_after_wait_without_change(nomad_double):
    r = get(nomad_double, "/v1/nodes")
    index = r.headers["X-Nomad-Index"]
    again = get(nomad_double, f"/v1/nodes?index={index}&wait=200ms")
    assert again.headers["X-Nomad-Index"] == index


def test_blocking_query_argument_errors(nomad_double):
    r = get(nomad_double, "/v1/jobs?index=1&wait=forever")
    assert (r.status_code, r.text) == (400, "Invalid wait time")
    r = get(nomad_double, "/v1/jobs?index=abc")
    assert (r.status_code, r.text) == (400, "Invalid index")


# --------------------------------------------------------------------------- nodes, drain, eligibility (§10)
def test_nodes_list_read_and_unknown(nomad_double, n):
    nodes = n.nodes.get_nodes()
    assert [x["Name"] for x in nodes] == ["node-1"]
    assert nodes[0]["SchedulingEligibility"] == "eligible" and nodes[0]["Status"] == "ready"
    full = n.node.get_node(nodes[0]["ID"])
    assert full["Attributes"]["unique.network.ip-address"] == "127.0.0.1"
    r = get(nomad_double, "/v1/node/nope")
    assert (r.status_code, r.text) == (404, "node not found")


def test_drain_migrates_service_allocations_and_node_stays_ineligible(make_nomad_double, tiny_server):
    d = make_nomad_double(nodes=[FakeNode("a", "127.0.0.1"), FakeNode("b", "127.0.0.1")], placement="spread")
    n = nomad.Nomad(host=d.host, port=d.port, timeout=30)
    n.jobs.register_job({"Job": service_job(tiny_server, count=2)})
    d.wait_for(lambda: len(allocs_of(d, "svc", "running")) == 2, what="2 running")
    a = d.node_by_name("a")
    assert {x["NodeName"] for x in allocs_of(d, "svc", "running")} == {"a", "b"}
    res = n.node.drain_node_with_spec(a.id, {"Deadline": 60 * NS, "IgnoreSystemJobs": False})
    assert "NodeModifyIndex" in res
    d.wait_for(lambda: n.node.get_node(a.id)["LastDrain"]["Status"] == "complete", what="drain complete")
    running = allocs_of(d, "svc", "running")
    d.wait_for(lambda: len(allocs_of(d, "svc", "running")) == 2, what="replacement")
    assert {x["NodeName"] for x in allocs_of(d, "svc", "running")} == {"b"}
    node = n.node.get_node(a.id)
    assert node["SchedulingEligibility"] == "ineligible" and node["Drain"] is False
    assert running is not None
    n.node.eligible_node(a.id, eligible=True)
    assert n.node.get_node(a.id)["SchedulingEligibility"] == "eligible"


def test_drain_cancel_and_mark_eligible(nomad_double, n, tiny_server):
    # A batch allocation is only stopped at the drain deadline; with none, the drain goes on.
    n.jobs.register_job({"Job": param_job(tiny_server)})
    child = n.job.dispatch_job("fn", meta={"function": "f"})["DispatchedJobID"]
    nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "running"), what="running")
    node_id = n.nodes.get_nodes()[0]["ID"]
    n.node.drain_node_with_spec(node_id, {"Deadline": 0})
    node = n.node.get_node(node_id)
    assert node["Drain"] is True and node["LastDrain"]["Status"] == "draining"
    r = post(nomad_double, f"/v1/node/{node_id}/eligibility", {"Eligibility": "eligible"})
    assert r.status_code == 500  # cannot be made eligible while draining
    requests.put(nomad_double.url + f"/v1/node/{node_id}/drain",
                 json={"DrainSpec": None, "MarkEligible": True}, timeout=10).raise_for_status()
    node = n.node.get_node(node_id)
    assert node["SchedulingEligibility"] == "eligible" and node["Drain"] is False
    assert node["LastDrain"]["Status"] == "canceled"
    assert allocs_of(nomad_double, child, "running")
    r = post(nomad_double, f"/v1/node/{node_id}/eligibility", {"Eligibility": "maybe"})
    assert r.status_code == 400
    r = requests.post(nomad_double.url + f"/v1/node/{node_id}/drain", timeout=10)
    assert (r.status_code, r.text) == (400, "Request body is empty")
    with pytest.raises(BadRequestNomadException):  # the legacy client call sends no body (§10)
        n.node.drain_node(node_id, True)


def test_ineligible_node_gets_nothing_and_a_blocked_eval_waits(nomad_double, n, tiny_server):
    node_id = n.nodes.get_nodes()[0]["ID"]
    n.node.eligible_node(node_id, ineligible=True)
    res = n.jobs.register_job({"Job": service_job(tiny_server)})
    ev = n.evaluation.get_evaluation(res["EvalID"])
    assert ev["FailedTGAllocs"]["g"]["NodesFiltered"] == 1 and ev["BlockedEval"]
    assert n.evaluation.get_evaluation(ev["BlockedEval"])["Status"] == "blocked"
    assert allocs_of(nomad_double, "svc") == []
    n.node.eligible_node(node_id, eligible=True)
    nomad_double.wait_for(lambda: allocs_of(nomad_double, "svc", "running"), what="placed after unblock")
    assert n.evaluation.get_evaluation(ev["BlockedEval"])["Status"] == "complete"


def test_memory_exhaustion_blocks_until_a_node_is_added(nomad_double, n, tiny_server):
    job = service_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Resources"] = {"MemoryMB": 100_000}
    res = n.jobs.register_job({"Job": job})
    ev = n.evaluation.get_evaluation(res["EvalID"])
    assert ev["FailedTGAllocs"]["g"]["DimensionExhausted"] == {"memory": 1}
    nomad_double.add_node(FakeNode("big", memory_mb=200_000))
    placed = nomad_double.wait_for(lambda: allocs_of(nomad_double, "svc"), what="placed")[0]
    assert placed["NodeName"] == "big"


# --------------------------------------------------------------------------- Consul services (§13)
SERVICE = {"Name": "fn-${NOMAD_META_function}", "PortLabel": "http", "Provider": "consul",
           "Tags": ["instance=${NOMAD_ALLOC_ID}"],
           "Checks": [{"Name": "ready", "Type": "http", "Path": "/_/ready", "Interval": NS, "Timeout": NS}]}


def test_running_task_is_registered_in_consul_and_removed_when_stopped(nomad_double, n, consul_double, tiny_server):
    job = param_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [SERVICE]
    n.jobs.register_job({"Job": job})
    child = n.job.dispatch_job("fn", meta={"function": "hello"})["DispatchedJobID"]
    stub = nomad_double.wait_for(lambda: allocs_of(nomad_double, child, "running"), what="running")[0]
    entry = consul_double.wait_for(lambda: consul_double.passing_instances("fn-hello"), what="passing")[0]
    port = n.allocation.get_allocation(stub["ID"])["AllocatedResources"]["Shared"]["Ports"][0]
    assert entry["ID"] == f"_nomad-task-{stub['ID']}-t-fn-hello-http"
    assert (entry["Address"], entry["Port"]) == ("127.0.0.1", port["Value"])
    assert entry["Tags"] == [f"instance={stub['ID']}"]
    check = [c for c in consul_double.checks.values() if c.service_id == entry["ID"]][0]
    assert check.http == f"http://127.0.0.1:{port['Value']}/_/ready" and check.name == "ready"
    n.job.deregister_job(child)
    consul_double.wait_for(lambda: entry["ID"] not in consul_double.services, what="deregistered")


def test_service_comes_back_after_consul_loses_agent_state(nomad_double, n, consul_double, tiny_server):
    job = service_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [{**SERVICE, "Name": "pool"}]
    n.jobs.register_job({"Job": job})
    consul_double.wait_for(lambda: consul_double.passing_instances("pool"), what="passing")
    consul_double.restart(lose="agent")
    assert consul_double.passing_instances("pool") == []
    consul_double.wait_for(lambda: consul_double.passing_instances("pool"), what="re-registered by the sync")


def test_registration_waits_while_consul_is_down(nomad_double, n, consul_double, tiny_server):
    job = service_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [{**SERVICE, "Name": "later"}]
    consul_double.down()
    n.jobs.register_job({"Job": job})
    nomad_double.wait_for(lambda: allocs_of(nomad_double, "svc", "running"), what="running")
    assert "later" not in {s["Service"] for s in consul_double.services.values()}
    consul_double.up()
    consul_double.wait_for(lambda: consul_double.passing_instances("later"), what="registered once up")


def test_service_is_deregistered_before_the_task_is_signalled(nomad_double, n, consul_double, tiny_server):
    job = service_job(tiny_server)
    t = job["TaskGroups"][0]["Tasks"][0]
    t["Services"] = [{**SERVICE, "Name": "slow"}]
    t["ShutdownDelay"] = 600 * NS
    n.jobs.register_job({"Job": job})
    consul_double.wait_for(lambda: consul_double.passing_instances("slow"), what="passing")
    proc = nomad_double.processes()[0]
    n.job.deregister_job("svc")
    consul_double.wait_for(lambda: "slow" not in {s["Service"] for s in consul_double.services.values()},
                           what="deregistered")
    assert proc.poll() is None  # still serving during the shutdown delay


def test_registration_through_the_consul_agent_http_api(make_nomad_double, consul_double, tiny_server):
    d = make_nomad_double(consul=consul_double.url)
    n = nomad.Nomad(host=d.host, port=d.port, timeout=30)
    job = service_job(tiny_server)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [{**SERVICE, "Name": "viahttp"}]
    n.jobs.register_job({"Job": job})
    consul_double.wait_for(lambda: consul_double.passing_instances("viahttp"), what="passing")
    assert ("PUT", "/v1/agent/service/register") in consul_double.requests
    n.job.deregister_job("svc")
    consul_double.wait_for(lambda: not consul_double.passing_instances("viahttp"), what="deregistered")
    assert any(p.startswith("/v1/agent/service/deregister/_nomad-task-") for _, p in consul_double.requests)


def test_node_exec_prefix_wraps_task_commands(make_nomad_double, tiny_server):
    d = make_nomad_double(nodes=[FakeNode("wrapped", exec_prefix=["env", "WRAPPED_BY=prefix"])])
    n = nomad.Nomad(host=d.host, port=d.port, timeout=30)
    n.jobs.register_job({"Job": service_job(tiny_server)})
    stub = d.wait_for(lambda: allocs_of(d, "svc", "running"), what="running")[0]
    port = n.allocation.get_allocation(stub["ID"])["AllocatedResources"]["Shared"]["Ports"][0]
    env = d.wait_for(lambda: _get_env(port), what="server up")
    assert env["WRAPPED_BY"] == "prefix"


def test_unknown_job_404_still_carries_the_index(nomad_double):
    r = get(nomad_double, "/v1/job/ghost")
    assert r.status_code == 404 and int(r.headers["X-Nomad-Index"]) >= 1


# --------------------------------------------------------------------------- several hosts, clean-up
def test_allocations_bind_on_their_node_address(make_nomad_double, tiny_server):
    d = make_nomad_double(nodes=[FakeNode("h1", "127.0.0.2"), FakeNode("h2", "127.0.0.3")], placement="spread")
    n = nomad.Nomad(host=d.host, port=d.port, timeout=30)
    n.jobs.register_job({"Job": service_job(tiny_server, count=2)})
    running = d.wait_for(lambda: len(allocs_of(d, "svc", "running")) == 2 and allocs_of(d, "svc", "running"),
                        what="2 running")
    seen = {}
    for a in running:
        port = n.allocation.get_allocation(a["ID"])["AllocatedResources"]["Shared"]["Ports"][0]
        env = d.wait_for(lambda: _get_env(port), what="server up")
        seen[a["NodeName"]] = (port["HostIP"], env["NOMAD_IP_http"])
    assert seen == {"h1": ("127.0.0.2", "127.0.0.2"), "h2": ("127.0.0.3", "127.0.0.3")}


def test_node_down_loses_allocations_and_consul_marks_its_services_critical(make_nomad_double, consul_double,
                                                                            tiny_server):
    d = make_nomad_double(nodes=[FakeNode("h1", "127.0.0.2"), FakeNode("h2", "127.0.0.3")], placement="spread")
    n = nomad.Nomad(host=d.host, port=d.port, timeout=30)
    job = service_job(tiny_server, count=2)
    job["TaskGroups"][0]["Tasks"][0]["Services"] = [{**SERVICE, "Name": "web"}]
    n.jobs.register_job({"Job": job})
    consul_double.wait_for(lambda: len(consul_double.passing_instances("web")) == 2, what="2 passing")
    victim = [p for a in d.allocs.values() if a.node.name == "h1" for p in a.procs.values()][0]
    d.node_down("h1")
    assert victim.wait(30) == -9
    lost = d.wait_for(lambda: allocs_of(d, "svc", "lost"), what="lost")[0]
    assert lost["NodeName"] == "h1" and lost["ClientDescription"] == "alloc is lost since its node is down"
    d.wait_for(lambda: [a for a in allocs_of(d, "svc", "running") if a["PreviousAllocation"] == lost["ID"]],
               what="replacement on h2")
    assert {a["NodeName"] for a in allocs_of(d, "svc", "running")} == {"h2"}
    assert n.node.get_node(d.node_by_name("h1").id)["Status"] == "down"
    # The dead host's service is still in the catalog, but no longer passing.
    _, entries = consul.Consul(host=consul_double.host, port=consul_double.port).health.service("web")
    on_h1 = [e for e in entries if e["Node"]["Node"] == "h1"]
    assert on_h1 and {c["Status"] for c in on_h1[0]["Checks"] if c["CheckID"] == "serfHealth"} == {"critical"}
    consul_double.wait_for(lambda: len(consul_double.passing_instances("web")) == 2, what="2 passing again")
    assert all(e["Address"] == "127.0.0.3" for e in consul_double.passing_instances("web"))
    d.node_up("h1")
    consul_double.wait_for(lambda: not [s for s in consul_double.services.values() if s["_node"] == "h1"],
                           what="lost services cleaned up")


def test_close_stops_every_process(make_nomad_double, tiny_server):
    d = make_nomad_double()
    n = nomad.Nomad(host=d.host, port=d.port, timeout=30)
    n.jobs.register_job({"Job": service_job(tiny_server, count=2)})
    d.wait_for(lambda: len(allocs_of(d, "svc", "running")) == 2, what="2 running")
    procs = d.processes()
    d.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(requests.ConnectionError):
        requests.get(d.url + "/v1/jobs", timeout=5)


def test_nomad_down_refuses_connections_and_python_nomad_raises(nomad_double, n):
    nomad_double.down()
    with pytest.raises(BaseNomadException):
        n.jobs.get_jobs()
    nomad_double.up()
    assert n.jobs.get_jobs() == []


def test_status_leader_and_allocations_list(nomad_double, n, tiny_server):
    assert get(nomad_double, "/v1/status/leader").json() == "127.0.0.1:4647"
    assert n.agent.get_agent()["config"]["Region"] == "global"
    assert n.regions.get_regions() == ["global"]
    n.jobs.register_job({"Job": service_job(tiny_server)})
    nomad_double.wait_for(lambda: allocs_of(nomad_double, "svc"), what="alloc")
    listed = get(nomad_double, "/v1/allocations?resources=true").json()
    assert listed[0]["AllocatedResources"]["Shared"]["Ports"][0]["Label"] == "http"
    assert "AllocatedResources" not in get(nomad_double, "/v1/allocations").json()[0]
    assert json.loads(get(nomad_double, "/v1/evaluations?job=svc").text)[0]["JobID"] == "svc"
