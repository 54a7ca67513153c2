"""One invocation, start to finish: lease an instance, call it, release it, record what happened.

Retries are limited to requests that certainly did not run: a refusal (the instance was full or
draining) or a failed connect. A request that may have run (the connection broke after sending,
or no reply before the deadline) is never sent again; it ends as ``Instance.Crashed``,
``Function.OutOfMemory`` or ``Function.Timeout``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from appliance.core import logs, routing
from appliance.core.activator import Activator, Lease
from appliance.core.codec import dumps_compact
from appliance.core.errors import (
    ApplianceError,
    ColdStartTimeout,
    FunctionError,
    FunctionTimeout,
    InstanceCrashed,
    NoCode,
    QueueFull,
    VersionUnsupported,
    function_error,
)
from appliance.core.function_store import FunctionStore
from appliance.core.model import InstanceSpec
from appliance.core.observe import NULL_OBSERVER, Observer, safely
from appliance.core.ports import (
    InstanceClient,
    InstanceLost,
    InstanceTimeout,
    InstanceUnreachable,
    InvokeReply,
    Registry,
    ReplyTooLarge,
    Scheduler,
)
from appliance.core.records import InvocationRecord, RecordStore, billed_gb_seconds

log = logging.getLogger("appliance.invoke")

#: Extra seconds the edge waits past a function's timeout for the runtime's own timeout reply.
TIMEOUT_GRACE_S = 2.0
COLD_PHASES = ("code_fetch", "sandbox", "restore", "runtime_init", "user_init")


@dataclass
class _Call:
    """One invocation under way: what every attempt needs."""
    spec: InstanceSpec
    body: bytes
    request_id: str
    rec: InvocationRecord
    t0: float
    timeout_s: int
    max_instances: int
    policy: object
    #: Asynchronous events: the attempt number, sent to the instance (context.attempt).
    attempt: int | None = None
    #: When the last attempt's request went to its instance (the platform's clock): what is billed
    #: is measured from here to the reply, never the duration the instance reports about itself.
    sent: float = 0.0


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
            # a start forked from a snapshot template says so; the record keeps why it was cold
            desc = "snapshot" if "restore" in self.record.phases else (self.record.cold_cause or "cold")
            parts.append(f'cold;desc="{desc}"')
        return ", ".join(parts)


class Invoker:
    def __init__(self, store: FunctionStore, activator: Activator, client: InstanceClient, scheduler: Scheduler,
                 registry: Registry, records: RecordStore, policies, *, queue_timeout_s: float = 10.0, max_attempts: int = 5,
                 clock=time.monotonic, observer: Observer = NULL_OBSERVER):
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
        #: Told of every finished invocation (metrics; see appliance/core/observe.py).
        self.observer = observer
        self._specs: dict[str, tuple[object, InstanceSpec]] = {}
        #: The draw that picks an alias's version per request (a test may fix it).
        self.draw = random.random

    def invoke(self, function: str, body: bytes, *, request_id: str, trigger: str | None = None,
               attempt: int | None = None, correlation_id: str | None = None) -> Outcome:
        """Run one invocation to its end on this thread (waiting for a slot or a cold start).
        ``function`` is a target: ``NAME``, ``NAME:N`` (a published version) or ``NAME:ALIAS``."""
        call = self._begin(function, body, request_id, trigger, correlation_id=correlation_id)
        call.attempt = attempt
        return self._complete(call, self._call)

    async def invoke_async(self, function: str, body: bytes, *, request_id: str, trigger: str | None,
                           client, offload, fn=None, correlation_id: str | None = None) -> Outcome:
        """The same invocation from an event loop: waiting for a slot or a cold start is a future
        (:meth:`Activator.acquire_async`) and the round trip uses ``client``
        (:class:`.instance_aio.AsyncInstanceClient`), so no thread is held. What may block or
        needs another attempt (a refusal, a lost or unreachable instance, a timeout) goes to
        ``offload(fn, *args)``, a thread pool, through the same code as :meth:`invoke`: both
        paths follow one set of rules."""
        name, qualifier = routing.split_target(function)
        fn = fn or self.store.peek(name)
        if fn is None:  # a remote metadata read (Consul in cluster mode) may block: not on the loop
            fn = await offload(self.store.get, name)
        if qualifier is not None and not self._local(fn, qualifier):
            # A published snapshot this process has not read yet (a remote read): on a thread.
            call = await offload(self._begin, function, body, request_id, trigger, fn, correlation_id)
        else:
            call = self._begin(function, body, request_id, trigger, fn, correlation_id)
        return await self._run_async(call, client, offload)

    def _local(self, fn, qualifier: str) -> bool:
        """Whether the versions ``qualifier`` may run are resolvable without a remote read."""
        if qualifier.isdigit():
            numbers = (int(qualifier),)
        else:
            alias = fn.routing.aliases.get(qualifier)
            numbers = alias.versions() if alias is not None else ()
        peek = self.store.published.peek_executable
        return all(n not in fn.routing.published or peek(fn, n) is not None for n in numbers)

    async def _run_async(self, call: _Call, client, offload) -> Outcome:
        request_id = call.request_id
        try:
            lease = await self.activator.acquire_async(call.spec, max_instances=call.max_instances,
                                                       deadline=call.t0 + self.queue_timeout_s, policy=call.policy)
        except ApplianceError as exc:
            return self._complete(call, _raise, exc)
        self._leased(call, lease)
        call.sent = self.clock()
        try:
            reply = await client.invoke(lease.instance, call.body, request_id=request_id,
                                        deadline_ms=int((time.time() + call.timeout_s) * 1000),
                                        read_timeout_s=call.timeout_s + TIMEOUT_GRACE_S)
        except (InstanceUnreachable, InstanceTimeout, InstanceLost) as exc:
            reply = exc
        except BaseException:
            self.activator.release(lease, outcome="gone")
            raise
        if isinstance(reply, InvokeReply) and not reply.refused:
            return self._complete(call, self._settled, lease, reply)
        return await offload(self._complete, call, self._call, (lease, reply))

    def _begin(self, function: str, body: bytes, request_id: str, trigger: str | None, fn=None,
               correlation_id: str | None = None) -> _Call:
        name, qualifier = routing.split_target(function) if ":" in function else (function, None)
        fn = fn or self.store.get(name)
        if fn.version == 0:
            raise NoCode(f"function {name!r} has no code yet; upload it with PUT /v1/functions/{name}/code "
                         "or `faas deploy`")
        key, executed, alias, published = name, routing.LATEST, None, 0
        if qualifier is not None:  # $LATEST (the warm path's common case) skips all of this
            number, alias = routing.executed(qualifier, fn.routing, self.draw())
            if number is not None:
                if not getattr(self.scheduler, "supports_published", False):
                    raise VersionUnsupported("this appliance's scheduler cannot run published versions apart from "
                                             "$LATEST yet (cluster mode); invoke the function without a qualifier")
                fn = self.store.published.executable(fn, number)
                key, executed, published = f"{name}:{number}", str(number), number
        rec = InvocationRecord(request_id=request_id, function=name, version=fn.version, started_at=time.time(),
                               memory_mb=fn.config.memory_mb, trigger=trigger or "api",
                               correlation_id=correlation_id, executed_version=executed, alias=alias)
        hit = self._specs.get(key)
        if hit is None or hit[0] is not fn:
            # The store hands out the same record until the function changes: build its spec once.
            hit = self._specs[key] = (fn, InstanceSpec.of(fn, published=published))
        return _Call(spec=hit[1], body=body, request_id=request_id, rec=rec, t0=self.clock(),
                     timeout_s=fn.config.timeout_s, max_instances=fn.config.max_instances,
                     policy=self.policies.get(fn, key))

    def _complete(self, call: _Call, run, *args) -> Outcome:
        """Run ``run(call, *args) -> (result, lease)``, then record and log the invocation."""
        rec = call.rec
        outcome = Outcome(record=rec)
        lease: Lease | None = None
        try:
            outcome.result, lease = run(call, *args)
        except FunctionError as exc:
            # Errors from a failed cold start are shared by every request that waited for it.
            outcome.error = function_error({**exc.error, "requestId": call.request_id}) \
                if exc.error.get("requestId") != call.request_id else exc
        except ApplianceError as exc:
            outcome.error = exc
        rec.duration_ms = round((self.clock() - call.t0) * 1000, 3)
        self._finish(rec, outcome, lease)
        self.records.add(rec)
        safely(self.observer.invocation, rec)
        logs.info(log, "event=invoke request_id=%s function=%s version=%s status=%s http_status=%s cold=%s "
                  "duration_ms=%.3f error_type=%s instance=%s", call.request_id, rec.function, rec.version, rec.status,
                  rec.http_status, rec.cold, rec.duration_ms, rec.error_type or "-", rec.instance_id or "-")
        return outcome

    def _call(self, call: _Call, first: tuple | None = None):
        """Attempts until one ends; ``first`` is an attempt already made (lease, reply).

        ``max_attempts`` bounds the attempts that can repeat: refusals for capacity, and cold
        starts whose instance is gone at once. A warm instance found gone (unreachable, or
        drained after scale to zero) is not counted: its slot is dropped for good, so those
        retries end when the stale slots do, and then the request cold-starts. Counting them,
        an edge that had not yet heard of a scale to zero from Consul answered 503 to the first
        request after it whenever five stale slots were left.
        """
        deadline = call.t0 + self.queue_timeout_s
        counted = 0
        first_attempt = True
        while counted < self.max_attempts:
            if first_attempt and first is not None:
                lease, reply = first
            else:
                lease = self.activator.acquire(call.spec, max_instances=call.max_instances, deadline=deadline,
                                               policy=call.policy)
                self._leased(call, lease)
                extra = {"attempt": call.attempt} if call.attempt else {}
                call.sent = self.clock()
                try:
                    reply = self.client.invoke(lease.instance, call.body, request_id=call.request_id,
                                               deadline_ms=int((time.time() + call.timeout_s) * 1000),
                                               read_timeout_s=call.timeout_s + TIMEOUT_GRACE_S, **extra)
                except (InstanceUnreachable, InstanceTimeout, InstanceLost) as exc:
                    reply = exc
            first_attempt = False
            done, result = self._settle(call, lease, reply)
            if done:
                return result, lease
            if lease.cold or not lease.slot.draining:  # a dropped warm slot is not counted
                counted += 1
            elif self.clock() > deadline:
                break
        raise ColdStartTimeout(f"no instance of {call.spec.function!r} accepted the request after {self.max_attempts} "
                               "attempts; retry")

    def _settled(self, call: _Call, lease: Lease, reply: InvokeReply):
        """A reply that ends the invocation (not a refusal): settle it without blocking."""
        done, result = self._settle(call, lease, reply)
        assert done, "a refused reply must go through _call"
        return result, lease

    def _leased(self, call: _Call, lease: Lease) -> None:
        rec = call.rec
        rec.instance_id = lease.instance.id
        if lease.cold:
            rec.cold, rec.cold_cause = True, lease.cause
        self._lease_phases(lease, rec)

    def _settle(self, call: _Call, lease: Lease, reply) -> tuple[bool, object]:
        """What one attempt's reply (or failure) means: (True, result) when it ended well,
        (False, None) to try another instance, or the error it ended with, raised."""
        inst = lease.instance
        request_id = call.request_id
        if isinstance(reply, InstanceUnreachable):
            self.registry.forget(inst.id)
            self.activator.release(lease, outcome="gone")
            return False, None
        if isinstance(reply, InstanceTimeout):
            call.rec.run_ms = call.timeout_s * 1000.0  # it ran at least that long: billed so
            self.scheduler.stop(inst, graceful=False)
            self.activator.release(lease, outcome="gone")
            raise FunctionTimeout({"errorType": "Function.Timeout", "requestId": request_id,
                                   "errorMessage": f"the function did not answer within {call.timeout_s} s; "
                                                   "its instance was stopped"})
        if isinstance(reply, ReplyTooLarge):
            # It ran and answered; the answer was not read past the limit (its connection is closed).
            call.rec.run_ms = (self.clock() - call.sent) * 1000.0
            self.activator.release(lease, outcome="ok")
            raise function_error({"errorType": "Function.ResponseTooLarge", "requestId": request_id,
                                  "errorMessage": f"the function's reply is over the limit: {reply}; "
                                                  "return less (Lambda's limit is 6 MiB)"})
        if isinstance(reply, InstanceLost):
            cause = self.scheduler.exit_cause(inst.id)
            if cause == "drained":
                # It had accepted a drain (nothing in flight, refusing new work) before this
                # request reached it, so the request cannot have run: send it elsewhere.
                self.activator.release(lease, outcome="gone")
                return False, None
            self.activator.release(lease, outcome="crashed")
            if cause == "oom":
                raise function_error({"errorType": "Function.OutOfMemory", "requestId": request_id,
                                      "errorMessage": f"the instance exceeded {call.spec.memory_mb} MB and was "
                                                      "killed; raise memory_mb or use less memory"})
            raise InstanceCrashed(f"instance {inst.id} ended while running the request ({cause or 'connection lost'});"
                                  " the request was not retried because it may have run")
        if reply.refused:
            if reply.refused == "capacity":
                self.activator.release(lease, outcome="refused-capacity")
            else:
                self.registry.forget(inst.id)
                self.activator.release(lease, outcome="gone")
            return False, None
        self.activator.release(lease, outcome="gone" if reply.exiting else "ok")
        env = reply.body if isinstance(reply.body, dict) else {}
        rec = call.rec
        logs_ = env.get("logs")
        rec.logs = [line if isinstance(line, str) else str(line) for line in logs_] if isinstance(logs_, list) else []
        # Billed: the round trip on the platform's own clock. The instance's ``durationMs`` is its
        # own say and a handler can rewrite it (it was billed 0.01 GB-s for 20 that way).
        rec.run_ms = (self.clock() - call.sent) * 1000.0 if call.sent else 0.0
        if reply.status == 200 and env.get("ok"):
            return True, env.get("result")
        error = env.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("errorType", ""), str):
            error = {"errorType": "Runtime.Unknown",
                     "errorMessage": f"the instance answered {reply.status} without a well-formed error"}
        if not isinstance(error.get("errorMessage", ""), str):
            error["errorMessage"] = str(error["errorMessage"])
        error.setdefault("requestId", request_id)
        raise function_error(error)

    @staticmethod
    def _lease_phases(lease: Lease, rec: InvocationRecord) -> None:
        phases = rec.phases
        phases.clear()
        if lease.cold:
            # restore: only a start forked from a snapshot template has one (and no user_init)
            cold = {k: float(lease.phases.get(k, 0.0)) for k in COLD_PHASES if k != "restore" or k in lease.phases}
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
                if k in cold:
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
        if isinstance(err, FunctionError):
            rec.logs.extend(error_log_lines(err.error))
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


#: Stack lines a failed invocation's log keeps (the innermost frames, where the error was raised).
MAX_STACK_LINES = 100


def error_log_lines(error: dict) -> list[str]:
    """A failed invocation's error as Lambda's runtime writes it into the log: ``[ERROR] <type>:
    <message>`` and the stack trace, so ``faas logs`` and the console show why it failed."""
    error_type = str(error.get("errorType") or "Function.Error")
    out = [f"[ERROR] {error_type}: {str(error.get('errorMessage') or '')[:1000]}".rstrip()]
    stack = error.get("stackTrace") or []
    if isinstance(stack, list) and stack:
        lines = [ln for frame in stack for ln in str(frame).rstrip("\n").split("\n")]
        if lines[0].startswith("  File "):  # Python's frames; Node.js's read "at ..." on their own
            out.append("Traceback (most recent call last):")
        out.extend(lines[-MAX_STACK_LINES:])
    return out


def _raise(call, exc):
    raise exc


def encode_event(event) -> bytes:
    return dumps_compact(event)
