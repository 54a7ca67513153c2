"""HTTP double of the Nomad API subset the appliance uses (reference §1-§14, checklist §25
items 1-8).

Allocations are REAL local processes with raw_exec semantics (§4a, §12): the task's
``config.command`` + ``config.args`` run with the host environment, the ``NOMAD_*`` runtime
variables and the task ``env`` (after interpolation), in a task directory under the double's
data dir. Task state follows Nomad's restart policy (§2 defaults) and the allocation's
``ClientStatus`` moves pending -> running -> complete | failed with ``TaskStates`` events.
Service jobs keep ``Count`` allocations per group (replacement and reschedule on failure);
dispatched children of a parameterized job run their allocations once. Services of running
tasks are registered in a Consul double with Nomad's IDs (§13) and deregistered when the task
stops.

Simplified (see README.md in this directory): one region and namespace ``default``; no ACLs; no deployments or
canaries; evaluations are processed synchronously and stored already complete (a placement
failure leaves a ``blocked`` eval that is retried when capacity changes); the ``exec`` driver runs
like ``raw_exec`` (no chroot or cgroups); artifacts and templates are not fetched or rendered;
no jitter on blocking waits; restart/reschedule delays are multiplied by ``delay_scale``.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

import requests

from ._http import App, BlockingQueries, DoubleServer, HTTPError, as_json, format_go_duration, text
from .acl import NomadAuthorizer
from .hcl import HCLError, hcl_to_job

NS = 1_000_000_000
ZERO_TIME = "0001-01-01T00:00:00Z"
_TERMINAL = ("complete", "failed", "lost")

# Canonical JSON field names, so request keys can be matched case-insensitively (§1).
_FIELD_NAMES = """
ID Name Namespace Region Type Priority Datacenters NodePool AllAtOnce Constraints Affinities Spreads
TaskGroups Update Multiregion Periodic ParameterizedJob Dispatched DispatchIdempotencyToken Payload
Meta ConsulToken VaultToken Stop ParentID Status StatusDescription Stable Version SubmitTime
CreateIndex ModifyIndex JobModifyIndex Count Tasks Networks Services RestartPolicy ReschedulePolicy
Scaling EphemeralDisk Migrate Volumes ShutdownDelay StopAfterClientDisconnect MaxClientDisconnect
Driver User Config Env Resources KillTimeout KillSignal Artifacts Templates DispatchPayload Leader
LogConfig Lifecycle VolumeMounts Kind CPU Cores MemoryMB MemoryMaxMB DiskMB Mode DynamicPorts
ReservedPorts Label Value To HostNetwork Tags PortLabel AddressMode Address Provider Checks
CheckRestart TaskName OnUpdate EnableTagOverride CanaryTags CanaryMeta TaggedAddresses Path
Protocol Method Header Body Interval Timeout InitialStatus TLSSkipVerify Command Args GRPCService
GRPCUseTLS SuccessBeforePassing FailuresBeforeCritical FailuresBeforeWarning Attempts Delay
DelayFunction MaxDelay Unlimited RenderTemplates Payload MetaRequired MetaOptional File Hook
Sidecar GetterSource RelativeDest GetterOptions GetterHeaders GetterMode EmbeddedTmpl SourcePath
DestPath ChangeMode ChangeSignal Envvars Splay Perms MaxFiles MaxFileSizeMB LTarget RTarget Operand
Min Max Enabled Policy SizeMB Sticky Job EnforceIndex PolicyOverride PreserveCounts EvalPriority
Submission IdPrefixTemplate JobID Target Message Error DrainSpec Deadline IgnoreSystemJobs
MarkEligible NodeID Eligibility Limit Grace IgnoreWarnings
""".split()
_CANON = {n.lower(): n for n in _FIELD_NAMES}
_INTERP = re.compile(r"\$\{([^}]+)\}")
# Values under these keys are free-form maps: their keys are kept verbatim.
_FREE = {"Config", "Env", "Meta", "GetterOptions", "GetterHeaders", "Policy", "Header", "Target",
         "Volumes", "TaggedAddresses", "CanaryMeta"}


def canon_keys(obj, free: bool = False):
    """Go's encoding/json matches keys case-insensitively; unknown keys are kept (ignored)."""
    if isinstance(obj, list):
        return [canon_keys(x) for x in obj]
    if not isinstance(obj, dict) or free:
        return obj
    out = {}
    for k, v in obj.items():
        name = _CANON.get(k.lower(), k)
        out[name] = canon_keys(v, free=name in _FREE)
    return out


def _now_ns() -> int:
    return time.time_ns()


def _rfc3339(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _multierror(errors: list[str]) -> str:
    head = "1 error occurred:" if len(errors) == 1 else f"{len(errors)} errors occurred:"
    return head + "\n" + "".join(f"\t* {e}\n" for e in errors) + "\n"


# ---------------------------------------------------------------------------- canonicalize (§2)
def _restart_default(job_type: str) -> dict:
    if job_type == "service":
        return {"Attempts": 2, "Interval": 1800 * NS, "Delay": 15 * NS, "Mode": "fail", "RenderTemplates": False}
    return {"Attempts": 3, "Interval": 86400 * NS, "Delay": 15 * NS, "Mode": "fail", "RenderTemplates": False}


def _reschedule_default(job_type: str) -> dict:
    if job_type == "service":
        return {"Attempts": 0, "Interval": 0, "Delay": 30 * NS, "DelayFunction": "exponential",
                "MaxDelay": 3600 * NS, "Unlimited": True}
    return {"Attempts": 1, "Interval": 86400 * NS, "Delay": 5 * NS, "DelayFunction": "constant",
            "MaxDelay": 0, "Unlimited": False}


def _update_default() -> dict:
    """api.DefaultUpdateStrategy (api/jobs.go; nomad/structs/structs.go DefaultUpdateStrategy)."""
    return {"Stagger": 30 * NS, "MaxParallel": 1, "HealthCheck": "checks", "MinHealthyTime": 10 * NS,
            "HealthyDeadline": 300 * NS, "ProgressDeadline": 600 * NS, "AutoRevert": False,
            "AutoPromote": False, "Canary": 0}


_UPDATE_ZERO = {"Stagger": 0, "MaxParallel": 0, "HealthCheck": "", "MinHealthyTime": 0, "HealthyDeadline": 0,
                "ProgressDeadline": 0, "AutoRevert": False, "AutoPromote": False, "Canary": 0}


def _canon_update(job: dict) -> None:
    """Update strategies as the server stores them.

    api/jobs.go Job.Canonicalize gives service and system jobs DefaultUpdateStrategy when they have
    no ``update`` block; api/tasks.go TaskGroup.Canonicalize merges the job's block into each group's
    (a group's own fields win, so ``update { max_parallel = 0 }`` in a group empties it there).
    command/agent/job_endpoint.go ApiJobToStructJob then keeps only Stagger and MaxParallel at the job
    level (and only when MaxParallel > 0): the rest lives in the groups."""
    ju = job.get("Update")
    if ju is not None:
        ju = {**_update_default(), **{k: v for k, v in ju.items() if v is not None}}
    elif job["Type"] in ("service", "system"):
        ju = _update_default()
    for tg in job.get("TaskGroups") or []:
        tu = tg.get("Update")
        if ju is not None and tu is not None:
            tg["Update"] = {**ju, **{k: v for k, v in tu.items() if v is not None}}
        elif ju is not None and ju.get("MaxParallel"):
            tg["Update"] = dict(ju)
        elif tu is not None:
            tg["Update"] = {**_update_default(), **{k: v for k, v in tu.items() if v is not None}}
        else:
            tg["Update"] = None
    zero = dict(_UPDATE_ZERO)
    if ju is not None and ju.get("MaxParallel", 0) > 0:
        zero.update(Stagger=ju["Stagger"], MaxParallel=ju["MaxParallel"])
    job["Update"] = zero


def update_is_empty(u: dict | None) -> bool:
    """nomad/structs/structs.go UpdateStrategy.IsEmpty: MaxParallel 0 means no deployments."""
    return not u or not u.get("MaxParallel")


def canonicalize(job: dict) -> dict:
    job = copy.deepcopy(job)
    job.setdefault("Name", job.get("ID"))
    if not job.get("Name"):
        job["Name"] = job.get("ID")
    job["Type"] = job.get("Type") or "service"
    job["Priority"] = job.get("Priority") or 50
    job["Region"] = job.get("Region") or "global"
    job["Namespace"] = job.get("Namespace") or "default"
    job["Datacenters"] = job.get("Datacenters") or ["*"]
    job["NodePool"] = job.get("NodePool") or "default"
    job["Meta"] = job.get("Meta") or {}
    job.setdefault("Stop", False)
    job.setdefault("ParentID", "")
    job.setdefault("Dispatched", False)
    job.setdefault("Payload", None)
    job.setdefault("Constraints", job.get("Constraints") or [])
    pj = job.get("ParameterizedJob")
    if pj:
        pj["Payload"] = pj.get("Payload") or "optional"
        pj["MetaRequired"] = pj.get("MetaRequired") or []
        pj["MetaOptional"] = pj.get("MetaOptional") or []
    _canon_update(job)
    for tg in job.get("TaskGroups") or []:
        if tg.get("Count") is None:
            tg["Count"] = 1
        rp = {**_restart_default(job["Type"]), **(tg.get("RestartPolicy") or {})}
        tg["RestartPolicy"] = rp
        tg["ReschedulePolicy"] = {**_reschedule_default(job["Type"]), **(tg.get("ReschedulePolicy") or {})}
        tg["EphemeralDisk"] = {"Sticky": False, "Migrate": False, "SizeMB": 300, **(tg.get("EphemeralDisk") or {})}
        tg["Meta"] = tg.get("Meta") or {}
        tg["Constraints"] = tg.get("Constraints") or []
        tg["Networks"] = tg.get("Networks") or []
        for net in tg["Networks"]:
            net["Mode"] = net.get("Mode") or "host"
            net["DynamicPorts"] = net.get("DynamicPorts") or []
            net["ReservedPorts"] = net.get("ReservedPorts") or []
            for p in net["DynamicPorts"] + net["ReservedPorts"]:
                p.setdefault("Value", 0)
                p.setdefault("To", 0)
                p.setdefault("HostNetwork", "default")
                if not p["HostNetwork"]:
                    p["HostNetwork"] = "default"
        for svc in tg.get("Services") or []:
            _canon_service(svc)
        for task in tg.get("Tasks") or []:
            task["KillTimeout"] = task.get("KillTimeout") if task.get("KillTimeout") is not None else 5 * NS
            task["Resources"] = {"CPU": 100, "MemoryMB": 300, **(task.get("Resources") or {})}
            task["RestartPolicy"] = {**rp, **(task.get("RestartPolicy") or {})}
            task["Env"] = task.get("Env") or {}
            task["Meta"] = task.get("Meta") or {}
            task["Config"] = task.get("Config") or {}
            task["LogConfig"] = {"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False, **(task.get("LogConfig") or {})}
            for a in task.get("Artifacts") or []:
                a["RelativeDest"] = a.get("RelativeDest") or "local/"
            for t in task.get("Templates") or []:
                t["ChangeMode"] = t.get("ChangeMode") or "restart"
                t["Splay"] = t.get("Splay") if t.get("Splay") is not None else 5 * NS
            for svc in task.get("Services") or []:
                _canon_service(svc)
    return job


def structs_job(job: dict) -> dict:
    """The job as ``GET /v1/job/<id>`` returns it: Nomad's internal ``structs.Job`` (nomad/structs/
    structs.go), not the ``api.Job`` that was sent. Fields the API job left out are present with
    their zero values (null maps and lists, empty strings, 0), the job-level Update keeps only
    Stagger and MaxParallel (see :func:`_canon_update`), service groups carry the default migrate
    strategy (structs.DefaultMigrateStrategy) and every task's Resources has the full structs shape.
    A client that re-registers what it read (``sized_job``) must cope with exactly this."""
    for k, zero in (("NomadTokenID", ""), ("VersionTag", None), ("UI", None), ("Multiregion", None),
                    ("Affinities", None), ("Spreads", None), ("Periodic", None), ("ConsulNamespace", ""),
                    ("VaultNamespace", ""), ("AllAtOnce", False), ("DispatchIdempotencyToken", ""),
                    ("ParameterizedJob", None), ("Payload", None)):
        job.setdefault(k, zero)
    for tg in job.get("TaskGroups") or []:
        if job["Type"] == "service" and tg.get("Migrate") is None:
            tg["Migrate"] = {"MaxParallel": 1, "HealthCheck": "checks", "MinHealthyTime": 10 * NS,
                             "HealthyDeadline": 300 * NS}
        for k, zero in (("Affinities", None), ("Spreads", None), ("Volumes", None), ("Scaling", None),
                        ("Services", None), ("StopAfterClientDisconnect", None), ("MaxClientDisconnect", None),
                        ("Disconnect", None), ("ShutdownDelay", None), ("PreventRescheduleOnLost", False),
                        ("Consul", {"Namespace": "", "Cluster": "default", "Partition": ""})):
            tg.setdefault(k, zero)
        for t in tg.get("Tasks") or []:
            t["Resources"] = {"CPU": 0, "Cores": 0, "MemoryMB": 0, "MemoryMaxMB": 0, "DiskMB": 0, "IOPS": 0,
                              "Networks": None, "Devices": None, "NUMA": None, "SecretsMB": 0, **t["Resources"]}
            for k, zero in (("User", ""), ("Constraints", None), ("Affinities", None), ("Services", None),
                            ("Templates", None), ("Artifacts", None), ("Lifecycle", None), ("VolumeMounts", None),
                            ("DispatchPayload", None), ("Leader", False), ("ShutdownDelay", 0), ("KillSignal", ""),
                            ("Kind", ""), ("ScalingPolicies", None), ("Vault", None), ("Consul", None),
                            ("CSIPluginConfig", None), ("Identities", None), ("Actions", None), ("Schedule", None)):
                if t.get(k) in (None, [], {}) and k not in ("KillSignal",):
                    t[k] = zero
                t.setdefault(k, zero)
    return job


def _spec(job: dict) -> str:
    skip = {"Version", "ModifyIndex", "JobModifyIndex", "CreateIndex", "SubmitTime", "Status",
            "StatusDescription", "Stable"}
    return json.dumps({k: v for k, v in job.items() if k not in skip and not k.startswith("_")}, sort_keys=True)


def _canon_service(svc: dict) -> None:
    svc["Provider"] = svc.get("Provider") or "consul"
    svc["Tags"] = svc.get("Tags") or []
    svc["OnUpdate"] = svc.get("OnUpdate") or "require_healthy"
    svc["AddressMode"] = svc.get("AddressMode") or "auto"
    for c in svc.get("Checks") or []:
        c["OnUpdate"] = c.get("OnUpdate") or "require_healthy"


_SERVICE_NAME = re.compile(r"^(?i:[a-z0-9]|[a-z0-9][a-z0-9\-]{0,61}[a-z0-9])$")


def validate(job: dict) -> list[str]:
    """Job validation failures (§2: answered with 500 and a multi-error body)."""
    errs = []
    jt = job.get("Type")
    if jt not in ("service", "batch", "system", "sysbatch"):
        errs.append(f'Invalid job type: "{jt}"')
    if not job.get("TaskGroups"):
        errs.append("Missing job task groups")
    if job.get("ParameterizedJob"):
        if jt not in ("batch", "sysbatch"):
            errs.append('Parameterized job can only be used with "batch" or "sysbatch" scheduler')
        if job["ParameterizedJob"].get("Payload") not in ("optional", "required", "forbidden"):
            errs.append(f'Unknown payload requirement: "{job["ParameterizedJob"].get("Payload")}"')
    names = set()
    for tg in job.get("TaskGroups") or []:
        gname = tg.get("Name")
        if not gname:
            errs.append("Task group name is required")
        elif gname in names:
            errs.append(f'Job task group {gname} redefines group')
        names.add(gname)
        sc = tg.get("Scaling")
        if sc:
            if jt == "system":
                errs.append("Task groups with job type system do not support scaling blocks")
            mn, mx = sc.get("Min"), sc.get("Max")
            if mn is not None and tg["Count"] < mn or mx is not None and tg["Count"] > mx:
                errs.append(f'Task group {gname} validation failed: Scaling policy invalid: task group count must not be '
                            f'{"less than minimum" if mn is not None and tg["Count"] < mn else "greater than maximum"} count in scaling policy')
        if not tg.get("Tasks"):
            errs.append(f"Task group {gname} validation failed: Missing tasks for task group")
        u = tg.get("Update")
        if u is not None:
            pre = f"Task group {gname} validation failed: "
            if jt not in ("service", "system"):
                errs.append(pre + f'Job type "{jt}" does not allow update block')
            if u["HealthCheck"] not in ("checks", "task_states", "manual"):
                errs.append(pre + f'Invalid health check given: "{u["HealthCheck"]}"')
            if u["MaxParallel"] < 0:
                errs.append(pre + f'Max parallel can not be less than zero: {u["MaxParallel"]} < 0')
            if u["HealthyDeadline"] <= 0:
                errs.append(pre + "Healthy deadline must be greater than zero")
            if u["MinHealthyTime"] >= u["HealthyDeadline"]:
                errs.append(pre + "Minimum healthy time must be less than healthy deadline")
            if u["ProgressDeadline"] and u["HealthyDeadline"] >= u["ProgressDeadline"]:
                errs.append(pre + "Healthy deadline must be less than progress deadline")
        labels = {p["Label"] for n in tg.get("Networks") or [] for p in n["DynamicPorts"] + n["ReservedPorts"]}
        services = list(tg.get("Services") or [])
        for task in tg.get("Tasks") or []:
            if not task.get("Name"):
                errs.append(f"Task group {gname} validation failed: Missing task name")
            if not task.get("Driver"):
                errs.append(f'Task group {gname} validation failed: Task {task.get("Name")} validation failed: Missing task driver')
            if task.get("KillTimeout", 0) < 0:
                errs.append(f'Task group {gname} validation failed: Task {task.get("Name")} validation failed: KillTimeout must be a positive value')
            services += task.get("Services") or []
        for svc in services:
            where = f'Task group {gname} validation failed: Service {svc.get("Name")!r}'
            if not svc.get("Name"):
                errs.append(f"Task group {gname} validation failed: service name must be set")
            elif not _SERVICE_NAME.match(_INTERP.sub("ENV-VAR", svc["Name"])):
                # Interpolations are replaced by a placeholder before the RFC 1123 check.
                errs.append(f"Task group {gname} validation failed: Service name must be valid per RFC 1123 and "
                            f"can contain only alphanumeric characters or dashes: {svc['Name']!r}".replace("'", '"'))
            if svc.get("PortLabel") and not svc["PortLabel"].isdigit() and svc["PortLabel"] not in labels:
                errs.append(f'{where} port label {svc["PortLabel"]!r} not found in group networks')
            for c in svc.get("Checks") or []:
                ctype = (c.get("Type") or "").lower()
                allowed = ("http", "tcp", "script", "grpc") if svc["Provider"] == "consul" else ("http", "tcp")
                if ctype not in allowed:
                    errs.append(f"{where} check {c.get('Name')!r}: invalid type ({ctype})")
                if (c.get("Interval") or 0) < NS:
                    errs.append(f"{where} check {c.get('Name')!r}: interval ({c.get('Interval')}) cannot be lower than 1s")
                if (c.get("Timeout") or 0) < NS:
                    errs.append(f"{where} check {c.get('Name')!r}: timeout ({c.get('Timeout')}) is too low")
                if ctype == "http" and (not c.get("Path") or "://" in c.get("Path", "")):
                    errs.append(f"{where} check {c.get('Name')!r}: http type must have http path")
        if len({s["Provider"] for s in services}) > 1:
            errs.append(f"Task group {gname} validation failed: Multiple service providers used: task group services must use the same provider")
    return errs


# ---------------------------------------------------------------------------- runtime objects
class FakeNode:
    """A Nomad client node. ``address`` is the host IP its allocations bind ports on."""

    def __init__(self, name: str, address: str = "127.0.0.1", node_class: str = "",
                 datacenter: str = "dc1", meta: dict | None = None, attributes: dict | None = None,
                 cpu_mhz: int = 16000, memory_mb: int = 16384, drivers=("raw_exec", "exec"),
                 exec_prefix: list[str] | None = None, max_kill_timeout: float = 30.0):
        self.id = str(uuid.uuid4())
        # The client's cap on a task's kill_timeout (client max_kill_timeout, 30 s by default:
        # command/agent/config.go; applied in client/allocrunner/taskrunner/driver_handle.go).
        self.max_kill_timeout = max_kill_timeout
        # Prepended to every task command on this node, e.g. ["ip", "netns", "exec", "h1"] to run
        # the node's allocations inside a network namespace. Ports are then not probed from here.
        self.exec_prefix = list(exec_prefix or [])
        self.name = name
        self.address = address
        self.node_class = node_class
        self.datacenter = datacenter
        self.meta = dict(meta or {})
        self.attributes = {"unique.hostname": name, "unique.network.ip-address": address,
                           "kernel.name": "linux", "os.name": "linux", "cpu.arch": "amd64",
                           "nomad.version": "2.0.5", **{f"driver.{d}": "1" for d in drivers},
                           **(attributes or {})}
        self.cpu_mhz = cpu_mhz
        self.memory_mb = memory_mb
        self.drivers = list(drivers)
        self.status = "ready"
        self.eligibility = "eligible"
        self.drain_strategy = None  # dict while draining
        self.drain_started = 0.0
        self.last_drain = None
        self.create_index = 0
        self.modify_index = 0

    def view(self, full: bool) -> dict:
        v = {
            "ID": self.id, "Name": self.name, "Address": self.address, "Datacenter": self.datacenter,
            "NodeClass": self.node_class, "NodePool": "default", "Version": "2.0.5",
            "Drain": self.drain_strategy is not None, "SchedulingEligibility": self.eligibility,
            "Status": self.status, "StatusDescription": "",
            "Drivers": {d: {"Detected": True, "Healthy": True, "HealthDescription": "Healthy",
                            "Attributes": {f"driver.{d}": "true"}, "UpdateTime": _rfc3339()} for d in self.drivers},
            "HostVolumes": {}, "LastDrain": self.last_drain,
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }
        if full:
            v.update({"Attributes": dict(self.attributes), "Meta": dict(self.meta),
                      "DrainStrategy": self.drain_strategy, "HTTPAddr": f"{self.address}:4646",
                      "NodeResources": {"Cpu": {"CpuShares": self.cpu_mhz},
                                        "Memory": {"MemoryMB": self.memory_mb},
                                        "MinDynamicPort": 20000, "MaxDynamicPort": 32000}})
        return v


class _Alloc:
    def __init__(self, job: dict, group: dict, index: int, node: FakeNode, eval_id: str):
        self.id = str(uuid.uuid4())
        self.eval_id = eval_id
        self.job = job  # snapshot of the job at placement
        self.group = group
        self.index = index
        self.gen = job["_gen"]
        self.name = f'{job["ID"]}.{group["Name"]}[{index}]'
        self.node = node
        self.desired_status = "run"
        self.desired_description = ""
        self.migrate = False
        self.client_status = "pending"
        self.client_description = "No tasks have started"
        self.task_states = {t["Name"]: {"State": "pending", "Failed": False, "Restarts": 0,
                                        "LastRestart": ZERO_TIME, "StartedAt": ZERO_TIME,
                                        "FinishedAt": ZERO_TIME, "Events": []}
                            for t in group["Tasks"]}
        self.ports: list[dict] = []
        self.create_index = 0
        self.modify_index = 0
        self.create_time = _now_ns()
        self.modify_time = self.create_time
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.reschedule_events: list[dict] = []
        self.next_allocation = ""
        self.previous_allocation = ""
        self.not_before = 0.0
        self.lost = False
        self.dir = ""
        self.deployment_id = ""
        self.deployment_status = None   # {"Healthy": bool|None, ...} while part of a deployment
        self.healthy_since = 0.0        # monotonic time its checks started passing (deployments)

    @property
    def terminal(self) -> bool:
        return self.client_status in _TERMINAL

    @property
    def memory_mb(self) -> int:
        return sum(t["Resources"].get("MemoryMB") or 0 for t in self.group["Tasks"])

    @property
    def cpu(self) -> int:
        return sum(t["Resources"].get("CPU") or 0 for t in self.group["Tasks"])

    def stub(self) -> dict:
        return {
            "ID": self.id, "EvalID": self.eval_id, "Name": self.name, "Namespace": "default",
            "NodeID": self.node.id, "NodeName": self.node.name, "JobID": self.job["ID"],
            "JobType": self.job["Type"], "JobVersion": self.job.get("Version", 0),
            "TaskGroup": self.group["Name"], "DesiredStatus": self.desired_status,
            "DesiredDescription": self.desired_description, "ClientStatus": self.client_status,
            "ClientDescription": self.client_description,
            "DesiredTransition": {"Migrate": self.migrate or None},
            "TaskStates": copy.deepcopy(self.task_states),
            "DeploymentID": self.deployment_id, "DeploymentStatus": copy.deepcopy(self.deployment_status),
            "FollowupEvalID": "", "NextAllocation": self.next_allocation,
            "PreviousAllocation": self.previous_allocation,
            "RescheduleTracker": {"Events": copy.deepcopy(self.reschedule_events)} if self.reschedule_events else None,
            "PreemptedAllocations": None, "PreemptedByAllocation": "",
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time, "ModifyTime": self.modify_time,
        }

    def resources(self) -> dict:
        """``AllocatedResources`` (§6: only on the allocation read, not on stubs)."""
        def port(p):
            return {"Label": p["Label"], "Value": p["Value"], "To": p["To"], "HostNetwork": "default"}
        return {
            "Shared": {"DiskMB": 300,
                       "Networks": [{"Mode": "host", "IP": self.node.address,
                                     "DynamicPorts": [port(p) for p in self.ports if p["_dynamic"]],
                                     "ReservedPorts": [port(p) for p in self.ports if not p["_dynamic"]]}],
                       "Ports": [{k: v for k, v in p.items() if not k.startswith("_")} for p in self.ports]},
            "Tasks": {t["Name"]: {"Cpu": {"CpuShares": t["Resources"].get("CPU", 100)},
                                  "Memory": {"MemoryMB": t["Resources"].get("MemoryMB", 300),
                                             "MemoryMaxMB": t["Resources"].get("MemoryMaxMB") or 0},
                                  "Networks": None} for t in self.group["Tasks"]},
        }

    def full(self) -> dict:
        v = self.stub()
        v.update({"Job": copy.deepcopy(self.job), "AllocatedResources": self.resources(),
                  "NodeName": self.node.name})
        return v


class NomadDouble(BlockingQueries):
    """In-memory Nomad server + clients with an HTTP face (``url``).

    ``nodes``: the fake client nodes (default one node ``node-1`` on 127.0.0.1).
    ``consul``: a :class:`~doubles.consul.ConsulDouble` (registered in-process, on the
    allocation's node) or a Consul base URL (registered through the agent HTTP API), or None.
    ``delay_scale`` multiplies restart and reschedule delays (1.0 = the jobs' real values).
    ``consul_sync_interval``: how often service registrations are re-checked against Consul
    (Nomad re-syncs every 30 s; a missing service is registered again).
    ``port_range``: dynamic port range (§4a: 20000-32000 by default).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, nodes: list[FakeNode] | None = None,
                 consul=None, data_dir: str | None = None, delay_scale: float = 1.0,
                 consul_sync_interval: float = 30.0, port_range: tuple[int, int] = (20000, 32000),
                 max_wait: float = 300.0, placement: str = "binpack", tick: float = 0.02, acl_tokens=None):
        self._cond = threading.Condition(threading.RLock())
        #: None: ACLs off. Else SecretID -> policy rules (HCL, as in playbooks/roles/appliance/files/acl/)
        #: or None for a management token; a plain collection makes them all management tokens.
        self.acl_tokens = None
        if acl_tokens is not None:
            tokens = acl_tokens if isinstance(acl_tokens, dict) else {t: None for t in acl_tokens}
            self.acl_tokens = {t: NomadAuthorizer(rules) for t, rules in tokens.items()}
        self.request_tokens: list[tuple[str, str, str]] = []   # (method, path, token or "")
        self.blocked_queries = 0  # requests waiting in a blocking query right now
        self.index = 10
        self.nodes: dict[str, FakeNode] = {}
        with self._cond:
            for n in nodes or [FakeNode("node-1")]:
                self._add_node(n)
        self.consul = consul
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="nomad-double-")
        self.delay_scale = delay_scale
        self.consul_sync_interval = consul_sync_interval
        self.port_range = port_range
        self.max_wait = max_wait
        self.placement = placement
        self._tick = tick
        self.jobs: dict[str, dict] = {}
        self.allocs: dict[str, _Alloc] = {}
        self._by_job: dict[str, list[_Alloc]] = {}  # job ID -> its allocations, oldest first
        self.evals: dict[str, dict] = {}
        self.deployments: dict[str, dict] = {}   # ID -> deployment (nomad/structs Deployment)
        self.deployments_index = self.index
        self.jobs_index = self.index
        self.job_alloc_index: dict[str, int] = {}
        self.allocs_index = self.index
        self.evals_index = self.index
        self.nodes_index = self.index
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests of clients
        self._svc_desired: dict[str, tuple[dict, FakeNode]] = {}
        self._svc_registered: set[str] = set()
        self._svc_dirty = threading.Event()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self.server = DoubleServer(self._build_app(), host, port)
        self._loop = None
        self._sync = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> "NomadDouble":
        self.server.up()
        if self._loop is None:
            self._loop = threading.Thread(target=self._scheduler_loop, daemon=True, name="nomad-double-scheduler")
            self._loop.start()
            self._sync = threading.Thread(target=self._consul_sync_loop, daemon=True, name="nomad-double-consul")
            self._sync.start()
        return self

    def down(self) -> None:
        """Nomad unreachable: connections refused; allocations keep running (clients do)."""
        with self._cond:
            self._cond.notify_all()
        self.server.down()

    def up(self) -> None:
        self.server.up()

    def close(self) -> None:
        """Stops every process the double started, then the server."""
        self._closing.set()
        with self._cond:
            for a in self.allocs.values():
                if not a.terminal:
                    self._stop_alloc(a, "double shutting down")
        deadline = time.monotonic() + 30
        for a in list(self.allocs.values()):
            for t in a.threads:
                t.join(max(0.0, deadline - time.monotonic()))
        # Anything still alive after its kill timeout is killed outright.
        for a in list(self.allocs.values()):
            for p in a.procs.values():
                if p.poll() is None:
                    _killpg(p, signal.SIGKILL)
                    p.wait()
        self._stop.set()
        self._svc_dirty.set()
        if self._loop:
            self._loop.join()
            self._sync.join()
        self._sync_services()
        self.server.down()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ------------------------------------------------------------------ index helpers
    def _bump(self) -> int:
        self.index += 1
        self._cond.notify_all()
        return self.index

    def _touch_alloc(self, a: _Alloc) -> None:
        idx = self._bump()
        a.modify_index = idx
        a.modify_time = _now_ns()
        self.allocs_index = idx
        self.job_alloc_index[a.job["ID"]] = idx
        job = self.jobs.get(a.job["ID"])
        if job is not None:
            job["_summary_index"] = idx

    def _wait_index(self, want, index_fn, deadline, gen) -> None:
        while want > 0 and index_fn() <= want:
            left = deadline - time.monotonic()
            if left <= 0 or self.server.is_down:
                break
            self._cond.wait(left)
        if self.server.is_down:
            raise ConnectionAbortedError("nomad double went down")

    @staticmethod
    def _read_headers(index: int) -> dict:
        return {"X-Nomad-Index": str(index), "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}

    # ------------------------------------------------------------------ nodes
    def _add_node(self, node: FakeNode) -> None:
        idx = self._bump()
        node.create_index = node.modify_index = idx
        self.nodes_index = idx
        self.nodes[node.id] = node

    def add_node(self, node: FakeNode) -> FakeNode:
        with self._cond:
            self._add_node(node)
        return node

    def node_by_name(self, name: str) -> FakeNode:
        return next(n for n in self.nodes.values() if n.name == name)

    def _touch_node(self, node: FakeNode) -> int:
        idx = self._bump()
        node.modify_index = idx
        self.nodes_index = idx
        return idx

    # ------------------------------------------------------------------ evaluations
    def _new_eval(self, job: dict, triggered_by: str, status: str = "complete", node_id: str = "") -> dict:
        idx = self._bump()
        ev = {"ID": str(uuid.uuid4()), "Namespace": "default", "Priority": job.get("Priority", 50),
              "Type": job["Type"], "TriggeredBy": triggered_by, "JobID": job["ID"],
              "JobModifyIndex": job.get("JobModifyIndex", 0), "NodeID": node_id, "Status": status,
              "StatusDescription": "", "BlockedEval": "", "FailedTGAllocs": None,
              "QueuedAllocations": {}, "PreviousEval": "", "CreateIndex": idx, "ModifyIndex": idx,
              "CreateTime": _now_ns(), "ModifyTime": _now_ns()}
        self.evals[ev["ID"]] = ev
        self.evals_index = idx
        return ev

    def _blocked_eval(self, job: dict) -> dict | None:
        for ev in self.evals.values():
            if ev["JobID"] == job["ID"] and ev["Status"] == "blocked":
                return ev
        return None

    # ------------------------------------------------------------------ deployments
    def _latest_deployment(self, job_id: str) -> dict | None:
        ds = [d for d in self.deployments.values() if d["JobID"] == job_id]
        return max(ds, key=lambda d: d["CreateIndex"]) if ds else None

    @staticmethod
    def deployment_active(d: dict | None) -> bool:
        """nomad/structs/structs.go Deployment.Active."""
        return d is not None and d["Status"] in ("running", "paused", "pending", "blocked", "unblocking",
                                                 "initializing")

    def _set_deployment_status(self, d: dict, status: str, why: str) -> None:
        d["Status"], d["StatusDescription"] = status, why
        d["ModifyIndex"] = self._bump()
        d["ModifyTime"] = _now_ns()
        self.deployments_index = d["ModifyIndex"]

    def _new_deployment(self, job: dict) -> dict | None:
        """A deployment for this version of a service job (scheduler/reconciler/reconcile_cluster.go
        createDeployment): made when a group with a non-empty update strategy (MaxParallel > 0) wants
        allocations and the job's spec or count changed. An older active one is cancelled
        (nomad/deploymentwatcher: "Cancelled due to newer version of job")."""
        if job["Type"] not in ("service",) or job.get("ParameterizedJob") or job["Stop"]:
            return None
        groups = {tg["Name"]: tg for tg in job["TaskGroups"]
                  if not update_is_empty(tg.get("Update")) and tg["Count"] > 0}
        if not groups:
            return None
        old = self._latest_deployment(job["ID"])
        if self.deployment_active(old):
            self._set_deployment_status(old, "cancelled", "Cancelled due to newer version of job")
        idx = self._bump()
        now = time.monotonic()
        d = {"ID": str(uuid.uuid4()), "Namespace": "default", "JobID": job["ID"], "JobVersion": job["Version"],
             "JobModifyIndex": job["JobModifyIndex"], "JobSpecModifyIndex": job["JobModifyIndex"],
             "JobCreateIndex": job["CreateIndex"], "IsMultiregion": False, "TaskGroups": {},
             "Status": "running", "StatusDescription": "Deployment is running", "EvalPriority": job["Priority"],
             "CreateIndex": idx, "ModifyIndex": idx, "CreateTime": _now_ns(), "ModifyTime": _now_ns()}
        for name, tg in groups.items():
            u = tg["Update"]
            d["TaskGroups"][name] = {
                "AutoRevert": u["AutoRevert"], "AutoPromote": u["AutoPromote"],
                "ProgressDeadline": u["ProgressDeadline"], "RequireProgressBy": ZERO_TIME, "Promoted": False,
                "PlacedCanaries": None, "DesiredCanaries": u["Canary"], "DesiredTotal": tg["Count"],
                "PlacedAllocs": 0, "HealthyAllocs": 0, "UnhealthyAllocs": 0,
                "_progress_by": now + u["ProgressDeadline"] / 1e9 * self.delay_scale if u["ProgressDeadline"] else 0}
        self.deployments[d["ID"]] = d
        self.deployments_index = idx
        for a in self._by_job.get(job["ID"], []):   # in-place updated allocations join it
            if a.gen == job["_gen"] and a.desired_status == "run" and not a.terminal and a.group["Name"] in groups:
                self._join_deployment(a, d)
        return d

    def _join_deployment(self, a: _Alloc, d: dict) -> None:
        a.deployment_id = d["ID"]
        a.deployment_status = {"Healthy": None, "Timestamp": ZERO_TIME, "Canary": False, "ModifyIndex": 0}
        a.healthy_since = 0.0

    def _alloc_checks_passing(self, a: _Alloc) -> bool:
        """Every Consul check Nomad registered for the allocation passes (health_check = "checks")."""
        consul = self.consul
        if consul is None or isinstance(consul, str):
            return True   # not observable here: taken as passing once the tasks run
        ids = [c["CheckID"] for sid, (body, _n) in self._svc_desired.items()
               if sid.startswith(f"_nomad-task-{a.id}-") for c in body["Checks"]]
        return all(consul.checks.get(cid) is not None and consul.checks[cid].status == "passing" for cid in ids)

    def _deployment_step(self) -> None:
        """The deployment watcher (nomad/deploymentwatcher, client/allochealth): an allocation is
        healthy once it runs and its checks pass for MinHealthyTime; a group is done when
        HealthyAllocs reaches DesiredTotal; no new healthy allocation before RequireProgressBy
        (ProgressDeadline after the last progress) fails the deployment. Times are scaled by
        ``delay_scale`` like the restart delays."""
        now = time.monotonic()
        for d in list(self.deployments.values()):
            if d["Status"] != "running":
                continue
            job = self.jobs.get(d["JobID"])
            if job is None or job["Stop"]:
                self._set_deployment_status(d, "cancelled", "Cancelled because job is stopped")
                continue
            changed = False
            for name, st in d["TaskGroups"].items():
                tg = next((g for g in job["TaskGroups"] if g["Name"] == name), None)
                u = (tg or {}).get("Update") or _update_default()
                mine = [a for a in self._by_job.get(job["ID"], []) if a.group["Name"] == name
                        and a.desired_status == "run" and a.gen == job["_gen"]]
                for a in mine:
                    if a.deployment_id != d["ID"]:
                        self._join_deployment(a, d)
                    if a.deployment_status["Healthy"] is not None:
                        continue
                    if a.client_status == "failed":
                        a.deployment_status.update(Healthy=False, Timestamp=_rfc3339())
                        st["UnhealthyAllocs"] += 1
                        changed = True
                        continue
                    ok = a.client_status == "running" and (u["HealthCheck"] != "checks" or self._alloc_checks_passing(a))
                    if not ok:
                        a.healthy_since = 0.0
                        continue
                    a.healthy_since = a.healthy_since or now
                    if now - a.healthy_since >= u["MinHealthyTime"] / 1e9 * self.delay_scale:
                        a.deployment_status.update(Healthy=True, Timestamp=_rfc3339())
                        st["HealthyAllocs"] += 1
                        if st["ProgressDeadline"]:
                            st["_progress_by"] = now + st["ProgressDeadline"] / 1e9 * self.delay_scale
                            st["RequireProgressBy"] = _rfc3339(time.time() + st["ProgressDeadline"] / 1e9 * self.delay_scale)
                        changed = True
                st["PlacedAllocs"] = len(mine)
            if changed:
                self._touch_deployment(d)
            groups = d["TaskGroups"].values()
            if any(st["UnhealthyAllocs"] for st in groups):
                self._set_deployment_status(d, "failed", "Failed due to unhealthy allocations")
            elif all(st["HealthyAllocs"] >= st["DesiredTotal"] for st in groups):
                self._set_deployment_status(d, "successful", "Deployment completed successfully")
            elif any(st["_progress_by"] and now > st["_progress_by"] for st in groups):
                self._set_deployment_status(d, "failed", "Failed due to progress deadline")

    def _touch_deployment(self, d: dict) -> None:
        d["ModifyIndex"] = self._bump()
        self.deployments_index = d["ModifyIndex"]
        for a in self._by_job.get(d["JobID"], []):
            if a.deployment_id == d["ID"] and a.deployment_status is not None and not a.deployment_status["ModifyIndex"]:
                a.deployment_status["ModifyIndex"] = d["ModifyIndex"]

    @staticmethod
    def deployment_view(d: dict | None) -> dict | None:
        if d is None:
            return None
        v = copy.deepcopy(d)
        for st in v["TaskGroups"].values():
            st.pop("_progress_by", None)
        return v

    # ------------------------------------------------------------------ jobs
    def _job_status(self, job: dict) -> str:
        if job.get("ParameterizedJob") and not job.get("Dispatched") or job.get("Periodic"):
            return "dead" if job["Stop"] else "running"
        allocs = self._by_job.get(job["ID"], [])
        if any(not a.terminal for a in allocs):
            return "running"
        if job["Stop"]:
            return "dead"
        if job["Type"] in ("batch", "sysbatch") and allocs and not self._missing_slots(job):
            return "dead"
        return "pending"

    def _job_view(self, job: dict) -> dict:
        v = structs_job({k: copy.deepcopy(val) for k, val in job.items() if not k.startswith("_")})
        v["Status"] = self._job_status(job)
        return v

    def _summary(self, job: dict) -> dict:
        summ = {}
        for tg in job.get("TaskGroups") or []:
            s = {"Queued": 0, "Complete": 0, "Failed": 0, "Running": 0, "Starting": 0, "Lost": 0, "Unknown": 0}
            for a in self.allocs.values():
                if a.job["ID"] != job["ID"] or a.group["Name"] != tg["Name"]:
                    continue
                key = {"pending": "Starting", "running": "Running", "complete": "Complete",
                       "failed": "Failed", "lost": "Lost"}.get(a.client_status, "Unknown")
                s[key] += 1
            s["Queued"] = sum(1 for (g, _i) in self._missing_slots(job) if g == tg["Name"])
            summ[tg["Name"]] = s
        children = {"Pending": 0, "Running": 0, "Dead": 0}
        for j in self.jobs.values():
            if j.get("ParentID") == job["ID"]:
                children[self._job_status(j).capitalize()] += 1
        return {"JobID": job["ID"], "Namespace": "default", "Summary": summ, "Children": children,
                "CreateIndex": job["CreateIndex"], "ModifyIndex": job.get("_summary_index", job["ModifyIndex"])}

    def _job_stub(self, job: dict, meta: bool) -> dict:
        v = {k: job.get(k) for k in ("ID", "ParentID", "Name", "Namespace", "Datacenters", "NodePool",
                                     "Type", "Priority", "Stop", "StatusDescription", "CreateIndex",
                                     "ModifyIndex", "JobModifyIndex", "SubmitTime")}
        v["Periodic"] = bool(job.get("Periodic"))
        v["ParameterizedJob"] = bool(job.get("ParameterizedJob")) and not job.get("Dispatched")
        v["Status"] = self._job_status(job)
        v["JobSummary"] = self._summary(job)
        if meta:
            v["Meta"] = dict(job.get("Meta") or {})
        return v

    def register(self, job: dict, triggered_by: str = "job-register") -> dict:
        """Register (§2). ``job`` uses canonical keys. Returns the register response."""
        job = canonicalize(job)
        errs = validate(job)
        if errs:
            raise HTTPError(500, _multierror(errs))
        with self._cond:
            old = self.jobs.get(job["ID"])
            idx = self._bump()
            live_old = old is not None and not old["Stop"]
            job["CreateIndex"] = old["CreateIndex"] if live_old else idx
            job["ModifyIndex"] = job["JobModifyIndex"] = idx
            job["Version"] = old["Version"] + 1 if old else 0
            job["SubmitTime"] = _now_ns()
            job["Status"] = "pending"
            job["StatusDescription"] = ""
            job.setdefault("Stable", False)
            # Allocations belong to a "generation" of the job: a changed spec (or a register after
            # a stop) replaces them; an identical re-register or a scale keeps them.
            same = live_old and _spec(old) == _spec(job)
            job["_gen"] = old["_gen"] if same else (old["_gen"] + 1 if old else 0)
            if old is not None:
                for a in self.allocs.values():
                    if a.job["ID"] == job["ID"] and a.gen != job["_gen"] and a.desired_status == "run":
                        self._stop_alloc(a, "alloc not needed due to job update")
            self.jobs[job["ID"]] = job
            self.jobs_index = idx
            eval_id, eval_index = "", 0
            if not (job.get("ParameterizedJob") and not job.get("Dispatched")) and not job.get("Periodic"):
                ev = self._new_eval(job, triggered_by)
                eval_id, eval_index = ev["ID"], ev["CreateIndex"]
                if not same:
                    self._new_deployment(job)
                self._reconcile(job, ev)
            return {"EvalID": eval_id, "EvalCreateIndex": eval_index, "JobModifyIndex": idx,
                    "Warnings": "", "Index": idx, "LastContact": 0, "KnownLeader": False, "NextToken": ""}

    def _deregister(self, job_id: str, purge: bool) -> dict:
        with self._cond:
            job = self.jobs.get(job_id)
            if job is None:
                return {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "VolumeEvalID": "",
                        "VolumeEvalIndex": 0, "Index": 0, "LastContact": 0, "KnownLeader": False, "NextToken": ""}
            job["Stop"] = True
            idx = self._bump()
            job["ModifyIndex"] = job["JobModifyIndex"] = idx
            self.jobs_index = idx
            for a in self.allocs.values():
                if a.job["ID"] == job_id and a.desired_status == "run":
                    self._stop_alloc(a, "alloc not needed due to job update")
            eval_id, eval_index = "", 0
            if not (job.get("ParameterizedJob") and not job.get("Dispatched")) and not job.get("Periodic"):
                ev = self._new_eval(job, "job-deregister")
                eval_id, eval_index = ev["ID"], ev["CreateIndex"]
                b = self._blocked_eval(job)
                if b:
                    b["Status"] = "cancelled"
            if purge:
                del self.jobs[job_id]
                self.jobs_index = self._bump()
            return {"EvalID": eval_id, "EvalCreateIndex": eval_index, "JobModifyIndex": idx,
                    "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": self.index, "LastContact": 0,
                    "KnownLeader": False, "NextToken": ""}

    def dispatch(self, parent_id: str, body: dict, idempotency_token: str = "") -> dict:
        """Dispatch (§5). The idempotency token comes from the query string only."""
        with self._cond:
            parent = self.jobs.get(parent_id)
            if parent is None:
                raise HTTPError(500, "parameterized job not found")
            if not parent.get("ParameterizedJob") or parent.get("Dispatched"):
                raise HTTPError(500, f'Specified job "{parent_id}" is not a parameterized job')
            if parent["Stop"]:
                raise HTTPError(500, f'Specified job "{parent_id}" is stopped')
            if idempotency_token:
                for j in self.jobs.values():
                    if j.get("ParentID") == parent_id and j.get("DispatchIdempotencyToken") == idempotency_token:
                        return {"Index": j["ModifyIndex"], "JobCreateIndex": j["CreateIndex"],
                                "EvalCreateIndex": 0, "EvalID": "", "DispatchedJobID": j["ID"]}
            pj = parent["ParameterizedJob"]
            payload_b64 = body.get("Payload")
            payload = b""
            if payload_b64 not in (None, ""):
                try:
                    payload = base64.b64decode(payload_b64, validate=True)
                except (ValueError, TypeError):
                    raise HTTPError(400, "illegal base64 data at input byte 0")
            if pj["Payload"] == "required" and not payload:
                raise HTTPError(500, "Payload is not provided but required by parameterized job")
            if pj["Payload"] == "forbidden" and payload:
                raise HTTPError(500, "Payload provided but forbidden by parameterized job")
            if len(payload) > 16384:
                raise HTTPError(500, f"Payload exceeds maximum size; {len(payload)} > 16384")
            meta = body.get("Meta") or {}
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise HTTPError(400, "json: cannot unmarshal number into Go struct field JobDispatchRequest.Meta of type string")
            allowed = set(pj["MetaRequired"]) | set(pj["MetaOptional"])
            extra = sorted(k for k in meta if k not in allowed)
            if extra:
                raise HTTPError(500, f"Dispatch request included unpermitted metadata keys: {extra}")
            missing = [k for k in pj["MetaRequired"] if k not in meta]
            if missing:
                raise HTTPError(500, f"Dispatch did not provide required meta keys: {missing}")
            prio = body.get("Priority")
            if prio not in (None, 0) and not (1 <= prio <= 100):
                raise HTTPError(500, "dispatch job priority must be between [1, 100]")
            suffix = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
            prefix = body.get("IdPrefixTemplate") or ""
            child_id = f"{parent_id}/dispatch-{prefix + '-' if prefix else ''}{suffix}"
            child = {k: copy.deepcopy(v) for k, v in parent.items() if not k.startswith("_")}
            child.update({"ID": child_id, "Name": child_id, "ParentID": parent_id, "Dispatched": True,
                          "Status": "", "StatusDescription": "",
                          "DispatchIdempotencyToken": idempotency_token,
                          "Meta": {**(parent.get("Meta") or {}), **meta},
                          "Payload": base64.b64encode(payload).decode() if payload else None})
            if prio:
                child["Priority"] = prio
            reg = self.register(child, triggered_by="job-register")
            c = self.jobs[child_id]
            return {"Index": max(reg["Index"], reg["EvalCreateIndex"]), "JobCreateIndex": c["CreateIndex"],
                    "EvalCreateIndex": reg["EvalCreateIndex"], "EvalID": reg["EvalID"],
                    "DispatchedJobID": child_id}

    # ------------------------------------------------------------------ scheduling
    def _slots(self, job: dict) -> dict[tuple[str, int], _Alloc]:
        """Latest allocation per (group, index) slot."""
        latest: dict[tuple[str, int], _Alloc] = {}
        for a in self._by_job.get(job["ID"], []):
            if a.gen != job["_gen"]:
                continue
            key = (a.group["Name"], a.index)
            if key not in latest or a.create_index > latest[key].create_index:
                latest[key] = a
        return latest

    def _missing_slots(self, job: dict) -> list[tuple[str, int]]:
        """Slots that need a new allocation now (or later, for a delayed reschedule)."""
        if job["Stop"] or (job.get("ParameterizedJob") and not job.get("Dispatched")):
            return []
        latest = self._slots(job)
        out = []
        for tg in job["TaskGroups"]:
            for i in range(tg["Count"]):
                a = latest.get((tg["Name"], i))
                if a is None:
                    out.append((tg["Name"], i))
                elif a.terminal and a.desired_status != "run" and a.migrate:
                    out.append((tg["Name"], i))
                elif a.terminal and a.desired_status == "run":
                    if a.client_status == "failed" and self._may_reschedule(a) is not None:
                        out.append((tg["Name"], i))
                    elif a.client_status == "complete" and job["Type"] == "service":
                        out.append((tg["Name"], i))
        return out

    def _may_reschedule(self, a: _Alloc) -> float | None:
        """Delay (s) before a failed allocation may be replaced, or None (§2 reschedule policy)."""
        pol = a.group["ReschedulePolicy"]
        now = time.time()
        events = [e for e in a.reschedule_events
                  if pol.get("Unlimited") or now - e["RescheduleTime"] / 1e9 < (pol.get("Interval") or 0) / 1e9]
        if not pol.get("Unlimited") and len(events) >= (pol.get("Attempts") or 0):
            return None
        n = len(a.reschedule_events)
        delay = (pol.get("Delay") or 0) / 1e9
        if pol.get("DelayFunction") == "exponential":
            delay = delay * (2 ** n)
        elif pol.get("DelayFunction") == "fibonacci":
            x, y = delay, delay
            for _ in range(n):
                x, y = y, x + y
            delay = x
        if pol.get("MaxDelay"):
            delay = min(delay, pol["MaxDelay"] / 1e9)
        return delay * self.delay_scale

    def _node_fits(self, node: FakeNode, job: dict, group: dict) -> tuple[bool, str]:
        if node.status != "ready" or node.eligibility != "eligible" or node.drain_strategy is not None:
            return False, "filtered"
        if "*" not in job["Datacenters"] and node.datacenter not in job["Datacenters"]:
            return False, "filtered"
        for t in group["Tasks"]:
            if t["Driver"] not in node.drivers:
                return False, f"missing drivers"
        for c in (job.get("Constraints") or []) + (group.get("Constraints") or []) + \
                [c for t in group["Tasks"] for c in (t.get("Constraints") or [])]:
            if not self._constraint_ok(node, c):
                return False, f'{c.get("LTarget")} {c.get("Operand", "=")} {c.get("RTarget")}'
        used_mem = sum(a.memory_mb for a in self.allocs.values() if a.node is node and not a.terminal)
        need = sum(t["Resources"].get("MemoryMB") or 0 for t in group["Tasks"])
        if used_mem + need > node.memory_mb:
            return False, "memory"
        return True, ""

    def _constraint_ok(self, node: FakeNode, c: dict) -> bool:
        def resolve(s):
            if not isinstance(s, str):
                return s
            m = re.fullmatch(r"\$\{(.+)\}", s)
            if not m:
                return s
            key = m.group(1)
            return {"node.unique.id": node.id, "node.unique.name": node.name,
                    "node.datacenter": node.datacenter, "node.class": node.node_class,
                    "node.pool": "default"}.get(key) or (
                node.meta.get(key[5:]) if key.startswith("meta.") else
                node.attributes.get(key[5:]) if key.startswith("attr.") else None)
        op = c.get("Operand") or "="
        left, right = resolve(c.get("LTarget", "")), resolve(c.get("RTarget", ""))
        if op in ("=", "==", "is"):
            return left == right
        if op in ("!=", "not"):
            return left != right
        if op == "regexp":
            return left is not None and re.search(right, left) is not None
        if op == "is_set":
            return left is not None
        if op == "is_not_set":
            return left is None
        if op == "distinct_hosts":
            return True
        return True

    def _pick_ports(self, node: FakeNode, group: dict) -> list[dict] | None:
        used = {p["Value"] for a in self.allocs.values() if a.node is node and not a.terminal for p in a.ports}
        ports = []
        for net in group.get("Networks") or []:
            for p in net["ReservedPorts"]:
                if p["Value"] in used:
                    return None
                ports.append({"Label": p["Label"], "Value": p["Value"], "To": p.get("To", 0),
                              "HostIP": node.address, "_dynamic": False})
                used.add(p["Value"])
            for p in net["DynamicPorts"]:
                value = self._free_port(node.address, used, probe=not node.exec_prefix)
                if value is None:
                    return None
                used.add(value)
                ports.append({"Label": p["Label"], "Value": value, "To": p.get("To", 0),
                              "HostIP": node.address, "_dynamic": True})
        return ports

    def _free_port(self, address: str, used: set, probe: bool = True) -> int | None:
        lo, hi = self.port_range
        start = int.from_bytes(os.urandom(2), "big") % (hi - lo + 1)
        for k in range(hi - lo + 1):
            candidate = lo + (start + k) % (hi - lo + 1)
            if candidate in used:
                continue
            if not probe:
                return candidate
            with socket.socket() as s:
                try:
                    s.bind((address, candidate))
                except OSError:
                    continue
            return candidate
        return None

    def _reconcile(self, job: dict, ev: dict | None = None) -> None:
        """Bring the job's allocations to what it asks for. Called with the lock held."""
        now = time.monotonic()
        latest = self._slots(job)
        # Scale-in: stop slots beyond the group count.
        for (gname, i), a in latest.items():
            tg = next((g for g in job["TaskGroups"] if g["Name"] == gname), None)
            if a.desired_status == "run" and not a.terminal and (tg is None or i >= tg["Count"]):
                self._stop_alloc(a, "alloc not needed due to job update")
        failed: dict[str, dict] = {}
        for gname, i in self._missing_slots(job):
            tg = next(g for g in job["TaskGroups"] if g["Name"] == gname)
            prev = latest.get((gname, i))
            if prev is not None and prev.client_status == "failed" and prev.desired_status == "run":
                delay = self._may_reschedule(prev)
                if delay is None:
                    continue
                if not prev.not_before:
                    prev.not_before = now + delay
                if now < prev.not_before:
                    continue
            nodes = [n for n in self.nodes.values()]
            fits, reasons = [], {}
            for n in nodes:
                ok, why = self._node_fits(n, job, tg)
                if ok:
                    fits.append(n)
                else:
                    reasons[why] = reasons.get(why, 0) + 1
            load = {n.id: sum(1 for a in self.allocs.values() if a.node is n and not a.terminal) for n in fits}
            if self.placement == "spread":
                fits.sort(key=lambda n: (load[n.id], n.create_index))
            else:
                fits.sort(key=lambda n: (-load[n.id], n.create_index))
            placed = False
            for n in fits:
                ports = self._pick_ports(n, tg)
                if ports is None:
                    reasons["network: reserved port collision"] = reasons.get("network: reserved port collision", 0) + 1
                    continue
                self._place(job, tg, i, n, ports, (ev or {}).get("ID", ""), prev)
                placed = True
                break
            if not placed:
                f = failed.setdefault(gname, {"NodesEvaluated": len(nodes), "NodesFiltered": 0,
                                              "NodesExhausted": 0, "ClassFiltered": {},
                                              "ConstraintFiltered": {}, "ClassExhausted": {},
                                              "DimensionExhausted": {}, "QuotaExhausted": None,
                                              "CoalescedFailures": -1, "AllocationTime": 0,
                                              "ScoreMetaData": None, "NodesAvailable": {"dc1": len(fits)}})
                f["CoalescedFailures"] += 1
                for why, cnt in reasons.items():
                    if why == "memory":
                        f["NodesExhausted"] += cnt
                        f["DimensionExhausted"]["memory"] = cnt
                    elif why.startswith("network"):
                        f["NodesExhausted"] += cnt
                        f["DimensionExhausted"][why] = cnt
                    else:
                        f["NodesFiltered"] += cnt
                        if why != "filtered":
                            f["ConstraintFiltered"][why] = cnt
        blocked = self._blocked_eval(job)
        if failed:
            if ev is not None:
                ev["FailedTGAllocs"] = failed
                ev["QueuedAllocations"] = {g: f["CoalescedFailures"] + 1 for g, f in failed.items()}
            if blocked is None:
                blocked = self._new_eval(job, "queued-allocs", status="blocked")
                blocked["StatusDescription"] = "created to place remaining allocations"
                blocked["FailedTGAllocs"] = failed
                if ev is not None:
                    ev["BlockedEval"] = blocked["ID"]
                    blocked["PreviousEval"] = ev["ID"]
        elif blocked is not None:
            blocked["Status"] = "complete"
            blocked["ModifyIndex"] = self._bump()
            self.evals_index = blocked["ModifyIndex"]

    def _place(self, job, tg, index, node, ports, eval_id, prev: _Alloc | None) -> _Alloc:
        a = _Alloc(job, tg, index, node, eval_id)
        a.ports = ports
        if prev is not None:
            a.previous_allocation = prev.id
            if prev.client_status == "failed" and not prev.migrate:
                a.reschedule_events = prev.reschedule_events + [{
                    "RescheduleTime": _now_ns(), "PrevAllocID": prev.id, "PrevNodeID": prev.node.id,
                    "Delay": int((self._may_reschedule(prev) or 0) * NS)}]
            prev.next_allocation = a.id
        idx = self._bump()
        a.create_index = a.modify_index = idx
        self.allocs[a.id] = a
        self._by_job.setdefault(job["ID"], []).append(a)
        self.allocs_index = idx
        self.job_alloc_index[job["ID"]] = idx
        a.dir = os.path.join(self.data_dir, "alloc", a.id)
        for t in tg["Tasks"]:
            th = threading.Thread(target=self._run_task, args=(a, t), daemon=True,
                                  name=f"alloc-{a.id[:8]}-{t['Name']}")
            a.threads.append(th)
        for th in a.threads:
            th.start()
        return a

    def _stop_alloc(self, a: _Alloc, why: str, migrate: bool = False) -> None:
        if a.desired_status != "run":
            return
        a.desired_status = "stop"
        a.desired_description = why
        a.migrate = migrate
        a.stop_event.set()
        self._touch_alloc(a)
        if all(ts["State"] == "dead" for ts in a.task_states.values()) or not a.threads:
            self._refresh_alloc(a)
        for t in a.group["Tasks"]:
            p = a.procs.get(t["Name"])
            if p is not None and p.poll() is None:
                threading.Thread(target=self._kill, args=(a, t, p), daemon=True).start()

    def _kill(self, a: _Alloc, task: dict, p: subprocess.Popen) -> None:
        """Kill signal, wait KillTimeout, then SIGKILL (§4a KillTimeout, KillSignal)."""
        sig_name = task.get("KillSignal") or "SIGINT"
        sig = getattr(signal, sig_name, signal.SIGINT)
        # The client caps the job's kill_timeout at its max_kill_timeout (driver_handle.go:
        # min(task.KillTimeout, maxKillTimeout)); the job keeps asking for more.
        timeout = min((task.get("KillTimeout") or 0) / 1e9, a.node.max_kill_timeout)
        # Services are removed from Consul before the task is signalled, then ShutdownDelay
        # gives clients time to notice (Nomad's pre-kill hook).
        with self._cond:
            self._deregister_services(a, task)
        shutdown_delay = (task.get("ShutdownDelay") or 0) / 1e9
        if shutdown_delay:
            self._closing.wait(shutdown_delay)  # cut short when the double shuts down
        with self._cond:
            self._event(a, task["Name"], "Killing",
                        f"Sent interrupt. Waiting {format_go_duration(timeout)} before force killing",
                        {"kill_timeout": format_go_duration(timeout)}, KillTimeout=int(timeout * NS))
        _killpg(p, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(p, signal.SIGKILL)

    # ------------------------------------------------------------------ task runner
    def _event(self, a: _Alloc, task: str, etype: str, display: str, details: dict | None = None,
               **flat) -> None:
        ev = {"Type": etype, "Time": _now_ns(), "DisplayMessage": display, "Details": details or {},
              "Message": "", "FailsTask": bool(flat.pop("FailsTask", False)), "ExitCode": 0, "Signal": 0,
              "DriverError": "", "DriverMessage": "", "KillTimeout": 0, "KillError": "", "KillReason": "",
              "RestartReason": "", "SetupError": "", "StartDelay": 0, "DownloadError": "",
              "ValidationError": "", "FailedSibling": "", "TaskSignal": "", "TaskSignalReason": "",
              "GenericSource": ""}
        ev.update(flat)
        events = a.task_states[task]["Events"]
        events.append(ev)
        del events[:-10]  # at most the last 10 events are kept (§6)
        self._touch_alloc(a)

    def _refresh_alloc(self, a: _Alloc) -> None:
        states = a.task_states.values()
        before = a.client_status
        if a.lost:
            a.client_status, a.client_description = "lost", "alloc is lost since its node is down"
        elif any(ts["Failed"] for ts in states) and all(ts["State"] == "dead" for ts in states):
            a.client_status, a.client_description = "failed", "Failed tasks"
        elif all(ts["State"] == "dead" for ts in states):
            a.client_status, a.client_description = "complete", "All tasks have completed"
        elif any(ts["State"] == "running" for ts in states):
            a.client_status, a.client_description = "running", "Tasks are running"
        else:
            a.client_status, a.client_description = "pending", "No tasks have started"
        if a.client_status != before:
            self._touch_alloc(a)
            if a.terminal:
                job = self.jobs.get(a.job["ID"])
                if job is not None:
                    self._reconcile(job)

    def _task_env(self, a: _Alloc, task: dict) -> dict[str, str]:
        job, tg = a.job, a.group
        alloc_dir = os.path.join(a.dir, "alloc")
        task_dir = os.path.join(a.dir, task["Name"])
        env = {
            "NOMAD_ALLOC_ID": a.id, "NOMAD_SHORT_ALLOC_ID": a.id[:8], "NOMAD_ALLOC_NAME": a.name,
            "NOMAD_ALLOC_INDEX": str(a.index), "NOMAD_JOB_ID": job["ID"], "NOMAD_JOB_NAME": job["Name"],
            "NOMAD_GROUP_NAME": tg["Name"], "NOMAD_TASK_NAME": task["Name"], "NOMAD_NAMESPACE": "default",
            "NOMAD_REGION": job.get("Region", "global"), "NOMAD_DC": a.node.datacenter,
            "NOMAD_ALLOC_DIR": alloc_dir, "NOMAD_TASK_DIR": os.path.join(task_dir, "local"),
            "NOMAD_SECRETS_DIR": os.path.join(task_dir, "secrets"),
            "NOMAD_CPU_LIMIT": str(task["Resources"].get("CPU", 100)),
            "NOMAD_MEMORY_LIMIT": str(task["Resources"].get("MemoryMB", 300)),
        }
        if task["Resources"].get("MemoryMaxMB"):
            env["NOMAD_MEMORY_MAX_LIMIT"] = str(task["Resources"]["MemoryMaxMB"])
        if job.get("ParentID"):
            env["NOMAD_JOB_PARENT_ID"] = job["ParentID"]
        # Meta: job < group < task; dispatched MetaOptional keys default to "" (§12).
        meta = {}
        pj = job.get("ParameterizedJob") or {}
        if job.get("Dispatched"):
            meta.update({k: "" for k in pj.get("MetaOptional") or []})
        meta.update(job.get("Meta") or {})
        meta.update(tg.get("Meta") or {})
        meta.update(task.get("Meta") or {})
        for k, v in meta.items():
            key = re.sub(r"[^A-Za-z0-9_.]", "_", k)
            env[f"NOMAD_META_{key}"] = v
            env[f"NOMAD_META_{key.upper()}"] = v
        for p in a.ports:
            lbl = p["Label"]
            port = p["To"] if p["To"] and p["To"] > 0 else p["Value"]
            env[f"NOMAD_IP_{lbl}"] = p["HostIP"]
            env[f"NOMAD_PORT_{lbl}"] = str(port)
            env[f"NOMAD_ADDR_{lbl}"] = f'{p["HostIP"]}:{port}'
            env[f"NOMAD_HOST_IP_{lbl}"] = p["HostIP"]
            env[f"NOMAD_HOST_PORT_{lbl}"] = str(p["Value"])
            env[f"NOMAD_HOST_ADDR_{lbl}"] = f'{p["HostIP"]}:{p["Value"]}'
            env[f"NOMAD_ALLOC_PORT_{lbl}"] = str(port)
        return env

    def _interpolate(self, value, env: dict, node: FakeNode):
        if isinstance(value, list):
            return [self._interpolate(v, env, node) for v in value]
        if isinstance(value, dict):
            return {k: self._interpolate(v, env, node) for k, v in value.items()}
        if not isinstance(value, str):
            return value

        def sub(m):
            key = m.group(1).strip()
            if key in env:
                return env[key]
            special = {"node.unique.id": node.id, "node.unique.name": node.name,
                       "node.datacenter": node.datacenter, "node.class": node.node_class,
                       "node.pool": "default", "node.region": "global"}
            if key in special:
                return special[key]
            if key.startswith("meta.") and key[5:] in node.meta:
                return node.meta[key[5:]]
            if key.startswith("attr.") and key[5:] in node.attributes:
                return node.attributes[key[5:]]
            if key.startswith("env.") or key.startswith("env[\""):
                name = key[4:] if key.startswith("env.") else key[5:-2]
                return env.get(name, "")
            return m.group(0)  # unknown interpolations are left as they are
        return _INTERP.sub(sub, value)

    def _run_task(self, a: _Alloc, task: dict) -> None:
        name = task["Name"]
        ts = a.task_states[name]
        with self._cond:
            self._event(a, name, "Received", "Task received by client")
            self._event(a, name, "Task Setup", "Building Task Directory", {"message": "Building Task Directory"},
                        Message="Building Task Directory")
        task_dir = os.path.join(a.dir, name)
        for d in (os.path.join(a.dir, "alloc", "logs"), os.path.join(a.dir, "alloc", "data"),
                  os.path.join(a.dir, "alloc", "tmp"), os.path.join(task_dir, "local"),
                  os.path.join(task_dir, "secrets"), os.path.join(task_dir, "tmp")):
            os.makedirs(d, exist_ok=True)
        if task.get("DispatchPayload") and a.job.get("Payload"):
            with open(os.path.join(task_dir, "local", task["DispatchPayload"]["File"]), "wb") as f:
                f.write(base64.b64decode(a.job["Payload"]))
        policy = task["RestartPolicy"]
        restarts: list[float] = []
        while True:
            if a.stop_event.is_set():
                with self._cond:
                    ts["State"] = "dead"
                    ts["FinishedAt"] = _rfc3339()
                    self._refresh_alloc(a)
                return
            with self._cond:
                nomad_env = self._task_env(a, task)
                task_env = self._interpolate(task.get("Env") or {}, nomad_env, a.node)
                config = self._interpolate(task.get("Config") or {}, {**nomad_env, **task_env}, a.node)
            env = dict(os.environ)  # raw_exec passes the host environment through (§12)
            env.update(nomad_env)
            env.update({k: str(v) for k, v in task_env.items()})
            command = config.get("command")
            args = [str(x) for x in config.get("args") or []]
            rc = None
            try:
                if not command:
                    raise OSError("missing command in task config")
                if not os.path.isabs(command) and os.sep in command:
                    command = os.path.join(task_dir, command)
                out = open(os.path.join(a.dir, "alloc", "logs", f"{name}.stdout.0"), "ab")
                err = open(os.path.join(a.dir, "alloc", "logs", f"{name}.stderr.0"), "ab")
                try:
                    proc = subprocess.Popen(a.node.exec_prefix + [command] + args, env=env, cwd=config.get("work_dir") or task_dir,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            start_new_session=True)
                finally:
                    out.close()
                    err.close()
            except OSError as e:
                with self._cond:
                    msg = f"failed to launch command with executor: {e}"
                    self._event(a, name, "Driver Failure", msg, {"driver_error": msg}, DriverError=msg)
            else:
                with self._cond:
                    a.procs[name] = proc
                    ts["State"] = "running"
                    ts["StartedAt"] = _rfc3339()
                    self._event(a, name, "Started", "Task started by client")
                    self._refresh_alloc(a)
                    self._register_services(a, task)
                    if a.stop_event.is_set() and proc.poll() is None:
                        threading.Thread(target=self._kill, args=(a, task, proc), daemon=True).start()
                rc = proc.wait()
                with self._cond:
                    if not a.lost:  # a dead node cannot deregister anything
                        self._deregister_services(a, task)
            with self._cond:
                if a.lost:
                    ts["State"] = "dead"
                    self._refresh_alloc(a)
                    return
                if a.stop_event.is_set():
                    self._event(a, name, "Killed", "Task successfully killed")
                    ts["State"] = "dead"
                    ts["FinishedAt"] = _rfc3339()
                    self._refresh_alloc(a)
                    return
                if rc is not None:
                    sig = -rc if rc < 0 else 0
                    code = rc if rc >= 0 else 128 + sig
                    self._event(a, name, "Terminated", f"Exit Code: {code}" + (f", Signal: {sig}" if sig else ""),
                                {"exit_code": str(code), "signal": str(sig), "oom_killed": "false"},
                                ExitCode=code, Signal=sig)
                if rc == 0 and a.job["Type"] in ("batch", "sysbatch"):
                    ts["State"] = "dead"
                    ts["FinishedAt"] = _rfc3339()
                    self._refresh_alloc(a)
                    return
                now = time.monotonic()
                interval = (policy.get("Interval") or 0) / 1e9
                restarts[:] = [t for t in restarts if now - t < interval]
                attempts = policy.get("Attempts") or 0
                if len(restarts) < attempts:
                    restarts.append(now)
                    delay = (policy.get("Delay") or 0) / 1e9
                    self._event(a, name, "Restarting", f"Task restarting in {format_go_duration(delay)}",
                                {"restart_reason": "Restart within policy", "start_delay": str(int(delay * NS))},
                                RestartReason="Restart within policy", StartDelay=int(delay * NS))
                    ts["Restarts"] += 1
                    ts["LastRestart"] = _rfc3339()
                    ts["State"] = "pending"
                    self._refresh_alloc(a)
                elif policy.get("Mode") == "delay" and attempts > 0:
                    # Mode "delay": wait until the interval is over, then start counting again.
                    delay = max(0.0, interval - (now - restarts[0])) if restarts else interval
                    restarts.clear()
                    reason = "Exceeded allowed attempts, applying a delay"
                    self._event(a, name, "Restarting", f"Task restarting in {format_go_duration(delay)}",
                                {"restart_reason": reason, "start_delay": str(int(delay * NS))},
                                RestartReason=reason, StartDelay=int(delay * NS))
                    ts["Restarts"] += 1
                    ts["LastRestart"] = _rfc3339()
                    ts["State"] = "pending"
                    self._refresh_alloc(a)
                else:
                    reason = ("Policy allows no restarts" if attempts == 0 else
                              f'Exceeded allowed attempts {attempts} in interval {format_go_duration(interval)} '
                              f'and mode is "{policy.get("Mode", "fail")}"')
                    self._event(a, name, "Not Restarting", reason, {"fails_task": "true", "restart_reason": reason},
                                RestartReason=reason, FailsTask=True)
                    ts["State"] = "dead"
                    ts["Failed"] = True
                    ts["FinishedAt"] = _rfc3339()
                    self._stop_siblings(a, name)
                    self._refresh_alloc(a)
                    return
            if a.stop_event.wait(delay * self.delay_scale):
                continue

    def _stop_siblings(self, a: _Alloc, failed_task: str) -> None:
        for t in a.group["Tasks"]:
            if t["Name"] == failed_task:
                continue
            p = a.procs.get(t["Name"])
            if p is not None and p.poll() is None:
                self._event(a, t["Name"], "Sibling Task Failed", f"Task's sibling {failed_task!r} failed",
                            FailedSibling=failed_task)
                a.task_states[t["Name"]]["Failed"] = True
                threading.Thread(target=self._kill, args=(a, t, p), daemon=True).start()

    # ------------------------------------------------------------------ Consul services (§13)
    def _services_of(self, a: _Alloc, task: dict) -> list[tuple[dict, str]]:
        out = [(s, f"task-{a.id}-{task['Name']}") for s in task.get("Services") or []]
        if task is a.group["Tasks"][0]:
            out += [(s, f"task-{a.id}-group-{a.group['Name']}") for s in a.group.get("Services") or []]
        return out

    def _register_services(self, a: _Alloc, task: dict) -> None:
        env = self._task_env(a, task)
        for svc, owner in self._services_of(a, task):
            if svc.get("Provider", "consul") != "consul":
                continue
            svc = self._interpolate(svc, env, a.node)
            port = next((p for p in a.ports if p["Label"] == svc.get("PortLabel")), None)
            address = port["HostIP"] if port else a.node.address
            port_value = port["Value"] if port else 0
            sid = f"_nomad-{owner}-{svc['Name']}-{svc.get('PortLabel', '')}"
            checks = []
            for c in svc.get("Checks") or []:
                cport = next((p for p in a.ports if p["Label"] == c.get("PortLabel")), port)
                chash = hashlib.sha1(f"{sid}{json.dumps(c, sort_keys=True)}".encode()).hexdigest()
                check = {"CheckID": f"_nomad-check-{chash}",
                         "Name": c.get("Name") or f'service: "{svc["Name"]}" check',
                         "Interval": format_go_duration(c["Interval"] / 1e9),
                         "Timeout": format_go_duration(c["Timeout"] / 1e9)}
                if c.get("InitialStatus"):
                    check["Status"] = c["InitialStatus"]
                ctype = c.get("Type", "").lower()
                host = f'{cport["HostIP"]}:{cport["Value"]}' if cport else address
                if ctype == "http":
                    check["HTTP"] = f'{c.get("Protocol") or "http"}://{host}{c.get("Path", "/")}'
                    if c.get("Method"):
                        check["Method"] = c["Method"]
                    if c.get("Header"):
                        check["Header"] = c["Header"]
                elif ctype == "tcp":
                    check["TCP"] = host
                else:
                    continue
                checks.append(check)
            body = {"ID": sid, "Name": svc["Name"], "Tags": svc.get("Tags") or [],
                    "Meta": {**(svc.get("Meta") or {}), "external-source": "nomad"},
                    "Address": address, "Port": port_value, "Checks": checks}
            self._svc_desired[sid] = (body, a.node)
        self._svc_dirty.set()

    def _deregister_services(self, a: _Alloc, task: dict) -> None:
        for sid in [s for s in self._svc_desired if s.startswith(f"_nomad-task-{a.id}-")]:
            if sid.startswith(f"_nomad-task-{a.id}-{task['Name']}-") or task is a.group["Tasks"][0]:
                del self._svc_desired[sid]
        self._svc_dirty.set()

    def _consul_sync_loop(self) -> None:
        last_full = time.monotonic()
        while not self._stop.is_set():
            self._svc_dirty.wait(min(self.consul_sync_interval, 1.0))
            full = time.monotonic() - last_full >= self.consul_sync_interval
            if self._svc_dirty.is_set() or full:
                self._svc_dirty.clear()
                if full:
                    last_full = time.monotonic()
                try:
                    self._sync_services(full=full)
                except Exception:  # Consul unreachable: retry on the next pass
                    time.sleep(0.05)
                    self._svc_dirty.set()

    def _sync_services(self, full: bool = False) -> None:
        consul = self.consul
        if consul is None:
            return
        with self._cond:
            desired = dict(self._svc_desired)
        if isinstance(consul, str):
            present = set(requests.get(f"{consul}/v1/agent/services", timeout=5).json()) if full else None

            def reg(body, node):
                requests.put(f"{consul}/v1/agent/service/register", json=body, timeout=5).raise_for_status()

            def dereg(sid):
                requests.put(f"{consul}/v1/agent/service/deregister/{sid}", timeout=5)
        else:
            if consul.server.is_down:
                raise ConnectionError("consul down")
            present = set(consul.services) if full else None

            def reg(body, node):
                consul.register_service(body, node=node.name, address=node.address)

            def dereg(sid):
                try:
                    consul.deregister_service(sid)
                except HTTPError:
                    pass
        for sid, (body, node) in desired.items():
            if sid not in self._svc_registered or (present is not None and sid not in present):
                reg(body, node)
                self._svc_registered.add(sid)
        for sid in list(self._svc_registered):
            if sid not in desired:
                dereg(sid)
                self._svc_registered.discard(sid)

    # ------------------------------------------------------------------ background loop
    def _scheduler_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                blocked = {e["JobID"] for e in self.evals.values() if e["Status"] == "blocked"}
                for job in list(self.jobs.values()):
                    if job["ID"] in blocked or self._missing_slots(job):
                        self._reconcile(job)
                self._drain_step()
                self._deployment_step()
            self._stop.wait(self._tick)

    def _drain_step(self) -> None:
        now = time.monotonic()
        for node in self.nodes.values():
            ds = node.drain_strategy
            if ds is None:
                continue
            deadline = ds.get("Deadline") or 0
            forced = deadline < 0 or (deadline > 0 and now - node.drain_started >= deadline / 1e9)
            live = [a for a in self.allocs.values() if a.node is node and not a.terminal]
            for a in live:
                if a.desired_status != "run":
                    continue
                if a.job["Type"] == "system" and ds.get("IgnoreSystemJobs"):
                    continue
                if a.job["Type"] == "service" or forced:
                    self._stop_alloc(a, "alloc is being migrated", migrate=True)
            if not [a for a in self.allocs.values() if a.node is node and not a.terminal]:
                node.drain_strategy = None
                node.last_drain = {**(node.last_drain or {}), "Status": "complete", "UpdatedAt": _rfc3339()}
                self._touch_node(node)

    # ------------------------------------------------------------------ host failures
    def node_down(self, name: str) -> None:
        """The host ``name`` dies: its processes are SIGKILLed, its allocations become ``lost``
        and are replaced elsewhere, the node's status is ``down``. Its services stay in Consul
        (its agent died with it) with the node's serfHealth critical, as after a real crash."""
        with self._cond:
            node = self.node_by_name(name)
            node.status = "down"
            self._touch_node(node)
            for a in self._allocs_on(node):
                a.lost = True
                a.desired_status, a.desired_description, a.migrate = "stop", "alloc is lost since its node is down", True
                a.stop_event.set()
                for p in a.procs.values():
                    if p.poll() is None:
                        _killpg(p, signal.SIGKILL)
                if all(ts["State"] == "dead" for ts in a.task_states.values()):
                    self._refresh_alloc(a)
                self._touch_alloc(a)
        if self.consul is not None and not isinstance(self.consul, str):
            self.consul.set_node_health(name, "critical")

    def node_up(self, name: str) -> None:
        """The host comes back: status ``ready``; the services of its lost allocations are removed
        from Consul (the Nomad client cleans up after itself) and serfHealth passes again."""
        with self._cond:
            node = self.node_by_name(name)
            node.status = "ready"
            self._touch_node(node)
            for sid, (_body, n) in list(self._svc_desired.items()):
                if n is node and any(a.lost and sid.startswith(f"_nomad-task-{a.id}-") for a in self.allocs.values()):
                    del self._svc_desired[sid]
            self._svc_dirty.set()
        if self.consul is not None and not isinstance(self.consul, str):
            self.consul.set_node_health(name, "passing")

    def _allocs_on(self, node: FakeNode) -> list[_Alloc]:
        return [a for a in self.allocs.values() if a.node is node and not a.terminal]

    # ------------------------------------------------------------------ test conveniences
    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """Waits (on the state condition variable, no polling sleep) until ``predicate()``
        returns a truthy value, which is returned. Raises ``TimeoutError`` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            # The predicate runs without the lock, so it may call the double over HTTP.
            v = predicate()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            with self._cond:
                self._cond.wait(min(left, 0.2))

    def allocations(self, job_id: str) -> list[dict]:
        with self._cond:
            return [a.full() for a in self._by_job.get(job_id, [])]

    def processes(self) -> list[subprocess.Popen]:
        with self._cond:
            return [p for a in self.allocs.values() for p in a.procs.values()]

    # ------------------------------------------------------------------ HTTP
    def _build_app(self) -> App:
        app = App()
        d = self

        def body_json(request):
            raw = request.get_data()
            if not raw.strip():
                raise HTTPError(400, "Request body is empty")
            try:
                return canon_keys(json.loads(raw))
            except ValueError as e:
                raise HTTPError(400, str(e))

        def bool_arg(request, name):
            v = request.args.get(name)
            if v is None:
                return False
            if v.lower() in ("1", "t", "true"):
                return True
            if v.lower() in ("0", "f", "false", ""):
                return False
            raise HTTPError(400, f'Failed to parse value of "{name}" ({v}) as a bool: strconv.ParseBool: parsing "{v}": invalid syntax')

        def write(value, index):
            return as_json(value, headers={"X-Nomad-Index": str(index)})

        def method_not_allowed(method):
            return text(405, "Invalid method")
        app.method_not_allowed = method_not_allowed

        def decorate(request, response):
            d.requests.append((request.method, request.path))
            d.request_tokens.append((request.method, request.path, request_token(request)))
            return response
        app.decorate = decorate

        def request_token(request) -> str:
            """§1: X-Nomad-Token, else an Authorization Bearer token."""
            token = request.headers.get("X-Nomad-Token", "")
            auth = request.headers.get("Authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            return token

        def authorize(request):
            """§1/§11: 403 "ACL token not found" for an unknown token, "Permission denied" when the
            token's policies lack the endpoint's capability (the anonymous token has none)."""
            if d.acl_tokens is None:
                return
            need = required_acl(request.method, request.path)
            if need is None:
                return
            token = request_token(request)
            if token and token not in d.acl_tokens:
                raise HTTPError(403, "ACL token not found")
            authz = d.acl_tokens.get(token) if token else NomadAuthorizer("")
            kind, what = need
            ok = authz.allows_node(what) if kind == "node" else authz.allows_namespace(what)
            if not ok:
                raise HTTPError(403, "Permission denied")
        app.authorize = authorize

        @app.route(["GET"], "/v1/status/leader")
        def leader(request):
            return as_json("127.0.0.1:4647")

        @app.route(["GET"], "/v1/regions")
        def regions(request):
            return as_json(["global"])

        @app.route(["GET"], "/v1/agent/self")
        def agent_self(request):
            return as_json({"config": {"Region": "global", "Datacenter": "dc1", "Version": {"Version": "2.0.5"},
                                       "Server": {"Enabled": True}, "Client": {"Enabled": True}},
                            "member": {"Name": "nomad-double.global", "Addr": "127.0.0.1", "Port": 4648,
                                       "Status": "alive", "Tags": {"region": "global", "dc": "dc1", "role": "nomad"}},
                            "stats": {"nomad": {"leader": "true", "known_regions": "1"}}})

        @app.route(["GET", "PUT", "POST"], "/v1/jobs")
        def jobs(request):
            if request.method == "GET":
                idx = d._block(request, lambda: d.jobs_index)
                prefix = request.args.get("prefix", "")
                meta = bool_arg(request, "meta")
                with d._cond:
                    out = [d._job_stub(j, meta) for jid, j in sorted(d.jobs.items()) if jid.startswith(prefix)]
                return as_json(out, headers=d._read_headers(idx))
            body = body_json(request)
            job = body.get("Job")
            if not job:
                raise HTTPError(400, "Job must be specified")
            if not job.get("ID"):
                raise HTTPError(400, "Job ID hasn't been provided")
            res = d.register(job)
            return write(res, res["Index"])

        @app.route(["PUT", "POST"], "/v1/jobs/parse")
        def parse(request):
            body = body_json(request)
            hcl = body.get("JobHCL") or ""
            if not hcl.strip():
                raise HTTPError(400, "Job spec is empty")
            try:
                job = hcl_to_job(hcl, body.get("Variables") or "")
            except HCLError as e:
                raise HTTPError(400, f"Failed to parse job: {e}")
            if body.get("Canonicalize"):
                job = canonicalize(job)
            return as_json(job)

        @app.route(["GET"], "/v1/allocations")
        def allocations(request):
            idx = d._block(request, lambda: d.allocs_index)
            prefix = request.args.get("prefix", "")
            res = bool_arg(request, "resources")
            with d._cond:
                out = []
                for a in sorted(d.allocs.values(), key=lambda a: a.create_index):
                    if a.id.startswith(prefix):
                        s = a.stub()
                        if res:
                            s["AllocatedResources"] = a.resources()
                        out.append(s)
            return as_json(out, headers=d._read_headers(idx))

        @app.route(["GET"], "/v1/allocation/([^/]+)")
        def allocation(request, aid):
            def index():
                a = d.allocs.get(aid)
                return a.modify_index if a else d.allocs_index
            idx = d._block(request, index)
            with d._cond:
                a = d.allocs.get(aid)
                if a is None:
                    raise HTTPError(404, "alloc not found", d._read_headers(idx))
                return as_json(a.full(), headers=d._read_headers(idx))

        @app.route(["PUT", "POST"], "/v1/allocation/([^/]+)/stop")
        def allocation_stop(request, aid):
            with d._cond:
                a = d.allocs.get(aid)
                if a is None:
                    raise HTTPError(404, "alloc not found")
                d._stop_alloc(a, "alloc was stopped by user", migrate=True)
                ev = d._new_eval(a.job, "alloc-stop")
                return write({"EvalID": ev["ID"], "Index": ev["CreateIndex"]}, ev["CreateIndex"])

        @app.route(["GET"], "/v1/evaluations")
        def evaluations(request):
            idx = d._block(request, lambda: d.evals_index)
            job_id = request.args.get("job")
            status = request.args.get("status")
            with d._cond:
                out = [copy.deepcopy(e) for e in d.evals.values()
                       if (not job_id or e["JobID"] == job_id) and (not status or e["Status"] == status)]
            return as_json(out, headers=d._read_headers(idx))

        @app.route(["GET"], "/v1/evaluation/([^/]+)")
        def evaluation(request, eid):
            idx = d._block(request, lambda: d.evals[eid]["ModifyIndex"] if eid in d.evals else d.evals_index)
            with d._cond:
                e = d.evals.get(eid)
                if e is None:
                    raise HTTPError(404, "eval not found")
                return as_json(copy.deepcopy(e), headers=d._read_headers(idx))

        @app.route(["GET"], "/v1/deployments")
        def deployments(request):
            idx = d._block(request, lambda: d.deployments_index)
            with d._cond:
                out = [d.deployment_view(x) for x in sorted(d.deployments.values(), key=lambda x: -x["CreateIndex"])]
            return as_json(out, headers=d._read_headers(idx))

        @app.route(["GET"], "/v1/deployment/([^/]+)")
        def deployment(request, did):
            idx = d._block(request, lambda: d.deployments[did]["ModifyIndex"] if did in d.deployments
                            else d.deployments_index)
            with d._cond:
                x = d.deployments.get(did)
                if x is None:
                    raise HTTPError(404, "deployment not found")
                return as_json(d.deployment_view(x), headers=d._read_headers(idx))

        @app.route(["GET"], "/v1/nodes")
        def nodes(request):
            idx = d._block(request, lambda: d.nodes_index)
            prefix = request.args.get("prefix", "")
            with d._cond:
                out = [n.view(False) for n in sorted(d.nodes.values(), key=lambda n: n.create_index)
                       if n.id.startswith(prefix)]
            return as_json(out, headers=d._read_headers(idx))

        def get_node(nid):
            n = d.nodes.get(nid)
            if n is None:
                raise HTTPError(404, "node not found")
            return n

        @app.route(["GET"], "/v1/node/([^/]+)")
        def node(request, nid):
            idx = d._block(request, lambda: d.nodes[nid].modify_index if nid in d.nodes else d.nodes_index)
            with d._cond:
                return as_json(get_node(nid).view(True), headers=d._read_headers(idx))

        @app.route(["GET"], "/v1/node/([^/]+)/allocations")
        def node_allocs(request, nid):
            idx = d._block(request, lambda: d.allocs_index)
            with d._cond:
                n = get_node(nid)
                out = [a.full() for a in d.allocs.values() if a.node is n]
            return as_json(out, headers=d._read_headers(idx))

        @app.route(["PUT", "POST"], "/v1/node/([^/]+)/drain")
        def node_drain(request, nid):
            body = body_json(request)
            with d._cond:
                n = get_node(nid)
                spec = body.get("DrainSpec")
                if spec is None:
                    if n.drain_strategy is not None:
                        n.drain_strategy = None
                        n.last_drain = {**(n.last_drain or {}), "Status": "canceled", "UpdatedAt": _rfc3339()}
                    if body.get("MarkEligible"):
                        n.eligibility = "eligible"
                else:
                    deadline = spec.get("Deadline") or 0
                    n.drain_strategy = {"Deadline": deadline, "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs")),
                                        "ForceDeadline": ZERO_TIME, "StartedAt": _rfc3339()}
                    n.drain_started = time.monotonic()
                    n.eligibility = "ineligible"
                    n.last_drain = {"StartedAt": _rfc3339(), "UpdatedAt": _rfc3339(), "Status": "draining",
                                    "AccessorID": "", "Meta": body.get("Meta") or {}}
                idx = d._touch_node(n)
                d._drain_step()
                return write({"NodeModifyIndex": idx, "EvalIDs": [], "EvalCreateIndex": 0, "Index": idx}, idx)

        @app.route(["PUT", "POST"], "/v1/node/([^/]+)/eligibility")
        def node_eligibility(request, nid):
            body = body_json(request)
            elig = body.get("Eligibility")
            if elig not in ("eligible", "ineligible"):
                raise HTTPError(400, f"invalid scheduling eligibility {elig!r}")
            with d._cond:
                n = get_node(nid)
                if n.drain_strategy is not None and elig == "eligible":
                    raise HTTPError(500, "can not set node's scheduling eligibility to eligible while it is draining")
                n.eligibility = elig
                idx = d._touch_node(n)
                return write({"NodeModifyIndex": idx, "EvalIDs": [], "EvalCreateIndex": 0, "Index": idx}, idx)

        # /v1/job/<id>[/<action>] routed by suffix: child IDs contain '/' (§1).
        @app.route(["GET", "PUT", "POST", "DELETE"], "/v1/job/(.+)")
        def job_route(request, rest):
            for action in ("allocations", "evaluations", "dispatch", "scale", "summary", "versions",
                           "deployment", "deployments"):
                if rest.endswith("/" + action):
                    return job_action(request, rest[:-len(action) - 1], action)
            return job_action(request, rest, "")

        def job_action(request, job_id, action):
            from urllib.parse import unquote
            job_id = unquote(job_id)
            m = request.method
            if action == "":
                if m == "GET":
                    idx = d._block(request, lambda: d.jobs[job_id]["ModifyIndex"] if job_id in d.jobs else d.jobs_index)
                    with d._cond:
                        j = d.jobs.get(job_id)
                        if j is None:
                            raise HTTPError(404, "job not found", d._read_headers(idx))
                        return as_json(d._job_view(j), headers=d._read_headers(idx))
                if m == "DELETE":
                    res = d._deregister(job_id, bool_arg(request, "purge"))
                    return write(res, res["Index"] or d.index)
                body = body_json(request)
                job = body.get("Job")
                if not job:
                    raise HTTPError(400, "Job must be specified")
                if job.get("ID") and job["ID"] != job_id:
                    raise HTTPError(400, "Job ID does not match name")
                job["ID"] = job_id
                res = d.register(job)
                return write(res, res["Index"])
            if action == "allocations":
                if m != "GET":
                    raise HTTPError(405, "Invalid method")
                idx = d._block(request, lambda: d.job_alloc_index.get(job_id, d.jobs_index))
                with d._cond:
                    out = [a.stub() for a in sorted(d.allocs.values(), key=lambda a: a.create_index)
                           if a.job["ID"] == job_id]
                return as_json(out, headers=d._read_headers(idx))
            if action in ("deployment", "deployments"):
                if m != "GET":
                    raise HTTPError(405, "Invalid method")
                idx = d._block(request, lambda: d.deployments_index)
                with d._cond:
                    if action == "deployment":
                        out = d.deployment_view(d._latest_deployment(job_id))
                    else:
                        out = [d.deployment_view(x) for x in sorted(d.deployments.values(), key=lambda x: -x["CreateIndex"])
                               if x["JobID"] == job_id]
                return as_json(out, headers=d._read_headers(idx))
            if action == "evaluations":
                if m != "GET":
                    raise HTTPError(405, "Invalid method")
                idx = d._block(request, lambda: d.evals_index)
                with d._cond:
                    out = [copy.deepcopy(e) for e in d.evals.values() if e["JobID"] == job_id]
                return as_json(out, headers=d._read_headers(idx))
            if action == "summary":
                idx = d._block(request, lambda: d.jobs[job_id].get("_summary_index", d.jobs[job_id]["ModifyIndex"])
                               if job_id in d.jobs else d.jobs_index)
                with d._cond:
                    j = d.jobs.get(job_id)
                    if j is None:
                        raise HTTPError(404, "job not found")
                    return as_json(d._summary(j), headers=d._read_headers(idx))
            if action == "versions":
                with d._cond:
                    j = d.jobs.get(job_id)
                    if j is None:
                        raise HTTPError(404, "job versions not found")
                    return as_json({"Versions": [d._job_view(j)], "Diffs": None}, headers=d._read_headers(j["ModifyIndex"]))
            if action == "dispatch":
                if m not in ("PUT", "POST"):
                    raise HTTPError(405, "Invalid method")
                body = body_json(request)
                if body.get("JobID") and body["JobID"] != job_id:
                    raise HTTPError(400, "Job ID does not match")
                res = d.dispatch(job_id, body, request.args.get("idempotency_token", ""))
                return write(res, res["Index"])
            if action == "scale":
                if m == "GET":
                    idx = d._block(request, lambda: d.jobs[job_id]["ModifyIndex"] if job_id in d.jobs else d.jobs_index)
                    with d._cond:
                        j = d.jobs.get(job_id)
                        if j is None:
                            raise HTTPError(404, f'job "{job_id}" not found')
                        groups = {}
                        for tg in j["TaskGroups"]:
                            live = [a for a in d.allocs.values() if a.job["ID"] == job_id
                                    and a.group["Name"] == tg["Name"] and not a.terminal]
                            groups[tg["Name"]] = {"Desired": tg["Count"], "Placed": len(live),
                                                  "Running": sum(1 for a in live if a.client_status == "running"),
                                                  "Healthy": 0, "Unhealthy": 0,
                                                  "Events": copy.deepcopy(j.get("_scale_events", {}).get(tg["Name"], []))}
                        return as_json({"JobID": job_id, "Namespace": "default", "JobCreateIndex": j["CreateIndex"],
                                        "JobModifyIndex": j["JobModifyIndex"], "JobStopped": j["Stop"],
                                        "TaskGroups": groups}, headers=d._read_headers(idx))
                if m not in ("PUT", "POST"):
                    raise HTTPError(405, "Invalid method")
                body = body_json(request)
                target = body.get("Target") or {}
                group = target.get("Group")
                count = body.get("Count")
                with d._cond:
                    if target.get("Job") and target["Job"] != job_id:
                        raise HTTPError(400, "job ID in payload did not match URL")
                    if not group:
                        raise HTTPError(400, "missing task group name for scaling action")
                    if count is not None and body.get("Error"):
                        raise HTTPError(400, "scaling action should not contain count if error is true")
                    if count is not None and count < 0:
                        raise HTTPError(400, "scaling action count can't be negative")
                    j = d.jobs.get(job_id)
                    if j is None:
                        raise HTTPError(404, f'job "{job_id}" not found')
                    tg = next((g for g in j["TaskGroups"] if g["Name"] == group), None)
                    if tg is None:
                        raise HTTPError(400, f'task group "{group}" specified for scaling does not exist in job')
                    sc = tg.get("Scaling") or {}
                    if count is not None:
                        # nomad/job_endpoint.go Job.Scale
                        dep = d._latest_deployment(job_id)
                        if d.deployment_active(dep) and dep["JobCreateIndex"] == j["CreateIndex"]:
                            raise HTTPError(400, "job scaling blocked due to active deployment")
                    if count is not None and sc:
                        if sc.get("Min") is not None and count < sc["Min"]:
                            raise HTTPError(400, f'group count was less than scaling policy minimum: {count} < {sc["Min"]}')
                        if sc.get("Max") is not None and count > sc["Max"]:
                            raise HTTPError(400, f'group count was greater than scaling policy maximum: {count} > {sc["Max"]}')
                    idx = d._bump()
                    j.setdefault("_scale_events", {}).setdefault(group, []).insert(0, {
                        "Count": count, "PreviousCount": tg["Count"], "Message": body.get("Message", ""),
                        "Error": bool(body.get("Error")), "Meta": body.get("Meta"), "Time": _now_ns(),
                        "EvalID": None, "CreateIndex": idx})
                    eval_id, eval_index = "", 0
                    if count is not None:
                        tg["Count"] = count
                        j["ModifyIndex"] = j["JobModifyIndex"] = idx
                        j["Version"] += 1
                        d.jobs_index = idx
                        ev = d._new_eval(j, "job-scaling")
                        eval_id, eval_index = ev["ID"], ev["CreateIndex"]
                        j["_scale_events"][group][0]["EvalID"] = eval_id
                        d._new_deployment(j)
                        d._reconcile(j, ev)
                    return write({"EvalID": eval_id, "EvalCreateIndex": eval_index, "JobModifyIndex": j["JobModifyIndex"],
                                  "Warnings": "", "Index": d.index, "LastContact": 0, "KnownLeader": False}, d.index)
            raise HTTPError(404, "Invalid URL")

        return app


def required_acl(method: str, path: str):
    """The right an endpoint needs (command/agent/*_endpoint.go, nomad/*_endpoint.go): ("ns",
    alternatives of namespace capabilities) or ("node", "read"|"write"); None for none."""
    read = method == "GET"
    if path in ("/v1/status/leader", "/v1/regions", "/v1/agent/self"):
        return None
    if path == "/v1/jobs/parse":
        return ("ns", ("parse-job", "submit-job"))
    if path == "/v1/jobs":
        return ("ns", ("list-jobs",)) if read else ("ns", ("submit-job",))
    if path.startswith("/v1/job/"):
        if path.endswith("/dispatch"):
            return ("ns", ("dispatch-job",))
        if path.endswith("/scale"):
            return ("ns", ("read-job-scaling", "read-job")) if read else ("ns", ("scale-job", "submit-job"))
        return ("ns", ("read-job",)) if read else ("ns", ("submit-job",))
    if path.startswith("/v1/allocation"):
        return ("ns", ("read-job",)) if read else ("ns", ("alloc-lifecycle",))
    if path.startswith(("/v1/evaluation", "/v1/deployment")):
        return ("ns", ("read-job",))
    if path.startswith("/v1/node"):
        return ("node", "read" if read else "write")
    return None


def _killpg(p: subprocess.Popen, sig) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
