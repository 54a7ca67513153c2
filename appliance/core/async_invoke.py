"""Asynchronous invocation: the function's ``async`` settings and the pure decisions about an event.

An async event is accepted (202) once it is durably queued; workers then run it through the same
invoker as a synchronous request. What happens after each attempt is decided here, from the
attempt's outcome, the event's age and the function's settings, as AWS Lambda does for
asynchronous invocation:

* function errors, timeouts and crashes of the instance count against ``max_retry_attempts``
  (0..2, default 2); the retries wait ``backoff_s`` then ``2 * backoff_s`` (Lambda: one minute,
  then two);
* throttling and platform unavailability (``throttled``, ``unavailable``: no instance could take
  the event) do not count: they are retried with exponential backoff (1 s doubling to 5 minutes)
  for as long as the event is younger than ``max_event_age_s`` (60..21600, default 21600);
* an event older than ``max_event_age_s`` is not run again: it is dead (``EventAgeExceeded``).

Every function here is pure and takes ``now`` (wall-clock seconds), so the rules are tested
without a clock or a queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

from appliance.core.errors import ValidationError

MAX_RETRY_ATTEMPTS = (0, 2)
MAX_EVENT_AGE_S = (60, 21600)
DEFAULT_MAX_RETRY_ATTEMPTS = 2
DEFAULT_MAX_EVENT_AGE_S = 21600
#: Lambda's limit for an asynchronous event.
MAX_EVENT_BYTES = 256 * 1024
#: Backoff for throttling and platform errors (not counted as retries): first wait and longest wait.
THROTTLE_FIRST_S = 1.0
THROTTLE_MAX_S = 300.0
MAX_URL = 2048
#: model.NAME_RE (model imports this module, so it is not imported back).
FUNCTION_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?$")
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")

#: Event states, as ``faas events`` lists them.
QUEUED, RUNNING, RETRYING, SUCCEEDED, DEAD = "queued", "running", "retrying", "succeeded", "dead"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, DEAD)
PENDING = (QUEUED, RETRYING)
#: Record statuses (appliance.core.records) that are the function's own failure.
FUNCTION_FAILURES = ("error", "timeout")
#: Record statuses that say no instance could take the event: retried without counting.
SYSTEM_FAILURES = ("throttled", "unavailable")


def _int(d: dict, name: str, default: int, bounds: tuple[int, int]) -> int:
    value = d.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValidationError(f"async.{name} must be an integer from {bounds[0]} to {bounds[1]}, got {value!r}",
                              field=f"async.{name}")
    return value


def validate_destination(value, where: str) -> dict | None:
    """``{"function": NAME}``, ``{"url": "http(s)://..."}`` or ``{"queue": NAME}``; None clears it."""
    field = f"async.{where}"
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise ValidationError(f'{field} must be one of {{"function": NAME}}, {{"url": "https://..."}}, '
                              f'{{"queue": NAME}}; got {value!r}', field=field)
    (kind, target), = value.items()
    if kind == "function":
        if not isinstance(target, str) or not FUNCTION_NAME_RE.match(target):
            raise ValidationError(f"{field}.function must be a function name, got {target!r}", field=field)
    elif kind == "url":
        parsed = urlparse(target) if isinstance(target, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(target) > MAX_URL:
            raise ValidationError(f"{field}.url must be an http:// or https:// URL of at most {MAX_URL} "
                                  f"characters, got {target!r}", field=field)
    elif kind == "queue":
        if not isinstance(target, str) or not (QUEUE_NAME_RE.match(target) or (
                target.startswith(("https://", "http://")) and len(target) <= MAX_URL)):
            raise ValidationError(f"{field}.queue must be a queue name of 1-80 letters, digits, '-' and '_', "
                                  f"or an SQS queue URL; got {target!r}", field=field)
    else:
        raise ValidationError(f"{field} has an unknown destination {kind!r}; use function, url or queue", field=field)
    return {kind: target}


def validate_config(value) -> dict:
    """The function's ``async`` field, validated and with defaults filled in."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValidationError('async must be an object such as {"max_retry_attempts": 2, "max_event_age_s": 3600, '
                              '"on_failure": {"function": "NAME"}}', field="async")
    known = ("max_retry_attempts", "max_event_age_s", "on_success", "on_failure")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValidationError(f"unknown field async.{unknown[0]}; known fields are: {', '.join(known)}",
                              field=f"async.{unknown[0]}")
    out = {"max_retry_attempts": _int(value, "max_retry_attempts", DEFAULT_MAX_RETRY_ATTEMPTS, MAX_RETRY_ATTEMPTS),
           "max_event_age_s": _int(value, "max_event_age_s", DEFAULT_MAX_EVENT_AGE_S, MAX_EVENT_AGE_S)}
    for where in ("on_success", "on_failure"):
        dest = validate_destination(value.get(where), where)
        if dest:
            out[where] = dest
    return out


def merge_config(current: dict | None, patch) -> dict:
    """A PATCH of ``async`` changes the fields it names and keeps the others (``null`` clears a destination)."""
    if patch is None:
        return validate_config({})
    if not isinstance(patch, dict):
        return validate_config(patch)  # raises the shaped error
    merged = dict(current or {})
    merged.update(patch)
    return validate_config({k: v for k, v in merged.items() if v is not None})


@dataclass(frozen=True)
class Step:
    """What to do with an event after an attempt: ``succeeded``, ``retry`` at ``at``, or ``dead``."""
    action: str
    at: float | None = None
    #: Lambda's destination condition: Success, RetriesExhausted, EventAgeExceeded.
    condition: str = ""
    #: Whether this attempt counted against max_retry_attempts.
    counted: bool = False


def expired(created_at: float, now: float, config: dict) -> bool:
    return now - created_at >= config.get("max_event_age_s", DEFAULT_MAX_EVENT_AGE_S)


def after_attempt(*, status: str, attempt: int, failures: int, created_at: float, now: float, config: dict,
                  backoff_s: float) -> Step:
    """The step after attempt number ``attempt`` (1-based) ended with record ``status``.

    ``failures`` is the number of earlier attempts that counted (function errors and timeouts).
    """
    if status == "ok":
        return Step("succeeded", condition="Success")
    counted = status not in SYSTEM_FAILURES
    if counted:
        failures += 1
        if failures > config.get("max_retry_attempts", DEFAULT_MAX_RETRY_ATTEMPTS):
            return Step("dead", condition="RetriesExhausted", counted=True)
        wait = backoff_s * (2 ** (failures - 1))
    else:
        system_retries = max(0, attempt - failures - 1)
        wait = min(THROTTLE_MAX_S, THROTTLE_FIRST_S * (2 ** system_retries))
    at = now + wait
    if expired(created_at, at, config):
        return Step("dead", condition="EventAgeExceeded", counted=counted)
    return Step("retry", at=at, counted=counted)


def attempt_request_id(event_id: str, attempt: int) -> str:
    """The request id of one attempt: the event's id for the first, ``<id>.<n>`` for retries, so every
    attempt has its own invocation record and ``id.split('.')[0]`` is always the event's id."""
    return event_id if attempt <= 1 else f"{event_id}.{attempt}"


def destination_record(*, event_id: str, function: str, version: int | None, condition: str, attempts: int,
                       payload, status_code: int, result, error: dict | None, timestamp: str) -> dict:
    """Lambda's destination record (requestContext, requestPayload, responseContext, responsePayload)."""
    response_context = {"statusCode": status_code, "executedVersion": str(version or "$LATEST")}
    if error is not None:
        response_context["functionError"] = "Unhandled"
        result = {k: v for k, v in error.items() if k in ("errorType", "errorMessage", "stackTrace")}
    return {
        "version": "1.0",
        "timestamp": timestamp,
        "requestContext": {"requestId": event_id, "functionArn": f"arn:faas:local:function:{function}:$LATEST",
                           "condition": condition, "approximateInvokeCount": attempts},
        "requestPayload": payload,
        "responseContext": response_context,
        "responsePayload": result,
    }


def in_flight_cap(max_instances: int, concurrency: int, share: float) -> int:
    """How many of a function's events may run at once: ``share`` of its capacity, at least one,
    so asynchronous load leaves the rest of the function's instances to synchronous traffic."""
    return max(1, int(max_instances * concurrency * share))


def event_id_for(function: str, request_id: str, client_key: str | None) -> str:
    """The id an accepted asynchronous event gets: the platform's new request id, or, when the
    client sent its own ``X-Request-Id``, an id derived from the function and that key, so the same
    event sent twice is accepted once (an idempotency key) while a client's id can never name, or
    touch, another function's event or any other record."""
    if not client_key:
        return request_id
    import hashlib

    return "e" + hashlib.sha256(f"{function}\0{client_key}".encode()).hexdigest()[:31]
