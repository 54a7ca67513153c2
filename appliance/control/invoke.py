"""Direct invocation through the control API (``POST /v1/functions/<name>/invocations``)."""

from __future__ import annotations

import json

from flask import Response

from appliance.core.errors import ValidationError, to_response_body
from appliance.web import json_response, request_id
from appliance.wiring import Components


def invoke_response(c: Components, function: str, body: bytes) -> Response:
    """Direct invoke (control API): the result as JSON, or the structured error."""
    rid = request_id()
    if body.strip():
        try:
            json.loads(body)
        except ValueError as exc:
            raise ValidationError(f"the request body must be the event as JSON: {exc}", field="body") from None
    else:
        body = b"{}"
    outcome = c.invoker.invoke(function, body, request_id=rid, trigger=None)
    headers = {"X-Request-Id": rid, "Server-Timing": outcome.server_timing(),
               "X-Faas-Cold-Start": "1" if outcome.record.cold else "0"}
    if outcome.error is not None:
        status, extra, payload = to_response_body(outcome.error, rid)
        headers.update(extra)
        return json_response(payload, status, headers)
    return json_response(outcome.result, 200, headers)
