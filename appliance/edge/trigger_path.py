"""The edge's request entry: every trigger request takes one path, on an event loop.

Granian hands every request to :class:`EdgeApp` (its RSGI interface) on one uvloop event loop.
A trigger request, warm or cold, is served here start to finish: take the request once as a
:class:`~.request.RawRequest`, match the trigger table, build the AWS HTTP API 2.0 event from it
(:func:`.events.build_event`), invoke with :meth:`Invoker.invoke_async` (waiting for a busy
instance's slot or for a cold start is a future; the activator runs the start on its own thread)
and map the reply by the Lambda proxy rules (:func:`trigger_answer`). So the same request gets
the same event and the same answer whether its function is cold or warm. Failures of a round
trip (a refusal, a lost instance, a timeout) are settled on a thread by the invoker's shared code.
The platform paths under ``/_/`` go to the edge router's Flask app (:mod:`.app`) on a thread.

Before the invocation, the matched trigger's authentication is checked (:mod:`.trigger_auth`: a
trigger without ``auth`` costs one attribute test), and a trigger with CORS settings has its
preflights answered here and its answers given the Access-Control headers
(:mod:`appliance.core.trigger_policy`). A refused request never reaches the invoker, so it
starts no instance.

Why an event loop: on a 2-core host the edge's CPU per request bounds its throughput. Served as
WSGI, each request held a Python thread for its whole round trip, and the threads handed the GIL
to each other several times per request; with Flask's request context and Werkzeug's request and
response objects on top (about 110 of 190 us of CPU per warm request, measured in-process), the
edge topped out near 2,300 req/s at 16 connections. On the loop, one thread interleaves all
requests' round trips with no handoff (see bench/results/findings.md for the steps and figures).

Errors become HTTP statuses in :func:`appliance.core.errors.to_response_body`, the one place the
Flask handlers use too.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor

from appliance.core import trigger_policy
from appliance.core.codec import dumps_compact, new_request_id
from appliance.core.async_invoke import event_id_for
from appliance.core.errors import (
    ApplianceError,
    FunctionError,
    MethodNotAllowed,
    OriginForbidden,
    PayloadTooLarge,
    RequestTimeout,
    ValidationError,
    to_response_body,
)
from appliance.core.invoker import encode_event
from appliance.edge.events import DEFAULT_ACCOUNT, build_event, public_error, to_http_response
from appliance.edge.request import RawRequest, client_ip
from appliance.edge.trigger_auth import TriggerGuard
from appliance.web import correlation_id

log = logging.getLogger("appliance.http")

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: Response headers the edge owns: a function cannot set framing or connection handling.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-authorization", "proxy-authenticate", "content-length"})
PREFLIGHT_FALLBACK = ("GET", "POST", "PUT", "PATCH", "DELETE")
_JSON_HEADERS = (("content-type", "application/json"),)
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
HEADER_VALUE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*\Z")


def request_id(headers) -> str:
    """A new id of the platform's, the key of the request's record. (A caller's own
    ``X-Request-Id`` is its correlation id: kept, echoed, never a key; see web.correlation_id.)"""
    return new_request_id()


async def read_body(headers, proto, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused past ``max_bytes``: at once from Content-Length, or while a
    chunked body streams in, so an oversized body is never held whole; and past ``timeout_s``
    (408), so a client that sends its body slowly cannot hold the request forever. A request
    without a body sets no timer: the warm path of a GET pays nothing for the deadline."""
    raw = headers.get("content-length")
    if (not raw or raw == "0") and "chunked" not in (headers.get("transfer-encoding") or "").lower():
        return b""
    if timeout_s is None:
        return await _read_body(headers, proto, max_bytes)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(headers, proto, max_bytes)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


async def _read_body(headers, proto, max_bytes: int) -> bytes:
    raw = headers.get("content-length")
    if raw:
        try:
            length = int(raw)
        except ValueError:
            raise ValidationError("Content-Length must be a number of bytes", field="Content-Length") from None
        if length > max_bytes:
            raise PayloadTooLarge(f"the request body is {length} bytes; the limit is {max_bytes}")
        return await proto() if length > 0 else b""
    if "chunked" not in (headers.get("transfer-encoding") or "").lower():
        return b""
    parts, size = [], 0
    async for chunk in proto:
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is over the limit of {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def wsgi_environ(scope, body: bytes) -> dict:
    """A WSGI environ for one request, so the Flask app serves the platform paths unchanged."""
    server_host, _, server_port = (scope.server or "").rpartition(":")
    environ = {
        "REQUEST_METHOD": scope.method, "SCRIPT_NAME": "",
        # WSGI carries the path's bytes as latin-1 text; Granian gives it decoded as UTF-8.
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string, "SERVER_NAME": server_host.strip("[]") or "localhost",
        "SERVER_PORT": server_port or "80", "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": client_ip(scope.client or ""), "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.url_scheme": scope.scheme, "wsgi.version": (1, 0),
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for key, value in scope.headers.items():
        if key == "content-type":
            environ["CONTENT_TYPE"] = value
        elif key == "content-length":
            environ["CONTENT_LENGTH"] = value
        else:
            name = "HTTP_" + key.upper().replace("-", "_")
            environ[name] = f"{environ[name]},{value}" if name in environ else value
    return environ


def run_wsgi(app, environ: dict) -> tuple[int, list, bytes]:
    """Call a WSGI app and collect its whole response."""
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, headers

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(started["status"][:3]), list(started["headers"]), body


def trigger_event(req: RawRequest, match, request_id: str, authorizer: dict | None = None,
                  account_id: str = DEFAULT_ACCOUNT) -> bytes:
    """The encoded API Gateway HTTP API 2.0 event of one trigger request."""
    return encode_event(build_event(req, route_key=match.route_key, path_params=match.params,
                                    request_id=request_id, authorizer=authorizer, account_id=account_id))


def error_answer(exc: BaseException, rid: str, path: str = "", timing: str | None = None) -> tuple[int, list, bytes]:
    """(status, headers, body) of a failed request, in the one error shape."""
    status, extra, payload = to_response_body(exc, rid)
    if status >= 500 and not isinstance(exc, ApplianceError):
        log.error("event=internal_error request_id=%s path=%s", rid, path, exc_info=exc)
    headers = [*_JSON_HEADERS, ("x-request-id", rid), *extra.items()]
    if timing is not None:
        headers.append(("server-timing", timing))
    return status, headers, dumps_compact(payload)


def _invalid_reply(message: str) -> FunctionError:
    return FunctionError({"errorType": "Function.InvalidResponse", "errorMessage": message})


def _header_ok(k, v) -> bool:
    """A header a function may send: a token name and a value without control characters (no
    CR/LF: a function cannot add headers or split the response)."""
    return (isinstance(k, str) and isinstance(v, str) and HEADER_NAME_RE.match(k) is not None
            and HEADER_VALUE_RE.match(v) is not None)


def trigger_answer(method: str, rid: str, outcome, *, cors: bool = False,
                   expose_errors: bool = False) -> tuple[int, list, bytes]:
    """(status, headers, body) of an invocation's outcome, by the Lambda proxy rules. With ``cors``
    the function's own Access-Control-* headers are dropped: the trigger's CORS settings answer
    for it, as API Gateway ignores an integration's CORS headers when CORS is configured. A
    function's failure shows its message and stack trace only when the function sets
    ``expose_errors``. A result that cannot be mapped (headers that are not an object, lone
    surrogates, a header with a line break) is the function's error: 502 Function.InvalidResponse,
    never a 500."""
    timing = outcome.server_timing()
    if outcome.error is not None:
        return error_answer(public_error(outcome.error, expose=expose_errors), rid, timing=timing)
    try:
        mapped = to_http_response(outcome.result)
    except ApplianceError as exc:
        return error_answer(public_error(exc, expose=expose_errors), rid, timing=timing)
    except (TypeError, ValueError, AttributeError, UnicodeError) as exc:
        return error_answer(_invalid_reply(f"the function's result cannot be an HTTP response: {exc}; see the "
                                           "Lambda proxy response rules"), rid, timing=timing)
    headers = [("x-request-id", rid), ("server-timing", timing)]
    for k, v in mapped.headers:
        if not _header_ok(k, v):
            return error_answer(_invalid_reply(f"the function's response header {str(k)[:100]!r} is not a valid "
                                               "HTTP header (a token name; a value without control characters)"),
                                rid, timing=timing)
        lower = k.lower()
        if lower not in HOP_BY_HOP and not (cors and lower.startswith("access-control-")):
            headers.append((k, v))
    return mapped.status, headers, mapped.body if method != "HEAD" else b""


def preflight_answer(cors: dict, headers, rid: str) -> tuple[int, list, bytes]:
    """The edge's own answer to a CORS preflight of a trigger with CORS settings."""
    got = trigger_policy.preflight(cors, headers.get("origin") or "", headers.get("access-control-request-method"),
                                   headers.get("access-control-request-headers") or "")
    if got.status != 204:
        status, out, body = error_answer(OriginForbidden(got.reason), rid)
        return status, [*out, *got.headers], body
    return 204, [("x-request-id", rid), *got.headers], b""


class EdgeApp:
    """The RSGI application Granian calls for each request (see the module docstring)."""

    def __init__(self, flask_app, store, invoker, max_event_bytes: int, *, threads: int, client=None,
                 account_id: str = DEFAULT_ACCOUNT, async_runner=None, body_timeout_s: float | None = None):
        #: ``requestContext.accountId`` of every event (APPLIANCE_ACCOUNT_ID).
        self.account_id = account_id
        self.flask_app = flask_app
        self.body_timeout_s = body_timeout_s
        self.store = store
        self.invoker = invoker
        self.max_event_bytes = max_event_bytes
        #: Runs what may block: settling failed round trips, platform paths, remote metadata
        #: reads. Waiting for a slot or a cold start holds none of these threads.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edge")
        #: The event loop's client to instances (``AsyncInstanceClient``, given by the wiring).
        self.client = client
        #: Triggers' authentication (bearer keys, HMAC signatures, JWTs), checked before invoking.
        self.guard = TriggerGuard()
        #: Queues the events of ``"invocation": "async"`` triggers (appliance/core/async_runner.py).
        self.async_runner = async_runner

    def _offload(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def __call__(self, scope, proto):
        if scope.proto != "http":
            return
        path = scope.path
        if path[:3] == "/_/":
            return await self._to_flask(scope, proto)
        headers = scope.headers
        rid = request_id(headers)
        corr = correlation_id(headers.get("x-request-id"))
        method = scope.method.upper()
        cors = None
        try:
            if method not in METHODS:
                raise MethodNotAllowed(f"{method} is not served by the edge; use one of {', '.join(sorted(METHODS))}")
            table = self.store.peek_routes() or await self._offload(self.store.routes)
            if method == "OPTIONS" and "access-control-request-method" in headers:
                preflight = self._preflight(table, path, headers, rid)
                if preflight is not None:
                    proto.response_bytes(*preflight)
                    return
            match = table.match(method, path)
            trigger = match.trigger
            cors = trigger.cors
            name = trigger.function   # NAME, or NAME:VERSION / NAME:ALIAS (README "Versions and aliases")
            qualified = ":" in name
            base = name.partition(":")[0] if qualified else name
            fn = self.store.peek(base) or await self._offload(self.store.get, base)
            verifier = self.guard.verifier(trigger) if trigger.auth is not None else None
            authorizer = None
            if verifier is not None and not verifier.needs_body:
                authorizer = await self._authorize(verifier, headers, b"")
            req = RawRequest.from_scope(scope, await read_body(headers, proto, self.max_event_bytes,
                                                               self.body_timeout_s))
            if verifier is not None and verifier.needs_body:
                authorizer = await self._authorize(verifier, headers, req.body)
            event = trigger_event(req, match, rid, authorizer, self.account_id)
            if match.trigger.invocation == "async" and self.async_runner is not None:
                # A durable write (fsync): on a thread, not on the loop.
                rid = event_id_for(name, rid, corr)
                added = await self._offload(self._accept, name, event, rid, match.route_key)
                proto.response_bytes(202, [*_JSON_HEADERS, ("x-request-id", rid)],
                                     dumps_compact({"requestId": rid, "status": "queued" if added else
                                                    "already-accepted"}))
                return
            outcome = await self.invoker.invoke_async(name, event, request_id=rid, trigger=match.route_key,
                                                      client=self.client, offload=self._offload, fn=fn,
                                                      correlation_id=corr)
            answer = trigger_answer(method, rid, outcome, cors=cors is not None,
                                    expose_errors=fn.config.expose_errors)
            if qualified:
                answer[1].append(("x-amz-executed-version", outcome.record.executed_version))
        except Exception as exc:  # every failure answers in the one error shape
            answer = error_answer(exc, rid, path)
        if cors is not None:
            answer[1].extend(trigger_policy.response_headers(cors, headers.get("origin")))
        if corr:
            answer[1].append(("x-correlation-id", corr))
        proto.response_bytes(*answer)

    def _preflight(self, table, path: str, headers, rid: str):
        """The answer to a CORS preflight when the trigger it asks about has CORS settings, else
        None (the OPTIONS request is then routed like any other)."""
        asked = headers.get("access-control-request-method").upper()
        # The trigger the browser asks about, else any trigger of the path with CORS settings, which
        # then answers for the path (a method it does not allow is refused with 403).
        for method in (asked, *PREFLIGHT_FALLBACK):
            try:
                cors = table.match(method, path).trigger.cors
            except ApplianceError:
                continue
            if cors is not None:
                return preflight_answer(cors, headers, rid)
        return None

    async def _authorize(self, verifier, headers, body: bytes):
        """Run a trigger's verifier; a JWKS document that must be fetched first is fetched on a thread."""
        now = self.guard.clock()
        if getattr(verifier, "url", None) is not None and verifier.needs_fetch(headers, now):
            await self._offload(verifier.refresh, now)
        return verifier.check(headers, body, now)

    def _accept(self, name: str, event: bytes, rid: str, route_key: str) -> bool:
        return self.async_runner.accept(name, event, event_id=rid, source=route_key)

    async def _to_flask(self, scope, proto):
        """A platform path (``/_/``) to the edge's Flask app, on a thread, from a WSGI environ."""
        try:
            body = await read_body(scope.headers, proto, self.max_event_bytes, self.body_timeout_s)
        except ApplianceError as exc:
            proto.response_bytes(*error_answer(exc, request_id(scope.headers), scope.path))
            return
        status, headers, data = await self._offload(run_wsgi, self.flask_app, wsgi_environ(scope, body))
        proto.response_bytes(status, headers, data)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
