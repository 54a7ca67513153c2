"""One invocation, start to finish: lease an instance, call it, release it, record what happened.

Retries are limited to requests that certainly did not run: a refusal (the instance was full or
draining) or a failed connect. A request that may have run (the connection broke after sending,
or no reply before the deadline) is never sent again; it ends as ``Instance.Crashed``,
``Function.OutOfMemory`` or ``Function.Timeout``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

from .activator import Activator, Lease
from .errors import (
    ApplianceError,
    ColdStartTimeout,
    Conflict,
    FunctionError,
    FunctionTimeout,
    InstanceCrashed,
    QueueFull,
    function_error,
)
from .function_store import FunctionStore
from .instance_client import InstanceClient, InstanceLost, InstanceTimeout, InstanceUnreachable
from .model import InstanceSpec
from .ports import Registry, Scheduler
from .records import InvocationRecord, RecordStore, billed_gb_seconds

log = logging.getLogger("appliance.invoke")

#: Extra seconds the edge waits past a function's timeout for the runtime's own timeout reply.
TIMEOUT_GRACE_S = 2.0
COLD_PHASES = ("code_fetch", "sandbox", "runtime_init", "user_init")


class NoCode(Conflict):
    code = "Function.NoCode"


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Outcome:
    record: InvocationRecord
    result: object = None
    error: ApplianceError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def server_timing(self) -> str:
        parts = [f"{k};dur={v:.3f}" for k, v in self.record.phases.items()]
        parts.append(f"total;dur={self.record.duration_ms:.3f}")
        if self.record.cold:
            parts.append(f'cold;desc="{self.record.cold_cause or "cold"}"')
        return ", ".join(parts)


class Invoker:
    def __init__(self, store: FunctionStore, activator: Activator, client: InstanceClient, scheduler: Scheduler,
                 registry: Registry, records: RecordStore, policies, *, queue_timeout_s: float = 10.0, max_attempts: int = 5,
                 clock=time.monotonic):
        self.store = store
        self.activator = activator
        self.client = client
        self.scheduler = scheduler
        self.registry = registry
        self.records = records
        self.policies = policies
        #: How long a request may wait for an instance (a free slot or a cold start) before 503.
        self.queue_timeout_s = queue_timeout_s
        self.max_attempts = max_attempts
        self.clock = clock

    def invoke(self, function: str, body: bytes, *, request_id: str, trigger: str | None = None) -> Outcome:
        fn = self.store.get(function)
        if fn.version == 0:
            raise NoCode(f"function {function!r} has no code yet; upload it with PUT /v1/functions/{function}/code "
                         "or `faas deploy`")
        spec = InstanceSpec.of(fn)
        t0 = self.clock()
        rec = InvocationRecord(request_id=request_id, function=function, version=fn.version, started_at=time.time(),
                               memory_mb=fn.config.memory_mb, trigger=trigger or "api")
        outcome = Outcome(record=rec)
        lease: Lease | None = None
        try:
            outcome.result, lease = self._call(spec, fn.config.max_instances, fn.config.timeout_s, body, request_id,
                                               t0, rec, self.policies.get(fn))
        except FunctionError as exc:
            # Errors from a failed cold start are shared by every request that waited for it.
            outcome.error = function_error({**exc.error, "requestId": request_id}) \
                if exc.error.get("requestId") != request_id else exc
        except ApplianceError as exc:
            outcome.error = exc
        rec.duration_ms = round((self.clock() - t0) * 1000, 3)
        self._finish(rec, outcome, lease)
        self.records.add(rec)
        log.info("event=invoke request_id=%s function=%s version=%s status=%s http_status=%s cold=%s duration_ms=%.3f "
                 "error_type=%s instance=%s", request_id, function, fn.version, rec.status, rec.http_status,
                 rec.cold, rec.duration_ms, rec.error_type or "-", rec.instance_id or "-")
        return outcome

    def _call(self, spec: InstanceSpec, max_instances: int, timeout_s: int, body: bytes, request_id: str,
              t0: float, rec: InvocationRecord, policy):
        deadline = t0 + self.queue_timeout_s
        for _ in range(self.max_attempts):
            lease = self.activator.acquire(spec, max_instances=max_instances, deadline=deadline, policy=policy)
            inst = lease.instance
            rec.instance_id = inst.id
            if lease.cold:
                rec.cold, rec.cold_cause = True, lease.cause
            self._lease_phases(lease, rec)
            deadline_ms = int((time.time() + timeout_s) * 1000)
            try:
                reply = self.client.invoke(inst, body, request_id=request_id, deadline_ms=deadline_ms,
                                           read_timeout_s=timeout_s + TIMEOUT_GRACE_S)
            except InstanceUnreachable:
                self.registry.forget(inst.id)
                self.activator.release(lease, outcome="gone")
                continue
            except InstanceTimeout:
                self.scheduler.stop(inst, graceful=False)
                self.activator.release(lease, outcome="gone")
                raise FunctionTimeout({"errorType": "Function.Timeout", "requestId": request_id,
                                       "errorMessage": f"the function did not answer within {timeout_s} s; "
                                                       "its instance was stopped"}) from None
            except InstanceLost:
                cause = self.scheduler.exit_cause(inst.id)
                if cause == "drained":
                    # It had accepted a drain (nothing in flight, refusing new work) before this
                    # request reached it, so the request cannot have run: send it elsewhere.
                    self.activator.release(lease, outcome="gone")
                    continue
                self.activator.release(lease, outcome="crashed")
                if cause == "oom":
                    raise function_error({"errorType": "Function.OutOfMemory", "requestId": request_id,
                                          "errorMessage": f"the instance exceeded {spec.memory_mb} MB and was "
                                                          "killed; raise memory_mb or use less memory"}) from None
                raise InstanceCrashed(f"instance {inst.id} ended while running the request ({cause or 'connection lost'});"
                                      " the request was not retried because it may have run") from None
            if reply.refused:
                if reply.refused == "capacity":
                    self.activator.release(lease, outcome="refused-capacity")
                else:
                    self.registry.forget(inst.id)
                    self.activator.release(lease, outcome="gone")
                continue
            self.activator.release(lease, outcome="gone" if reply.exiting else "ok")
            env = reply.body
            rec.logs = list(env.get("logs") or [])
            rec.run_ms = float(env.get("durationMs") or 0.0)
            if reply.status == 200 and env.get("ok"):
                return env.get("result"), lease
            error = env.get("error") or {"errorType": "Runtime.Unknown",
                                         "errorMessage": f"the instance answered {reply.status} without an error"}
            error.setdefault("requestId", request_id)
            raise function_error(error)
        raise ColdStartTimeout(f"no instance of {spec.function!r} accepted the request after {self.max_attempts} "
                               "attempts; retry")

    @staticmethod
    def _lease_phases(lease: Lease, rec: InvocationRecord) -> None:
        phases = rec.phases
        phases.clear()
        if lease.cold:
            cold = {k: float(lease.phases.get(k, 0.0)) for k in COLD_PHASES}
            start_total = float(lease.phases.get("placement", sum(cold.values())))
            measured = sum(cold.values())
            if measured > start_total > 0:
                # The runtime measures its own code load while the launcher is still finishing its
                # part, so the phases can overlap; shown as shares of the start, they add up to it.
                cold = {k: v * start_total / measured for k, v in cold.items()}
            cold["placement"] = max(0.0, start_total - sum(cold.values()))
            # A request that joined a start already under way waited for only part of it.
            waited = min(lease.queue_ms, start_total)
            scale = waited / start_total if start_total > 0 else 0.0
            phases["queue"] = round(max(0.0, lease.queue_ms - waited), 3)
            for k in ("placement",) + COLD_PHASES:
                phases[k] = round(cold[k] * scale, 3)
            rec.init_ms = round(waited, 3)
        else:
            phases["queue"] = round(lease.queue_ms, 3)

    @staticmethod
    def _finish(rec: InvocationRecord, outcome: Outcome, lease) -> None:
        rec.phases["run"] = round(rec.run_ms, 3)
        rec.phases["overhead"] = round(max(0.0, rec.duration_ms - sum(v for k, v in rec.phases.items()
                                                                        if k != "overhead")), 3)
        rec.billed_gb_s = billed_gb_seconds(rec.memory_mb, rec.run_ms) if rec.run_ms else 0.0
        err = outcome.error
        if err is None:
            rec.status, rec.http_status = "ok", 200
            return
        rec.http_status = err.status
        rec.error_type = err.code
        rec.error_message = err.message[:1000]
        if isinstance(err, FunctionTimeout):
            rec.status = "timeout"
        elif isinstance(err, FunctionError):
            rec.status = "error"
        elif isinstance(err, QueueFull):
            rec.status = "throttled"
        elif isinstance(err, InstanceCrashed):
            rec.status = "error"
        else:
            rec.status = "unavailable"


def encode_event(event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()
