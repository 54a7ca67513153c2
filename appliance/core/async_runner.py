"""Runs accepted asynchronous events through the invoker, retries them and delivers destinations.

Accepting (:meth:`AsyncRunner.accept`) is a durable write to the :class:`~appliance.core.ports.EventQueue`
and nothing else, so the 202 is cheap and an accepted event survives any crash. A dispatcher
thread claims due events and hands them to a bounded pool of worker threads; each attempt is an
ordinary invocation (``Invoker.invoke``, trigger ``async``), so events get the function's normal
scaling, limits and records. The rules after an attempt are :func:`.async_invoke.after_attempt`.

Async load cannot starve synchronous traffic: at most ``workers`` events run at once on this
process, and at most ``share`` of a function's capacity (``max_instances * concurrency``, at
least one) runs its events; the rest of its instances stay for synchronous requests.

Delivery is at least once: the claim is committed (``running``, attempt + 1) before the attempt
starts, so an attempt cut short by a crash is run again after the restart (its ``attempt`` in
the context is then one higher). Nothing else runs an event twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from appliance.core import async_invoke as rules
from appliance.core import logs
from appliance.core.codec import new_request_id
from appliance.core.errors import ApplianceError, FunctionNotFound, PayloadTooLarge, ValidationError
from appliance.core.ports import EventQueue, QueuedEvent

log = logging.getLogger("appliance.async")

#: Longest the dispatcher sleeps with nothing due (a put or a finished attempt wakes it sooner).
IDLE_WAIT_S = 1.0
URL_TIMEOUT_S = 5.0
#: How long a stop waits for attempts under way.
STOP_GRACE_S = 10.0


class AsyncRunner:
    def __init__(self, queue: EventQueue, store, invoker, *, workers: int = 4, share: float = 0.5,
                 backoff_s: float = 60.0, clock=time.time, post=None):
        self.queue = queue
        self.store = store
        self.invoker = invoker
        self.workers = workers
        self.share = share
        self.backoff_s = backoff_s
        self.clock = clock
        #: ``post(url, body_bytes, timeout_s) -> int`` status (url destinations); requests by default.
        self._post = post or _http_post
        self._busy: dict[str, int] = {}
        self._running = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        #: Where ``{"queue": ...}`` destinations go (core/queue_source.QueueRouter); None: the event queue's own.
        self.queues = None
        self._thread: threading.Thread | None = None

    # -- accepting ----------------------------------------------------------------------

    def accept(self, function: str, payload: bytes, *, event_id: str, source: str = "api") -> bool:
        """Queue one event durably; False when ``event_id`` was already accepted (idempotent retry).
        ``function`` may name a published version or an alias (``NAME:live``): it is resolved at each attempt."""
        self.store.get(_base(function))
        if len(payload) > rules.MAX_EVENT_BYTES:
            raise PayloadTooLarge(f"an asynchronous event is at most {rules.MAX_EVENT_BYTES} bytes; "
                                  f"this one is {len(payload)}")
        existing = self.queue.get(event_id)
        if existing is not None and existing.function != function:
            raise ValidationError(f"request id {event_id!r} was already used for an event of another function; "
                                  "send a new X-Request-Id", field="X-Request-Id")
        now = self.clock()
        added = self.queue.put(QueuedEvent(id=event_id, function=function, payload=payload, created_at=now,
                                           available_at=now, source=source, updated_at=now))
        logs.info(log, "event=async_accepted request_id=%s function=%s source=%s new=%s", event_id, function,
                  source, added)
        self._wake.set()
        return added

    # -- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        recovered = self.queue.recover(self.clock())
        if recovered:
            log.warning("event=async_recovered count=%d note=%r", recovered,
                        "attempts cut short by a stop run again")
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="async")
        self._thread = threading.Thread(target=self._dispatch, daemon=True, name="async-dispatch")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._pool is not None:
            # Attempts under way get a bounded grace to finish and be recorded; one still running
            # after it stays "running" in the queue and is run again after the restart.
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._idle:
                self._idle.wait_for(lambda: self._running == 0, STOP_GRACE_S)

    def _cap(self, function: str) -> int:
        fn = self.store.find(_base(function))
        if fn is None:
            return 1  # it runs once and ends dead (Function.NotFound)
        return rules.in_flight_cap(fn.config.max_instances, fn.config.concurrency, self.share)

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._deliver()
                with self._lock:
                    free = self.workers - self._running
                    busy = dict(self._busy)
                events = self.queue.claim(self.clock(), free, busy, self._cap) if free > 0 else []
                for e in events:
                    with self._lock:
                        self._running += 1
                        self._busy[e.function] = self._busy.get(e.function, 0) + 1
                    self._pool.submit(self._attempt, e)
                wait = IDLE_WAIT_S
                if not events:
                    due = self.queue.next_due()
                    if due is not None:
                        wait = min(IDLE_WAIT_S, max(0.0, due - self.clock()))
                    # A function at its cap, or every worker busy: a finished attempt wakes us.
            except Exception:  # noqa: BLE001 - the loop must survive a bad row or a full disk
                log.exception("event=async_dispatch_failed")
                wait = IDLE_WAIT_S
            self._wake.wait(wait)

    def _attempt(self, e: QueuedEvent) -> None:
        try:
            self._run(e)
        except Exception:  # noqa: BLE001 - the event stays running and is recovered at the next start
            log.exception("event=async_attempt_failed request_id=%s", e.id)
        finally:
            with self._lock:
                self._running -= 1
                self._idle.notify_all()
                n = self._busy.get(e.function, 1) - 1
                if n:
                    self._busy[e.function] = n
                else:
                    self._busy.pop(e.function, None)
            self._wake.set()

    def _run(self, e: QueuedEvent) -> None:
        now = self.clock()
        fn = self.store.find(_base(e.function), fresh=True)
        if fn is None:
            self.queue.finish(e.id, rules.DEAD, now=now, failures=e.failures,
                              error=f"Function.NotFound: function {e.function!r} no longer exists")
            return
        config = rules.validate_config(getattr(fn.config, "async_config", None) or {})
        if rules.expired(e.created_at, now, config):
            self._end(e, fn, config, rules.Step("dead", condition="EventAgeExceeded"), status=None, result=None,
                      error={"errorType": "Async.EventAgeExceeded",
                             "errorMessage": f"the event was older than max_event_age_s "
                                             f"({config['max_event_age_s']} s) before attempt {e.attempts}"},
                      status_code=0, attempts=e.attempts - 1)
            return
        rid = rules.attempt_request_id(e.id, e.attempts)
        try:
            outcome = self.invoker.invoke(e.function, e.payload, request_id=rid, trigger="async", attempt=e.attempts)
        except FunctionNotFound as exc:
            self.queue.finish(e.id, rules.DEAD, now=self.clock(), failures=e.failures, error=f"{exc.code}: {exc.message}")
            return
        except ApplianceError as exc:  # Function.NoCode and the like: the function's own failure
            status, result, error, code = "error", None, {"errorType": exc.code, "errorMessage": exc.message}, exc.status
        else:
            rec = outcome.record
            status, result, code = rec.status, outcome.result, rec.http_status or 200
            error = None
            if outcome.error is not None:
                err = outcome.error
                error = dict(getattr(err, "error", None) or {"errorType": err.code, "errorMessage": err.message})
        now = self.clock()
        step = rules.after_attempt(status=status, attempt=e.attempts, failures=e.failures, created_at=e.created_at,
                                   now=now, config=config, backoff_s=self.backoff_s)
        failures = e.failures + (1 if step.counted else 0)
        logs.info(log, "event=async_attempt request_id=%s function=%s attempt=%d status=%s next=%s", e.id,
                  e.function, e.attempts, status, step.action)
        if step.action == "retry":
            self.queue.finish(e.id, rules.RETRYING, now=now, available_at=step.at, failures=failures,
                              error=_error_text(error))
            return
        e.failures = failures
        self._end(e, fn, config, step, status=status, result=result, error=error, status_code=code,
                  attempts=e.attempts)

    def _end(self, e: QueuedEvent, fn, config: dict, step: rules.Step, *, status, result, error, status_code,
             attempts: int) -> None:
        state = rules.SUCCEEDED if step.action == "succeeded" else rules.DEAD
        target = config.get("on_success" if state == rules.SUCCEEDED else "on_failure")
        destination = None
        if target:
            (kind, where), = target.items()
            try:
                payload = json.loads(e.payload)
            except ValueError:
                payload = None
            record = rules.destination_record(
                event_id=e.id, function=e.function, version=fn.version, condition=step.condition, attempts=attempts,
                payload=payload, status_code=status_code, result=result, error=error,
                timestamp=datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(timespec="milliseconds"
                                                                                       ).replace("+00:00", "Z"))
            destination = {"kind": kind, "target": where, "record": record}
        self.queue.finish(e.id, state, now=self.clock(), failures=e.failures,
                          error=None if state == rules.SUCCEEDED else (
                              f"{step.condition}: {_error_text(error) or ''}".rstrip(": ")),
                          destination=destination)
        logs.info(log, "event=async_done request_id=%s function=%s state=%s condition=%s destination=%s", e.id,
                  e.function, state, step.condition, (destination or {}).get("kind", "-"))

    def _deliver(self) -> None:
        """Destination deliveries: a function gets a new async event, a queue a message (both in the
        same transaction that drops the delivery), a URL an HTTP POST (one try, its failure noted)."""
        for d in self.queue.deliveries(16):
            body = json.dumps(d["record"]).encode()
            if d["kind"] == "function":
                event = QueuedEvent(id=new_request_id(), function=d["target"], payload=body, created_at=self.clock(),
                                    source=f"destination:{d['event_id']}")
                if self.store.find(d["target"]) is None:
                    self.queue.complete_delivery(d["id"], error=f"function {d['target']!r} does not exist")
                    continue
                event.available_at = event.updated_at = event.created_at
                self.queue.complete_delivery(d["id"], event=event)
            elif d["kind"] == "queue":
                backend = self.queues.pick(d["target"]) if self.queues is not None else self.queue
                if backend is self.queue:  # the embedded queue: in the same transaction
                    self.queue.complete_delivery(d["id"], message=(d["target"], body))
                    continue
                try:
                    backend.send(d["target"], body.decode())
                except ApplianceError as exc:  # SQS unreachable: keep the delivery, try again later
                    log.warning("event=destination_failed request_id=%s error=%r", d["event_id"], exc.message)
                    return
                self.queue.complete_delivery(d["id"])
            else:
                error = None
                try:
                    status = self._post(d["target"], body, URL_TIMEOUT_S)
                    if not 200 <= status < 300:
                        error = f"{d['target']} answered {status}"
                except Exception as exc:  # noqa: BLE001 - any failure to deliver is noted on the event
                    error = f"{d['target']}: {type(exc).__name__}: {exc}"
                if error:
                    log.warning("event=destination_failed request_id=%s error=%r", d["event_id"], error)
                self.queue.complete_delivery(d["id"], error=error)
            self._wake.set()


def _error_text(error: dict | None) -> str | None:
    if not error:
        return None
    return f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"[:1000]


def _http_post(url: str, body: bytes, timeout_s: float) -> int:
    import requests
    r = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout_s,
                      allow_redirects=False)
    return r.status_code


def _base(target: str) -> str:
    """The function of a target ``NAME[:QUALIFIER]``."""
    return target.partition(":")[0]
