"""Lambda fidelity through a real appliance: the event the edge builds (hop-by-hop headers, path
parameters decoded once, forwarding and trace headers, protocol, ``$default``, 405 ``Allow``) and the
Lambda environment of an instance (region and account settings, reserved names refused)."""

import http.client
import json
import re
import socket
from urllib.parse import urlsplit

import pytest
import requests

from appliance.client import ApiError

ECHO = "def handler(event, context):\n    return {'event': event, 'arn': context.invoked_function_arn}\n"
ENV = ("import os\ndef handler(event, context):\n"
       "    return {k: os.environ.get(k) for k in ('AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_LAMBDA_FUNCTION_NAME',"
       " 'AWS_LAMBDA_FUNCTION_MEMORY_SIZE', 'AWS_EXECUTION_ENV', 'TZ', 'LAMBDA_TASK_ROOT')} | "
       "{'arn': context.invoked_function_arn}\n")


@pytest.fixture(scope="module")
def lam(make_appliance_module):
    r = make_appliance_module({"APPLIANCE_REGION": "eu-central-1", "APPLIANCE_ACCOUNT_ID": "123456789012"})
    echo = r.deploy({"index.py": ECHO}, name="echo")
    r.api.add_trigger(echo, "ANY", "/items/{id}")
    r.api.add_trigger(echo, "POST", "/upload")
    r.api.add_trigger(echo, "GET", "/only-get")
    r.api.add_trigger(echo, "DELETE", "/only-get")
    return r


@pytest.fixture(scope="module")
def make_appliance_module(tmp_path_factory):
    from tests.integration.conftest import start_appliance, stop_appliance
    started = []

    def make(env=None):
        r = start_appliance(tmp_path_factory.mktemp("lambda"), env)
        started.append(r)
        return r

    yield make
    for r in started:
        stop_appliance(r)


def raw_request(edge: str, data: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes to the edge, read one response (Connection: close)."""
    u = urlsplit(edge)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(data)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return int(lines[0].split(" ")[1]), headers, body


def test_a_chunked_upload_arrives_whole_without_hop_by_hop_headers(lam):
    def chunks():
        yield b"first,"
        yield b"second"

    resp = requests.post(lam.edge + "/upload", data=chunks(), headers={"Content-Type": "text/plain", "TE": "trailers",
                                                                       "Connection": "keep-alive"}, timeout=30)
    event = resp.json()["event"]
    assert event["body"] == "first,second"
    h = event["headers"]
    assert h["content-length"] == "12"
    for name in ("transfer-encoding", "connection", "te", "keep-alive"):
        assert name not in h


def test_forwarding_and_trace_headers_and_the_account(lam):
    resp = requests.get(lam.edge + "/items/1", timeout=30)
    body = resp.json()
    h = body["event"]["headers"]
    port = str(urlsplit(lam.edge).port)
    assert h["x-forwarded-for"] == "127.0.0.1" and h["x-forwarded-proto"] == "http" and h["x-forwarded-port"] == port
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", h["x-amzn-trace-id"])
    assert body["event"]["requestContext"]["accountId"] == "123456789012"
    assert body["arn"] == "arn:aws:lambda:eu-central-1:123456789012:function:echo"


def test_path_parameters_are_decoded_once(lam):
    got = requests.get(lam.edge + "/items/a%2525b", timeout=30).json()["event"]
    assert got["pathParameters"] == {"id": "a%25b"}
    got = requests.get(lam.edge + "/items/caf%C3%A9%20x", timeout=30).json()["event"]
    assert got["pathParameters"] == {"id": "café x"}


def test_the_protocol_is_the_one_received(lam):
    host = urlsplit(lam.edge).netloc
    status, _, body = raw_request(lam.edge, f"GET /items/p HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    assert status == 200
    assert json.loads(body)["event"]["requestContext"]["http"]["protocol"] == "HTTP/1.0"
    conn = http.client.HTTPConnection(urlsplit(lam.edge).hostname, urlsplit(lam.edge).port, timeout=30)
    conn.request("GET", "/items/q")
    assert json.loads(conn.getresponse().read())["event"]["requestContext"]["http"]["protocol"] == "HTTP/1.1"
    conn.close()


def test_405_carries_allow(lam):
    resp = requests.put(lam.edge + "/only-get", timeout=30)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "Trigger.MethodNotAllowed"
    assert resp.headers["Allow"] == "DELETE, GET, HEAD"


def test_default_route_catches_the_rest(lam):
    assert requests.get(lam.edge + "/nowhere", timeout=30).status_code == 404
    fallback = lam.deploy({"index.py": ECHO}, name="fallback")
    with pytest.raises(ApiError) as err:
        lam.api.add_trigger(fallback, "GET", "$default")
    assert err.value.status == 400
    lam.api.add_trigger(fallback, "ANY", "$default")
    try:
        got = requests.post(lam.edge + "/nowhere/deep?x=1", data="hi", timeout=30).json()
        assert got["arn"].endswith(":function:fallback")
        assert got["event"]["routeKey"] == "$default" and got["event"]["rawPath"] == "/nowhere/deep"
        assert "pathParameters" not in got["event"]
        # A route that matches still wins; a known path with another method goes to $default too.
        assert requests.get(lam.edge + "/items/1", timeout=30).json()["arn"].endswith(":function:echo")
        assert requests.put(lam.edge + "/only-get", timeout=30).json()["arn"].endswith(":function:fallback")
    finally:
        lam.api.remove_trigger("ANY", "$default")


def test_the_lambda_environment_of_an_instance(lam):
    name = lam.deploy({"index.py": ENV}, name="envcheck", memory_mb=256)
    got = lam.api.invoke(name, {})
    got = got.get("result", got)
    assert got["AWS_REGION"] == got["AWS_DEFAULT_REGION"] == "eu-central-1"
    assert got["AWS_LAMBDA_FUNCTION_NAME"] == "envcheck" and got["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert got["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11" and got["TZ"] == ":UTC" and got["LAMBDA_TASK_ROOT"]
    assert got["arn"] == "arn:aws:lambda:eu-central-1:123456789012:function:envcheck"
    own = lam.deploy({"index.py": ENV}, name="envown",
                     environment={"AWS_REGION": "ap-south-1", "AWS_LAMBDA_LOG_FORMAT": "JSON"})
    got = lam.api.invoke(own, {})
    got = got.get("result", got)
    assert got["AWS_REGION"] == "ap-south-1"


@pytest.mark.parametrize("names", [["AWS_LAMBDA_FUNCTION_NAME"], ["_HANDLER", "LAMBDA_TASK_ROOT"], ["TZ"]])
def test_reserved_variables_are_refused_by_name(lam, names):
    with pytest.raises(ApiError) as err:
        lam.api.create_function(name=f"reserved-{len(names)}", environment={n: "x" for n in names})
    assert err.value.status == 400
    for n in names:
        assert n in str(err.value)


IMPORTS = ("import sys, importlib.util\ndef handler(event, context):\n"
           "    return {'path': sys.path, 'found': {m: importlib.util.find_spec(m) is not None"
           " for m in ('flask', 'requests', 'granian', 'appliance', 'yaml', 'apt', 'json', 'mine')}}\n")


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_an_instance_imports_nothing_of_the_host_or_the_appliance(make_appliance_module, sandbox):
    r = make_appliance_module({"APPLIANCE_SANDBOX": sandbox})
    name = r.deploy({"index.py": IMPORTS, "mine.py": "X = 1\n"}, name=f"imports-{sandbox}")
    got = r.api.invoke(name, {})
    got = got.get("result", got)
    assert got["found"] == {"flask": False, "requests": False, "granian": False, "appliance": False, "yaml": False,
                            "apt": False, "json": True, "mine": True}
    assert not any(("site-packages" in p or "dist-packages" in p) and not p.startswith("/opt/") for p in got["path"])


def test_logs_show_the_error_message_and_stack_of_a_failed_invocation(lam):
    name = lam.deploy({"index.py": "def handler(event, context):\n    print('about to fail')\n"
                                   "    raise ValueError('the reason')\n"}, name="fails")
    lam.api.add_trigger(name, "GET", "/fails")
    resp = requests.get(lam.edge + "/fails", timeout=30)
    assert resp.status_code == 502
    rid = resp.headers["X-Request-Id"]
    logs = lam.http.get(f"{lam.api_url}/v1/functions/{name}/logs", timeout=10).json()["lines"]
    lines = [entry["line"] for entry in logs if entry["request_id"] == rid]
    assert "about to fail" in lines
    assert "[ERROR] Function.Error: ValueError: the reason" in lines
    at = lines.index("[ERROR] Function.Error: ValueError: the reason")
    assert lines[at + 1] == "Traceback (most recent call last):"
    assert any('index.py", line 3, in handler' in line for line in lines[at + 2:])
    assert lines[-1].startswith(f"END RequestId: {rid} Status: error (Function.Error)")
    rec = lam.http.get(f"{lam.api_url}/v1/functions/{name}/invocations", timeout=10).json()["invocations"][0]
    assert rec["error_message"] == "ValueError: the reason"
