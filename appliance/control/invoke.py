"""Direct invocation through the control API (``POST /v1/functions/<name>/invocations``)."""

from __future__ import annotations

import json

from flask import Response

from appliance.core.errors import ValidationError, to_response_body
from appliance.web import json_response, request_id
from appliance.wiring import Components


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
        except ValueError as exc:
            raise ValidationError(f"the request body must be the event as JSON: {exc}", field="body") from None
    else:
        body = b"{}"
    if kind == "Event":
        added = c.async_runner.accept(function, body, event_id=rid, source="api")
        return json_response({"requestId": rid, "status": "queued" if added else "already-accepted"}, 202,
                             {"X-Request-Id": rid})
    outcome = c.invoker.invoke(function, body, request_id=rid, trigger=None)
    headers = {"X-Request-Id": rid, "Server-Timing": outcome.server_timing(),
               "X-Faas-Cold-Start": "1" if outcome.record.cold else "0"}
    if outcome.error is not None:
        status, extra, payload = to_response_body(outcome.error, rid)
        headers.update(extra)
        return json_response(payload, status, headers)
    return json_response(outcome.result, 200, headers)
