"""One path for every trigger request: the same request gets the same event and the same answer
whether its function is cold or warm.

Each case is sent twice to a function of its own, deployed just before: the first request starts
its instance (cold), the second finds it ready (warm). The function hands back the event it got
(in a header, so HEAD shows it too) and the test compares the two, apart from the request id and
the time, and the two answers, apart from the timing headers.
"""

from __future__ import annotations

import base64
import http.client
import json
from urllib.parse import urlsplit

import pytest

ECHO = '''
import base64, json

def handler(event, context):
    seen = base64.b64encode(json.dumps(event, sort_keys=True).encode()).decode()
    body = event.get("body")
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body)
    return {"statusCode": 200, "headers": {"x-event": seen, "content-type": "application/octet-stream"},
            "body": base64.b64encode((body or b"") if isinstance(body, bytes) else (body or "").encode()).decode(),
            "isBase64Encoded": True, "cookies": ["k=v; Path=/"]}
'''

#: (name, method, path, header lines, body, chunked)
CASES = [
    ("repeated-headers-and-cookies", "GET", "/one/a", [("Cookie", "a=1"), ("Cookie", "b=2; c=3"), ("X-Multi", "1"),
                                                        ("X-Multi", "2")], None, False),
    ("underscore-header", "GET", "/one/a", [("X_Under", "u"), ("X-Dash", "d")], None, False),
    ("head", "HEAD", "/one/a", [], None, False),
    ("options", "OPTIONS", "/one/a", [("Origin", "http://elsewhere.test")], None, False),
    ("encoded-path", "GET", "/one/a%20b/caf%C3%A9/%2Fx", [], None, False),
    ("repeated-query", "GET", "/one/q?a=1&a=2&b=&c=%20x&a=3", [], None, False),
    ("binary-body", "POST", "/one/bin", [("Content-Type", "application/octet-stream")], bytes(range(256)), False),
    ("text-body", "PUT", "/one/text", [("Content-Type", "application/json")], b'{"k": "\xc3\xa9"}', False),
    ("chunked-body", "POST", "/one/chunked", [("Content-Type", "text/plain")], [b"hello ", b"chunked ", b"world"],
     True),
]

#: Answer headers that differ by nature between two requests.
VARYING = {"x-request-id", "server-timing", "date", "x-event"}


def send(edge: str, method: str, path: str, headers, body, chunked: bool):
    u = urlsplit(edge)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for part in body:
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        elif body is not None:
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        else:
            conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, [(k.lower(), v) for k, v in resp.getheaders()], data
    finally:
        conn.close()


def event_of(headers) -> dict:
    seen = dict(headers).get("x-event")
    assert seen, f"the function's answer carries no event: {headers}"
    event = json.loads(base64.b64decode(seen))
    ctx = event["requestContext"]
    for key in ("requestId", "time", "timeEpoch"):
        ctx.pop(key)
    event["headers"].pop("x-amzn-trace-id")  # a new trace per request (API Gateway's too)
    return event


def answer_of(status, headers, data):
    return status, sorted((k, v) for k, v in headers if k not in VARYING), data


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cold_and_warm_requests_get_the_same_event_and_answer(appliance, case):
    _, method, path, headers, body, chunked = case
    name = appliance.deploy({"index.py": ECHO}, trigger=("ANY", "/one/{rest+}"))
    cold = send(appliance.edge, method, path, headers, body, chunked)
    warm = send(appliance.edge, method, path, headers, body, chunked)
    assert 'cold;desc=' in dict(cold[1]).get("server-timing", ""), cold
    assert 'cold;desc=' not in dict(warm[1]).get("server-timing", ""), warm
    assert cold[0] == 200, cold
    assert event_of(cold[1]) == event_of(warm[1])
    assert answer_of(*cold) == answer_of(*warm)
    appliance.api.delete_function(name)


def test_the_echoed_events_are_what_was_sent(appliance):
    """The comparison above holds because both events are right, not merely equal."""
    name = appliance.deploy({"index.py": ECHO}, trigger=("ANY", "/one/{rest+}"))
    status, headers, data = send(appliance.edge, "POST", "/one/x?a=1&a=2",
                                 [("Cookie", "a=1"), ("Cookie", "b=2"), ("X_Under", "u"), ("X-Multi", "1"),
                                  ("X-Multi", "2"), ("Content-Type", "text/plain")], [b"ab", b"cd"], True)
    event = event_of(headers)
    assert status == 200 and data == b"abcd"
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"]["x_under"] == "u"
    assert event["headers"]["x-multi"] == "1,2"
    assert event["queryStringParameters"] == {"a": "1,2"}
    assert event["body"] == "abcd" and event["isBase64Encoded"] is False
    assert event["pathParameters"] == {"rest": "x"}
    head = send(appliance.edge, "HEAD", "/one/x", [], None, False)
    assert head[2] == b"" and event_of(head[1])["requestContext"]["http"]["method"] == "HEAD"
    appliance.api.delete_function(name)
