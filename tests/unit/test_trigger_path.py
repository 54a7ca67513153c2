"""The edge's trigger path as WSGI: what it reads from the environ and what it answers.

The invocation itself is replaced by a recorder here (the integration tests run it for real);
what is under test is the request and response handling in front of it.
"""

import io
import json

import pytest
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from appliance.errors import PayloadTooLarge, QueueFull, ValidationError
from appliance.invoker import Outcome
from appliance.model import Trigger
from appliance.records import InvocationRecord
from appliance.trigger_path import TriggerPath, environ_headers, read_body, request_path, status_line
from appliance.triggers import RouteTable


class Store:
    def __init__(self, *triggers):
        self.table = RouteTable(list(triggers))

    def routes(self):
        return self.table


class Invoker:
    """Records the events it is given and answers with a preset result or error."""

    def __init__(self, result=None, error=None):
        self.result, self.error = result, error
        self.calls = []

    def invoke(self, function, body, *, request_id, trigger=None):
        self.calls.append((function, json.loads(body), request_id, trigger))
        rec = InvocationRecord(request_id=request_id, function=function, version=1, started_at=0.0,
                               duration_ms=1.5, phases={"queue": 0.1})
        return Outcome(record=rec, result=self.result, error=self.error)


def platform_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"platform"]


def call(app, method="GET", path="/", **kw):
    environ = EnvironBuilder(method=method, path=path, **kw).get_environ()
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers

    body = b"".join(app(environ, start_response))
    return seen["status"], dict(seen["headers"]), body


def edge(invoker, *triggers, max_bytes=1024):
    triggers = triggers or (Trigger("GET", "/users/{id}", "users"),)
    return TriggerPath(platform_app, Store(*triggers), invoker, max_bytes)


def test_platform_paths_go_to_the_wrapped_app():
    inv = Invoker(result="x")
    assert call(edge(inv), path="/_/health")[2] == b"platform"
    assert inv.calls == []


def test_a_trigger_builds_the_event_and_maps_the_result():
    inv = Invoker(result={"statusCode": 201, "headers": {"X-A": "1", "Content-Length": "999"}, "body": "made"})
    status, headers, body = call(edge(inv), "GET", "/users/42", query_string="q=1",
                                 headers={"X-Request-Id": "abc-1", "Cookie": "a=1; b=2"})
    assert status == "201 Created"
    assert body == b"made"
    assert headers["X-Request-Id"] == "abc-1"
    assert headers["Content-Length"] == "4"          # the function cannot set framing
    assert headers["X-A"] == "1"
    assert "queue;dur=0.100" in headers["Server-Timing"]
    function, event, rid, trigger = inv.calls[0]
    assert (function, rid, trigger) == ("users", "abc-1", "GET /users/{id}")
    assert event["pathParameters"] == {"id": "42"}
    assert event["queryStringParameters"] == {"q": "1"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["requestContext"]["http"]["method"] == "GET"


def test_head_answers_without_a_body():
    status, headers, body = call(edge(Invoker(result="hello")), "HEAD", "/users/1")
    assert (status, body, headers["Content-Length"]) == ("200 OK", b"", "0")


def test_errors_use_the_one_error_shape():
    status, headers, body = call(edge(Invoker(error=QueueFull("the queue is full"))), "GET", "/users/1")
    assert status.startswith("429")
    assert headers["Retry-After"] == "1"
    assert "Server-Timing" in headers
    assert json.loads(body)["error"]["code"] == "Activation.QueueFull"


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/nope", "404", "Trigger.NotFound"),
    ("POST", "/users/1", "405", "Trigger.MethodNotAllowed"),
    ("TRACE", "/users/1", "405", "Trigger.MethodNotAllowed"),
])
def test_unrouted_requests_are_refused_before_any_invocation(method, path, status, code):
    inv = Invoker(result="x")
    got, headers, body = call(edge(inv), method, path)
    assert got.startswith(status)
    assert json.loads(body)["error"]["code"] == code
    assert headers["X-Request-Id"]
    assert inv.calls == []


def test_a_body_over_the_limit_is_refused_unread():
    inv = Invoker(result="x")
    status, _, body = call(edge(inv, Trigger("POST", "/up", "f"), max_bytes=10), "POST", "/up", data=b"x" * 11)
    assert status.startswith("413")
    assert json.loads(body)["error"]["code"] == "Request.TooLarge"
    assert inv.calls == []


def test_an_unexpected_failure_is_a_500_without_details():
    class Broken(Invoker):
        def invoke(self, *a, **k):
            raise RuntimeError("secret detail")

    status, _, body = call(edge(Broken()), "GET", "/users/1")
    assert status.startswith("500")
    assert b"secret detail" not in body


def test_headers_match_werkzeugs_view_of_the_environ():
    environ = EnvironBuilder(method="POST", path="/x", data=b"{}", content_type="application/json",
                             headers={"X-Multi": "a", "User-Agent": "t"}).get_environ()
    ours = sorted(environ_headers(environ))
    theirs = sorted((k.lower(), v) for k, v in EnvironHeaders(environ).items())
    assert ours == theirs


def test_path_is_utf8_and_rooted():
    assert request_path({"PATH_INFO": "/caf\u00c3\u00a9"}) == "/caf\u00e9"
    assert request_path({"PATH_INFO": ""}) == "/"
    assert request_path({"PATH_INFO": "//a"}) == "/a"


def test_read_body_limits():
    env = {"CONTENT_LENGTH": "3", "wsgi.input": io.BytesIO(b"abcdef")}
    assert read_body(env, 5) == b"abc"
    assert read_body({"CONTENT_LENGTH": ""}, 5) == b""
    with pytest.raises(PayloadTooLarge):
        read_body({"CONTENT_LENGTH": "6", "wsgi.input": io.BytesIO(b"abcdef")}, 5)
    with pytest.raises(ValidationError) as err:
        read_body({"CONTENT_LENGTH": "many"}, 5)
    assert err.value.field == "Content-Length"


def test_status_lines():
    assert status_line(200) == "200 OK"
    assert status_line(299) == "299 UNKNOWN"
