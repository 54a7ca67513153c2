"""The edge's request entry (RSGI): what it reads from a request and what it answers.

The invocation is replaced by a recorder here (the integration tests run it for real); what is
under test is the request and response handling around it, and the hand-over of platform paths
to the Flask app.
"""

import asyncio
import json

import pytest
from flask import Flask, request

from appliance.core.errors import QueueFull, ValidationError
from appliance.core.invoker import Outcome
from appliance.core.model import FunctionConfig, FunctionRecord, Trigger
from appliance.core.records import InvocationRecord
from appliance.core.triggers import RouteTable
from appliance.edge.request import client_ip, host_name
from appliance.edge.trigger_path import EdgeApp, read_body, wsgi_environ


class Headers:
    """Granian's RSGI headers: lower-case names, repeated names kept apart."""

    def __init__(self, pairs):
        self.pairs = [(k.lower(), v) for k, v in pairs]

    def get(self, key, default=None):
        return next((v for k, v in self.pairs if k == key), default)

    def items(self):
        return list(self.pairs)


class Scope:
    def __init__(self, method="GET", path="/", query="", headers=(), client="127.0.0.1:5000"):
        self.proto, self.method, self.path, self.query_string = "http", method, path, query
        self.headers = Headers([("host", "example.test:8080"), *headers])
        self.client, self.server, self.scheme, self.http_version, self.authority = \
            client, "127.0.0.1:8080", "http", "1.1", None


class Proto:
    def __init__(self, body=b"", chunks=None):
        self.body, self.chunks = body, chunks
        self.reads = 0
        self.response = None

    async def __call__(self):
        self.reads += 1
        return self.body

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        for c in self.chunks or []:
            self.reads += 1
            yield c

    def response_bytes(self, status, headers, body):
        self.response = (status, dict(headers), body)


class Store:
    def __init__(self, *triggers):
        self.table = RouteTable(list(triggers) or [Trigger("GET", "/users/{id}", "users")])

    def peek(self, name):
        return FunctionRecord(config=FunctionConfig.from_request({"name": name}), version=1)

    get = peek

    def routes(self):
        return self.table

    def peek_routes(self):
        return self.table


class Invoker:
    """Records the events it is given and answers with a preset result or error."""

    def __init__(self, result=None, error=None):
        self.result, self.error = result, error
        self.calls = []

    async def invoke_async(self, function, body, *, request_id, trigger, client, offload, fn=None,
                           correlation_id=None):
        self.calls.append((function, json.loads(body), request_id, trigger))
        rec = InvocationRecord(request_id=request_id, function=function, version=1, started_at=0.0,
                               duration_ms=1.5, phases={"queue": 0.1})
        return Outcome(record=rec, result=self.result, error=self.error)


def platform():
    app = Flask("platform")

    @app.route("/users/<uid>")
    def never(uid):  # a trigger path never reaches the platform app
        return {"flask": uid}

    @app.route("/_/echo", methods=["GET", "POST"])
    def echo():
        return {"path": request.path, "body": request.get_data(as_text=True), "ip": request.remote_addr,
                "agent": request.headers.get("User-Agent")}

    return app


def serve(invoker, scope, proto=None, store=None, max_bytes=1024):
    proto = proto or Proto()
    edge = EdgeApp(platform(), store or Store(), invoker, max_bytes, threads=2)
    try:
        asyncio.run(edge(scope, proto))
    finally:
        edge.close()
    return proto.response


def test_platform_paths_go_to_flask():
    inv = Invoker(result="x")
    status, headers, body = serve(inv, Scope("POST", "/_/echo", headers=[("user-agent", "t"), ("content-length", "2")]),
                                  Proto(b"hi"))
    assert status == 200
    assert json.loads(body) == {"path": "/_/echo", "body": "hi", "ip": "127.0.0.1", "agent": "t"}
    assert inv.calls == []


def test_every_trigger_request_takes_the_one_trigger_path():
    """Cold or warm, a trigger request is matched, turned into an event and invoked on the loop;
    the platform app never sees it (it has a view on the same path to prove it)."""
    inv = Invoker(result="served")
    status, _, body = serve(inv, Scope("GET", "/users/7", headers=[("content-length", "3")]), Proto(b"abc"))
    assert (status, body) == (200, b"served")
    assert [c[0] for c in inv.calls] == ["users"]
    assert inv.calls[0][1]["body"] == "abc"


def test_the_event_keeps_the_request_as_received():
    """Repeated headers joined in order, one cookie list from every Cookie line, ``_`` kept in
    header names, repeated query keys joined, the protocol as received."""
    inv = Invoker(result="x")
    scope = Scope("GET", "/users/1", "a=1&a=2&b=", [("cookie", "a=1"), ("cookie", "b=2; c=3"), ("x-multi", "1"),
                                                   ("x-multi", "2"), ("x_under", "u")])
    scope.http_version = "2"
    serve(inv, scope)
    event = inv.calls[0][1]
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert event["headers"]["x-multi"] == "1,2"
    assert event["headers"]["x_under"] == "u" and "x-under" not in event["headers"]
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["rawQueryString"] == "a=1&a=2&b="
    assert event["requestContext"]["http"]["protocol"] == "HTTP/2"


def test_a_trigger_builds_the_event_and_maps_the_result():
    inv = Invoker(result={"statusCode": 201, "headers": {"X-A": "1", "Content-Length": "999"}, "body": "made"})
    status, headers, body = serve(inv, Scope("GET", "/users/42", "q=1",
                                             [("x-request-id", "abc-1"), ("cookie", "a=1; b=2")]))
    assert (status, body) == (201, b"made")
    assert headers["x-correlation-id"] == "abc-1"     # the client's id comes back as its correlation id
    assert len(headers["x-request-id"]) == 32         # the platform's own id is always new
    assert "Content-Length" not in headers          # the function cannot set framing
    assert headers["X-A"] == "1"
    assert "queue;dur=0.100" in headers["server-timing"]
    function, event, rid, trigger = inv.calls[0]
    assert (function, rid, trigger) == ("users", headers["x-request-id"], "GET /users/{id}")
    assert event["requestContext"]["requestId"] == rid
    assert event["pathParameters"] == {"id": "42"}
    assert event["queryStringParameters"] == {"q": "1"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["requestContext"]["domainName"] == "example.test"
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"


@pytest.mark.parametrize("given", ["a b\n", "abc\n", "x" * 129])
def test_an_unsafe_request_id_is_not_kept(given):
    status, headers, _ = serve(Invoker(result="x"), Scope("GET", "/users/1", headers=[("x-request-id", given)]))
    assert status == 200 and len(headers["x-request-id"]) == 32 and "x-correlation-id" not in headers


def test_a_client_request_id_never_becomes_the_platforms():
    inv = Invoker(result="x")
    ids = set()
    for _ in range(3):
        _, headers, _ = serve(inv, Scope("GET", "/users/1", headers=[("x-request-id", "same-id")]))
        ids.add(headers["x-request-id"])
        assert headers["x-correlation-id"] == "same-id"
    assert len(ids) == 3 and "same-id" not in ids


def test_head_answers_without_a_body():
    status, _, body = serve(Invoker(result="hello"), Scope("HEAD", "/users/1"))
    assert (status, body) == (200, b"")


def test_errors_use_the_one_error_shape():
    status, headers, body = serve(Invoker(error=QueueFull("the queue is full")), Scope("GET", "/users/1"))
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert "server-timing" in headers
    assert json.loads(body)["error"]["code"] == "Activation.QueueFull"


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/nope", 404, "Trigger.NotFound"),
    ("POST", "/users/1", 405, "Trigger.MethodNotAllowed"),
    ("TRACE", "/users/1", 405, "Trigger.MethodNotAllowed"),
])
def test_unrouted_requests_are_refused_before_any_invocation(method, path, status, code):
    inv = Invoker(result="x")
    got, headers, body = serve(inv, Scope(method, path))
    assert got == status
    assert json.loads(body)["error"]["code"] == code
    assert headers["x-request-id"]
    assert inv.calls == []


def test_a_body_over_the_limit_is_refused_unread():
    inv = Invoker(result="x")
    proto = Proto(b"x" * 11)
    status, _, body = serve(inv, Scope("POST", "/up", headers=[("content-length", "11")]), proto,
                            store=Store(Trigger("POST", "/up", "f")), max_bytes=10)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "Request.TooLarge"
    assert (inv.calls, proto.reads) == ([], 0)


def test_a_chunked_body_is_cut_off_once_over_the_limit():
    proto = Proto(chunks=[b"x" * 6, b"x" * 6, b"x" * 6])
    with pytest.raises(Exception) as err:
        asyncio.run(read_body(Headers([("transfer-encoding", "chunked")]), proto, 10))
    assert err.value.code == "Request.TooLarge"
    assert proto.reads == 2
    assert asyncio.run(read_body(Headers([("transfer-encoding", "chunked")]), Proto(chunks=[b"ab", b"c"]), 10)) == b"abc"


def test_read_body_needs_a_length_or_chunks():
    assert asyncio.run(read_body(Headers([]), Proto(b"ignored"), 10)) == b""
    assert asyncio.run(read_body(Headers([("content-length", "3")]), Proto(b"abc"), 10)) == b"abc"
    with pytest.raises(ValidationError) as err:
        asyncio.run(read_body(Headers([("content-length", "many")]), Proto(), 10))
    assert err.value.field == "Content-Length"


def test_an_unexpected_failure_is_a_500_without_details():
    class Broken(Invoker):
        async def invoke_async(self, *a, **k):
            raise RuntimeError("secret detail")

    status, _, body = serve(Broken(), Scope("GET", "/users/1"))
    assert status == 500
    assert b"secret detail" not in body


def test_wsgi_environ_for_flask():
    env = wsgi_environ(Scope("GET", "/_/caf\u00e9", "a=1", [("x-a", "1"), ("x-a", "2"), ("content-type", "text/plain")],
                             client="[::1]:5000"), b"")
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/_/caf\u00e9"
    assert (env["HTTP_X_A"], env["CONTENT_TYPE"], env["REMOTE_ADDR"]) == ("1,2", "text/plain", "::1")


def test_hosts_and_clients():
    assert host_name("example.test:8080") == "example.test"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("plain") == "plain"
    assert client_ip("10.0.0.1:443") == "10.0.0.1"
    assert client_ip("[fe80::1]:443") == "fe80::1"
