"""The node autoscaler against real parts: moto's server mode for Auto Scaling and EC2 (reached
with real boto3 clients), and the Nomad and Consul doubles, with function instances that are
real processes dispatched from jobspecs/function-instance.nomad.hcl.

Faults are injected at the edges the autoscaler really crosses: botocore's ``before-call`` hook
answers a call with an AWS error before it leaves the client (so the autoscaler's own retry path
runs), the Nomad double goes down, a stray Consul registration outlives a drain.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading

import boto3
import hcl2
import nomad
import pytest
import requests
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from click.testing import CliRunner
from doubles._http import free_port
from doubles.nomad import FakeNode
from hcl2.utils import SerializationOptions

from appliance.cluster import node_autoscaler as na
from appliance.cli import main as cli
from appliance.cluster.node_autoscaler_policy import NodePolicy, free_slots
from appliance.config import REPO_ROOT, Settings

sys.path.insert(0, str(REPO_ROOT))
from tests.waiting import wait_for  # noqa: E402

GROUP = "faas-workers"
TEMPLATE = "faas-worker"
FAST_RETRY = na.RetryPolicy(attempts=4, initial_s=0.01, max_s=0.02)
# Hosts small enough that a few function instances matter: 4 warm slots of 256 MB / 200 MHz each.
HOST = {"memory_mb": 1024, "cpu_mhz": 2000}
SLOT = {"slot_memory_mb": 256, "slot_cpu_mhz": 200}


# --------------------------------------------------------------------------- moto, server mode
@pytest.fixture(scope="module")
def moto_url():
    """``moto_server`` on a free port of 127.0.0.1 for this module (state reset per test)."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"moto_server exited with {proc.returncode}")
        try:
            return requests.get(url + "/moto-api/", timeout=1).ok
        except requests.ConnectionError:
            return False
    try:
        wait_for(up, timeout_s=30, message="moto_server to listen")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Aws:
    """Real boto3 clients on moto, with botocore's own retries off (as in production)."""

    def __init__(self, url: str):
        requests.post(url + "/moto-api/reset", timeout=10).raise_for_status()
        kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing",
                  config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        self.url = url
        self.ec2 = boto3.client("ec2", **kw)
        self.asg = boto3.client("autoscaling", **kw)
        self.ec2.create_launch_template(LaunchTemplateName=TEMPLATE,
                                        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.small"})
        self.calls: list[tuple[str, dict]] = []
        self.asg.meta.events.register("before-parameter-build.auto-scaling.*", self._record)
        self.ec2.meta.events.register("before-parameter-build.ec2.*", self._record)

    def _record(self, model, params, **_):
        self.calls.append((model.name, dict(params)))

    def called(self, operation: str) -> list[dict]:
        return [p for name, p in self.calls if name == operation]

    def make_group(self, desired: int) -> list[str]:
        self.asg.create_auto_scaling_group(
            AutoScalingGroupName=GROUP, LaunchTemplate={"LaunchTemplateName": TEMPLATE, "Version": "$Latest"},
            MinSize=0, MaxSize=5, DesiredCapacity=desired, AvailabilityZones=["us-east-1a"])
        return sorted(self.group()["members"])

    def group(self) -> dict:
        g = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
        return {"desired": g["DesiredCapacity"], "members": {i["InstanceId"]: i["LifecycleState"] for i in g["Instances"]}}

    def state(self, instance_id: str) -> str:
        r = self.ec2.describe_instances(InstanceIds=[instance_id])
        return r["Reservations"][0]["Instances"][0]["State"]["Name"]

    def fail(self, client, operation: str, code: str, times: int, status: int = 400) -> list[int]:
        """The next ``times`` calls of ``operation`` fail with ``code`` before reaching moto.
        Returns a list that grows by one per call seen (failed or passed)."""
        seen: list[int] = []
        service = client.meta.service_model.service_id.hyphenize()

        def hook(**_):
            seen.append(1)
            if len(seen) <= times:
                body = {"Error": {"Code": code, "Message": f"injected {code}"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}
                return AWSResponse(self.url, status, {}, None), body
            return None
        client.meta.events.register(f"before-call.{service}.{operation}", hook)
        return seen


@pytest.fixture
def aws(moto_url):
    return Aws(moto_url)


# --------------------------------------------------------------------------- the cluster
class Cluster:
    """Nomad + Consul doubles with one FakeNode per cloud instance, and function instances."""

    def __init__(self, make_nomad_double, consul, instance_ids, tiny_server, names=None):
        self.names = names or [f"node-{chr(ord('a') + i)}" for i in range(len(instance_ids))]
        self.nomad = make_nomad_double(nodes=[FakeNode(name, meta={na.INSTANCE_META_KEY: iid}, **HOST)
                                              for name, iid in zip(self.names, instance_ids)])
        self.consul = consul
        self.tiny_server = tiny_server
        self.client = nomad.Nomad(host=self.nomad.host, port=self.nomad.port, timeout=30)
        self._registered = False
        self._dispatches = 0

    def node(self, name: str):
        return self.nomad.node_by_name(name)

    def live_allocs(self, name: str) -> list:
        node = self.node(name)
        with self.nomad._cond:
            return [a.id for a in self.nomad.allocs.values() if a.node is node and not a.terminal]

    def consul_instances(self, name: str) -> list[str]:
        with self.consul._cond:
            return [sid for sid, s in self.consul.services.items()
                    if s["Service"].startswith("fn-") and s["_node"] == name]

    def _register_job(self):
        if self._registered:
            return
        ts = self.tiny_server
        variables = (f'instance_command = "{ts[0]}"\ninstance_args = [{", ".join(json.dumps(x) for x in ts[1:])}]\n'
                     'check_interval = "1s"\nkill_timeout = "30s"')
        src = (REPO_ROOT / "jobspecs" / "function-instance.nomad.hcl").read_text()
        job = requests.post(self.nomad.url + "/v1/jobs/parse", json={"JobHCL": src, "Variables": variables},
                            timeout=30).json()
        self.client.jobs.register_job({"Job": job})
        self._registered = True

    def dispatch_on(self, name: str, function: str = "hello") -> str:
        """One function instance on host ``name``: the other hosts are made ineligible for the
        dispatch, then eligible again. Waits until it is running and registered in Consul."""
        self._register_job()
        others = [n for n in self.nomad.nodes.values() if n.name != name]
        for n in others:
            self.client.node.eligible_node(n.id, ineligible=True)
        self._dispatches += 1
        r = self.client.job.request("function-instance", "dispatch", method="post",
                                    json={"Meta": {"function": function, "version": "1", "digest": "sha256-x"}},
                                    params={"idempotency_token": f"t-{self._dispatches}"}).json()
        child = r["DispatchedJobID"]
        alloc = self.nomad.wait_for(lambda: [a for a in self.client.job.get_allocations(child)
                                             if a["ClientStatus"] == "running"], what="instance running")[0]
        for n in others:
            self.client.node.eligible_node(n.id, eligible=True)
        assert alloc["NodeName"] == name
        self.consul.wait_for(lambda: any(alloc["ID"] in s["ID"] for s in self.consul.passing_instances(f"fn-{function}")),
                             what="instance in Consul")
        return alloc["ID"]

    def nomad_writes(self, since: int = 0) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.nomad.requests[since:] if m in ("POST", "PUT", "DELETE")]


@pytest.fixture
def cluster_of(make_nomad_double, consul_double, tiny_server, aws):
    """``cluster_of(n, names=None) -> (Cluster, instance ids)``: an Auto Scaling group of ``n``
    instances in moto, each one a Nomad node in the double."""
    def make(n: int, names=None):
        ids = aws.make_group(n)
        return Cluster(make_nomad_double, consul_double, ids, tiny_server, names), ids
    return make


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def scaler_for(cluster: Cluster, aws: Aws, policy: NodePolicy, **kwargs) -> na.NodeAutoscaler:
    return na.NodeAutoscaler(
        na.NomadNodes(cluster.nomad.url, retry=FAST_RETRY), na.ConsulInstances(cluster.consul.url, retry=FAST_RETRY),
        na.AutoScalingGroupActuator(aws.asg, GROUP, retry=FAST_RETRY), policy, **kwargs)


# A policy under which host b (one instance, hosts a with two) is the one to remove.
SCALE_IN_POLICY = NodePolicy(min_nodes=1, max_nodes=5, cooldown_out_s=0, cooldown_in_s=600, target_headroom_slots=1,
                             scale_in_utilisation=0.9, drain_deadline_s=1.0, **SLOT)


def two_hosts_with_instances(cluster_of):
    """Hosts a (two function instances) and b (one): b is the emptiest."""
    cluster, ids = cluster_of(2)
    cluster.dispatch_on("node-a")
    cluster.dispatch_on("node-a")
    cluster.dispatch_on("node-b")
    return cluster, ids


# --------------------------------------------------------------------------- scale-out
def test_scale_out_adds_a_host_that_then_counts_as_capacity(cluster_of, aws):
    cluster, ids = cluster_of(2)
    policy = NodePolicy(min_nodes=1, max_nodes=5, cooldown_out_s=0, cooldown_in_s=0, target_headroom_slots=10, **SLOT)
    scaler = scaler_for(cluster, aws, policy)

    first = scaler.tick()
    assert first.ok, first.errors
    assert first.decision.action == "scale_out" and first.decision.count == 1, first.decision.reason
    assert aws.group()["desired"] == 3
    assert aws.called("SetDesiredCapacity") == [{"AutoScalingGroupName": GROUP, "DesiredCapacity": 3,
                                                  "HonorCooldown": False}]
    new = sorted(set(aws.group()["members"]) - set(ids))
    assert len(new) == 1

    # The host is booting: it is counted as joining, so no second host is asked for.
    booting = scaler.tick()
    assert booting.observation.pending_nodes == 1
    assert booting.decision.action == "none", booting.decision.reason
    assert aws.group()["desired"] == 3 and len(aws.called("SetDesiredCapacity")) == 1

    # The host's user data ran: its Nomad client registers with the instance id in its meta.
    joined = cluster.nomad.add_node(FakeNode("node-c", meta={na.INSTANCE_META_KEY: new[0]}, **HOST))
    seen = scaler.tick()
    assert seen.observation.pending_nodes == 0
    view = next(v for v in seen.observation.nodes if v.id == joined.id)
    assert view.schedulable and view.removable
    assert sum(free_slots(v, policy) for v in seen.observation.nodes) == 12
    assert seen.decision.action == "none" and "3 hosts (3 schedulable, 0 joining)" in seen.decision.reason
    assert len(aws.called("SetDesiredCapacity")) == 1


def test_blocked_evaluations_ask_for_a_host(cluster_of, aws):
    cluster, _ = cluster_of(1)
    # A service that cannot be placed: more memory than any host has free.
    job = {"ID": "big", "Name": "big", "Type": "service", "Datacenters": ["*"],
           "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
                                                              "Config": {"command": "/bin/true"},
                                                              "Resources": {"CPU": 100, "MemoryMB": 4096}}]}]}
    assert requests.post(cluster.nomad.url + "/v1/jobs", json={"Job": job}, timeout=10).ok
    policy = NodePolicy(min_nodes=1, max_nodes=5, cooldown_out_s=0, cooldown_in_s=0, target_headroom_slots=0, **SLOT)
    report = scaler_for(cluster, aws, policy).tick()
    assert report.observation.blocked_evaluations == 1
    assert report.decision.action == "scale_out" and "blocked" in report.decision.reason
    assert aws.group()["desired"] == 2


# --------------------------------------------------------------------------- scale-in
def test_scale_in_drains_before_it_terminates_exactly_that_instance(cluster_of, aws):
    cluster, (i_a, i_b) = two_hosts_with_instances(cluster_of)
    node_b = cluster.node("node-b")
    at_terminate = []

    def snapshot(params, **_):
        at_terminate.append({"instance": params["body"]["InstanceId"], "eligibility": node_b.eligibility,
                             "allocs": cluster.live_allocs("node-b"), "consul": cluster.consul_instances("node-b")})
    aws.asg.meta.events.register("before-call.auto-scaling.TerminateInstanceInAutoScalingGroup", snapshot)
    assert cluster.consul_instances("node-b"), "the instance on b is in Consul before the scale-in"

    since = len(cluster.nomad.requests)
    scaler = scaler_for(cluster, aws, SCALE_IN_POLICY)
    report = scaler.run_once(wait=True, poll_s=0.05, timeout_s=60)

    assert report.ok, report.errors
    assert report.decision.action == "scale_in" and report.decision.node_id == node_b.id
    assert report.terminated == [i_b]
    # Order: ineligible, then drain, on b only ...
    writes = cluster.nomad_writes(since)
    assert writes == [("POST", f"/v1/node/{node_b.id}/eligibility"), ("POST", f"/v1/node/{node_b.id}/drain")]
    # ... then, when the instance was terminated, b was empty in Nomad and in Consul.
    assert at_terminate == [{"instance": i_b, "eligibility": "ineligible", "allocs": [], "consul": []}]
    assert aws.called("TerminateInstanceInAutoScalingGroup") == [
        {"InstanceId": i_b, "ShouldDecrementDesiredCapacity": True}]
    assert aws.group() == {"desired": 1, "members": {i_a: "InService"}}
    assert (aws.state(i_a), aws.state(i_b)) == ("running", "terminated")
    assert [p for line in report.plan for p in re.findall(r"action=(\S+)", line)] == [
        "mark_ineligible", "drain", "wait_until_empty", "terminate_instance_in_auto_scaling_group"]

    # Nomad still lists b until it misses its heartbeats: it is gone for the autoscaler.
    after = scaler.tick()
    assert after.ok and after.terminated == []
    assert next(v for v in after.observation.nodes if v.id == node_b.id).status == "down"
    assert after.observation.pending_nodes == 0
    assert len(aws.called("TerminateInstanceInAutoScalingGroup")) == 1


def test_nomad_down_mid_drain_resumes_and_never_terminates_early(cluster_of, aws):
    cluster, (i_a, i_b) = two_hosts_with_instances(cluster_of)
    node_b = cluster.node("node-b")
    scaler = scaler_for(cluster, aws, SCALE_IN_POLICY)
    started = scaler.tick()
    assert started.retiring == [node_b.id] and started.terminated == []
    assert cluster.live_allocs("node-b"), "the drain deadline has not passed yet"

    cluster.nomad.down()
    blind = scaler.tick()
    assert blind.errors and "observe" in blind.errors[0]
    assert blind.decision is None
    # The drain goes on inside Nomad; the autoscaler cannot see it, so it must not act.
    cluster.nomad.wait_for(lambda: not cluster.live_allocs("node-b"), what="b drained")
    still_blind = scaler.tick()
    assert still_blind.errors and still_blind.terminated == []
    assert aws.called("TerminateInstanceInAutoScalingGroup") == []
    assert aws.group()["desired"] == 2

    # Nomad is back; a new autoscaler process (no memory of the drain) finds and finishes it.
    cluster.nomad.up()
    restarted = scaler_for(cluster, aws, SCALE_IN_POLICY)
    done = wait_for(lambda: restarted.tick().terminated, timeout_s=30, message="the retirement to finish")
    assert done == [i_b]
    assert aws.called("TerminateInstanceInAutoScalingGroup") == [
        {"InstanceId": i_b, "ShouldDecrementDesiredCapacity": True}]
    assert aws.group() == {"desired": 1, "members": {i_a: "InService"}}


def test_instances_that_outlive_the_drain_deadline_abort_the_removal(cluster_of, aws, consul_double):
    # b has one function instance that Nomad does not manage (it registered itself through the
    # agent); a is the autoscaler's own host, so b is the only removable one.
    cluster, (i_a, i_b) = cluster_of(2)
    node_b = cluster.node("node-b")
    consul_double.register_service({"ID": "fn-stray-1", "Name": "fn-stray", "Port": 20001}, node="node-b")
    wall = Clock(5000.0)
    policy = NodePolicy(min_nodes=1, max_nodes=5, cooldown_out_s=0, cooldown_in_s=600, target_headroom_slots=1,
                        scale_in_utilisation=0.9, drain_deadline_s=900, **SLOT)
    scaler = scaler_for(cluster, aws, policy, self_node_name="node-a", drain_grace_s=60, wall=wall, clock=Clock())

    first = scaler.tick()
    assert first.decision.node_id == node_b.id and first.retiring == [node_b.id]
    assert node_b.eligibility == "ineligible"
    wall.t += 900 + 59  # within deadline + grace: still waiting
    waiting = scaler.tick()
    assert waiting.ok and waiting.terminated == [] and waiting.restored == []
    assert next(v for v in waiting.observation.nodes if v.id == node_b.id).schedulable is False

    wall.t += 2  # past it: the removal is abandoned, b serves again
    given_up = scaler.tick()
    assert given_up.restored == [node_b.id]
    assert any("removal abandoned" in e for e in given_up.errors)
    assert (node_b.eligibility, node_b.drain_strategy) == ("eligible", None)
    assert given_up.decision.action == "none"  # the scale-in cooldown holds
    assert aws.called("TerminateInstanceInAutoScalingGroup") == []
    assert aws.group()["desired"] == 2


def test_a_failed_drain_makes_the_node_eligible_again(cluster_of, aws, monkeypatch):
    cluster, _ = two_hosts_with_instances(cluster_of)
    node_b = cluster.node("node-b")
    scaler = scaler_for(cluster, aws, SCALE_IN_POLICY)

    def refuse(node_id, deadline_s, meta):
        raise na.NodeAutoscalerError(f"drain of {node_id} refused (injected)")
    monkeypatch.setattr(scaler.nomad, "drain", refuse)
    report = scaler.tick()
    assert [e for e in report.errors if e.startswith("step=drain")]
    assert report.restored == [node_b.id] and report.retiring == []
    assert (node_b.eligibility, node_b.drain_strategy) == ("eligible", None)
    assert cluster.live_allocs("node-b")
    assert aws.called("TerminateInstanceInAutoScalingGroup") == []
    # No host went, so no cooldown: the next tick may try again.
    assert scaler.state.last_scale_in_at is None


def test_a_failed_terminate_keeps_the_node_out_and_is_retried_next_tick(cluster_of, aws):
    cluster, (i_a, i_b) = cluster_of(2, names=["node-a", "node-b"])
    cluster.dispatch_on("node-a")
    node_b = cluster.node("node-b")
    seen = aws.fail(aws.asg, "TerminateInstanceInAutoScalingGroup", "AccessDenied", times=1, status=403)
    policy = NodePolicy(min_nodes=1, max_nodes=5, cooldown_out_s=0, cooldown_in_s=0, target_headroom_slots=1,
                        scale_in_utilisation=0.9, drain_deadline_s=5, **SLOT)
    scaler = scaler_for(cluster, aws, policy)

    failed = scaler.tick()
    assert failed.retiring == [node_b.id] and failed.terminated == []
    assert [e for e in failed.errors if e.startswith("step=terminate") and "AccessDenied" in e]
    assert len(seen) == 1, "a permanent error is not retried"
    assert node_b.eligibility == "ineligible"
    assert aws.group()["desired"] == 2

    retried = scaler.tick()
    view = next(v for v in retried.observation.nodes if v.id == node_b.id)
    assert retried.terminated == [i_b], retried.errors
    assert retried.retiring == [], "no second host was chosen while b was being removed"
    assert aws.group() == {"desired": 1, "members": {i_a: "InService"}}
    assert view.status == "down"
    assert len(seen) == 2


# --------------------------------------------------------------------------- dry run
def test_dry_run_prints_the_plan_and_changes_nothing(cluster_of, aws):
    cluster, (i_a, i_b) = two_hosts_with_instances(cluster_of)
    node_b = cluster.node("node-b")
    since, calls = len(cluster.nomad.requests), len(aws.calls)
    lines = []
    scaler = scaler_for(cluster, aws, SCALE_IN_POLICY, dry_run=True, echo=lines.append)
    report = scaler.run_once(wait=True)
    assert report.decision.action == "scale_in"
    assert lines == report.plan and all(line.startswith("dry-run plan step=") for line in lines)
    assert [re.search(r"action=(\S+)", line).group(1) for line in lines] == [
        "mark_ineligible", "drain", "wait_until_empty", "terminate_instance_in_auto_scaling_group"]
    assert f"instance={i_b}" in lines[-1] and f"node={node_b.id}" in lines[0]
    assert cluster.nomad_writes(since) == []
    assert node_b.eligibility == "eligible" and node_b.drain_strategy is None
    assert [name for name, _ in aws.calls[calls:] if not name.startswith("Describe")] == []
    assert aws.group()["desired"] == 2
    assert scaler.state.last_scale_in_at is None


def test_cli_once_dry_run_reads_the_environment(cluster_of, aws, monkeypatch):
    cluster, _ = cluster_of(1)
    env = {"APPLIANCE_MODE": "cluster", "APPLIANCE_NOMAD_ADDR": cluster.nomad.url,
           "APPLIANCE_CONSUL_ADDR": cluster.consul.url, "APPLIANCE_NODE_ASG_NAME": GROUP,
           "APPLIANCE_NODE_AWS_ENDPOINT": aws.url, "APPLIANCE_NODE_AWS_REGION": "us-east-1",
           "APPLIANCE_NODE_HEADROOM_SLOTS": "6", "APPLIANCE_NODE_SLOT_MEMORY_MB": "256",
           "APPLIANCE_NODE_SLOT_CPU_MHZ": "200", "APPLIANCE_NODE_RETRY_INITIAL_S": "0.01",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(cli, ["node-autoscaler", "--once", "--dry-run"])
    finally:
        root.handlers[:], root.level = handlers, level  # the command set up logging on the runner's stderr
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"dry-run plan step=1 action=set_desired_capacity group={GROUP} from=1 to=2"]
    assert aws.group()["desired"] == 1

    monkeypatch.delenv("APPLIANCE_NODE_ASG_NAME")
    result = CliRunner().invoke(cli, ["node-autoscaler", "--once"])
    assert result.exit_code == 1 and "APPLIANCE_NODE_ASG_NAME" in result.output


def test_the_loop_ticks_until_stopped(cluster_of, aws):
    cluster, _ = cluster_of(1)
    policy = NodePolicy(min_nodes=2, max_nodes=5, cooldown_out_s=600, cooldown_in_s=600, target_headroom_slots=0,
                        **SLOT)
    scaler = scaler_for(cluster, aws, policy)
    loop = threading.Thread(target=scaler.run, args=(0.05,), daemon=True)
    loop.start()
    try:
        wait_for(lambda: aws.group()["desired"] == 2, message="the loop to scale out")
        wait_for(lambda: len([r for r in cluster.nomad.requests if r == ("GET", "/v1/nodes")]) >= 3,
                 message="more ticks")
    finally:
        scaler.stop()
        loop.join(30)
    assert not loop.is_alive()
    assert len(aws.called("SetDesiredCapacity")) == 1, "the cooldown holds between ticks"


# --------------------------------------------------------------------------- transient errors
def test_throttled_scale_out_is_retried_until_it_succeeds(cluster_of, aws):
    cluster, _ = cluster_of(1)
    seen = aws.fail(aws.asg, "SetDesiredCapacity", "Throttling", times=2)
    policy = NodePolicy(min_nodes=2, max_nodes=5, cooldown_out_s=60, cooldown_in_s=60, target_headroom_slots=0, **SLOT)
    report = scaler_for(cluster, aws, policy).tick()
    assert report.ok, report.errors
    assert len(seen) == 3
    assert aws.group()["desired"] == 2


def test_throttling_that_outlasts_the_attempts_is_reported_and_retried_next_tick(cluster_of, aws):
    cluster, _ = cluster_of(1)
    seen = aws.fail(aws.asg, "SetDesiredCapacity", "Throttling", times=FAST_RETRY.attempts)
    policy = NodePolicy(min_nodes=2, max_nodes=5, cooldown_out_s=600, cooldown_in_s=600, target_headroom_slots=0,
                        **SLOT)
    scaler = scaler_for(cluster, aws, policy, clock=Clock())
    failed = scaler.tick()
    assert len(seen) == FAST_RETRY.attempts
    assert [e for e in failed.errors if e.startswith("step=scale_out") and "Throttling" in e]
    assert aws.group()["desired"] == 1
    assert scaler.tick().scaled_out == {"group": GROUP, "from": 1, "to": 2}  # no cooldown after a failure
    assert aws.group()["desired"] == 2


def test_permanent_aws_errors_are_not_retried(cluster_of, aws):
    cluster, _ = cluster_of(1)
    seen = aws.fail(aws.asg, "SetDesiredCapacity", "ValidationError", times=1)
    policy = NodePolicy(min_nodes=2, max_nodes=5, target_headroom_slots=0, **SLOT)
    report = scaler_for(cluster, aws, policy).tick()
    assert len(seen) == 1 and report.errors and "ValidationError" in report.errors[0]


# --------------------------------------------------------------------------- launch template
def test_launch_template_target_runs_instances_with_join_user_data(cluster_of, aws):
    cluster, _ = cluster_of(1)
    user_data = na.render_user_data(consul_join=["10.0.0.10", "10.0.0.11"], nomad_servers=["10.0.0.10:4647"])
    actuator = na.LaunchTemplateActuator(aws.ec2, TEMPLATE, user_data, group_tag="workers-test", retry=FAST_RETRY)
    policy = NodePolicy(min_nodes=2, max_nodes=5, cooldown_out_s=0, cooldown_in_s=0, target_headroom_slots=0, **SLOT)
    scaler = na.NodeAutoscaler(na.NomadNodes(cluster.nomad.url, retry=FAST_RETRY),
                               na.ConsulInstances(cluster.consul.url, retry=FAST_RETRY), actuator, policy)
    report = scaler.tick()
    assert report.ok, report.errors
    # The group's own instance (not tagged) is not counted by this target: 1 host, below min 2.
    (new,) = report.scaled_out["instances"].split(",")
    (call,) = aws.called("RunInstances")
    assert call["LaunchTemplate"] == {"LaunchTemplateName": TEMPLATE, "Version": "$Latest"}
    sent = base64.b64decode(aws.ec2.describe_instance_attribute(InstanceId=new, Attribute="userData")
                            ["UserData"]["Value"]).decode()
    assert sent == user_data
    assert 'retry_join = ["10.0.0.10", "10.0.0.11"]' in sent and 'servers    = ["10.0.0.10:4647"]' in sent
    assert 'instance_id = "${instance_id}"' in sent and "{{" not in sent
    assert actuator.describe().members == {new: "running"}


def test_launch_template_target_terminates_only_the_drained_tagged_instance(make_nomad_double, consul_double,
                                                                           tiny_server, aws):
    actuator = na.LaunchTemplateActuator(aws.ec2, TEMPLATE, "#!/bin/sh\n", group_tag="workers-test", retry=FAST_RETRY)
    r = aws.ec2.run_instances(LaunchTemplate={"LaunchTemplateName": TEMPLATE, "Version": "$Latest"}, MinCount=2,
                              MaxCount=2, TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                  {"Key": na.GROUP_TAG_KEY, "Value": "workers-test"}]}])
    i_a, i_b = sorted(i["InstanceId"] for i in r["Instances"])
    untagged = aws.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    cluster = Cluster(make_nomad_double, consul_double, [i_a, i_b, untagged], tiny_server)
    cluster.dispatch_on("node-a")
    scaler = na.NodeAutoscaler(na.NomadNodes(cluster.nomad.url, retry=FAST_RETRY),
                               na.ConsulInstances(cluster.consul.url, retry=FAST_RETRY), actuator,
                               dataclasses.replace(SCALE_IN_POLICY, cooldown_in_s=0))
    report = scaler.run_once(wait=True, poll_s=0.05, timeout_s=30)
    # node-c (untagged, empty) is capacity but not this target's to remove; b is the emptiest of a, b.
    assert report.terminated == [i_b], report.errors
    assert aws.called("TerminateInstances") == [{"InstanceIds": [i_b]}]
    assert {i: aws.state(i) for i in (i_a, i_b, untagged)} == {i_a: "running", i_b: "terminated",
                                                               untagged: "running"}
    assert actuator.describe().members == {i_a: "running"}


def test_user_data_needs_a_consul_address_and_refuses_shell_characters():
    with pytest.raises(na.NodeAutoscalerConfigError, match="APPLIANCE_NODE_CONSUL_JOIN"):
        na.render_user_data(consul_join=[""])
    with pytest.raises(na.NodeAutoscalerConfigError, match="cannot go into the user data"):
        na.render_user_data(consul_join=["$(reboot)"])


# --------------------------------------------------------------------------- jobspec alignment
def test_jobspec_environment_is_the_node_autoscaler_settings():
    src = (REPO_ROOT / "jobspecs" / "node-autoscaler.nomad.hcl").read_text()
    data = hcl2.loads(src, serialization_options=SerializationOptions(with_comments=False, strip_string_quotes=True))
    defaults = {k: v["default"] for var in data["variable"] for k, v in var.items()}
    task = data["job"][0]["node-autoscaler"]["group"][0]["autoscaler"]["task"][0]["autoscaler"]
    env = {k: v for k, v in task["env"][0].items() if not k.startswith("__")}
    assert task["config"][0]["args"] == ["-m", "appliance", "node-autoscaler"]
    fields = {f"APPLIANCE_{f.upper()}" for f in Settings.__dataclass_fields__}
    assert set(env) <= fields, sorted(set(env) - fields)
    assert {"APPLIANCE_NODE_ASG_NAME", "APPLIANCE_NODE_DRAIN_DEADLINE_S", "APPLIANCE_NODE_NAME"} <= set(env)

    def value(v):
        m = re.fullmatch(r"\$\{var\.(\w+)\}", str(v))
        v = defaults[m.group(1)] if m else v
        return str(v).lower() if isinstance(v, bool) else str(v)
    s = Settings.from_env({k: value(v) for k, v in env.items()})
    assert (s.node_asg_name, s.node_drain_deadline_s, s.node_autoscaler_dry_run) == ("faas-workers", 900.0, False)
