"""HTTP trigger events in and responses out, by AWS's rules, so Lambda handlers run unchanged.

Requests become API Gateway HTTP API payload format 2.0 events. Handler results become HTTP
responses by the Lambda proxy rules: a dict with ``statusCode`` sets status, headers, cookies and
body (``isBase64Encoded`` for binary); a string is a 200 ``text/plain`` body; anything else is
returned as JSON with status 200.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from appliance.core.errors import ApplianceError, FunctionError
from appliance.edge.request import RawRequest

TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
              "application/x-www-form-urlencoded", "+json", "+xml")


def _is_text(content_type: str) -> bool:
    ct = (content_type or "").lower()
    return not ct or any(t in ct for t in TEXT_TYPES)


#: Request headers that describe one connection (RFC 9110 7.6.1), never forwarded to a function: the
#: edge has already de-chunked the body, so ``transfer-encoding: chunked`` beside it would make a WSGI
#: adapter read an empty body or fail.
HOP_BY_HOP_REQUEST = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                "transfer-encoding", "upgrade", "proxy-authorization"})
DEFAULT_ACCOUNT = "000000000000"


def trace_id(now: float) -> str:
    """An X-Ray style ``Root=1-<epoch hex>-<96 random bits>``, as API Gateway adds when a request has none."""
    return f"Root=1-{int(now):08x}-{os.urandom(12).hex()}"


@functools.lru_cache(maxsize=4)
def _clf_time(second: int) -> str:
    """The request time as API Gateway writes it, made once per second rather than per request."""
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))


def build_event(req: RawRequest, *, route_key: str, path_params: dict[str, str], request_id: str,
                now: float | None = None, authorizer: dict | None = None,
                account_id: str = DEFAULT_ACCOUNT) -> dict:
    """The API Gateway HTTP API 2.0 event of one request: the only place an event is made, for
    cold and warm requests alike (see :mod:`.request`).

    Headers as API Gateway forwards them: names lowercased, repeats joined with commas, cookies
    moved to ``cookies``, hop-by-hop ones (and any the ``connection`` header names) dropped, the
    body's real length as ``content-length``, and ``x-forwarded-for`` (the client appended),
    ``x-forwarded-proto``, ``x-forwarded-port`` and ``x-amzn-trace-id`` (kept when sent) added."""
    now = time.time() if now is None else now
    joined: dict[str, str] = {}
    cookies: list[str] = []
    drop = HOP_BY_HOP_REQUEST
    for k, v in req.headers:
        k = k.lower()
        if k == "connection":
            named = {n.strip().lower() for n in v.split(",")} - {"close", "keep-alive", ""}
            if named:
                drop = drop | named
    for k, v in req.headers:
        k = k.lower()
        if k in drop:
            continue
        if k == "cookie":
            cookies.extend(c.strip() for c in v.split(";") if c.strip())
            continue
        joined[k] = f"{joined[k]},{v}" if k in joined else v
    forwarded = joined.get("x-forwarded-for")
    joined["x-forwarded-for"] = f"{forwarded}, {req.source_ip}" if forwarded else req.source_ip
    joined["x-forwarded-proto"] = req.scheme
    joined["x-forwarded-port"] = str(req.port)
    if "x-amzn-trace-id" not in joined:
        joined["x-amzn-trace-id"] = trace_id(now)
    query: dict[str, str] = {}
    raw_query = req.query
    body = req.body
    domain = req.host
    if raw_query:
        for k, v in parse_qsl(raw_query, keep_blank_values=True):
            query[k] = f"{query[k]},{v}" if k in query else v
    is_b64 = False
    text = ""
    if body:
        joined["content-length"] = str(len(body))
        if _is_text(joined.get("content-type", "")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text, is_b64 = base64.b64encode(body).decode(), True
        else:
            text, is_b64 = base64.b64encode(body).decode(), True
    event = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": req.path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": {
            "accountId": account_id,
            "apiId": "faas",
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {"method": req.method, "path": req.path, "protocol": req.protocol, "sourceIp": req.source_ip,
                     "userAgent": joined.get("user-agent", "")},
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": _clf_time(int(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": is_b64,
    }
    if authorizer is not None:  # what the trigger's JWT authorizer found, as API Gateway's gives it
        event["requestContext"]["authorizer"] = authorizer
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_params:
        event["pathParameters"] = path_params
    if body:
        event["body"] = text
    return event


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _invalid(message: str) -> FunctionError:
    return FunctionError({"errorType": "Function.InvalidResponse",
                          "errorMessage": f"{message}; see the Lambda proxy response rules"})


def to_http_response(result) -> HttpResponse:
    """Map a handler's return value to an HTTP response (Lambda proxy rules)."""
    if isinstance(result, str):
        return HttpResponse(200, [("Content-Type", "text/plain; charset=utf-8")], result.encode())
    if isinstance(result, dict) and "statusCode" in result:
        status = result["statusCode"]
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise _invalid(f"statusCode must be an integer from 100 to 599, got {status!r}")
        headers: list[tuple[str, str]] = []
        for k, v in (result.get("headers") or {}).items():
            headers.append((str(k), v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
        for k, values in (result.get("multiValueHeaders") or {}).items():
            for v in values or []:
                headers.append((str(k), str(v)))
        for c in result.get("cookies") or []:
            headers.append(("Set-Cookie", str(c)))
        body = result.get("body")
        if body is None:
            data = b""
        elif isinstance(body, str):
            if result.get("isBase64Encoded"):
                try:
                    data = base64.b64decode(body, validate=True)
                except (binascii.Error, ValueError):
                    raise _invalid("isBase64Encoded is true but body is not valid base64") from None
            else:
                data = body.encode()
        else:
            data = json.dumps(body).encode()
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", "application/json"))
        if data and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "text/plain; charset=utf-8" if isinstance(body, str) and not
                            result.get("isBase64Encoded") else "application/octet-stream"))
        return HttpResponse(status, headers, data)
    return HttpResponse(200, [("Content-Type", "application/json")], json.dumps(result).encode())


#: Failures whose message the platform writes (a timeout, the memory limit): shown, without the
#: runtime's detail; every other message comes from the function's code.
PLATFORM_WORDED = frozenset({"Function.Timeout", "Function.OutOfMemory"})


class RedactedFunctionError(ApplianceError):
    """What an anonymous HTTP trigger caller learns of a function's failure: the code and, in the
    answer, the request id; the message and stack trace (which may hold host paths, data or
    secrets) stay in the invocation record and logs, where authorised users read them."""

    def __init__(self, error: FunctionError):
        super().__init__(error.message if error.code in PLATFORM_WORDED else
                         "the function failed; its invocation record and logs have the details of this request id")
        self.code = error.code
        self.status = error.status
        self.retry_after = error.retry_after


def public_error(exc: BaseException, *, expose: bool) -> BaseException:
    """The error as an HTTP trigger shows it: a function's own failure redacted unless the
    function sets ``expose_errors`` (development); the platform's errors as they are."""
    if expose or not isinstance(exc, FunctionError):
        return exc
    return RedactedFunctionError(exc)
