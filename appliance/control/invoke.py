"""Direct invocation through the control API (``POST /v1/functions/<name>/invocations``)."""

from __future__ import annotations

import json

from flask import Response, request

from appliance.core.async_invoke import event_id_for
from appliance.core.errors import PayloadTooLarge, ValidationError, to_response_body
from appliance.web import correlation_id_of, json_response, request_id
from appliance.wiring import Components


def read_event(max_bytes: int) -> bytes:
    """The event of a direct invoke, refused (413) past ``max_bytes`` (APPLIANCE_MAX_EVENT_BYTES,
    the same limit as an HTTP trigger's body): at once from Content-Length, else while reading,
    so an oversized event is never held whole."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the event is {length} bytes; the limit is {max_bytes}", field="body")
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the event is over the limit of {max_bytes} bytes", field="body")
    return data


def invocation_type(header: str | None, arg: str | None) -> str:
    """``RequestResponse`` (default) or ``Event``, from Lambda's ``X-Amz-Invocation-Type`` header or ``?type=``
    (which wins). Both are checked when both are given: a typo is an error, never silently ignored."""
    if header and header not in ("Event", "RequestResponse"):
        raise ValidationError(f"X-Amz-Invocation-Type must be Event or RequestResponse; got {header!r}",
                              field="X-Amz-Invocation-Type")
    if arg:
        value = {"event": "Event", "async": "Event", "requestresponse": "RequestResponse",
                 "sync": "RequestResponse"}.get(arg.lower())
        if value is None:
            raise ValidationError(f"type must be event or sync; got {arg!r}", field="type")
        return value
    return header or "RequestResponse"


def invoke_response(c: Components, function: str, body: bytes, kind: str = "RequestResponse") -> Response:
    """Direct invoke (control API): the result as JSON, or the structured error; an ``Event``
    invocation answers 202 with its request id once the event is durably queued."""
    rid = request_id()
    if body.strip():
        try:
            json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ValidationError(f"the request body must be the event as JSON: {str(exc)[:200]}",
                                  field="body") from None
    else:
        body = b"{}"
    if kind == "Event":
        event_id = event_id_for(function, rid, correlation_id_of(request.environ))
        added = c.async_runner.accept(function, body, event_id=event_id, source="api")
        return json_response({"requestId": event_id, "status": "queued" if added else "already-accepted"}, 202,
                             {"X-Request-Id": event_id})
    outcome = c.invoker.invoke(function, body, request_id=rid, trigger=None,
                               correlation_id=correlation_id_of(request.environ))
    headers = {"X-Request-Id": rid, "Server-Timing": outcome.server_timing(),
               "X-Faas-Cold-Start": "1" if outcome.record.cold else "0",
               "X-Amz-Executed-Version": outcome.record.executed_version}
    if outcome.error is not None:
        status, extra, payload = to_response_body(outcome.error, rid)
        headers.update(extra)
        return json_response(payload, status, headers)
    return json_response(outcome.result, 200, headers)
