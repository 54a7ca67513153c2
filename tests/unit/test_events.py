import base64
import re
import json

import pytest

from appliance.core.errors import FunctionError
from appliance.edge.events import build_event, to_http_response
from appliance.edge.request import RawRequest


def event(**kw):
    raw = dict(method="POST", path="/users/7", query="a=1&a=2&b=", headers=(
        ("content-type", "application/json"), ("x-multi", "1"), ("x-multi", "2"), ("cookie", "s=1; t=2"),
        ("user-agent", "curl/8")), body=b'{"k": 1}', source_ip="127.0.0.1", host="localhost")
    args = dict(route_key="POST /users/{id}", path_params={"id": "7"}, request_id="rid", now=1700000000.0)
    raw_fields = set(RawRequest.__dataclass_fields__)
    for k, v in kw.items():
        (raw if k in raw_fields else args)[k] = v
    return build_event(RawRequest(**raw), **args)


def test_http_api_v2_event_fields():
    e = event()
    assert e["version"] == "2.0"
    assert e["routeKey"] == "POST /users/{id}"
    assert e["rawPath"] == "/users/7"
    assert e["rawQueryString"] == "a=1&a=2&b="
    assert e["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert e["pathParameters"] == {"id": "7"}
    assert e["headers"]["x-multi"] == "1,2"
    assert "cookie" not in e["headers"] and e["cookies"] == ["s=1", "t=2"]
    assert e["body"] == '{"k": 1}' and e["isBase64Encoded"] is False
    http = e["requestContext"]["http"]
    assert http == {"method": "POST", "path": "/users/7", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                    "userAgent": "curl/8"}
    assert e["requestContext"]["requestId"] == "rid"
    assert e["requestContext"]["timeEpoch"] == 1700000000000


def test_binary_bodies_are_base64_encoded():
    e = event(headers=(("content-type", "image/png"),), body=b"\x89PNG\x00")
    assert e["isBase64Encoded"] is True
    assert base64.b64decode(e["body"]) == b"\x89PNG\x00"


def test_no_body_and_no_query_leave_the_keys_out():
    e = event(body=b"", query="", path_params={})
    assert "body" not in e and "queryStringParameters" not in e and "pathParameters" not in e


def test_a_string_result_is_a_plain_text_200():
    r = to_http_response("Hello Serverless")
    assert (r.status, r.body) == (200, b"Hello Serverless")
    assert ("Content-Type", "text/plain; charset=utf-8") in r.headers


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], 3, None, True])
def test_other_values_are_json(value):
    r = to_http_response(value)
    assert r.status == 200 and json.loads(r.body) == value
    assert ("Content-Type", "application/json") in r.headers


def test_a_proxy_response_sets_status_headers_cookies_and_body():
    r = to_http_response({"statusCode": 201, "headers": {"X-A": "1", "Content-Type": "text/csv"},
                          "cookies": ["a=1", "b=2"], "body": "x,y"})
    assert r.status == 201 and r.body == b"x,y"
    assert ("X-A", "1") in r.headers and ("Content-Type", "text/csv") in r.headers
    assert [v for k, v in r.headers if k == "Set-Cookie"] == ["a=1", "b=2"]


def test_base64_bodies_are_decoded():
    r = to_http_response({"statusCode": 200, "body": base64.b64encode(b"\x00\x01").decode(), "isBase64Encoded": True})
    assert r.body == b"\x00\x01"


@pytest.mark.parametrize("bad", [{"statusCode": 99}, {"statusCode": "abc"}, {"statusCode": 200, "body": "!!",
                                                                              "isBase64Encoded": True}])
def test_malformed_proxy_responses_are_a_function_error(bad):
    with pytest.raises(FunctionError) as err:
        to_http_response(bad)
    assert err.value.code == "Function.InvalidResponse" and err.value.status == 502


def test_hop_by_hop_headers_are_never_forwarded_and_the_length_is_the_bodys():
    e = event(headers=(("content-type", "text/plain"), ("transfer-encoding", "chunked"), ("connection", "keep-alive, x-hop"),
                       ("keep-alive", "timeout=5"), ("te", "trailers"), ("x-hop", "1"), ("upgrade", "h2c"),
                       ("x-kept", "yes")), body=b"hello")
    h = e["headers"]
    for name in ("transfer-encoding", "connection", "keep-alive", "te", "x-hop", "upgrade"):
        assert name not in h, name
    assert h["x-kept"] == "yes" and h["content-length"] == "5" and e["body"] == "hello"


def test_forwarding_and_trace_headers_are_added():
    e = event(source_ip="10.1.2.3", scheme="http", port=8080)
    h = e["headers"]
    assert h["x-forwarded-for"] == "10.1.2.3" and h["x-forwarded-proto"] == "http" and h["x-forwarded-port"] == "8080"
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", h["x-amzn-trace-id"])
    assert h["x-amzn-trace-id"].split("-")[1] == f"{1700000000:08x}"
    sent = event(headers=(("x-forwarded-for", "1.1.1.1"), ("x-amzn-trace-id", "Root=1-abc-def")), source_ip="10.0.0.9")
    assert sent["headers"]["x-forwarded-for"] == "1.1.1.1, 10.0.0.9"
    assert sent["headers"]["x-amzn-trace-id"] == "Root=1-abc-def"


def test_account_id_and_protocol_as_received():
    e = event(account_id="123456789012", protocol="HTTP/1.0")
    assert e["requestContext"]["accountId"] == "123456789012"
    assert e["requestContext"]["http"]["protocol"] == "HTTP/1.0"
    assert event()["requestContext"]["accountId"] == "000000000000"
