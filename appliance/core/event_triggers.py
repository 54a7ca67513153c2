"""Triggers that are not HTTP routes: schedules (kind ``schedule``), and the loop that fires them.

They are kept apart from the HTTP route table (``event-triggers/<id>`` in the metadata store, not
``triggers/``), so adding one never changes how HTTP routes are matched; the API lists both.

Firing once per tick across the cluster: only the scaling leader's loop fires
(:mod:`appliance.core.leadership`: a Consul lock in cluster mode, the one process in embedded
mode), and each tick is claimed with a check-and-set on ``schedule-state/<id>`` before its event
is queued, so even two processes that both believe they lead (a lock changing hands) cannot fire
the same tick twice. Chosen over a Nomad periodic job because it needs no job per schedule, works
the same in embedded mode, and the lock already exists for scaling. The claim is made first, then
the event is queued (a durable local write): a crash in between loses that one tick rather than
firing it twice.

A schedule fires an asynchronous event of its function (``AsyncRunner.accept``), so a scheduled
run gets the retries, records and destinations of any asynchronous event. The event is the
trigger's constant ``event``, or EventBridge's Scheduled Event when none is given.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from datetime import datetime, timezone

from appliance.core import queue_source, routing
from appliance.core import schedule as sched
from appliance.core.async_invoke import MAX_EVENT_BYTES
from appliance.core.errors import ApplianceError, NotFound, RevisionConflict, ValidationError
from appliance.core.model import validate_name

KINDS = ("schedule", "queue")
#: Schedules per appliance (each is read on every pass of the loop).
MAX_TRIGGERS = 1000
#: Longest the loop sleeps between passes (a new or changed schedule is seen within it).
MAX_WAIT_S = 1.0

log = logging.getLogger("appliance.schedule")


SCHEDULE_FIELDS = {"schedule", "event", "timezone", "enabled"}


def _key(trigger_id: str) -> str:
    return f"event-triggers/{trigger_id}"


def _state_key(trigger_id: str) -> str:
    return f"schedule-state/{trigger_id}"


class EventTriggerStore:
    def __init__(self, meta, functions, clock=time.time):
        self.meta = meta
        self.functions = functions
        self.clock = clock
        #: ``check(queue)`` raises when no queue backend can serve ``queue`` (set by the wiring).
        self.queue_check = None

    def add(self, data: dict) -> dict:
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValidationError(f"kind must be http or one of {', '.join(KINDS)}; got {kind!r}", field="kind")
        known = {"kind", "function", *(SCHEDULE_FIELDS if kind == "schedule" else queue_source.FIELDS)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"unknown field {unknown[0]!r} for a {kind} trigger; known fields are: "
                                  f"{', '.join(sorted(known))}", field=unknown[0])
        function = data.get("function")
        if not isinstance(function, str):
            validate_name(function)
        base, qualifier = routing.split_target(function)
        validate_name(base)
        qualifier = routing.validate_qualifier(qualifier, "function")
        function = f"{base}:{qualifier}" if qualifier else base   # NAME, NAME:VERSION or NAME:ALIAS
        doc = {"kind": kind, "function": function, "created_at": self.clock()}
        doc.update(self._validated(data) if kind == "schedule" else queue_source.validate(data))
        self.functions.published.check_target(function)
        if kind == "queue" and self.queue_check is not None:
            self.queue_check(doc["queue"])
        if len(self.meta.list("event-triggers/")) >= MAX_TRIGGERS:
            raise ValidationError(f"at most {MAX_TRIGGERS} schedule and queue triggers; remove some first",
                                  field="kind")
        doc["id"] = f"{kind}-{secrets.token_hex(5)}"
        self.meta.put(_key(doc["id"]), doc, expected_revision=0)
        return self.describe(doc)

    def _validated(self, data: dict, base: dict | None = None) -> dict:
        base = base or {}
        zone = data.get("timezone", base.get("timezone", "UTC"))
        if not isinstance(zone, str):
            raise ValidationError("timezone must be an IANA time zone name such as 'UTC'", field="timezone")
        expr = data.get("schedule", base.get("schedule"))
        sched.parse(expr, zone)
        enabled = data.get("enabled", base.get("enabled", True))
        if not isinstance(enabled, bool):
            raise ValidationError("enabled must be true or false", field="enabled")
        out = {"schedule": expr.strip(), "timezone": zone, "enabled": enabled}
        event = data.get("event", base.get("event"))
        if event is not None:
            if len(json.dumps(event)) > MAX_EVENT_BYTES:
                raise ValidationError(f"event must be JSON of at most {MAX_EVENT_BYTES} bytes", field="event")
            out["event"] = event
        return out

    def get(self, trigger_id: str) -> tuple[dict, int]:
        got = self.meta.get(_key(trigger_id)) if isinstance(trigger_id, str) and trigger_id else None
        if not got:
            raise NotFound(f"no trigger with id {trigger_id!r}")
        return got

    def update(self, trigger_id: str, patch: dict) -> dict:
        for _ in range(20):
            doc, rev = self.get(trigger_id)
            fields = SCHEDULE_FIELDS if doc["kind"] == "schedule" else set(queue_source.FIELDS) - {"queue"}
            unknown = sorted(set(patch) - set(fields))
            if unknown:
                raise ValidationError(f"{unknown[0]!r} cannot be changed; change {', '.join(sorted(fields))}",
                                      field=unknown[0])
            new = {**doc, **(self._validated(patch, doc) if doc["kind"] == "schedule"
                             else queue_source.validate(patch, doc))}
            if "event" in patch and patch["event"] is None:
                new.pop("event", None)
            try:
                self.meta.put(_key(trigger_id), new, expected_revision=rev)
            except RevisionConflict:
                continue
            return self.describe(new)
        raise ValidationError("the trigger is being changed concurrently; try again", field="id")

    def remove(self, trigger_id: str) -> dict:
        doc, _ = self.get(trigger_id)
        self.meta.delete(_key(trigger_id))
        self.meta.delete(_state_key(trigger_id))
        return doc

    def remove_function(self, function: str) -> None:
        for doc in self.list(function):
            self.remove(doc["id"])

    def docs(self) -> list[dict]:
        return [doc for _, doc, _ in self.meta.list("event-triggers/")]

    def list(self, function: str | None = None) -> list[dict]:
        # A function's triggers include those of its versions and aliases (``NAME:QUALIFIER``).
        return [self.describe(d) for d in self.docs()
                if function is None or routing.split_target(d["function"])[0] == function]

    def users_of(self, target: str) -> list[str]:
        """The schedule and queue triggers that target ``NAME:QUALIFIER`` exactly (Version.InUse, Alias.InUse)."""
        return [f"trigger {d['id']}" for d in self.docs() if d["function"] == target]

    def state(self, trigger_id: str) -> tuple[dict, int]:
        got = self.meta.get(_state_key(trigger_id))
        return got if got else ({}, 0)

    def claim_tick(self, trigger_id: str, tick: float, revision: int) -> bool:
        """Record ``tick`` as fired; False when another process changed the state first."""
        try:
            self.meta.put(_state_key(trigger_id), {"last_tick": tick, "fired_at": self.clock()},
                          expected_revision=revision)
            return True
        except RevisionConflict:
            return False

    def describe(self, doc: dict) -> dict:
        """The trigger as the API shows it, with its last and next run (ISO 8601, UTC)."""
        out = dict(doc)
        if doc["kind"] != "schedule":
            return out
        state, _ = self.state(doc["id"])
        last = state.get("last_tick")
        out["last_run"] = _iso(last) if last else None
        out["next_run"] = None
        if doc.get("enabled", True):
            try:
                p = sched.plan(sched.parse(doc["schedule"], doc.get("timezone", "UTC")), anchor=doc["created_at"],
                               last_tick=last, now=self.clock())
                out["next_run"] = _iso(p.fire if p.fire is not None else p.next)
            except ApplianceError:
                pass
        return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def scheduled_event(trigger: dict, tick: float, event_id: str):
    """The trigger's constant event, or EventBridge's Scheduled Event."""
    if "event" in trigger:
        return trigger["event"]
    return {"version": "0", "id": event_id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "000000000000", "time": _iso(tick), "region": "local",
            "resources": [f"arn:faas:local:rule/{trigger['id']}"], "detail": {}}


class ScheduleLoop:
    """Fires due schedules while this process leads (see the module docstring)."""

    def __init__(self, triggers: EventTriggerStore, runner, leadership, clock=time.time):
        self.triggers = triggers
        self.runner = runner
        self.leadership = leadership
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[tuple[str, float]]:
        """One pass: fire every due tick this process can claim. Returns (trigger id, tick) fired."""
        fired = []
        now = self.clock()
        for doc in self.triggers.docs():
            if doc.get("kind") != "schedule" or not doc.get("enabled", True):
                continue
            try:
                p = sched.plan(sched.parse(doc["schedule"], doc.get("timezone", "UTC")), anchor=doc["created_at"],
                               last_tick=self.triggers.state(doc["id"])[0].get("last_tick"), now=now)
                if p.fire is None:
                    continue
                state, rev = self.triggers.state(doc["id"])
                if state.get("last_tick") is not None and state["last_tick"] >= p.fire:
                    continue  # another process fired it between our two reads
                if not self.triggers.claim_tick(doc["id"], p.fire, rev):
                    continue
                event_id = f"{doc['id']}-{int(p.fire * 1000)}"
                payload = json.dumps(scheduled_event(doc, p.fire, event_id)).encode()
                self.runner.accept(doc["function"], payload, event_id=event_id, source=f"schedule:{doc['id']}")
                fired.append((doc["id"], p.fire))
                log.info("event=schedule_fired trigger=%s function=%s tick=%s", doc["id"], doc["function"],
                         _iso(p.fire))
            except ApplianceError as exc:
                log.warning("event=schedule_failed trigger=%s error=%r", doc.get("id"), exc.message)
        return fired

    def _wait_s(self) -> float:
        now = self.clock()
        soonest = MAX_WAIT_S
        for doc in self.triggers.docs():
            if doc.get("kind") == "schedule" and doc.get("enabled", True):
                try:
                    p = sched.plan(sched.parse(doc["schedule"], doc.get("timezone", "UTC")),
                                   anchor=doc["created_at"],
                                   last_tick=self.triggers.state(doc["id"])[0].get("last_tick"), now=now)
                except ApplianceError:
                    continue
                soonest = min(soonest, 0.0 if p.fire is not None else p.next - now)
        return max(0.01, soonest)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = MAX_WAIT_S
            try:
                if self.leadership is None or self.leadership.is_leader():
                    self.tick()
                    wait = self._wait_s()
            except Exception:  # noqa: BLE001 - a metadata store hiccup must not end the loop
                log.exception("event=schedule_loop_failed")
            self._stop.wait(wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="schedules")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
