"""HTTP triggers end to end: routing, the 2.0 event a handler sees, proxy responses."""

import base64
import json

import pytest
import requests

ECHO = "import json\ndef handler(event, context):\n    return {'event': event, 'rid': context.aws_request_id}\n"
PROXY = """
import base64
def handler(event, context):
    kind = event['pathParameters']['kind']
    if kind == 'created':
        return {'statusCode': 201, 'headers': {'X-Kind': 'created', 'Content-Type': 'text/csv'},
                'cookies': ['a=1; Path=/', 'b=2'], 'body': 'x,y'}
    if kind == 'binary':
        return {'statusCode': 200, 'headers': {'Content-Type': 'image/png'},
                'body': base64.b64encode(b'\\x89PNG\\x00\\x01').decode(), 'isBase64Encoded': True}
    if kind == 'json':
        return {'n': 1}
    if kind == 'bad':
        return {'statusCode': 'nope'}
    return 'text'
"""


@pytest.fixture(scope="module")
def routes(appliance):
    echo = appliance.deploy({"index.py": ECHO}, name="echo")
    appliance.api.add_trigger(echo, "POST", "/users/{id}/items")
    appliance.api.add_trigger(echo, "ANY", "/files/{path+}")
    proxy = appliance.deploy({"index.py": PROXY}, name="proxy")
    appliance.api.add_trigger(proxy, "GET", "/kind/{kind}")
    return appliance


def test_the_handler_sees_an_http_api_v2_event(routes):
    resp = requests.post(routes.edge + "/users/42/items?x=1&x=2&y=", json={"a": 1},
                         headers={"X-Custom": "v", "Cookie": "s=1"}, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    e = body["event"]
    assert e["version"] == "2.0" and e["routeKey"] == "POST /users/{id}/items"
    assert e["rawPath"] == "/users/42/items" and e["rawQueryString"] == "x=1&x=2&y="
    assert e["pathParameters"] == {"id": "42"}
    assert e["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert e["headers"]["x-custom"] == "v" and e["cookies"] == ["s=1"]
    assert json.loads(e["body"]) == {"a": 1} and e["isBase64Encoded"] is False
    assert e["requestContext"]["http"]["method"] == "POST"
    assert e["requestContext"]["requestId"] == resp.headers["X-Request-Id"] == body["rid"]


def test_a_client_request_id_is_kept_as_the_correlation_id(routes):
    """The platform's id is always new (the record's key); the client's comes back as
    X-Correlation-Id and is stored with the record, so reusing another request's id reaches
    nothing of that request."""
    first = requests.post(routes.edge + "/users/1/items", json={}, headers={"X-Request-Id": "my-id-123"}, timeout=10)
    again = requests.post(routes.edge + "/users/1/items", json={}, headers={"X-Request-Id": first.headers["X-Request-Id"]},
                          timeout=10)
    for resp in (first, again):
        assert resp.status_code == 200 and resp.json()["rid"] == resp.headers["X-Request-Id"]
    assert first.headers["X-Correlation-Id"] == "my-id-123"
    assert again.headers["X-Correlation-Id"] == first.headers["X-Request-Id"] != again.headers["X-Request-Id"]
    recs = routes.http.get(routes.api_url + "/v1/functions/echo/invocations?limit=100", timeout=10).json()["invocations"]
    by_id = {r["request_id"]: r for r in recs}
    assert by_id[first.headers["X-Request-Id"]]["correlation_id"] == "my-id-123"   # untouched by the reuse
    assert by_id[again.headers["X-Request-Id"]]["correlation_id"] == first.headers["X-Request-Id"]


def test_greedy_paths_and_any_method(routes):
    resp = requests.delete(routes.edge + "/files/a/b/c.txt", timeout=10)
    e = resp.json()["event"]
    assert e["pathParameters"] == {"path": "a/b/c.txt"} and e["requestContext"]["http"]["method"] == "DELETE"


def test_binary_request_bodies_arrive_base64(routes):
    resp = requests.put(routes.edge + "/files/img", data=b"\x00\xff", headers={"Content-Type": "application/octet-stream"},
                        timeout=10)
    e = resp.json()["event"]
    assert e["isBase64Encoded"] is True and base64.b64decode(e["body"]) == b"\x00\xff"


def test_proxy_responses_set_status_headers_cookies(routes):
    resp = requests.get(routes.edge + "/kind/created", timeout=10)
    assert resp.status_code == 201 and resp.text == "x,y"
    assert resp.headers["X-Kind"] == "created" and resp.headers["Content-Type"] == "text/csv"
    assert resp.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2"]


def test_binary_responses_are_decoded(routes):
    resp = requests.get(routes.edge + "/kind/binary", timeout=10)
    assert resp.content == b"\x89PNG\x00\x01" and resp.headers["Content-Type"] == "image/png"


def test_plain_values_are_json_and_strings_are_text(routes):
    assert requests.get(routes.edge + "/kind/json", timeout=10).json() == {"n": 1}
    resp = requests.get(routes.edge + "/kind/other", timeout=10)
    assert resp.text == "text" and resp.headers["Content-Type"].startswith("text/plain")


def test_a_malformed_proxy_response_is_a_502_naming_the_rule(routes):
    resp = requests.get(routes.edge + "/kind/bad", timeout=10)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "Function.InvalidResponse"


def test_unknown_routes_are_404_and_wrong_methods_405(routes):
    resp = requests.get(routes.edge + "/nothing/here", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Trigger.NotFound"
    resp = requests.get(routes.edge + "/users/1/items", timeout=10)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "Trigger.MethodNotAllowed"


def test_conflicting_and_invalid_triggers_are_refused(routes):
    resp = routes.http.post(routes.api_url + "/v1/triggers", json={"function": "proxy", "method": "GET",
                                                                 "path": "/kind/{other}"}, timeout=10)
    assert resp.status_code == 409 and "/kind/{kind}" in resp.json()["error"]["message"]
    resp = routes.http.post(routes.api_url + "/v1/triggers", json={"function": "proxy", "method": "GET",
                                                                 "path": "/_/x"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "path"
    resp = routes.http.post(routes.api_url + "/v1/triggers", json={"function": "ghost", "method": "GET", "path": "/g"},
                         timeout=10)
    assert resp.status_code == 404


def test_removing_a_trigger_unbinds_the_route(routes):
    routes.api.add_trigger("echo", "GET", "/temporary")
    assert requests.get(routes.edge + "/temporary", timeout=10).status_code == 200
    routes.api.remove_trigger("GET", "/temporary")
    assert requests.get(routes.edge + "/temporary", timeout=10).status_code == 404


def test_direct_invoke_returns_the_result_as_json(routes):
    resp = routes.http.post(routes.api_url + "/v1/functions/echo/invocations", json={"k": "v"}, timeout=10)
    assert resp.status_code == 200 and resp.json()["event"] == {"k": "v"}
    resp = routes.http.post(routes.api_url + "/v1/functions/echo/invocations", data="{bad", timeout=10,
                            headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "body"


def _chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_a_chunked_body_reaches_the_handler_whole(routes):
    data = bytes(range(256)) * 4096  # 1 MiB, binary
    resp = requests.post(routes.edge + "/users/7/items", data=_chunks(data),
                         headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert resp.status_code == 200, resp.text
    e = resp.json()["event"]
    assert e["isBase64Encoded"] is True and base64.b64decode(e["body"]) == data


def test_a_chunked_body_over_the_limit_is_refused_not_cut_short(routes):
    # 6 MiB is the default limit of an event body; a chunked upload has no length to check up front
    data = b"x" * ((6 << 20) + 1)
    resp = requests.post(routes.edge + "/users/7/items", data=_chunks(data), timeout=30)
    assert resp.status_code == 413, resp.text[:200]
    assert resp.json()["error"]["code"] == "Request.TooLarge"
