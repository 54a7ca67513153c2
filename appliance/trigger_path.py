"""HTTP-trigger requests as plain WSGI, mounted in front of the Flask edge app.

The edge router is a Flask app (platform paths under ``/_/``, error handlers), and Flask's own
documented way to put a WSGI layer before it, wrapping ``app.wsgi_app``, is how trigger traffic
gets here. Why not a Flask view: a trigger request does one thing (match, build the event,
invoke, map the reply), while Flask builds a request context, a ``Request``, URL adapter, session
and ``Response`` around it. Measured in-process on one warm hello request (2 cores, Python 3.11):
Flask's machinery and the Werkzeug request/response objects took about 110 of 190 us of CPU, the
invocation itself (lease, call, release, record, log line) about 60. On a 2-core host the edge's
Python time per request bounds its throughput, so the trigger path reads the WSGI environ
directly and answers with one ``start_response``.

Everything that is not a trigger (``/_/...``) goes to Flask unchanged. Errors become HTTP
statuses in :func:`errors.to_response_body`, the same single place the Flask handlers use.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from .errors import ApplianceError, MethodNotAllowed, PayloadTooLarge, ValidationError, to_response_body
from .events import build_event, to_http_response
from .http_common import request_id_of
from .invoker import encode_event

log = logging.getLogger("appliance.http")

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: Response headers the edge owns: a function cannot set framing or connection handling.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-authorization", "proxy-authenticate", "content-length"})
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_JSON = "application/json"


def status_line(code: int) -> str:
    return _STATUS_LINES.get(code) or f"{code} UNKNOWN"


def environ_headers(environ: dict) -> list[tuple[str, str]]:
    """The request's headers, lower-cased, from the WSGI environ (``HTTP_*`` plus the two CGI
    names), the same set Werkzeug's ``EnvironHeaders`` reports."""
    out = []
    for key, value in environ.items():
        if key[:5] == "HTTP_":
            if key != "HTTP_CONTENT_TYPE" and key != "HTTP_CONTENT_LENGTH":
                out.append((key[5:].replace("_", "-").lower(), value))
        elif (key == "CONTENT_TYPE" or key == "CONTENT_LENGTH") and value:
            out.append((key.replace("_", "-").lower(), value))
    return out


def request_path(environ: dict) -> str:
    """PATH_INFO as text: WSGI carries the raw bytes as latin-1; URLs are UTF-8."""
    raw = environ.get("PATH_INFO") or ""
    try:
        path = raw.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        path = raw
    return "/" + path.lstrip("/")


def request_host(environ: dict) -> str:
    host = environ.get("HTTP_HOST")
    if not host:
        host = environ.get("SERVER_NAME", "")
        port = environ.get("SERVER_PORT")
        if port and port not in ("80", "443"):
            host = f"{host}:{port}"
    return host


def read_body(environ: dict, max_bytes: int) -> bytes:
    """The request body, refused past ``max_bytes`` before any of it is read. The HTTP server
    layer gives a chunked body its length (see http_server._sized_bodies)."""
    raw_length = environ.get("CONTENT_LENGTH")
    if not raw_length:
        return b""
    try:
        length = int(raw_length)
    except ValueError:
        raise ValidationError("Content-Length must be a number of bytes", field="Content-Length") from None
    if length > max_bytes:
        raise PayloadTooLarge(f"the request body is {length} bytes; the limit is {max_bytes}")
    if length <= 0:
        return b""
    return environ["wsgi.input"].read(length)


class TriggerPath:
    """WSGI middleware: triggers here, ``/_/`` platform paths to the wrapped Flask app."""

    def __init__(self, platform_app, store, invoker, max_event_bytes: int):
        self.platform_app = platform_app
        self.store = store
        self.invoker = invoker
        self.max_event_bytes = max_event_bytes

    def __call__(self, environ, start_response):
        path = request_path(environ)
        if path[:3] == "/_/":
            return self.platform_app(environ, start_response)
        rid = request_id_of(environ)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        timing = None
        try:
            if method not in METHODS:
                raise MethodNotAllowed(f"{method} is not served by the edge; use one of {', '.join(sorted(METHODS))}")
            match = self.store.routes().match(method, path)
            body = read_body(environ, self.max_event_bytes)
            host = request_host(environ)
            event = build_event(
                method=method, raw_path=path, raw_query=environ.get("QUERY_STRING", ""),
                headers=environ_headers(environ), body=body, route_key=match.route_key,
                path_params=match.params, request_id=rid, source_ip=environ.get("REMOTE_ADDR") or "",
                domain=host.split(":")[0])
            outcome = self.invoker.invoke(match.trigger.function, encode_event(event), request_id=rid,
                                          trigger=match.route_key)
            timing = outcome.server_timing()
            if outcome.error is not None:
                raise outcome.error
            mapped = to_http_response(outcome.result)
        except Exception as exc:  # every failure answers in the one error shape
            return self._error(start_response, exc, rid, path, timing)
        headers = [("X-Request-Id", rid), ("Server-Timing", timing)]
        for k, v in mapped.headers:
            if k.lower() not in HOP_BY_HOP:
                headers.append((k, v))
        data = mapped.body if method != "HEAD" else b""
        headers.append(("Content-Length", str(len(data))))
        start_response(status_line(mapped.status), headers)
        return [data]

    @staticmethod
    def _error(start_response, exc: Exception, rid: str, path: str, timing: str | None):
        from .http_common import dumps_compact

        status, extra, payload = to_response_body(exc, rid)
        if status >= 500 and not isinstance(exc, ApplianceError):
            log.error("event=internal_error request_id=%s path=%s", rid, path, exc_info=exc)
        data = dumps_compact(payload)
        headers = [("Content-Type", _JSON), ("Content-Length", str(len(data))), ("X-Request-Id", rid)]
        headers.extend(extra.items())
        if timing is not None:
            headers.append(("Server-Timing", timing))
        start_response(status_line(status), headers)
        return [data]
