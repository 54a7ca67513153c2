"""The Nomad jobspecs in jobspecs/: they parse with python-hcl2, carry the fields the cluster
design needs, go through the Nomad double's /v1/jobs/parse (with Variables) and /v1/jobs, and
function-instance / runtime-pool run end to end on the doubles with a real HTTP server."""
from __future__ import annotations

import json
import os
import re

import hcl2
import nomad
import pytest
import requests
from doubles.nomad import NS
from hcl2.utils import SerializationOptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBSPECS = os.path.join(ROOT, "jobspecs")
FILES = ["function-instance", "runtime-pool", "edge-router", "control-plane", "node-autoscaler"]


def source(name: str) -> str:
    with open(os.path.join(JOBSPECS, f"{name}.nomad.hcl")) as f:
        return f.read()


def parse_raw(name: str) -> dict:
    return hcl2.loads(source(name), serialization_options=SerializationOptions(with_comments=False, strip_string_quotes=True))


def parse_json(d, name: str, variables: str = "") -> dict:
    r = requests.post(d.url + "/v1/jobs/parse", json={"JobHCL": source(name), "Variables": variables,
                                                      "Canonicalize": False}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def hcl_list(items) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def all_tasks(job: dict):
    for tg in job["TaskGroups"]:
        for t in tg["Tasks"]:
            yield tg, t


# --------------------------------------------------------------------------- static checks
@pytest.mark.parametrize("name", FILES)
def test_file_parses_with_python_hcl2_and_declares_variables_first(name):
    data = parse_raw(name)
    assert len(data["job"]) == 1
    assert data["variable"], "variables are declared"
    text = source(name)
    assert text.index('job "') > max(m.start() for m in re.finditer(r'^variable "', text, re.M))
    # Every block is commented: the file opens with a header comment.
    assert text.lstrip().startswith("#")


@pytest.mark.parametrize("name", FILES)
def test_every_task_has_resources_kill_settings_and_a_command(nomad_double, name):
    job = parse_json(nomad_double, name)
    for _, t in all_tasks(job):
        assert t["Driver"] in ("raw_exec", "exec")
        assert t["Config"]["command"]
        assert t["Resources"]["MemoryMB"] > 0 and t["Resources"]["CPU"] > 0
        assert t["KillSignal"] == "SIGTERM" and t["KillTimeout"] >= 30 * NS


def test_function_instance_fields(nomad_double):
    job = parse_json(nomad_double, "function-instance")
    assert job["ID"] == "function-instance" and job["Type"] == "batch"
    pj = job["ParameterizedJob"]
    assert pj["MetaRequired"] == ["function", "version", "digest"]
    assert set(pj["MetaOptional"]) == {"handler", "runtime", "memory", "timeout", "concurrency", "code_url", "env",
                                           "region", "account_id", "layers"}
    assert pj["Payload"] == "forbidden"
    # Optional meta defaults live at job level so the dispatch can override them.
    assert set(job["Meta"]) == set(pj["MetaOptional"])
    (tg, t), = all_tasks(job)
    assert tg["Networks"][0]["DynamicPorts"] == [{"Label": "http", "Value": 0, "To": 0, "HostNetwork": ""}]
    assert "ReservedPorts" not in tg["Networks"][0]
    assert tg["RestartPolicy"]["Attempts"] == 0 and tg["ReschedulePolicy"]["Attempts"] == 0
    assert t["Driver"] == "raw_exec"
    assert t["Resources"]["MemoryMB"] == 256
    env = t["Env"]
    assert "FAAS_POOL" not in env
    assert env["FAAS_HANDLER"] == "${NOMAD_META_handler}"
    assert env["FAAS_CODE_DIR"] == "/var/lib/faas-appliance/code-cache/${NOMAD_META_digest}"
    assert env["FAAS_PORT"] == "${NOMAD_PORT_http}" and env["FAAS_INSTANCE_ID"] == "${NOMAD_ALLOC_ID}"
    assert env["FAAS_FUNCTION_ENV"] == "${NOMAD_META_env}" and job["Meta"]["env"] == "{}"
    (svc,) = t["Services"]
    assert svc["Name"] == "fn-${NOMAD_META_function}" and svc["PortLabel"] == "http"
    assert "version=${NOMAD_META_version}" in svc["Tags"] and "instance=${NOMAD_ALLOC_ID}" in svc["Tags"]
    (check,) = svc["Checks"]
    assert (check["Type"], check["Path"]) == ("http", "/_/ready")
    assert check["Interval"] >= NS and check["Timeout"] >= NS


def test_function_instance_variables_select_memory_and_id_and_the_driver_is_raw_exec(nomad_double):
    # `driver` is no longer a variable: an old var-file that sets it only gets Nomad's warning.
    job = parse_json(nomad_double, "function-instance",
                     'driver = "exec"\nmemory_mb = 512\njob_id = "function-instance-512"\nkill_timeout = "1m"')
    (_, t), = all_tasks(job)
    assert job["ID"] == "function-instance-512"
    assert (t["Driver"], t["Resources"]["MemoryMB"], t["KillTimeout"]) == ("raw_exec", 512, 60 * NS)


def test_runtime_pool_fields(nomad_double):
    job = parse_json(nomad_double, "runtime-pool", "python_count = 3\nnode_count = 0\nmemory_mb = 512\n"
                                                   "provided_count = 2")
    assert job["Type"] == "service" and "ParameterizedJob" not in job
    groups = {tg["Name"]: tg for tg in job["TaskGroups"]}
    assert set(groups) == {"python3.11", "nodejs20", "provided"}
    assert (groups["python3.11"]["Count"], groups["nodejs20"]["Count"], groups["provided"]["Count"]) == (3, 0, 2)
    for name, tg in groups.items():
        assert tg["Meta"]["runtime"] == name
        assert tg["Scaling"]["Min"] == 0 and tg["Scaling"]["Max"] >= 1
        assert tg["Networks"][0]["DynamicPorts"][0]["Label"] == "http"
        (t,) = tg["Tasks"]
        assert t["Env"]["FAAS_POOL"] == "1"
        (svc,) = t["Services"]
        assert svc["Name"] == "faas-pool-${NOMAD_META_pool_service_suffix}"
        assert tg["Meta"]["pool_service_suffix"] == re.sub(r"[^a-z0-9-]", "-", name)
        assert svc["Checks"][0]["Path"] == "/_/pool"
        # Starters read the reservation from the entry: only functions that fit are started here.
        assert t["Resources"]["MemoryMB"] == 512 and svc["Meta"]["memory_mb"] == "512"


@pytest.mark.parametrize("name", ["function-instance", "runtime-pool"])
def test_instances_get_the_consul_token_variable(nomad_double, name):
    """With Consul ACLs on, instances need a token for their own Consul calls: the jobs declare
    consul_token (empty by default, which Consul clients take as no token) and every task gets it
    as CONSUL_HTTP_TOKEN next to CONSUL_HTTP_ADDR."""
    (decl,) = [v["consul_token"] for v in parse_raw(name)["variable"] if "consul_token" in v]
    assert decl["type"] == "string" and decl["default"] == ""
    assert "stored in the job" in decl["description"] and "faas/pool/claims/" in decl["description"]
    tasks = list(all_tasks(parse_json(nomad_double, name)))
    assert tasks and all(t["Env"]["CONSUL_HTTP_TOKEN"] == "" for _, t in tasks)
    tasks = list(all_tasks(parse_json(nomad_double, name, 'consul_token = "3f1c-instances"')))
    assert all(t["Env"]["CONSUL_HTTP_TOKEN"] == "3f1c-instances" and t["Env"]["CONSUL_HTTP_ADDR"] for _, t in tasks)


@pytest.mark.parametrize("name, args", [
    ("edge-router", ["-m", "appliance", "serve", "--role", "edge"]),
    ("control-plane", ["-m", "appliance", "serve", "--role", "control"]),
    ("node-autoscaler", ["-m", "appliance", "node-autoscaler"]),
])
def test_appliance_jobs_run_the_installed_appliance(nomad_double, name, args):
    job = parse_json(nomad_double, name, 'python = "/srv/faas/venv/bin/python"')
    assert job["Type"] == "service"
    for _, t in all_tasks(job):
        assert t["Config"]["command"] == "/srv/faas/venv/bin/python"
        assert t["Config"]["args"][:len(args)] == args
        assert t["Env"]["APPLIANCE_MODE"] == "cluster"


@pytest.mark.parametrize("name", ["edge-router", "control-plane", "node-autoscaler"])
def test_appliance_jobs_pass_the_acl_tokens(nomad_double, name):
    """Run by Nomad, the appliance's own services need its Nomad and Consul tokens when ACLs are
    on: empty by default, APPLIANCE_NOMAD_TOKEN and APPLIANCE_CONSUL_TOKEN when given."""
    for _, t in all_tasks(parse_json(nomad_double, name)):
        assert t["Env"]["APPLIANCE_NOMAD_TOKEN"] == "" and t["Env"]["APPLIANCE_CONSUL_TOKEN"] == ""
    job = parse_json(nomad_double, name, 'nomad_token = "n-secret"\nconsul_token = "c-secret"')
    for _, t in all_tasks(job):
        assert (t["Env"]["APPLIANCE_NOMAD_TOKEN"], t["Env"]["APPLIANCE_CONSUL_TOKEN"]) == ("n-secret", "c-secret")


def test_edge_router_has_a_static_port_and_checked_service(nomad_double):
    job = parse_json(nomad_double, "edge-router", "http_port = 9090\nedge_count = 3")
    tg = job["TaskGroups"][0]
    assert tg["Count"] == 3
    assert tg["Networks"][0]["ReservedPorts"][0]["Value"] == 9090
    svc = tg["Tasks"][0]["Services"][0]
    assert svc["Name"] == "faas-edge" and svc["Checks"][0]["Path"] == "/_/health"


def test_node_autoscaler_is_a_single_instance(nomad_double):
    job = parse_json(nomad_double, "node-autoscaler")
    assert [tg["Count"] for tg in job["TaskGroups"]] == [1]


# --------------------------------------------------------------------------- through the double
@pytest.mark.parametrize("name", FILES)
def test_registers_through_the_nomad_double(nomad_double, name):
    # Counts of 0 so nothing is started: this checks parse + register + read back only.
    variables = {"runtime-pool": "python_count = 0\nnode_count = 0", "edge-router": "edge_count = 0",
                 "control-plane": "control_count = 0"}.get(name, "")
    job = parse_json(nomad_double, name, variables)
    if name == "node-autoscaler":
        job["TaskGroups"][0]["Count"] = 0
    r = requests.post(nomad_double.url + "/v1/jobs", json={"Job": job}, timeout=30)
    assert r.status_code == 200, r.text
    stored = requests.get(f"{nomad_double.url}/v1/job/{job['ID']}", timeout=30).json()
    assert stored["ID"] == job["ID"] and stored["Version"] == 0
    if name == "function-instance":
        assert r.json()["EvalID"] == ""


# --------------------------------------------------------------------------- end to end
def test_function_instance_end_to_end(nomad_double, consul_double, tiny_server):
    n = nomad.Nomad(host=nomad_double.host, port=nomad_double.port, timeout=30)
    variables = f'instance_command = "{tiny_server[0]}"\ninstance_args = {hcl_list(tiny_server[1:])}\n' \
                'check_interval = "1s"\nkill_timeout = "30s"'
    job = parse_json(nomad_double, "function-instance", variables)
    assert n.jobs.register_job({"Job": job})["EvalID"] == ""
    r = n.job.request("function-instance", "dispatch", method="post",
                      json={"Meta": {"function": "hello", "version": "7", "digest": "sha256-abc",
                                     "memory": "512"}},
                      params={"idempotency_token": "cold-start-1"})
    child = r.json()["DispatchedJobID"]
    assert child.startswith("function-instance/dispatch-")
    stub = nomad_double.wait_for(lambda: [a for a in n.job.get_allocations(child) if a["ClientStatus"] == "running"],
                                 what="a running allocation")[0]
    entry = consul_double.wait_for(lambda: consul_double.passing_instances("fn-hello"), what="passing in Consul")[0]
    assert "version=7" in entry["Tags"] and f"instance={stub['ID']}" in entry["Tags"]
    assert entry["Meta"]["instance_id"] == stub["ID"] and entry["Meta"]["digest"] == "sha256-abc"
    env = requests.get(f"http://{entry['Address']}:{entry['Port']}/env", timeout=10).json()
    assert env["FAAS_FUNCTION_NAME"] == "hello" and env["FAAS_FUNCTION_VERSION"] == "7"
    assert env["FAAS_HANDLER"] == "index.handler"  # job-level default of an optional key
    assert env["FAAS_MEMORY_MB"] == "512"  # dispatch meta wins over the default
    assert env["FAAS_CODE_DIR"] == "/var/lib/faas-appliance/code-cache/sha256-abc"
    assert env["FAAS_PORT"] == str(entry["Port"]) and env["FAAS_INSTANCE_ID"] == stub["ID"]
    assert "FAAS_POOL" not in env
    n.job.deregister_job(child)
    consul_double.wait_for(lambda: not consul_double.passing_instances("fn-hello"), what="deregistered")
    nomad_double.wait_for(lambda: n.job.get_job(child)["Status"] == "dead", what="child dead")


def test_runtime_pool_end_to_end_and_scale(nomad_double, consul_double, tiny_server):
    n = nomad.Nomad(host=nomad_double.host, port=nomad_double.port, timeout=30)
    variables = f'instance_command = "{tiny_server[0]}"\ninstance_args = {hcl_list(tiny_server[1:])}\n' \
                'python_count = 2\nnode_count = 0'
    n.jobs.register_job({"Job": parse_json(nomad_double, "runtime-pool", variables)})
    pool = consul_double.wait_for(lambda: len(consul_double.passing_instances("faas-pool-python3-11")) == 2
                                  and consul_double.passing_instances("faas-pool-python3-11"), what="2 pooled")
    env = requests.get(f"http://{pool[0]['Address']}:{pool[0]['Port']}/env", timeout=10).json()
    assert env["FAAS_POOL"] == "1" and env["FAAS_RUNTIME"] == "python3.11"
    r = n.job.request("runtime-pool", "scale", method="post", json={"Count": 1, "Target": {"Group": "python3.11"}})
    assert r.status_code == 200
    consul_double.wait_for(lambda: len(consul_double.passing_instances("faas-pool-python3-11")) == 1, what="scaled in")
    r = requests.post(nomad_double.url + "/v1/job/runtime-pool/scale",
                      json={"Count": 51, "Target": {"Group": "python3.11"}}, timeout=10)
    assert r.status_code == 400  # above the scaling block's max
