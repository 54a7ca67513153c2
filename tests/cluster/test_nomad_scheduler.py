"""NomadScheduler against the Nomad and Consul doubles, with moto's S3 and real runtime processes
(the jobspecs' instance_command is this venv's python running ``-m appliance instance``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time

import pytest
import requests
from helpers import HELLO, FaultyProxy, alloc_logs, job_vars, moto_s3, package, wait_until  # noqa: F401

from appliance.backends.consul_registry import ConsulRegistry
from appliance.backends.nomad_scheduler import CLAIM_PREFIX, NomadScheduler
from appliance.backends.s3_blob import S3BlobStore
from appliance.core.errors import FunctionError, PlacementFailed, SchedulerUnavailable
from appliance.core.model import InstanceSpec
from appliance.instances.client import InstanceClient


class Cluster:
    def __init__(self, consul, nomad, s3_url, tmp_path, python_count, nomad_url=None, node_count=0):
        self.consul, self.nomad = consul, nomad
        self.blobs = S3BlobStore(bucket=f"code-{id(self)}", endpoint_url=s3_url, access_key="testing",
                                 secret_key="testing")
        self.blobs.ensure_bucket()
        self.client = InstanceClient()
        self.registries, self.schedulers = [], []
        self.vars = job_vars(consul.url, str(tmp_path / "code"), python_count=python_count, node_count=node_count)
        self.nomad_url = nomad_url or nomad.url

    def scheduler(self, **kw) -> NomadScheduler:
        reg = ConsulRegistry(self.consul.url, token=kw.get("consul_token", ""), removal_grace_s=0.2)
        self.registries.append(reg)
        kw.setdefault("nomad_addr", self.nomad_url)
        kw.setdefault("jobspecs_dir", "jobspecs")
        s = NomadScheduler(consul_addr=self.consul.url, registry=reg, blobs=self.blobs, client=self.client,
                           job_vars=self.vars, pool_refill_s=0, retry_s=2.0,
                           maintain=False, **kw)
        self.schedulers.append(s)
        return s

    def deploy(self, source=HELLO, function="hello", version=1, concurrency=1, runtime="python3.11") -> InstanceSpec:
        data = package(source, "index.py" if runtime == "python3.11" else "index.js")
        digest = hashlib.sha256(data).hexdigest()
        self.blobs.put(digest, data)
        return InstanceSpec(function=function, version=version, digest=digest, runtime=runtime,
                            handler="index.handler", memory_mb=128, timeout_s=3, concurrency=concurrency,
                            environment={"GREETING": "hi"})

    def invoke(self, inst) -> dict:
        reply = self.client.invoke(inst, b"{}", request_id="r1", deadline_ms=int((time.time() + 5) * 1000),
                                   read_timeout_s=5)
        return reply.body

    def close(self):
        for s in self.schedulers:
            s.close()
        for r in self.registries:
            r.close()
        self.client.close_all()


@pytest.fixture
def make_cluster(consul_double, nomad_double, moto_s3, tmp_path):
    made = []

    def make(python_count=0, nomad_url=None, node_count=0) -> Cluster:
        c = Cluster(consul_double, nomad_double, moto_s3.url, tmp_path, python_count, nomad_url, node_count)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def test_the_shipped_acl_policies_are_enough(make_consul_double, make_nomad_double, moto_s3, tmp_path):
    """ACLs on in both doubles, default deny, each caller with a token bound to the policy file the
    roles apply: the appliance (consul-appliance, nomad-appliance) registers the jobs, claims and
    specialises a pool instance, dispatches, and tops up the pool; the instances (consul-instance)
    clear their claims and register themselves. Consul filters what a token may not read, so a
    missing rule would show up here as "no free instance" or a start that never passes."""
    acl = "playbooks/roles/appliance/files/acl/"
    consul_d = make_consul_double(acl_tokens={"c-app": open(acl + "consul-appliance.hcl").read(),
                                              "c-inst": open(acl + "consul-instance.hcl").read(), "root": None})
    nomad_d = make_nomad_double(consul=consul_d, acl_tokens={"n-app": open(acl + "nomad-appliance.hcl").read()})
    c = Cluster(consul_d, nomad_d, moto_s3.url, tmp_path, python_count=1)
    c.vars += 'consul_token = "c-inst"\n'
    try:
        s = c.scheduler(nomad_token="n-app", consul_token="c-app")
        s.ensure_jobs()
        pool_ready(consul_d, 1)
        inst = s.start(c.deploy(), time.monotonic() + 30)
        assert c.invoke(inst)
        assert s.stats["pool_starts"] == 1
        wait_until(lambda: not consul_d.passing_instances("faas-pool-python3-11"), what="pool empty")
        assert s.refill_pool() == {"python3.11": 2}
        pool_ready(consul_d, 1)
        s.start(c.deploy(function="other"), time.monotonic() + 30)
        wait_until(lambda: not consul_d.passing_instances("faas-pool-python3-11"), what="pool empty again")
        d = s.start(c.deploy(function="third"), time.monotonic() + 30)   # no free instance: dispatched
        assert s.stats["dispatch_starts"] == 1 and c.invoke(d)
        s.stop(d)
        assert not [t for _m, _p, t in nomad_d.request_tokens if t != "n-app"]
        assert {t for _m, p, t in consul_d.request_tokens if p.startswith("/v1/agent/service/")} == {"c-inst"}
    finally:
        c.close()


def pool_ready(consul, n):
    return wait_until(lambda: len(e := consul.passing_instances("faas-pool-python3-11")) == n and e, 30,
                      f"{n} free pool instances")


def test_ensure_jobs_registers_both_jobs_with_variables(make_cluster, nomad_double):
    c = make_cluster()
    s = c.scheduler()
    assert s.ensure_jobs() == ["function-instance", "runtime-pool"]
    job = requests.get(f"{nomad_double.url}/v1/job/function-instance", timeout=5).json()
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["args"] == ["-m", "appliance", "instance"]
    status = s.jobs_status()
    assert set(status) == {"function-instance", "runtime-pool"} and "missing" not in status.values()
    requests.delete(f"{nomad_double.url}/v1/job/runtime-pool?purge=true", timeout=5)
    assert s.jobs_status()["runtime-pool"] == "missing"


def test_dispatch_path_and_code_fetched_once_per_node(make_cluster, consul_double, nomad_double):
    c = make_cluster(python_count=0)
    s = c.scheduler()
    s.ensure_jobs()
    spec = c.deploy(source="import os\ndef handler(e, c):\n    return os.environ['GREETING']\n")
    a = s.start(spec, time.monotonic() + 30)
    assert "." not in a.id and a.concurrency == 1
    assert c.invoke(a)["result"] == "hi"  # the function's environment reaches a dispatched instance
    (entry,) = consul_double.passing_instances("fn-hello")
    assert "source=dispatch" in entry["Tags"] and entry["Meta"]["concurrency"] == "1"
    b = s.start(spec, time.monotonic() + 30)
    assert b.id != a.id and c.invoke(b)["result"] == "hi"
    assert alloc_logs(nomad_double).count(f"event=code_fetched digest={spec.digest}") == 1
    assert s.stats["dispatch_starts"] == 2 and s.stats["pool_starts"] == 0
    s.stop(a)
    wait_until(lambda: len(consul_double.passing_instances("fn-hello")) == 1, what="stopped instance deregistered")


def test_pool_path_claims_and_specialises(make_cluster, consul_double):
    c = make_cluster(python_count=1)
    s = c.scheduler()
    s.ensure_jobs()
    pool_ready(consul_double, 1)
    spec = c.deploy(source="import os\ndef handler(e, c):\n    return os.environ['GREETING']\n")
    inst = s.start(spec, time.monotonic() + 30)
    assert "." in inst.id and s.stats["pool_starts"] == 1
    assert c.invoke(inst)["result"] == "hi"
    (entry,) = consul_double.passing_instances("fn-hello")
    assert "source=pool" in entry["Tags"] and entry["Meta"]["instance_id"] == inst.id
    alloc = inst.id.split(".")[0]
    claim = json.loads(consul_double.kv[CLAIM_PREFIX + alloc]["Value"] if isinstance(
        consul_double.kv[CLAIM_PREFIX + alloc]["Value"], (bytes, str)) else b"{}")
    assert claim["function"] == "hello"
    # Specialised, it left the pool: the pool check fails.
    wait_until(lambda: not consul_double.passing_instances("faas-pool-python3-11"), what="left the pool")


def test_each_runtime_has_its_own_pool_and_nodejs_functions_start_from_theirs(make_cluster, consul_double,
                                                                            nomad_double):
    c = make_cluster(python_count=0, node_count=1)
    s = c.scheduler()
    s.ensure_jobs()
    wait_until(lambda: consul_double.passing_instances("faas-pool-nodejs20"), 30, "a free Node.js pool instance")
    # A Python function never takes a Node.js instance: with its own pool empty, it is dispatched.
    py = s.start(c.deploy(function="py"), time.monotonic() + 30)
    assert "." not in py.id and consul_double.passing_instances("faas-pool-nodejs20")
    spec = c.deploy(source="exports.handler = async () => process.env.GREETING;\n", runtime="nodejs20")
    inst = s.start(spec, time.monotonic() + 30)
    assert "." in inst.id and s.stats["pool_starts"] == 1
    assert c.invoke(inst)["result"] == "hi"
    (entry,) = consul_double.passing_instances("fn-hello")
    assert "source=pool" in entry["Tags"] and entry["Meta"]["runtime"] == "nodejs20"
    assert entry["Meta"]["instance_id"] == inst.id
    wait_until(lambda: not consul_double.passing_instances("faas-pool-nodejs20"), what="left the pool")
    assert alloc_logs(nomad_double).count(f"event=code_fetched digest={spec.digest}") == 1
    # The Node.js pool is used up: the next one is dispatched, and finds the code in the node's cache.
    js = s.start(dataclasses.replace(spec, function="js2"), time.monotonic() + 30)
    assert "." not in js.id and c.invoke(js)["result"] == "hi"
    assert alloc_logs(nomad_double).count(f"event=code_fetched digest={spec.digest}") == 1
    # Drained, it leaves Consul and exits; Nomad restarts the allocation as a generic instance.
    assert requests.post(f"http://{inst.address}/_/drain", json={}, timeout=5).json() == {"drained": True}
    wait_until(lambda: not consul_double.passing_instances("fn-hello"), 15, "the drained instance deregistered")
    (free,) = wait_until(lambda: consul_double.passing_instances("faas-pool-nodejs20"), 30, "back in the pool")
    assert free["Meta"]["instance_id"] == inst.id.split(".")[0]


def test_instances_reserve_the_functions_memory(make_cluster, consul_double, nomad_double):
    """function-instance reserves a floor (memory_mb, 256 here); a bigger function is dispatched from
    a copy of the registered job that reserves its memory, and pool instances (256 MB) are left to
    functions that fit them."""
    c = make_cluster(python_count=1)
    s = c.scheduler(job_cache_s=0)
    s.ensure_jobs()
    (free,) = pool_ready(consul_double, 1)
    assert free["Meta"]["memory_mb"] == "256"

    def job(jid):
        return requests.get(f"{nomad_double.url}/v1/job/{jid}", timeout=5).json()

    def alloc(inst):
        return requests.get(f"{nomad_double.url}/v1/allocation/{inst.id.split('.')[0]}", timeout=5).json()

    big = dataclasses.replace(c.deploy(function="big"), memory_mb=1024)
    inst = s.start(big, time.monotonic() + 30)
    assert "." not in inst.id and c.invoke(inst)["result"] == "Hello Serverless"
    a = alloc(inst)
    assert a["JobID"].startswith("function-instance-1024/dispatch-")
    assert a["AllocatedResources"]["Tasks"]["runtime"]["Memory"]["MemoryMB"] == 1024
    sized, base = job("function-instance-1024"), job("function-instance")
    (t,), (bt,) = sized["TaskGroups"][0]["Tasks"], base["TaskGroups"][0]["Tasks"]
    assert t["Resources"]["MemoryMB"] == 1024 and bt["Resources"]["MemoryMB"] == 256
    assert (t["Config"], t["Env"], sized["ParameterizedJob"]) == (bt["Config"], bt["Env"], base["ParameterizedJob"])
    assert pool_ready(consul_double, 1)[0]["Meta"]["instance_id"] == free["Meta"]["instance_id"]  # left alone

    # Within the floor: the pool first, then function-instance itself.
    small = s.start(c.deploy(function="small"), time.monotonic() + 30)
    assert small.id.startswith(free["Meta"]["instance_id"] + ".")
    other = s.start(c.deploy(function="other"), time.monotonic() + 30)
    assert alloc(other)["JobID"].startswith("function-instance/dispatch-")

    # The operator changes function-instance: the sized copy follows it, once.
    c.vars = c.vars.replace('kill_timeout = "5s"', 'kill_timeout = "7s"')
    c.scheduler().ensure_jobs(replace=True)
    for _ in range(2):
        s.start(big, time.monotonic() + 30)
    sized = job("function-instance-1024")
    assert sized["TaskGroups"][0]["Tasks"][0]["KillTimeout"] == 7 * 10**9 and sized["Version"] == 1


def test_two_starters_racing_for_one_pool_instance(make_cluster, consul_double):
    c = make_cluster(python_count=1)
    s1, s2 = c.scheduler(), c.scheduler()
    s1.ensure_jobs()
    pool_ready(consul_double, 1)
    spec = c.deploy()
    out, errors = [], []

    def go(s):
        try:
            out.append(s.start(spec, time.monotonic() + 30))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in (s1, s2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted("." in i.id for i in out) == [False, True]  # one claimed the pool instance, one dispatched
    for i in out:
        assert c.invoke(i)["result"] == "Hello Serverless"


def test_code_that_fails_to_load_is_a_function_error(make_cluster):
    c = make_cluster(python_count=0)
    s = c.scheduler()
    s.ensure_jobs()
    spec = c.deploy(source="import nothing_such\n")
    with pytest.raises(FunctionError) as e:
        s.start(spec, time.monotonic() + 30)
    assert e.value.code == "Runtime.ImportModuleError"


def test_failed_allocation_is_placement_failed_with_nomads_reason(make_cluster):
    c = make_cluster(python_count=0)
    c.vars += 'instance_args = ["-c", "import sys; sys.exit(3)"]\n'
    s = c.scheduler()
    s.ensure_jobs()
    with pytest.raises(PlacementFailed) as e:
        s.start(c.deploy(), time.monotonic() + 30)
    assert "Exit Code: 3" in e.value.message and "Not Restarting" in e.value.message
    assert "Exit Code: 3" in e.value.detail["reason"]


def test_nomad_unreachable_is_scheduler_unavailable(make_cluster, nomad_double):
    c = make_cluster(python_count=0)
    s = c.scheduler()
    s.ensure_jobs()
    spec = c.deploy()
    nomad_double.down()
    with pytest.raises(SchedulerUnavailable, match="is unreachable"):
        s.start(spec, time.monotonic() + 30)
    nomad_double.up()
    assert c.invoke(s.start(spec, time.monotonic() + 30))["result"] == "Hello Serverless"


def test_transient_errors_are_retried_and_dispatch_stays_idempotent(make_cluster, nomad_double):
    proxy = FaultyProxy(nomad_double.url, match="/dispatch?")
    try:
        c = make_cluster(python_count=0, nomad_url=proxy.url)
        s = c.scheduler()
        s.ensure_jobs()
        # First attempt: Nomad dispatches but the answer is lost; second: a leader election; third:
        # Nomad's RPC rate limit (429).
        proxy.plan = [("forward_then", 502, "bad gateway"), ("reply", 500, "No cluster leader"),
                      ("reply", 429, "rate limit exceeded")]
        inst = s.start(c.deploy(), time.monotonic() + 30)
        assert c.invoke(inst)["result"] == "Hello Serverless"
        assert proxy.count("/dispatch?") == 4
        children = [j for j in requests.get(f"{nomad_double.url}/v1/jobs", timeout=5).json()
                    if j["ParentID"] == "function-instance"]
        assert len(children) == 1, "the retried dispatch reused its idempotency token"
    finally:
        proxy.close()


def test_tls_to_nomad_is_verified_on_every_path(make_cluster):
    """python-nomad defaults to verify=False; the scheduler's client and its own session calls both verify."""
    s = make_cluster().scheduler()
    assert s.n.job.verify is True and s.n.jobs.verify is True and s.n.allocation.verify is True


def test_the_configured_consul_token_wins_over_the_environment(monkeypatch):
    """py-consul reads CONSUL_HTTP_TOKEN over the token it is given; the configured token wins, the
    environment's is only a fallback."""
    from appliance.backends.consul_kv import consul_client
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert consul_client("http://127.0.0.1:8500", "configured").token == "configured"
    assert consul_client("http://127.0.0.1:8500", "").token == "from-env"
    monkeypatch.delenv("CONSUL_HTTP_TOKEN")
    assert consul_client("http://127.0.0.1:8500", "").token is None


def test_validation_errors_are_not_retried(make_cluster, nomad_double):
    proxy = FaultyProxy(nomad_double.url, match="/dispatch?")
    try:
        c = make_cluster(python_count=0, nomad_url=proxy.url)
        s = c.scheduler(function_job="runtime-pool")  # not parameterized: Nomad answers 500
        s.ensure_jobs()
        with pytest.raises(PlacementFailed, match="not a parameterized job"):
            s.start(c.deploy(), time.monotonic() + 30)
        assert proxy.count("/dispatch?") == 1
    finally:
        proxy.close()


def test_pool_top_up_scales_the_runtime_group(make_cluster, consul_double, nomad_double):
    c = make_cluster(python_count=1)
    s = c.scheduler()
    s.ensure_jobs()
    pool_ready(consul_double, 1)
    s.start(c.deploy(), time.monotonic() + 30)  # takes the only free instance
    wait_until(lambda: not consul_double.passing_instances("faas-pool-python3-11"), what="pool empty")
    assert s.refill_pool() == {"python3.11": 2}
    pool_ready(consul_double, 1)
    assert s.refill_pool() == {}  # one free again: nothing to do
    # A second top-up right after the first: the pool groups open no deployment (update
    # max_parallel = 0), so Nomad does not refuse it.
    s.start(c.deploy(function="other"), time.monotonic() + 30)
    wait_until(lambda: not consul_double.passing_instances("faas-pool-python3-11"), what="pool empty again")
    assert s.refill_pool() == {"python3.11": 3}
    assert requests.get(f"{nomad_double.url}/v1/job/runtime-pool/deployment", timeout=5).json() is None


def test_pool_groups_with_deployments_block_the_second_top_up(make_cluster, consul_double, nomad_double, tmp_path):
    """What the update block prevents: a pool job with Nomad's default update strategy opens a
    deployment on every scale; specialised instances fail their pool check, so it never turns
    healthy, and Nomad refuses the next scale. The top-up pass logs it and scales nothing."""
    specs = tmp_path / "jobspecs"
    specs.mkdir()
    for f in ("function-instance.nomad.hcl", "runtime-pool.nomad.hcl"):
        text = open(f"jobspecs/{f}").read()
        # Nomad's default strategy, with a progress deadline long enough for the doubles' scaled time.
        (specs / f).write_text(text.replace("  max_parallel = 0\n", '  max_parallel = 1\n      healthy_deadline = "50m"'
                                                                    '\n      progress_deadline = "1h"\n'))
    c = make_cluster(python_count=1)
    s = c.scheduler(jobspecs_dir=str(specs))
    s.ensure_jobs()
    pool_ready(consul_double, 1)
    s.start(c.deploy(), time.monotonic() + 30)
    wait_until(lambda: not consul_double.passing_instances("faas-pool-python3-11"), what="pool empty")
    assert s.refill_pool() == {"python3.11": 2}   # the registration's deployment was over: allowed
    pool_ready(consul_double, 1)
    # The scale's deployment includes the specialised instance, whose pool check fails: it stays running.
    assert requests.get(f"{nomad_double.url}/v1/job/runtime-pool/deployment", timeout=5).json()["Status"] == "running"
    s.start(c.deploy(function="other"), time.monotonic() + 30)
    wait_until(lambda: not consul_double.passing_instances("faas-pool-python3-11"), what="pool empty again")
    assert s.refill_pool() == {}
    status = requests.get(f"{nomad_double.url}/v1/job/runtime-pool/scale", timeout=5).json()
    assert status["TaskGroups"]["python3.11"]["Desired"] == 2


def test_pool_instances_that_never_pass_do_not_make_top_up_grow_the_group(make_cluster, consul_double, nomad_double):
    """A pool runtime that runs but never answers its pool check (broken on this cluster, or a
    Consul restart making every check critical) is not in use: top-up leaves the count alone."""
    c = make_cluster(python_count=1)
    c.vars = c.vars.replace('instance_args = ["-m", "appliance", "instance"]',
                            'instance_args = ["-c", "import time; time.sleep(600)"]')
    s = c.scheduler()
    s.ensure_jobs()
    wait_until(lambda: requests.get(f"{nomad_double.url}/v1/job/runtime-pool/scale", timeout=5).json()
               ["TaskGroups"]["python3.11"]["Running"] == 1, 30, "the pool allocation to run")
    wait_until(lambda: requests.get(f"{consul_double.url}/v1/health/service/faas-pool-python3-11", timeout=5).json(),
               15, "the pool entry in Consul")
    for _ in range(3):
        assert s.refill_pool() == {}
    status = requests.get(f"{nomad_double.url}/v1/job/runtime-pool/scale", timeout=5).json()
    assert status["TaskGroups"]["python3.11"]["Desired"] == 1


def test_exit_cause_and_reason_come_from_task_events(make_cluster, nomad_double):
    """A crashed dispatched instance: its cause is read back from Nomad's allocation."""
    import os
    import signal

    c = make_cluster(python_count=0)
    s = c.scheduler()
    s.ensure_jobs()
    inst = s.start(c.deploy(), time.monotonic() + 30)
    assert s.exit_cause(inst.id) is None  # still running
    (proc,) = [p for p in nomad_double.processes() if p.poll() is None]
    os.kill(proc.pid, signal.SIGSEGV)
    wait_until(lambda: s.exit_cause(inst.id) == "crashed", 15, "the crash to show in the allocation")
    from appliance.backends.nomad_scheduler import cause_from_alloc
    oom = {"ClientStatus": "failed", "DesiredStatus": "run", "TaskStates": {"runtime": {"Events": [
        {"Type": "Terminated", "DisplayMessage": "Exit Code: 137, Exit Message: \"OOM Killed\"",
         "Details": {"oom_killed": "true", "exit_code": "137"}}]}}}
    assert cause_from_alloc(oom) == "oom"


def test_an_abandoned_claim_is_cleared_and_the_instance_reused(make_cluster, consul_double):
    """A starter that died between claim and specialise leaves a claim on a generic instance;
    top-up frees it once it is older than the claim TTL."""
    c = make_cluster(python_count=1)
    s = c.scheduler(claim_ttl_s=30)
    s.ensure_jobs()
    (entry,) = pool_ready(consul_double, 1)
    alloc = entry["Meta"]["instance_id"]
    old = json.dumps({"function": "x", "at": time.time() - 60})
    requests.put(f"{consul_double.url}/v1/kv/{CLAIM_PREFIX}{alloc}?cas=0", data=old, timeout=5)
    spec = c.deploy()
    inst = s.start(spec, time.monotonic() + 30)
    assert "." not in inst.id  # the only pool instance looked claimed: dispatched
    s.refill_pool()
    assert requests.get(f"{consul_double.url}/v1/kv/{CLAIM_PREFIX}{alloc}", timeout=5).status_code == 404
    again = s.start(c.deploy(function="other"), time.monotonic() + 30)
    assert again.id.startswith(alloc + ".")


def test_pool_cold_starts_work_while_nomad_is_down(make_cluster, consul_double, nomad_double):
    """The fast path needs only Consul and the pooled instance."""
    c = make_cluster(python_count=1)
    s = c.scheduler()
    s.ensure_jobs()
    pool_ready(consul_double, 1)
    nomad_double.down()
    try:
        inst = s.start(c.deploy(), time.monotonic() + 30)
        assert "." in inst.id and c.invoke(inst)["result"] == "Hello Serverless"
    finally:
        nomad_double.up()


def test_ensure_jobs_leaves_jobs_the_operator_registered(make_cluster, nomad_double):
    c = make_cluster(python_count=0)
    s = c.scheduler()
    s.ensure_jobs()
    c.vars = c.vars.replace("python_count = 0", "python_count = 3")
    other = c.scheduler()
    other.ensure_jobs()  # present: untouched
    pool = requests.get(f"{nomad_double.url}/v1/job/runtime-pool", timeout=5).json()
    assert pool["Version"] == 0 and pool["TaskGroups"][0]["Count"] == 0
    other.ensure_jobs(replace=True)
    pool = requests.get(f"{nomad_double.url}/v1/job/runtime-pool", timeout=5).json()
    assert pool["Version"] == 1


def test_a_sized_job_removed_meanwhile_is_registered_again_by_the_next_start(make_cluster, nomad_double):
    c = make_cluster(python_count=0)
    s = c.scheduler()
    s.ensure_jobs()
    big = dataclasses.replace(c.deploy(function="big"), memory_mb=512)
    s.start(big, time.monotonic() + 30)
    requests.delete(f"{nomad_double.url}/v1/job/function-instance-512?purge=true", timeout=5)
    with pytest.raises(PlacementFailed, match="parameterized job not found"):
        s.start(big, time.monotonic() + 30)
    inst = s.start(big, time.monotonic() + 30)
    assert c.invoke(inst)["result"] == "Hello Serverless"


def test_layers_are_fetched_once_per_node_by_the_dispatched_launcher(make_cluster, consul_double, nomad_double):
    c = make_cluster(python_count=1)
    pkgs = {"libs:1": package("WHO = 'layer one'\nLEFT = 'kept'\n", "python/shared.py"),
            "libs:2": package("WHO = 'layer two'\n", "python/shared.py")}
    digests = {}
    for ref, data in pkgs.items():
        digests[ref] = hashlib.sha256(data).hexdigest()
        c.blobs.put(digests[ref], data)
    s = c.scheduler(layer_digest=digests.__getitem__)
    s.ensure_jobs()
    pool_ready(consul_double, 1)
    src = "import shared\ndef handler(e, c):\n    return [shared.WHO, getattr(shared, 'LEFT', None)]\n"
    spec = dataclasses.replace(c.deploy(source=src), layers=("libs:1",))
    a = s.start(spec, time.monotonic() + 30)
    assert c.invoke(a)["result"] == ["layer one", "kept"]
    assert s.stats["pool_starts"] == 0 and s.stats["dispatch_starts"] == 1  # the free pool instance was left alone
    b = s.start(dataclasses.replace(spec, layers=("libs:1", "libs:2")), time.monotonic() + 30)
    assert c.invoke(b)["result"] == ["layer two", None]  # the later layer's file replaces the earlier one's
    logs = alloc_logs(nomad_double)
    assert logs.count(f"event=code_fetched digest={digests['libs:1']}") == 1
    assert logs.count(f"event=code_fetched digest={digests['libs:2']}") == 1
