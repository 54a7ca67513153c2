"""The node autoscaler: observes Nomad and Consul, decides with ``decide_nodes``, acts on the cloud.

One tick is: observe -> advance a removal in progress -> decide -> act.

* **Observe.** Nomad: every node with its resources and meta (``/v1/nodes``, ``/v1/node/<id>``),
  the resources of live allocations (``/v1/allocations?resources=true``) and the blocked
  evaluations (``/v1/evaluations?status=blocked``). Consul: the function instances
  (``fn-<function>`` services) per host. The cloud: the group's desired capacity and members, to
  count hosts that were asked for but have not joined Nomad yet.
* **Decide.** :func:`appliance.cluster.node_autoscaler_policy.decide_nodes`, a pure function; the warm-slot
  headroom it scales on is computed there from the nodes' free resources.
* **Act.** Scale-out asks the cloud for more hosts (:class:`AutoScalingGroupActuator` or
  :class:`LaunchTemplateActuator`). Scale-in *retires* one host: mark it ineligible, drain it with
  a deadline, wait until its allocations have stopped and its function instances are gone from
  Consul, then terminate exactly its cloud instance.

A retirement spans ticks and its state lives in Nomad, not in this process: the drain carries
``Meta.drained_by = faas-node-autoscaler`` (and the instance id and start time), and Nomad keeps
it in the node's ``LastDrain``. So a restarted autoscaler, or the next tick after Nomad was
unreachable, finds the host again and carries on; a host is never terminated while allocations
or function instances remain on it. If they do not leave before the drain deadline plus a grace
period, the retirement is abandoned: the drain is cancelled and the host made eligible again.

Nomad node -> cloud instance: the node's ``Meta.instance_id`` (written by the user data,
``appliance/cluster/templates/node-user-data.sh``), else Nomad's AWS fingerprint attribute
``unique.platform.aws.instance-id``. A node with neither, or whose instance is not in the scaled
group, counts as capacity but is never removed; nor is the host this autoscaler runs on
(``APPLIANCE_NODE_NAME``).

Transient errors (throttling, 5xx, connection errors) are retried with tenacity and exponential
backoff; botocore's own retries are turned off so the attempts are the ones configured here.
Every event is one ``key=value`` log line.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

import requests
import tenacity

from appliance.cluster.node_autoscaler_policy import (
    NONE,
    SCALE_IN,
    SCALE_OUT,
    NodeDecision,
    NodeObservation,
    NodePolicy,
    NodeScalerState,
    NodeView,
    decide_nodes,
)
from appliance.config import Settings
from appliance.core.errors import ApplianceError, ValidationError

log = logging.getLogger("appliance.cluster.node_autoscaler")

#: Written in the drain's Meta; how a later tick recognises a host this autoscaler is removing.
DRAINED_BY = "faas-node-autoscaler"
#: Consul services of function instances (jobspecs/README.md, "Consul service names").
FUNCTION_SERVICE_PREFIX = "fn-"
#: Node meta key the user data sets to the EC2 instance id.
INSTANCE_META_KEY = "instance_id"
#: Nomad's own fingerprint of the EC2 instance id (reference §10), the fallback.
AWS_INSTANCE_ATTRIBUTE = "unique.platform.aws.instance-id"
#: Tag of instances started by the launch-template actuator (how it finds its own hosts).
GROUP_TAG_KEY = "faas:node-group"

DEFAULT_USER_DATA = Path(__file__).resolve().parent / "templates" / "node-user-data.sh"

_LIVE_ALLOC = ("pending", "running")


class NodeAutoscalerError(ApplianceError):
    """A node autoscaler step failed (after retries, when the error was transient)."""

    code = "NodeAutoscaler.Failed"
    status = 502


class NodeAutoscalerConfigError(ValidationError):
    code = "NodeAutoscaler.Misconfigured"


# ============================================================================ retries

#: AWS error codes that mean "later may work". Auto Scaling says Throttling, EC2
#: RequestLimitExceeded; ScalingActivityInProgress / ResourceContention clear by themselves.
TRANSIENT_AWS_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
    "ScalingActivityInProgress", "ResourceContention",
})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call may succeed: throttling, 5xx, lost connections.

    Nomad answers most errors with 500, including permanent ones (reference §1), so a Nomad 500 is
    only transient when it says so (no leader, an RPC failure, a timeout).
    """
    import botocore.exceptions as bce
    import consul.exceptions as consul_exc
    import nomad.api.exceptions as nomad_exc

    if isinstance(exc, bce.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in TRANSIENT_AWS_CODES or status >= 500 or status == 429
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
        return True
    if isinstance(exc, nomad_exc.BaseNomadException):
        resp = exc.nomad_resp
        if isinstance(resp, requests.Response):
            if resp.status_code in (429, 502, 503, 504):
                return True
            text = (resp.text or "").lower()
            return resp.status_code == 500 and any(s in text for s in ("leader", "rpc error", "timeout", "eof"))
        return True  # no response at all: connection refused, reset, timed out
    if isinstance(exc, consul_exc.ClientError):
        return str(exc).startswith("429")
    if isinstance(exc, consul_exc.Timeout):
        return True
    if isinstance(exc, consul_exc.ConsulException):
        return bool(re.match(r"5\d\d ", str(exc)))
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError))


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per call and the exponential backoff between them (with jitter)."""

    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 20.0

    def call(self, what: str, fn: Callable, *args, sleep: Callable[[float], None] = time.sleep, **kwargs):
        """``fn(*args, **kwargs)``, retried while it raises a transient error; the last error is
        raised unchanged once the attempts are used up, a permanent one at once."""

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("event=node_autoscaler_retry op=%s attempt=%d wait_s=%.2f error=%s", what,
                        rs.attempt_number, rs.next_action.sleep if rs.next_action else 0.0, _q(_describe(exc)))

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential_jitter(initial=self.initial_s, max=self.max_s, jitter=self.initial_s),
            retry=tenacity.retry_if_exception(is_transient),
            reraise=True, before_sleep=before_sleep, sleep=sleep)
        return retrying(fn, *args, **kwargs)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    resp = getattr(exc, "nomad_resp", None)
    if isinstance(resp, requests.Response):
        return f"nomad {resp.status_code}: {(resp.text or '').strip()[:200]}"
    if resp is not None:
        return f"nomad unreachable: {resp}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def _q(value) -> str:
    """A log value: quoted when it has spaces or quotes, so each line splits on ``key=value``."""
    s = str(value)
    if s == "" or re.search(r'[\s"=]', s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return s


def _kv(**fields) -> str:
    return " ".join(f"{k}={_q(v)}" for k, v in fields.items() if v is not None)


# ============================================================================ Nomad and Consul

class NomadNodes:
    """The Nomad API subset the node autoscaler uses, through python-nomad, with retries."""

    def __init__(self, addr: str, token: str = "", retry: RetryPolicy = RetryPolicy(), timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep):
        import nomad
        self.client = nomad.Nomad(address=addr.rstrip("/"), token=token or None, timeout=timeout, verify=True)
        self.retry = retry
        self._sleep = sleep

    def _call(self, what: str, fn, *args, **kwargs):
        return self.retry.call(f"nomad.{what}", fn, *args, sleep=self._sleep, **kwargs)

    def nodes(self) -> list[dict]:
        """Every node, full (resources, meta, attributes, LastDrain)."""
        stubs = self._call("list_nodes", self.client.nodes.get_nodes)
        return [self._call("read_node", self.client.node.get_node, s["ID"]) for s in stubs]

    def live_allocations(self) -> list[dict]:
        """Allocations that hold resources, with ``AllocatedResources``, in every namespace."""
        allocs = self._call("list_allocations", self.client.allocations.get_allocations,
                            namespace="*", resources=True)
        return [a for a in allocs if a.get("DesiredStatus") == "run" and a.get("ClientStatus") in _LIVE_ALLOC]

    def blocked_evaluations(self) -> list[dict]:
        r = self._call("list_evaluations", self.client.evaluations.request, method="get",
                       params={"status": "blocked", "namespace": "*"})
        return [e for e in r.json() if e.get("Status") == "blocked"]

    def node_allocations(self, node_id: str) -> list[dict]:
        """Allocations on ``node_id`` whose processes still run (pending or running client-side)."""
        allocs = self._call("node_allocations", self.client.node.get_allocations, node_id)
        return [a for a in allocs if a.get("ClientStatus") in _LIVE_ALLOC]

    def set_eligible(self, node_id: str, eligible: bool) -> None:
        if eligible:
            self._call("eligibility", self.client.node.eligible_node, node_id, eligible=True)
        else:
            self._call("eligibility", self.client.node.eligible_node, node_id, ineligible=True)

    def drain(self, node_id: str, deadline_s: float, meta: dict[str, str]) -> None:
        """Start a drain (reference §10). python-nomad's helper has no Meta, so the body is ours."""
        body = {"DrainSpec": {"Deadline": int(deadline_s * 1e9), "IgnoreSystemJobs": False},
                "MarkEligible": False, "Meta": meta}
        self._call("drain", self.client.node.request, node_id, "drain", method="post", json=body)

    def cancel_drain(self, node_id: str) -> None:
        """Stop a drain and make the node eligible again (``DrainSpec: null`` + ``MarkEligible``)."""
        self._call("cancel_drain", self.client.node.drain_node_with_spec, node_id, None, mark_eligible=True)


class ConsulInstances:
    """Function instances per host, from the Consul catalog (any health state counts: an
    instance that is still registered may still be serving)."""

    def __init__(self, addr: str, token: str = "", retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        import consul
        u = urlparse(addr if "//" in addr else f"http://{addr}")
        self.client = consul.Consul(host=u.hostname or "127.0.0.1", port=u.port or 8500,
                                    scheme=u.scheme or "http", token=token or None)
        if token:   # py-consul lets CONSUL_HTTP_TOKEN override the token it is given: the configured one wins
            self.client.token = token
        self.retry = retry
        self._sleep = sleep

    def _call(self, what: str, fn, *args, **kwargs):
        return self.retry.call(f"consul.{what}", fn, *args, sleep=self._sleep, **kwargs)

    def instances(self) -> dict[str, list[str]]:
        """Consul node name -> service IDs of the function instances registered on it."""
        _, services = self._call("catalog_services", self.client.catalog.services)
        out: dict[str, list[str]] = {}
        for name in sorted(services):
            if not name.startswith(FUNCTION_SERVICE_PREFIX):
                continue
            _, entries = self._call("health_service", self.client.health.service, name)
            for e in entries:
                out.setdefault(e["Node"]["Node"], []).append(e["Service"]["ID"])
        return out


# ============================================================================ cloud actuators

@dataclass(frozen=True)
class CloudGroup:
    """The scaled group as the cloud sees it."""

    name: str
    desired: int
    #: instance id -> lifecycle state ("InService", "Pending", "Terminating", ... or EC2 states)
    members: dict[str, str]
    max_size: int | None = None

    def active(self, instance_id: str | None) -> bool:
        """In the group and not on its way out."""
        state = self.members.get(instance_id or "")
        return state is not None and not state.lower().startswith(("terminat", "shutting", "stopp"))


def render_user_data(template: str | Path | None = None, *, consul_join: Iterable[str] = (),
                     nomad_servers: Iterable[str] = (), datacenter: str = "dc1", node_class: str = "") -> str:
    """The user data of a new host: the template with the join addresses filled in.

    Values go into HCL inside an unquoted shell here-document, so characters the shell would
    expand there are refused rather than escaped.
    """
    path = Path(template) if template else DEFAULT_USER_DATA
    try:
        text = path.read_text()
    except OSError as exc:
        raise NodeAutoscalerConfigError(f"user data template {path} cannot be read: {exc}",
                                        field="node_user_data_template") from None
    consul_join = [j.strip() for j in consul_join if j.strip()]
    if not consul_join:
        raise NodeAutoscalerConfigError(
            "a new host needs a Consul address to join: set APPLIANCE_NODE_CONSUL_JOIN "
            "(addresses or a cloud auto-join string, comma-separated)", field="node_consul_join")
    servers = [s.strip() for s in nomad_servers if s.strip()]

    def hcl(value: str) -> str:
        if re.search(r'[$`\\"\n]', value):
            raise NodeAutoscalerConfigError(f"{value!r} cannot go into the user data: it contains $, `, \\, \" "
                                            "or a newline", field="node_consul_join")
        return f'"{value}"'

    values = {"CONSUL_RETRY_JOIN": "[" + ", ".join(hcl(j) for j in consul_join) + "]",
              "NOMAD_SERVERS": "[" + ", ".join(hcl(s) for s in servers) + "]",
              "DATACENTER": hcl(datacenter), "NODE_CLASS": hcl(node_class)}

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise NodeAutoscalerConfigError(f"user data template {path} has an unknown placeholder {m.group(0)}",
                                            field="node_user_data_template")
        return values[m.group(1)]
    return re.sub(r"\{\{([A-Z_]+)\}\}", sub, text)


class AutoScalingGroupActuator:
    """Hosts of an EC2 Auto Scaling group: more by raising its desired capacity, fewer by
    terminating one exact instance with the desired capacity decremented (so the group does not
    start a replacement). The group's launch template carries the user data."""

    kind = "asg"

    def __init__(self, client, group_name: str, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.group_name = group_name
        self.retry = retry
        self._sleep = sleep

    def _call(self, what: str, fn, **kwargs):
        return self.retry.call(f"autoscaling.{what}", fn, sleep=self._sleep, **kwargs)

    def describe(self) -> CloudGroup:
        r = self._call("describe_auto_scaling_groups", self.client.describe_auto_scaling_groups,
                       AutoScalingGroupNames=[self.group_name])
        groups = r.get("AutoScalingGroups") or []
        if not groups:
            raise NodeAutoscalerError(f"Auto Scaling group {self.group_name!r} does not exist "
                                      "(APPLIANCE_NODE_ASG_NAME)")
        g = groups[0]
        return CloudGroup(name=self.group_name, desired=int(g["DesiredCapacity"]), max_size=int(g["MaxSize"]),
                          members={i["InstanceId"]: i.get("LifecycleState", "") for i in g.get("Instances") or []})

    def plan_scale_out(self, group: CloudGroup, count: int) -> list[dict]:
        target = self._target(group, count)
        return [{"action": "set_desired_capacity", "group": self.group_name, "from": group.desired, "to": target}]

    def _target(self, group: CloudGroup, count: int) -> int:
        target = group.desired + count
        return min(target, group.max_size) if group.max_size is not None else target

    def scale_out(self, group: CloudGroup, count: int) -> dict:
        target = self._target(group, count)
        if target <= group.desired:
            raise NodeAutoscalerError(f"Auto Scaling group {self.group_name!r} is at its MaxSize "
                                      f"({group.max_size}); raise it or lower APPLIANCE_NODE_MAX_NODES")
        self._call("set_desired_capacity", self.client.set_desired_capacity,
                   AutoScalingGroupName=self.group_name, DesiredCapacity=target, HonorCooldown=False)
        return {"group": self.group_name, "from": group.desired, "to": target}

    def plan_terminate(self, instance_id: str) -> dict:
        return {"action": "terminate_instance_in_auto_scaling_group", "instance": instance_id,
                "group": self.group_name, "decrement_desired": "true"}

    def terminate(self, instance_id: str) -> None:
        self._call("terminate_instance_in_auto_scaling_group", self.client.terminate_instance_in_auto_scaling_group,
                   InstanceId=instance_id, ShouldDecrementDesiredCapacity=True)


class LaunchTemplateActuator:
    """Hosts started directly with EC2 ``run_instances`` from a launch template, with the
    rendered user data, and tagged ``faas:node-group=<tag>``: the tag is the group (desired =
    tagged instances that are pending or running), and only tagged instances are terminated."""

    kind = "launch-template"

    def __init__(self, client, template: str, user_data: str, version: str = "$Latest",
                 group_tag: str = "faas-workers", retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.template = template
        self.version = version
        self.user_data = user_data
        self.group_tag = group_tag
        self.retry = retry
        self._sleep = sleep

    def _call(self, what: str, fn, **kwargs):
        return self.retry.call(f"ec2.{what}", fn, sleep=self._sleep, **kwargs)

    def _template_ref(self) -> dict:
        key = "LaunchTemplateId" if self.template.startswith("lt-") else "LaunchTemplateName"
        return {key: self.template, "Version": self.version}

    def describe(self) -> CloudGroup:
        members: dict[str, str] = {}
        kwargs = {"Filters": [{"Name": f"tag:{GROUP_TAG_KEY}", "Values": [self.group_tag]},
                              {"Name": "instance-state-name", "Values": ["pending", "running", "shutting-down"]}]}
        while True:
            r = self._call("describe_instances", self.client.describe_instances, **kwargs)
            for res in r.get("Reservations") or []:
                for i in res.get("Instances") or []:
                    members[i["InstanceId"]] = i["State"]["Name"]
            if not r.get("NextToken"):
                break
            kwargs["NextToken"] = r["NextToken"]
        group = CloudGroup(name=f"{GROUP_TAG_KEY}={self.group_tag}", desired=0, members=members)
        return dataclasses.replace(group, desired=sum(1 for i in members if group.active(i)))

    def plan_scale_out(self, group: CloudGroup, count: int) -> list[dict]:
        return [{"action": "run_instances", "launch_template": self.template, "version": self.version,
                 "count": count, "tag": f"{GROUP_TAG_KEY}={self.group_tag}", "user_data_bytes": len(self.user_data)}]

    def scale_out(self, group: CloudGroup, count: int) -> dict:
        r = self._call("run_instances", self.client.run_instances,
                       LaunchTemplate=self._template_ref(), MinCount=count, MaxCount=count,
                       UserData=self.user_data,
                       TagSpecifications=[{"ResourceType": "instance",
                                           "Tags": [{"Key": GROUP_TAG_KEY, "Value": self.group_tag}]}])
        ids = [i["InstanceId"] for i in r.get("Instances") or []]
        return {"group": group.name, "from": group.desired, "to": group.desired + len(ids), "instances": ",".join(ids)}

    def plan_terminate(self, instance_id: str) -> dict:
        return {"action": "terminate_instances", "instance": instance_id}

    def terminate(self, instance_id: str) -> None:
        self._call("terminate_instances", self.client.terminate_instances, InstanceIds=[instance_id])


# ============================================================================ the loop

@dataclass
class NodeInfo:
    """One Nomad node as the autoscaler sees it."""

    id: str
    name: str
    instance_id: str | None
    view: NodeView
    #: This autoscaler is removing it (ineligible, drained by us): its LastDrain.Meta.
    retiring: dict | None = None
    #: Its cloud instance is gone or going: no longer a host.
    gone: bool = False


@dataclass
class Snapshot:
    nodes: list[NodeInfo]
    group: CloudGroup
    blocked: int
    instances: dict[str, list[str]]     # Consul node name -> function instance service ids
    observation: NodeObservation

    def node(self, node_id: str) -> NodeInfo | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def refresh(self) -> None:
        """Rebuild :attr:`observation` (after a host was found gone or was terminated)."""
        for n in self.nodes:
            if n.gone and n.view.status != "down":
                n.view = dataclasses.replace(n.view, status="down")
        registered = {n.instance_id for n in self.nodes if n.view.status != "down" and self.group.active(n.instance_id)}
        self.observation = NodeObservation(nodes=tuple(n.view for n in self.nodes), blocked_evaluations=self.blocked,
                                           pending_nodes=max(0, self.group.desired - len(registered)))

    def terminated(self, instance_id: str) -> None:
        """The cloud removed ``instance_id`` and lowered the desired capacity by one."""
        members = {k: v for k, v in self.group.members.items() if k != instance_id}
        self.group = dataclasses.replace(self.group, desired=max(0, self.group.desired - 1), members=members)


@dataclass
class TickReport:
    """What one tick saw, decided and did. ``plan`` has one line per step, taken or (dry run)
    that would be taken; ``errors`` one line per failed step."""

    dry_run: bool
    observation: NodeObservation | None = None
    decision: NodeDecision | None = None
    plan: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scaled_out: dict | None = None
    #: Node ids whose retirement started / whose instance was terminated / that were made eligible again.
    retiring: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class NodeAutoscaler:
    """Observe, decide, act; see the module docstring. ``clock`` is monotonic seconds (for the
    policy's cooldowns), ``wall`` unix seconds (for retirements, which outlive this process)."""

    def __init__(self, nomad: NomadNodes, consul: ConsulInstances, cloud, policy: NodePolicy, *,
                 drain_grace_s: float = 120.0, self_node_name: str = "", dry_run: bool = False,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 echo: Callable[[str], None] | None = None):
        self.nomad = nomad
        self.consul = consul
        self.cloud = cloud
        self.policy = policy.validate()
        self.drain_grace_s = drain_grace_s
        self.self_node_name = self_node_name
        self.dry_run = dry_run
        self.clock = clock
        self.wall = wall
        self.echo = echo
        self.state = NodeScalerState()
        self._stop = threading.Event()

    # ---------------------------------------------------------------- observe
    def observe(self) -> Snapshot:
        raw_nodes = self.nomad.nodes()
        allocs = self.nomad.live_allocations()
        blocked = [e for e in self.nomad.blocked_evaluations() if _lacks_room(e)]
        instances = self.consul.instances()
        group = self.cloud.describe()

        used_mem: Counter = Counter()
        used_cpu: Counter = Counter()
        for a in allocs:
            mem, cpu = _alloc_resources(a)
            used_mem[a.get("NodeID", "")] += mem
            used_cpu[a.get("NodeID", "")] += cpu

        nodes: list[NodeInfo] = []
        for n in raw_nodes:
            res = n.get("NodeResources") or {}
            reserved = n.get("ReservedResources") or {}
            iid = (n.get("Meta") or {}).get(INSTANCE_META_KEY) or (n.get("Attributes") or {}).get(AWS_INSTANCE_ATTRIBUTE)
            last = n.get("LastDrain") or {}
            meta = last.get("Meta") or {}
            retiring = (dict(meta) if n.get("SchedulingEligibility") == "ineligible"
                        and meta.get("drained_by") == DRAINED_BY and last.get("Status") in ("draining", "complete")
                        else None)
            # A host whose instance we already terminated (or the cloud is terminating) is gone,
            # even while Nomad still lists it until it misses its heartbeats.
            gone = bool(iid) and ((retiring is not None and iid not in group.members)
                                  or (iid in group.members and not group.active(iid)))
            status = "down" if gone else n.get("Status", "down")
            view = NodeView(
                id=n["ID"], eligible=n.get("SchedulingEligibility") == "eligible", status=status,
                memory_mb=int(_get(res, "Memory", "MemoryMB") - _get(reserved, "Memory", "MemoryMB")),
                cpu_mhz=int(_get(res, "Cpu", "CpuShares") - _get(reserved, "Cpu", "CpuShares")),
                allocated_memory_mb=used_mem[n["ID"]], allocated_cpu_mhz=used_cpu[n["ID"]],
                instances=len(instances.get(n.get("Name", ""), [])),
                draining=bool(n.get("Drain")) or retiring is not None,
                removable=group.active(iid) and n.get("Name") != self.self_node_name)
            nodes.append(NodeInfo(id=n["ID"], name=n.get("Name", ""), instance_id=iid, view=view,
                                  retiring=retiring, gone=gone))

        snap = Snapshot(nodes=nodes, group=group, blocked=len(blocked), instances=instances,
                        observation=NodeObservation())
        snap.refresh()
        return snap

    # ---------------------------------------------------------------- one tick
    def tick(self, now: float | None = None) -> TickReport:
        """Observe, advance retirements in progress, decide, act. Never raises for a failed step:
        the failure is in the report (and the log), and the cluster is left consistent."""
        now = self.clock() if now is None else now
        report = TickReport(dry_run=self.dry_run)
        try:
            snap = self.observe()
        except Exception as exc:  # noqa: BLE001 - any failure to observe means: do nothing this tick
            self._error(report, "observe", _describe(exc))
            return report
        for n in snap.nodes:
            if n.retiring is not None and not n.gone:
                self._advance(n, snap, report)
        snap.refresh()
        report.observation = snap.observation
        decision = decide_nodes(snap.observation, self.policy, self.state, now)
        report.decision = decision
        self._event("node_decision", action=decision.action, count=decision.count or None,
                    node=decision.node_id, reason=decision.reason)
        if decision.action == NONE:
            self._plan(report, action="none", reason=decision.reason)
        elif decision.action == SCALE_OUT:
            self._scale_out(decision, snap, report)
        elif decision.action == SCALE_IN:
            self._start_retirement(decision, snap, report)
        # The cooldown starts only when the action happened (report.decision says so).
        if not self.dry_run:
            self.state = report.decision.state
        return report

    def _scale_out(self, decision: NodeDecision, snap: Snapshot, report: TickReport) -> None:
        for step in self.cloud.plan_scale_out(snap.group, decision.count):
            self._plan(report, **step)
        if self.dry_run:
            return
        try:
            done = self.cloud.scale_out(snap.group, decision.count)
        except Exception as exc:  # noqa: BLE001
            self._error(report, "scale_out", _describe(exc), group=snap.group.name)
            # No host was added: the cooldown must not hold back the next attempt.
            report.decision = dataclasses.replace(decision, state=self.state)
            return
        report.scaled_out = done
        self._event("node_scale_out", count=decision.count, **done)

    # ---------------------------------------------------------------- scale-in: a retirement
    def _start_retirement(self, decision: NodeDecision, snap: Snapshot, report: TickReport) -> None:
        node = snap.node(decision.node_id or "")
        # Whatever fails below, no host was removed: no scale-in cooldown either.
        report.decision = dataclasses.replace(decision, state=self.state)
        if node is None or not node.instance_id:
            self._error(report, "scale_in", "the chosen node has no cloud instance", node=decision.node_id)
            return
        deadline = decision.drain_deadline_s or self.policy.drain_deadline_s
        steps = [{"action": "mark_ineligible", "node": node.id, "name": node.name},
                 {"action": "drain", "node": node.id, "deadline_s": f"{deadline:g}"},
                 {"action": "wait_until_empty", "node": node.id,
                  "function_instances": len(snap.instances.get(node.name, [])),
                  "allocated_memory_mb": node.view.allocated_memory_mb},
                 self.cloud.plan_terminate(node.instance_id)]
        if self.dry_run:
            for step in steps:
                self._plan(report, **step)
            return
        # Live, each step is reported as it is taken; the terminate step when it happens.
        meta = {"drained_by": DRAINED_BY, "instance_id": node.instance_id,
                "started_unix": f"{self.wall():.3f}", "deadline_s": f"{deadline:g}"}
        self._plan(report, **steps[0])
        try:
            self.nomad.set_eligible(node.id, False)
            self._event("node_ineligible", node=node.id, name=node.name, instance=node.instance_id)
        except Exception as exc:  # noqa: BLE001
            self._error(report, "mark_ineligible", _describe(exc), node=node.id)
            self._restore(node, report)
            return
        self._plan(report, **steps[1])
        try:
            self.nomad.drain(node.id, deadline, meta)
            self._event("node_drain_started", node=node.id, deadline_s=f"{deadline:g}")
        except Exception as exc:  # noqa: BLE001
            self._error(report, "drain", _describe(exc), node=node.id)
            self._restore(node, report)
            return
        self._plan(report, **steps[2])
        report.decision = decision
        report.retiring.append(node.id)
        node.retiring = meta
        node.view = dataclasses.replace(node.view, eligible=False, draining=True)
        self._advance(node, snap, report)

    def _advance(self, node: NodeInfo, snap: Snapshot, report: TickReport) -> None:
        """One step of a retirement: terminate when empty, give up after deadline + grace, else wait."""
        meta = node.retiring or {}
        iid = node.instance_id or meta.get("instance_id")
        if not iid or iid != meta.get("instance_id", iid):
            self._error(report, "retire", "the node's instance id changed during its drain; not terminating",
                        node=node.id, instance=iid, drained_instance=meta.get("instance_id"))
            return
        if not snap.group.active(iid):
            node.gone = True  # terminated earlier (this process or a previous one)
            return
        try:
            allocs = self.nomad.node_allocations(node.id)
            instances = self.consul.instances().get(node.name, [])
        except Exception as exc:  # noqa: BLE001
            self._error(report, "retire_check", _describe(exc), node=node.id)
            return
        if allocs or instances:
            started = _float(meta.get("started_unix"), self.wall())
            deadline = _float(meta.get("deadline_s"), self.policy.drain_deadline_s)
            give_up = started + deadline + self.drain_grace_s
            if self.wall() < give_up:
                self._event("node_retire_waiting", node=node.id, allocations=len(allocs),
                            function_instances=len(instances), give_up_in_s=f"{give_up - self.wall():.0f}")
                if self.dry_run:
                    self._plan(report, action="wait_until_empty", node=node.id, allocations=len(allocs),
                               function_instances=len(instances))
                return
            self._error(report, "retire", "allocations or function instances remain after the drain deadline; "
                        "removal abandoned", node=node.id, allocations=len(allocs), function_instances=len(instances))
            if not self.dry_run:
                self._restore(node, report)
            else:
                self._plan(report, action="cancel_drain_mark_eligible", node=node.id)
            return
        self._plan(report, **self.cloud.plan_terminate(iid))
        if self.dry_run:
            return
        try:
            self.cloud.terminate(iid)
        except Exception as exc:  # noqa: BLE001
            # The host stays ineligible and drained (not capacity); the next tick tries again.
            self._error(report, "terminate", _describe(exc), node=node.id, instance=iid)
            return
        node.gone = True
        snap.terminated(iid)
        report.terminated.append(iid)
        self._event("node_terminated", node=node.id, name=node.name, instance=iid)

    def _restore(self, node: NodeInfo, report: TickReport) -> None:
        """Undo a retirement: cancel the drain and make the node eligible again."""
        try:
            self.nomad.cancel_drain(node.id)
        except Exception as exc:  # noqa: BLE001
            self._error(report, "restore", _describe(exc) + "; the node stays ineligible until an operator "
                        f"runs: nomad node eligibility -enable {node.id}", node=node.id)
            return
        node.retiring = None
        report.restored.append(node.id)
        self._event("node_eligible_again", node=node.id, name=node.name)

    # ---------------------------------------------------------------- running
    def run_once(self, wait: bool = True, poll_s: float = 2.0, timeout_s: float | None = None) -> TickReport:
        """One tick; with ``wait``, a scale-in it started (or found) is followed to its end
        (terminated or abandoned) before returning, polling every ``poll_s``."""
        report = self.tick()
        if self.dry_run or not wait:
            return report
        limit = timeout_s if timeout_s is not None else self.policy.drain_deadline_s + self.drain_grace_s + 60
        end = self.clock() + limit
        while self.clock() < end and not self._stop.is_set():
            try:
                snap = self.observe()
            except Exception as exc:  # noqa: BLE001
                self._event("node_autoscaler_observe_failed", error=_describe(exc))
                self._stop.wait(poll_s)
                continue
            retiring = [n for n in snap.nodes if n.retiring is not None and not n.gone]
            if not retiring:
                break
            for n in retiring:
                self._advance(n, snap, report)
            if not [n for n in retiring if n.retiring is not None and not n.gone]:
                break
            self._stop.wait(poll_s)
        return report

    def run(self, interval_s: float) -> None:
        """Tick every ``interval_s`` until :meth:`stop`."""
        self._event("node_autoscaler_started", interval_s=f"{interval_s:g}", dry_run=str(self.dry_run).lower(),
                    target=getattr(self.cloud, "kind", "?"))
        while not self._stop.is_set():
            started = self.clock()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a bug in one tick must not end the loop
                log.exception("event=node_autoscaler_tick_failed")
            self._stop.wait(max(0.0, interval_s - (self.clock() - started)))
        self._event("node_autoscaler_stopped")

    def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- reporting
    def _event(self, event: str, **fields) -> None:
        log.info("event=%s %s", event, _kv(**fields))

    def _plan(self, report: TickReport, **fields) -> None:
        line = f"plan step={len(report.plan) + 1} {_kv(**fields)}"
        if self.dry_run:
            line = "dry-run " + line
        report.plan.append(line)
        if self.echo is not None:
            self.echo(line)

    def _error(self, report: TickReport, step: str, error: str, **fields) -> None:
        line = f"step={step} {_kv(**fields)} error={_q(error)}".replace("  ", " ")
        report.errors.append(line)
        log.error("event=node_autoscaler_step_failed %s", line)


def _get(d: dict, outer: str, inner: str) -> int:
    v = (d.get(outer) or {}).get(inner)
    return int(v or 0)


def _float(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _alloc_resources(a: dict) -> tuple[int, int]:
    """Memory (MB) and CPU (MHz) an allocation reserves: the sum over its tasks."""
    tasks = ((a.get("AllocatedResources") or {}).get("Tasks") or {}).values()
    return sum(_get(t, "Memory", "MemoryMB") for t in tasks), sum(_get(t, "Cpu", "CpuShares") for t in tasks)


def _lacks_room(ev: dict) -> bool:
    """A blocked evaluation a new host could unblock: resources exhausted, or no usable node at
    all. Ones blocked only by constraints that no host satisfies are not counted: another host
    of the same image would not satisfy them either."""
    failed = ev.get("FailedTGAllocs") or {}
    if not failed:
        return True
    for metric in failed.values():
        if (metric.get("NodesExhausted") or 0) > 0 or not metric.get("ConstraintFiltered"):
            return True
    return False


# ============================================================================ wiring

def policy_from_settings(s: Settings) -> NodePolicy:
    return NodePolicy(min_nodes=s.node_min_nodes, max_nodes=s.node_max_nodes, cooldown_out_s=s.node_cooldown_out_s,
                      cooldown_in_s=s.node_cooldown_in_s, target_headroom_slots=s.node_headroom_slots,
                      scale_in_utilisation=s.node_scale_in_utilisation, drain_deadline_s=s.node_drain_deadline_s,
                      slot_memory_mb=s.node_slot_memory_mb, slot_cpu_mhz=s.node_slot_cpu_mhz).validate()


def retry_from_settings(s: Settings) -> RetryPolicy:
    return RetryPolicy(attempts=s.node_retry_attempts, initial_s=s.node_retry_initial_s, max_s=s.node_retry_max_s)


def user_data_from_settings(s: Settings) -> str:
    return render_user_data(s.node_user_data_template or None, consul_join=s.node_consul_join.split(","),
                            nomad_servers=s.node_nomad_servers.split(","), datacenter=s.node_datacenter,
                            node_class=s.node_class)


def boto3_client(service: str, s: Settings):
    """A boto3 client whose own retries are off: :class:`RetryPolicy` is the one retry layer."""
    import boto3
    from botocore.config import Config
    kwargs = {"config": Config(retries={"total_max_attempts": 1, "mode": "standard"})}
    if s.node_aws_region:
        kwargs["region_name"] = s.node_aws_region
    if s.node_aws_endpoint:
        kwargs["endpoint_url"] = s.node_aws_endpoint
    return boto3.client(service, **kwargs)


def cloud_from_settings(s: Settings, autoscaling_client=None, ec2_client=None):
    retry = retry_from_settings(s)
    if s.node_asg_name:
        return AutoScalingGroupActuator(autoscaling_client or boto3_client("autoscaling", s), s.node_asg_name, retry)
    if s.node_launch_template:
        return LaunchTemplateActuator(ec2_client or boto3_client("ec2", s), s.node_launch_template,
                                      user_data_from_settings(s), version=s.node_launch_template_version,
                                      group_tag=s.node_group_tag, retry=retry)
    raise NodeAutoscalerConfigError("the node autoscaler needs a target: set APPLIANCE_NODE_ASG_NAME (an Auto "
                                    "Scaling group) or APPLIANCE_NODE_LAUNCH_TEMPLATE (EC2 run_instances)",
                                    field="node_asg_name")


def build(s: Settings, *, dry_run: bool | None = None, echo=None, autoscaling_client=None,
          ec2_client=None) -> NodeAutoscaler:
    """The node autoscaler the settings describe."""
    retry = retry_from_settings(s)
    return NodeAutoscaler(
        NomadNodes(s.nomad_addr, s.nomad_token, retry), ConsulInstances(s.consul_addr, s.consul_token, retry),
        cloud_from_settings(s, autoscaling_client, ec2_client), policy_from_settings(s),
        drain_grace_s=s.node_drain_grace_s, self_node_name=s.node_name,
        dry_run=s.node_autoscaler_dry_run if dry_run is None else dry_run, echo=echo)


__all__ = ["NodeAutoscaler", "NomadNodes", "ConsulInstances", "AutoScalingGroupActuator", "LaunchTemplateActuator",
           "CloudGroup", "RetryPolicy", "TickReport", "is_transient", "render_user_data", "build",
           "DRAINED_BY"]
