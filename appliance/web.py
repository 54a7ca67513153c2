"""What both Flask apps share: request ids, JSON error responses, the error handler."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from appliance.core.codec import dumps_compact, new_request_id
from appliance.core.errors import ApplianceError, to_response_body

log = logging.getLogger("appliance.http")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")


def request_id() -> str:
    """The current Flask request's id (see :func:`request_id_of`)."""
    return request_id_of(request.environ)


def request_id_of(environ: dict) -> str:
    """The request's id: always a new one of the platform's (the key of its invocation record).
    Kept in the WSGI environ, so every part of one request reports the same id."""
    rid = environ.get("faas.request_id")
    if rid is None:
        rid = environ["faas.request_id"] = new_request_id()
    return rid


def correlation_id(given: str | None) -> str | None:
    """A client's own ``X-Request-Id``, kept as the request's correlation id when it is a sane
    token (else dropped). It is stored and echoed as ``X-Correlation-Id``, never used as a key:
    a client that reuses another request's id cannot reach that request's record."""
    return given if given and REQUEST_ID_RE.match(given) else None


def correlation_id_of(environ: dict) -> str | None:
    return correlation_id(environ.get("HTTP_X_REQUEST_ID"))


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    resp = Response(dumps_compact(body), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error_response(exc: BaseException) -> Response:
    rid = request_id()
    if isinstance(exc, HTTPException) and not isinstance(exc, ApplianceError):
        codes = {404: "Route.NotFound", 405: "Route.MethodNotAllowed", 413: "Request.TooLarge"}
        body = {"error": {"code": codes.get(exc.code, "Request.Invalid"), "message": exc.description,
                          "requestId": rid}}
        resp = json_response(body, exc.code or 500)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # RFC 9110: a 405 says what is allowed
    else:
        status, headers, body = to_response_body(exc, rid)
        if status >= 500 and not isinstance(exc, ApplianceError):
            log.error("event=internal_error request_id=%s path=%s", rid, request.path, exc_info=exc)
        resp = json_response(body, status, headers)
    resp.headers["X-Request-Id"] = rid
    corr = correlation_id_of(request.environ)
    if corr:
        resp.headers["X-Correlation-Id"] = corr
    return resp


def install_error_handlers(app: Flask) -> None:
    app.register_error_handler(Exception, error_response)
