"""Instances as Nomad allocations: cluster mode's Scheduler.

A cold start takes one of two paths:

* **Fast path, the runtime pool.** The ``runtime-pool`` job keeps generic runtime instances running
  (``FAAS_POOL=1``: interpreter loaded, no code). A start picks a passing entry of the pool's Consul
  service, claims it atomically with a Consul KV check-and-set on ``faas/pool/claims/<alloc id>``
  (``cas=0``: only one control plane or edge can create the key), and POSTs ``/_/specialize`` with the
  function's settings and a presigned URL of its code. The instance fetches the code once per digest
  into its node's cache, loads it, and registers itself as ``fn-<function>`` through its node's Consul
  agent; the start returns when that entry passes its check. Nomad scheduling takes seconds; this
  takes the time to load the code.
* **Slow path, dispatch.** When the pool has nothing free, or anything on the claim path fails, the
  parameterized ``function-instance`` job is dispatched with the function's meta (the idempotency
  token goes in the query string, where Nomad reads it, so a retried dispatch never makes two
  instances). The start then follows the child job's allocation with blocking queries until it runs
  (then waits for its passing ``fn-<function>`` entry) or fails (``Instance.PlacementFailed`` with the
  reason from Nomad's task events).

Memory: Nomad reserves (and with the exec driver enforces) at least the function's memory. Its
``resources`` cannot come from dispatch meta, so ``function-instance``'s own reservation is the
floor, and a function that needs more is dispatched from a copy of that job reserving its memory
(``function-instance-<MB>``), registered on first use from the job as registered (so it runs
exactly what the operator configured) and again when that job changes. Pool instances are claimed
only by functions that fit their reservation (``memory_mb`` in the pool service's meta).

Calls to Nomad are retried with exponential backoff on transient errors only (connection errors,
429, 502/503/504, and 500s that Nomad uses for leader loss or RPC failures). Nomad answers validation
errors with 500 too; those are final. Nomad unreachable gives ``Scheduler.Unavailable``, which the
edge turns into a clear 503 for cold starts while warm instances keep serving.

No state here is needed by any other process: claims live in Consul KV, instances in Consul's
catalog, allocations in Nomad. Several edges can run this scheduler at once.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
import threading
import time
import uuid
from pathlib import Path

import consul
import nomad
import nomad.api.exceptions as nomad_exc
import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from appliance.backends.consul_kv import consul_client
from appliance.backends.consul_registry import ConsulRegistry
from appliance.core.errors import FunctionError, PlacementFailed, SchedulerUnavailable, function_error
from appliance.core.model import Instance, InstanceSpec
from appliance.core.observe import NULL_OBSERVER, safely

log = logging.getLogger("appliance.nomad")

CLAIM_PREFIX = "faas/pool/claims/"
POOL_SERVICE_PREFIX = "faas-pool-"
#: Nomad 500 bodies that mean "try again" rather than "your request is wrong".
TRANSIENT_500 = ("No cluster leader", "rpc error", "i/o timeout", "connection refused", "EOF",
                 "leadership lost", "Raft", "timed out")
#: Nomad's answer (400) to a scale while the job has an active deployment (nomad/job_endpoint.go Job.Scale).
DEPLOYMENT_BLOCKED = "job scaling blocked due to active deployment"
#: How many pool entries one start tries to claim before it falls back to dispatch.
CLAIM_TRIES = 3
#: Job meta key of a memory-sized copy of function-instance: the JobModifyIndex it was copied from.
SIZED_FROM_META = "faas_sized_from"
#: Fields of a job as read back that Nomad sets itself; left out when registering a copy.
SERVER_FIELDS = ("Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex", "ModifyIndex",
                 "JobModifyIndex", "Stop")


class _Transient(Exception):
    """A Nomad call failed in a way that may succeed when repeated."""


def pool_service(runtime: str) -> str:
    """Consul name of a runtime's pool (RFC 1123: python3.11 -> faas-pool-python3-11), as the
    runtime-pool jobspec names it."""
    if runtime.startswith("provided"):   # provided.al2023 is an alias: one pool serves both
        runtime = "provided"
    return POOL_SERVICE_PREFIX + re.sub(r"[^a-z0-9-]", "-", runtime.lower())


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, nomad_exc.BaseNomadException):
        resp = exc.nomad_resp
        if isinstance(resp, (requests.ConnectionError, requests.Timeout)):
            return True
        if isinstance(resp, requests.Response):
            if resp.status_code in (429, 502, 503, 504):   # 429: Nomad's RPC rate limit
                return True
            if resp.status_code == 500:
                return any(s in (resp.text or "") for s in TRANSIENT_500)
    return False


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    return isinstance(exc, nomad_exc.BaseNomadException) and isinstance(
        exc.nomad_resp, (requests.ConnectionError, requests.Timeout))


def _body(exc: BaseException) -> str:
    resp = getattr(exc, "nomad_resp", None)
    if isinstance(resp, requests.Response):
        return f"{resp.status_code} {(resp.text or '').strip()[:300]}"
    return str(resp or exc)[:300]


class NomadScheduler:
    """The Scheduler port over Nomad + Consul (see the module docstring for the two paths).

    ``registry`` is the edge's ConsulRegistry: a start returns only once the new instance is a
    passing entry there, so the activator and the registry agree on what is ready."""

    def __init__(self, *, nomad_addr: str, nomad_token: str = "", consul_addr: str, consul_token: str = "",
                 registry: ConsulRegistry, blobs, client, function_job: str = "function-instance",
                 pool_job: str = "runtime-pool", jobspecs_dir: str | Path = "jobspecs", job_vars: str = "",
                 code_url_ttl_s: int = 900, pool_target_free: int = 1, pool_refill_s: float = 5.0,
                 retry_s: float = 5.0, edge_id: str = "", maintain: bool = True, claim_ttl_s: float = 120.0,
                 job_cache_s: float = 30.0, region: str = "us-east-1", account_id: str = "000000000000",
                 layer_digest=None):
        self.nomad_addr = nomad_addr.rstrip("/")
        #: The Lambda environment's region and account (FAAS_REGION, FAAS_ACCOUNT_ID of the runtime contract).
        self.region, self.account_id = region, account_id
        #: ``NAME:VERSION`` -> package digest, for functions with layers (appliance.core.layers).
        self.layer_digest = layer_digest
        # python-nomad's own default is verify=False; TLS to Nomad is verified, as in _session_request.
        self.n = nomad.Nomad(address=self.nomad_addr, token=nomad_token or None, timeout=10, verify=True)
        self.consul = consul_client(consul_addr, consul_token, timeout_s=5.0)
        self.registry = registry
        self.blobs = blobs
        self.client = client
        self.function_job = function_job
        self.pool_job = pool_job
        self.jobspecs_dir = Path(jobspecs_dir)
        self.job_vars = job_vars
        self.code_url_ttl_s = code_url_ttl_s
        self.pool_target_free = pool_target_free
        #: The runtime pool as the last top-up pass saw it, per group: free, specialised, desired (metrics).
        self.pool_sizes: dict[str, dict[str, int]] = {}
        #: Told of failed pool maintenance passes (metrics; set by the wiring).
        self.observer = NULL_OBSERVER
        self.pool_refill_s = pool_refill_s
        self.retry_s = retry_s
        #: Age after which a claim on a still-generic pool instance is taken as abandoned.
        self.claim_ttl_s = claim_ttl_s
        self.edge_id = edge_id or f"edge-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}           # instance id -> dispatched child job id
        self._stopping: dict[str, str] = {}       # instance id -> why we stop it
        self._stop = threading.Event()
        self._jobs_ready = False
        #: How long the registered function-instance job (memory floor, template of sized copies) is reused.
        self.job_cache_s = job_cache_s
        self._base_job: tuple[float, dict] | None = None   # (monotonic time read, job)
        self._sized: dict[str, str] = {}                      # sized job id -> JobModifyIndex it copies
        self.stats = {"pool_starts": 0, "dispatch_starts": 0, "claim_failures": 0}
        self._ensure_lock = threading.Lock()
        if maintain:
            threading.Thread(target=self._maintain, daemon=True, name="nomad-pool").start()

    # -- Nomad plumbing ------------------------------------------------------------------------

    def _call(self, what: str, fn, *, retry_s: float | None = None):
        """Run one Nomad call with retries on transient errors; map the rest to our errors."""
        try:
            for attempt in Retrying(retry=retry_if_exception(_transient), reraise=True,
                                    wait=wait_exponential(multiplier=0.1, max=1.0),
                                    stop=stop_after_delay(self.retry_s if retry_s is None else retry_s)
                                    | stop_after_attempt(8)):
                with attempt:
                    return fn()
        except Exception as exc:
            if _unreachable(exc):
                raise SchedulerUnavailable(
                    f"Nomad at {self.nomad_addr} is unreachable ({what}): new instances cannot be started; "
                    "warm instances keep serving") from None
            if _transient(exc):
                raise SchedulerUnavailable(f"Nomad at {self.nomad_addr} kept failing ({what}): {_body(exc)}") from None
            if isinstance(exc, nomad_exc.URLNotFoundNomadException):
                raise
            if isinstance(exc, nomad_exc.BaseNomadException):
                raise PlacementFailed(f"Nomad refused {what}: {_body(exc)}",
                                      detail={"reason": _body(exc)}) from None
            raise

    def _session_request(self, method: str, path: str, *, params=None, json_body=None, timeout=10.0):
        """Endpoints python-nomad lacks or gets wrong (parse with Variables, dispatch with the token
        in the query string, scale, blocking reads), through python-nomad's own session."""
        req = self.n.job  # any endpoint object: they share the requests session and the token
        headers = {"X-Nomad-Token": req.token} if req.token else {}
        resp = req.session.request(method, f"{self.nomad_addr}{path}", params=params, json=json_body,
                                   headers=headers, timeout=timeout, verify=req.verify)
        if resp.status_code >= 400:
            raise nomad_exc.BaseNomadException(resp)
        return resp

    # -- jobs ----------------------------------------------------------------------------------

    def ensure_jobs(self, *, replace: bool = False) -> list[str]:
        """Make sure the jobs the scheduler needs exist; returns their IDs.

        A missing job is parsed (with our Variables) and registered. An existing one is left as it
        is unless ``replace``: in a deployed cluster the operator registers the jobs with their own
        variables (the Ansible role does), and an edge starting up must not overwrite them."""
        with self._ensure_lock:
            return self._ensure_jobs(replace)

    def _ensure_jobs(self, replace: bool) -> list[str]:
        out = []
        for name in ("function-instance", "runtime-pool"):
            hcl = (self.jobspecs_dir / f"{name}.nomad.hcl").read_text()
            variables = vars_for(hcl, self.job_vars)
            job = self._call(f"parse {name}", lambda: self._session_request(
                "POST", "/v1/jobs/parse", json_body={"JobHCL": hcl, "Canonicalize": True,
                                                     "Variables": variables}).json())
            out.append(job["ID"])
            if not replace:
                try:
                    current = self._call(f"read job {job['ID']}", lambda: self.n.job.get_job(job["ID"]))
                except nomad_exc.URLNotFoundNomadException:
                    current = None
                if current is not None and not current.get("Stop"):
                    log.info("event=job_present job=%s version=%s", job["ID"], current.get("Version"))
                    continue
            self._call(f"register {job['ID']}",
                       lambda: self.n.jobs.register_job({"Job": job, "PreserveCounts": True}))
            log.info("event=job_registered job=%s", job["ID"])
        self._jobs_ready = True
        return out

    def jobs_status(self) -> dict[str, str]:
        """For ``faas doctor``: job id -> Nomad status (or 'missing')."""
        out = {}
        for jid in (self.function_job, self.pool_job):
            try:
                out[jid] = self._call(f"read job {jid}", lambda: self.n.job.get_job(jid), retry_s=1.0)["Status"]
            except nomad_exc.URLNotFoundNomadException:
                out[jid] = "missing"
        return out

    # -- Scheduler port ------------------------------------------------------------------------

    def start(self, spec: InstanceSpec, deadline: float) -> Instance:
        self.registry.require_available()
        if not self._jobs_ready:
            self.ensure_jobs()
        t0 = time.monotonic()
        try:
            # Layers are fetched by the dispatched launcher (once per node, like code): no pool start.
            inst = None if spec.layers else self._start_from_pool(spec, deadline)
        except FunctionError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path falls back to dispatch
            self._count("claim_failures")
            log.warning("event=pool_start_failed function=%s error=%r fallback=dispatch", spec.function, str(exc)[:300])
            inst = None
        if inst is None:
            inst = self._start_by_dispatch(spec, deadline)
            self._count("dispatch_starts")
        else:
            self._count("pool_starts")
        inst.phases["placement"] = round((time.monotonic() - t0) * 1000, 3)
        return inst

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def stop(self, instance: Instance, *, graceful: bool = True) -> None:
        with self._lock:
            self._stopping.setdefault(instance.id, "stopped")
            child = self._jobs.pop(instance.id, None)
        alloc_id = instance.id.split(".", 1)[0]
        if "." in instance.id:  # a specialised pool instance: stop its allocation; Nomad replaces it
            self._release_claim(alloc_id)
            self._call(f"stop alloc {alloc_id}",
                       lambda: self._session_request("POST", f"/v1/allocation/{alloc_id}/stop", json_body={}))
            return
        if child is None:
            try:
                child = self._call(f"read alloc {alloc_id}", lambda: self.n.allocation.get_allocation(alloc_id))["JobID"]
            except nomad_exc.URLNotFoundNomadException:
                return
        self._call(f"deregister {child}", lambda: self.n.job.deregister_job(child, purge=True))
        log.info("event=instance_stopped instance=%s job=%s graceful=%s", instance.id, child, graceful)

    def instances(self, function: str | None = None) -> list[Instance]:
        if function is None:
            return []
        return self.registry.ready(function)

    def exit_cause(self, instance_id: str) -> str | None:
        with self._lock:
            why = self._stopping.get(instance_id)
        if why:
            return why
        alloc_id = instance_id.split(".", 1)[0]
        try:
            alloc = self._call("read alloc", lambda: self.n.allocation.get_allocation(alloc_id), retry_s=1.0)
        except Exception:  # noqa: BLE001 - a cause is a nicety; never fail the request over it
            return None
        return cause_from_alloc(alloc)

    def mark_stopping(self, instance_id: str, why: str) -> None:
        with self._lock:
            self._stopping[instance_id] = why
            if len(self._stopping) > 10000:
                for k in list(self._stopping)[:5000]:
                    del self._stopping[k]
        if "." in instance_id:
            self._release_claim(instance_id.split(".", 1)[0])

    def close(self) -> None:
        self._stop.set()

    # -- fast path: the pool -------------------------------------------------------------------

    def _start_from_pool(self, spec: InstanceSpec, deadline: float) -> Instance | None:
        _, entries = self.consul.health.service(pool_service(spec.runtime), passing=True)
        # An instance claimed a moment ago still passes its pool check until the next probe: skip
        # those known to be claimed, so the tries go to instances that are probably free.
        _, claimed = self.consul.kv.get(CLAIM_PREFIX, keys=True)
        claimed = {k[len(CLAIM_PREFIX):] for k in claimed or []}
        entries = [e for e in entries or [] if (e["Service"].get("Meta") or {}).get("instance_id") not in claimed
                   and _pool_memory_mb(e) >= spec.memory_mb]
        random.shuffle(entries)  # edges starting at once spread over the pool instead of racing
        for entry in entries[:CLAIM_TRIES]:
            svc, node = entry["Service"], entry["Node"]
            alloc_id = (svc.get("Meta") or {}).get("instance_id")
            if not alloc_id:
                continue
            claim = {"function": spec.function, "version": spec.version, "edge": self.edge_id, "at": time.time()}
            if not self.consul.kv.put(CLAIM_PREFIX + alloc_id, json.dumps(claim), cas=0):
                continue  # someone else has it
            try:
                return self._specialize(spec, alloc_id, f"{svc.get('Address') or node['Address']}:{svc['Port']}",
                                        deadline)
            except FunctionError:
                raise
            except Exception:
                self._release_claim(alloc_id)
                raise
        return None

    def _specialize(self, spec: InstanceSpec, alloc_id: str, address: str, deadline: float) -> Instance:
        inst_id = f"{alloc_id}.{uuid.uuid4().hex[:8]}"
        body = {"function": spec.function, "version": str(spec.version), "handler": spec.handler,
                "memoryMb": spec.memory_mb, "timeoutS": spec.timeout_s, "maxInflight": spec.concurrency,
                "env": spec.environment, "instanceId": inst_id, "codeSha256": spec.digest,
                "region": self.region, "accountId": self.account_id,
                "codeUrl": self.blobs.presigned_url(spec.digest, self.code_url_ttl_s)}
        t0 = time.monotonic()
        timeout = max(1.0, deadline - time.monotonic())
        r = requests.post(f"http://{address}/_/specialize", json=body, timeout=timeout)
        if r.status_code != 200:
            raise PlacementFailed(f"pool instance {alloc_id} refused to specialise: {r.status_code} {r.text[:200]}")
        out = r.json()
        if out.get("state") == "failed":
            self._release_instance(address)
            raise function_error(out.get("error") or {"errorType": "Runtime.InitError",
                                                      "errorMessage": "the code failed to load"})
        if out.get("state") != "ready":
            raise PlacementFailed(f"pool instance {alloc_id} answered state {out.get('state')!r} to specialise")
        load_ms = (time.monotonic() - t0) * 1000
        inst = self.registry.wait_for(spec.function, inst_id, deadline)
        if inst is None:
            self._release_instance(address)
            raise PlacementFailed(f"pool instance {inst_id} of {spec.function!r} did not pass its Consul check "
                                  "before the start deadline")
        inst.phases.update({"specialize": round(load_ms, 3), "user_init": float(out.get("initDurationMs") or 0)})
        log.info("event=instance_ready source=pool instance=%s function=%s version=%s address=%s",
                 inst_id, spec.function, spec.version, inst.address)
        return inst

    def _release_instance(self, address: str) -> None:
        """Ask a pool instance we could not use to exit; its launcher starts a fresh generic one."""
        try:
            requests.post(f"http://{address}/_/drain", json={"minIdleMs": 0}, timeout=2)
        except requests.RequestException:
            pass

    def _release_claim(self, alloc_id: str) -> None:
        try:
            self.consul.kv.delete(CLAIM_PREFIX + alloc_id)
        except (requests.RequestException, consul.ConsulException):
            pass  # the pool instance deletes a stale claim itself when it starts afresh

    # -- slow path: dispatch -------------------------------------------------------------------

    def _function_job_for(self, spec: InstanceSpec) -> str:
        """The parameterized job to dispatch for ``spec`` (see "Memory" in the module docstring)."""
        base = self._read_function_job()
        if spec.memory_mb <= job_memory_mb(base):
            return self.function_job
        jid = f"{self.function_job}-{spec.memory_mb}"
        stamp = str(base.get("JobModifyIndex"))
        with self._lock:
            if self._sized.get(jid) == stamp:
                return jid
        try:
            current = self._call(f"read job {jid}", lambda: self.n.job.get_job(jid))
        except nomad_exc.URLNotFoundNomadException:
            current = None
        if current is None or current.get("Stop") or (current.get("Meta") or {}).get(SIZED_FROM_META) != stamp:
            job = sized_job(base, jid, spec.memory_mb, stamp)
            self._call(f"register {jid}", lambda: self.n.jobs.register_job({"Job": job}))
            log.info("event=job_registered job=%s memory_mb=%d from=%s from_index=%s", jid, spec.memory_mb,
                     self.function_job, stamp)
        with self._lock:
            self._sized[jid] = stamp
        return jid

    def _read_function_job(self) -> dict:
        with self._lock:
            cached = self._base_job
        if cached is not None and time.monotonic() - cached[0] < self.job_cache_s:
            return cached[1]
        try:
            job = self._call(f"read job {self.function_job}", lambda: self.n.job.get_job(self.function_job))
        except nomad_exc.URLNotFoundNomadException:
            self._jobs_ready = False  # the maintenance loop registers it again
            raise PlacementFailed(f"the Nomad job {self.function_job} is not registered; it is registered again "
                                  "shortly (or submit jobspecs/function-instance.nomad.hcl)") from None
        with self._lock:
            self._base_job = (time.monotonic(), job)
        return job

    def _start_by_dispatch(self, spec: InstanceSpec, deadline: float) -> Instance:
        job_id = self._function_job_for(spec)
        token = uuid.uuid4().hex
        meta = {"function": spec.function, "version": str(spec.version), "digest": spec.digest,
                "runtime": spec.runtime, "handler": spec.handler, "memory": str(spec.memory_mb),
                "timeout": str(spec.timeout_s), "concurrency": str(spec.concurrency),
                "region": self.region, "account_id": self.account_id,
                "layers": json.dumps([{"digest": d, "url": self.blobs.presigned_url(d, self.code_url_ttl_s)}
                                      for d in (self.layer_digest(ref) for ref in spec.layers)],
                                     separators=(",", ":")) if spec.layers else "[]",
                "code_url": self.blobs.presigned_url(spec.digest, self.code_url_ttl_s),
                # The function's environment (at most 4 KB): the launcher sets it in the instance.
                "env": json.dumps(spec.environment, sort_keys=True, separators=(",", ":"))}
        # The token in the query string makes the retries of this call idempotent (python-nomad's
        # dispatch_job sends it in the body, where Nomad ignores it).
        try:
            res = self._call(f"dispatch {job_id}", lambda: self._session_request(
                "POST", f"/v1/job/{job_id}/dispatch", params={"idempotency_token": token},
                json_body={"Meta": meta}).json())
        except PlacementFailed:
            # Refused (Nomad answers "parameterized job not found" with 500, or the job is stopped):
            # the jobs may have changed since we last looked, so the next start looks again.
            with self._lock:
                self._sized.pop(job_id, None)
                self._base_job = None
            raise
        child = res["DispatchedJobID"]
        log.info("event=dispatched function=%s version=%s job=%s", spec.function, spec.version, child)
        try:
            alloc = self._wait_running(child, deadline)
            inst_id = alloc["ID"]
            with self._lock:
                self._jobs[inst_id] = child
            inst = self._wait_ready(spec, child, inst_id, deadline)
        except BaseException:
            self._cleanup_child(child)
            raise
        log.info("event=instance_ready source=dispatch instance=%s function=%s version=%s address=%s job=%s",
                 inst.id, spec.function, spec.version, inst.address, child)
        return inst

    def _cleanup_child(self, child: str) -> None:
        try:
            self._call(f"deregister {child}", lambda: self.n.job.deregister_job(child, purge=True), retry_s=1.0)
        except Exception:  # noqa: BLE001 - best effort; a failed start is reported either way
            log.warning("event=dispatch_cleanup_failed job=%s", child)

    def _wait_running(self, child: str, deadline: float) -> dict:
        """Follow the child job's allocations (blocking queries) until one runs or fails."""
        index = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PlacementFailed(f"Nomad did not place {child} before the start deadline "
                                      "(no node with room, or the cluster is busy)")
            wait = max(1, min(int(left), 30))
            resp = self._call(f"allocations of {child}", lambda: self._session_request(
                "GET", f"/v1/job/{child}/allocations", params={"index": index, "wait": f"{wait}s"},
                timeout=wait + 5))
            index = max(int(resp.headers.get("X-Nomad-Index") or 0), 1)
            for a in resp.json():
                if a["ClientStatus"] == "running":
                    return a
                if a["ClientStatus"] in ("failed", "lost", "complete"):
                    raise PlacementFailed(f"the allocation of {child} {a['ClientStatus']}: {failure_reason(a)}",
                                          detail={"reason": failure_reason(a), "allocation": a["ID"]})

    def _wait_ready(self, spec: InstanceSpec, child: str, alloc_id: str, deadline: float) -> Instance:
        """The task runs: wait until its code loaded (or failed), then for its passing Consul entry."""
        alloc = self._call("read alloc", lambda: self.n.allocation.get_allocation(alloc_id))
        port = next((p for p in alloc["AllocatedResources"]["Shared"]["Ports"] if p["Label"] == "http"), None)
        if port is None:
            raise PlacementFailed(f"allocation {alloc_id} has no 'http' port")
        probe = Instance(id=alloc_id, function=spec.function, version=spec.version,
                         address=f"{port['HostIP']}:{port['Value']}", concurrency=spec.concurrency)
        t0 = time.monotonic()
        while True:
            try:
                status, body = self.client.ready(probe)
            except Exception:  # noqa: BLE001 - not listening yet (fetching code) or already gone
                status, body = 0, {}
            if status == 200:
                break
            if status == 500 and body.get("state") == "failed":
                raise function_error(body.get("error") or {"errorType": "Runtime.InitError",
                                                           "errorMessage": "the code failed to load"})
            if status == 0:
                a = self._call("read alloc", lambda: self.n.allocation.get_allocation(alloc_id))
                if a["ClientStatus"] in ("failed", "lost", "complete"):
                    raise PlacementFailed(f"the allocation of {child} {a['ClientStatus']}: {failure_reason(a)}",
                                          detail={"reason": failure_reason(a), "allocation": alloc_id})
            if time.monotonic() > deadline:
                raise PlacementFailed(f"instance {alloc_id} of {spec.function!r} was not ready before the start deadline")
            time.sleep(0.02)
        ready_ms = (time.monotonic() - t0) * 1000
        inst = self.registry.wait_for(spec.function, alloc_id, deadline)
        if inst is None:
            raise PlacementFailed(f"instance {alloc_id} of {spec.function!r} did not pass its Consul check "
                                  "before the start deadline")
        inst.phases.update({"runtime_init": round(ready_ms, 3), "user_init": float(body.get("initDurationMs") or 0)})
        return inst

    # -- keeping the pool topped up ------------------------------------------------------------

    def _clear_stale_claims(self, passing_entries: list) -> int:
        """A claim on an instance that still passes its pool check long after the claim was made
        belongs to a starter that died between claim and specialise: free the instance again
        (check-and-set on the claim's index, so a fresh claim is never removed)."""
        cleared = 0
        for e in passing_entries:
            alloc_id = (e["Service"].get("Meta") or {}).get("instance_id")
            if not alloc_id:
                continue
            _, item = self.consul.kv.get(CLAIM_PREFIX + alloc_id)
            if item is not None and _claim_age(item) > self.claim_ttl_s:
                if self.consul.kv.delete(CLAIM_PREFIX + alloc_id, cas=item["ModifyIndex"]):
                    cleared += 1
                    log.warning("event=stale_claim_cleared alloc=%s age_s=%.0f", alloc_id, _claim_age(item))
        return cleared

    def _maintain(self) -> None:
        """Off the request path: register the jobs when Nomad answers, then keep the pool's free
        instances at ``pool_target_free`` per runtime (scale = free target + specialised ones)."""
        while not self._stop.is_set():
            try:
                if not self._jobs_ready:
                    self.ensure_jobs()
                elif self.pool_refill_s > 0:
                    self.refill_pool()
            except Exception as exc:  # noqa: BLE001 - retried on the next tick
                log.warning("event=pool_maintenance_failed error=%r", str(exc)[:300])
                safely(self.observer.backend_error, "pool", getattr(exc, "code", type(exc).__name__))
            if self._stop.wait(self.pool_refill_s if self.pool_refill_s > 0 else 5.0):
                return

    def refill_pool(self) -> dict[str, int]:
        """One top-up pass; returns {runtime group: new count} for the groups it scaled.

        The count is ``specialised + pool_target_free``, where specialised instances are the pool
        entries that hold a claim and no longer pass their pool check. Entries that fail the check
        without a claim (still starting, a Consul restart, a runtime that cannot start on this
        cluster) are neither free nor in use: counting them as in use would grow the group on every
        pass, up to its scaling maximum, without ever making an instance free."""
        status = self._call("pool scale status", lambda: self._session_request(
            "GET", f"/v1/job/{self.pool_job}/scale").json())
        scaled = {}
        for group, g in (status.get("TaskGroups") or {}).items():
            if g["Desired"] == 0:
                continue  # registered with count 0: the pool is off for this runtime
            if g["Running"] < g["Desired"]:
                continue  # instances are still starting: wait, or we would overshoot
            _, entries = self.consul.health.service(pool_service(group))
            free = [e for e in entries or [] if _passing(e)]
            self._clear_stale_claims(free)
            _, claimed = self.consul.kv.get(CLAIM_PREFIX, keys=True)
            claimed = {k[len(CLAIM_PREFIX):] for k in claimed or []}
            in_use = sum(1 for e in entries or [] if not _passing(e)
                         and (e["Service"].get("Meta") or {}).get("instance_id") in claimed)
            want = in_use + self.pool_target_free
            self.pool_sizes[group] = {"free": len(free), "specialised": in_use, "desired": want}
            if want != g["Desired"]:
                try:
                    self._call(f"scale {self.pool_job}/{group}", lambda: self._session_request(
                        "POST", f"/v1/job/{self.pool_job}/scale",
                        json_body={"Count": want, "Target": {"Group": group},
                                   "Message": f"pool top-up: {len(free)} free, {in_use} specialised, "
                                              f"target {self.pool_target_free} free"}))
                except PlacementFailed as exc:
                    if DEPLOYMENT_BLOCKED not in str(exc):
                        raise
                    # The job as registered has deployments (no `update { max_parallel = 0 }` in
                    # its groups): Nomad refuses every scale until the deployment ends.
                    log.warning("event=pool_scale_blocked group=%s reason=%r hint=%r", group, DEPLOYMENT_BLOCKED,
                                "register runtime-pool with update { max_parallel = 0 } in each group")
                    continue
                log.info("event=pool_scaled group=%s from=%d to=%d free=%d specialised=%d",
                         group, g["Desired"], want, len(free), in_use)
                scaled[group] = want
        return scaled


def _passing(entry: dict) -> bool:
    """A health entry whose checks all pass (what ``?passing`` keeps)."""
    return all(c.get("Status") == "passing" for c in entry.get("Checks") or [])


def _pool_memory_mb(entry: dict) -> float:
    """What a pool instance reserves, from its service meta (unknown: taken as enough, as before the
    pool said)."""
    try:
        return int((entry["Service"].get("Meta") or {})["memory_mb"])
    except (KeyError, TypeError, ValueError):
        return float("inf")


def job_memory_mb(job: dict) -> int:
    """The memory a job reserves per allocation (its largest task's MemoryMB)."""
    return max(((t.get("Resources") or {}).get("MemoryMB") or 0
                for tg in job.get("TaskGroups") or [] for t in tg.get("Tasks") or []), default=0)


def sized_job(base: dict, job_id: str, memory_mb: int, stamp: str) -> dict:
    """A copy of the registered ``base`` job under ``job_id`` whose tasks reserve ``memory_mb``."""
    job = copy.deepcopy(base)
    for k in SERVER_FIELDS:
        job.pop(k, None)
    job["ID"] = job["Name"] = job_id
    job["Meta"] = {**(job.get("Meta") or {}), SIZED_FROM_META: stamp}
    for tg in job.get("TaskGroups") or []:
        for t in tg.get("Tasks") or []:
            res = t.setdefault("Resources", {})
            res["MemoryMB"] = memory_mb
            if res.get("MemoryMaxMB"):
                res["MemoryMaxMB"] = max(res["MemoryMaxMB"], memory_mb)
    return job


def _claim_age(item: dict) -> float:
    try:
        return time.time() - float(json.loads(item["Value"])["at"])
    except (KeyError, TypeError, ValueError):
        return float("inf")


def vars_for(hcl: str, var_file: str) -> str:
    """The assignments of ``var_file`` that ``hcl`` declares. One file serves both jobs; Nomad's parse
    endpoint only warns about assignments to variables a job does not declare (the CLI refuses
    them), so they are left out here: each job receives, and stores, only its own variables. One
    assignment per line."""
    declared = set(re.findall(r'^variable\s+"([^"]+)"', hcl, re.M))
    keep = []
    for line in var_file.splitlines():
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=", line)
        if m and m.group(1) in declared:
            keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")


def failure_reason(alloc: dict) -> str:
    """Nomad's own words for why an allocation failed, from its task events."""
    parts = []
    for task, ts in (alloc.get("TaskStates") or {}).items():
        for ev in ts.get("Events") or []:
            if ev.get("Type") in ("Driver Failure", "Terminated", "Not Restarting", "Setup Failure",
                                  "Failed Artifact Download", "Failed Validation", "Killed", "OOM Killed") \
                    or ev.get("FailsTask"):
                msg = ev.get("DisplayMessage") or ev.get("Message") or ev.get("DriverError") or ""
                parts.append(f"{task}: {ev['Type']}: {msg}".rstrip(": "))
    return "; ".join(parts) or alloc.get("ClientDescription") or "no reason given"


def cause_from_alloc(alloc: dict) -> str | None:
    if alloc.get("ClientStatus") in ("pending", "running") and alloc.get("DesiredStatus") == "run":
        return None
    for ts in (alloc.get("TaskStates") or {}).values():
        for ev in ts.get("Events") or []:
            details = ev.get("Details") or {}
            if ev.get("Type") == "OOM Killed" or details.get("oom_killed") == "true" or "OOM" in (ev.get("DisplayMessage") or ""):
                return "oom"
    if alloc.get("DesiredStatus") != "run":
        return "stopped"
    return "crashed" if alloc.get("ClientStatus") == "failed" else "exited"
