"""Asynchronous invocation through the API, an HTTP trigger and the CLI: 202 once queued, retries
with the attempt number in the context, event age, destinations (function, URL, queue), listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from .conftest import REPO, wait_for

# Fails until the attempt given in the event (or never with 0), and says which attempt it was.
FLAKY = """
def handler(event, context):
    ok_at = event.get("ok_at", 1)
    if ok_at == 0 or context.attempt < ok_at:
        raise RuntimeError(f"failing attempt {context.attempt}")
    return {"attempt": context.attempt, "request_id": context.aws_request_id, "echo": event}
"""


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    from .conftest import start_appliance, stop_appliance
    # Retries wait 0.2 s, then 0.4 s (Lambda: 60 s and 120 s).
    r = start_appliance(tmp_path_factory.mktemp("async"), {"APPLIANCE_ASYNC_BACKOFF_S": "0.2"})
    yield r
    stop_appliance(r)


def faas(r, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "appliance", "--api", r.api_url, *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=60, env={**os.environ, "FAAS_TOKEN": r.token})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def event_of(r, name, rid):
    out = r.http.get(f"{r.api_url}/v1/functions/{name}/events", params={"limit": 1000}, timeout=5).json()
    return next((e for e in out["events"] if e["id"] == rid), None)


def settled(r, name, rid):
    e = event_of(r, name, rid)
    return e if e and e["state"] in ("succeeded", "dead") else None


def messages(r, queue):
    out = r.http.get(f"{r.api_url}/v1/queues/{queue}/messages", params={"limit": 100}, timeout=5).json()
    return [{**m, "body": json.loads(m["body"])} for m in out["messages"]]


def test_event_header_answers_202_and_runs_once(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    appliance.api.update_function(name, **{"async": {"on_success": {"queue": f"ok-{name}"}}})
    resp = appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={"n": 1},
                         headers={"X-Amz-Invocation-Type": "Event"}, timeout=10)
    assert resp.status_code == 202, resp.text
    rid = resp.json()["requestId"]
    assert resp.headers["X-Request-Id"] == rid
    e = wait_for(lambda: settled(appliance, name, rid), 30, message="the event to run")
    assert (e["state"], e["attempts"], e["source"]) == ("succeeded", 1, "api")
    msg = wait_for(lambda: messages(appliance, f"ok-{name}"), 10, message="the success destination")[0]["body"]
    assert msg["requestContext"]["requestId"] == rid
    assert msg["requestContext"]["condition"] == "Success"
    assert msg["requestContext"]["approximateInvokeCount"] == 1
    assert msg["requestPayload"] == {"n": 1}
    assert msg["responseContext"]["statusCode"] == 200
    assert msg["responsePayload"] == {"attempt": 1, "request_id": rid, "echo": {"n": 1}}
    recs = appliance.api.invocations(name, request_id=rid)
    assert [(x["trigger"], x["status"]) for x in recs] == [("async", "ok")]


def test_query_type_event_and_idempotent_request_id(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    url = f"{appliance.api_url}/v1/functions/{name}/invocations?type=event"
    first = appliance.http.post(url, json={}, headers={"X-Request-Id": "my-event-1"}, timeout=10)
    again = appliance.http.post(url, json={}, headers={"X-Request-Id": "my-event-1"}, timeout=10)
    assert (first.status_code, first.json()["status"]) == (202, "queued")
    rid = first.json()["requestId"]
    # The client's id is an idempotency key, never the platform's id itself.
    assert rid != "my-event-1" and again.json() == {"requestId": rid, "status": "already-accepted"}
    wait_for(lambda: settled(appliance, name, rid), 30, message="the event to run")
    out = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/events", timeout=5).json()
    assert out["counts"] == {"succeeded": 1}


def test_retries_carry_the_attempt_number_until_success(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    appliance.api.update_function(name, **{"async": {"on_success": {"queue": f"ok-{name}"}}})
    rid = appliance.api.invoke_raw(name, {"ok_at": 3}, asynchronous=True).json()["requestId"]
    e = wait_for(lambda: settled(appliance, name, rid), 30, message="the retries")
    assert (e["state"], e["attempts"], e["failures"]) == ("succeeded", 3, 2)
    body = wait_for(lambda: messages(appliance, f"ok-{name}"), 10)[0]["body"]
    # Each attempt has its own request id and record: <id>, <id>.2, <id>.3.
    assert body["responsePayload"]["attempt"] == 3
    assert body["responsePayload"]["request_id"] == f"{rid}.3"
    assert body["requestContext"]["approximateInvokeCount"] == 3
    for i, want in ((rid, "error"), (f"{rid}.2", "error"), (f"{rid}.3", "ok")):
        recs = wait_for(lambda i=i: appliance.api.invocations(name, request_id=i), 10)
        assert (recs[0]["trigger"], recs[0]["status"]) == ("async", want)


def test_retries_exhausted_go_to_the_failure_destinations(appliance):
    sink = appliance.deploy({"index.py": "def handler(event, context):\n    return event['requestContext']\n"})
    name = appliance.deploy({"index.py": FLAKY})
    appliance.api.update_function(name, **{"async": {"max_retry_attempts": 1, "on_failure": {"function": sink}}})
    rid = appliance.api.invoke_raw(name, {"ok_at": 0}, asynchronous=True).json()["requestId"]
    e = wait_for(lambda: settled(appliance, name, rid), 30, message="the retries")
    assert (e["state"], e["attempts"]) == ("dead", 2)
    assert e["last_error"].startswith("RetriesExhausted: Function.Error")
    # The destination function gets Lambda's record as an asynchronous event of its own.
    out = wait_for(lambda: [x for x in appliance.http.get(f"{appliance.api_url}/v1/functions/{sink}/events",
                                                    timeout=5).json()["events"] if x["state"] == "succeeded"], 30)
    assert out[0]["source"] == f"destination:{rid}"
    recs = wait_for(lambda: appliance.api.invocations(sink, request_id=out[0]["id"]), 10)
    assert recs[0]["status"] == "ok"
    # A queue destination gets the same shape: the failure's error in responsePayload.
    appliance.api.update_function(name, **{"async": {"on_failure": {"queue": f"dlq-{name}"}, "max_retry_attempts": 0}})
    rid = appliance.api.invoke_raw(name, {"ok_at": 0}, asynchronous=True).json()["requestId"]
    body = wait_for(lambda: messages(appliance, f"dlq-{name}"), 30, message="the dead letter")[0]["body"]
    assert body["requestContext"]["requestId"] == rid
    assert body["requestContext"]["condition"] == "RetriesExhausted"
    assert body["requestContext"]["approximateInvokeCount"] == 1
    assert body["responseContext"]["functionError"] == "Unhandled"
    assert body["responsePayload"]["errorType"] == "Function.Error"
    assert "failing attempt 1" in body["responsePayload"]["errorMessage"]


class _Collector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        n = int(self.headers.get("Content-Length", "0"))
        self.received.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_url_destination_gets_a_post(appliance):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = appliance.deploy({"index.py": FLAKY})
        appliance.api.update_function(
            name, **{"async": {"on_success": {"url": f"http://127.0.0.1:{server.server_port}/hook"}}})
        rid = appliance.api.invoke_raw(name, {"x": 1}, asynchronous=True).json()["requestId"]
        got = wait_for(lambda: [b for b in _Collector.received if b["requestContext"]["requestId"] == rid], 30)
        assert got[0]["responsePayload"]["echo"] == {"x": 1}
    finally:
        server.shutdown()


def test_async_http_trigger_answers_202_and_the_function_gets_the_http_event(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    appliance.api.update_function(name, **{"async": {"on_success": {"queue": f"ok-{name}"}}})
    t = appliance.api.add_trigger(name, "POST", f"/hooks/{name}", "async")
    assert t["invocation"] == "async"
    resp = requests.post(f"{appliance.edge}/hooks/{name}?a=1", data="payload", headers={"X-Request-Id": "hook-1"},
                         timeout=10)
    assert resp.status_code == 202, resp.text
    rid = resp.json()["requestId"]
    assert resp.headers["x-request-id"] == rid
    body = wait_for(lambda: messages(appliance, f"ok-{name}"), 30)[0]["body"]
    event = body["responsePayload"]["echo"]
    assert event["routeKey"] == f"POST /hooks/{name}" and event["body"] == "payload"
    assert event["queryStringParameters"] == {"a": "1"}
    assert settled(appliance, name, rid)["source"] == f"POST /hooks/{name}"
    # The client's X-Request-Id is the event's idempotency key: sent again, the event is not queued twice.
    again = requests.post(f"{appliance.edge}/hooks/{name}", data="payload", headers={"X-Request-Id": "hook-1"},
                          timeout=10)
    assert again.status_code == 202 and again.json() == {"requestId": rid, "status": "already-accepted"}


def test_invalid_input_gets_clear_errors(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    base = f"{appliance.api_url}/v1/functions/{name}"
    cases = [({"async": {"max_retry_attempts": 3}}, "async.max_retry_attempts"),
             ({"async": {"max_event_age_s": 59}}, "async.max_event_age_s"),
             ({"async": {"on_failure": {"url": "ftp://x"}}}, "async.on_failure"),
             ({"async": {"on_failure": {"function": "a", "url": "http://x"}}}, "async.on_failure"),
             ({"async": {"retries": 1}}, "async.retries")]
    for body, field in cases:
        resp = appliance.http.patch(base, json=body, timeout=5)
        assert resp.status_code == 400, body
        assert (resp.json()["error"]["code"], resp.json()["error"]["field"]) == ("Request.Invalid", field)
    resp = appliance.http.post(base + "/invocations", json={}, headers={"X-Amz-Invocation-Type": "Later"}, timeout=5)
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "Request.Invalid")
    resp = appliance.http.post(base + "/invocations?type=event", data=b'{"x": "' + b"a" * (256 << 10) + b'"}',
                               headers={"Content-Type": "application/json"}, timeout=5)
    assert (resp.status_code, resp.json()["error"]["code"]) == (413, "Request.TooLarge")
    resp = appliance.http.post(f"{appliance.api_url}/v1/functions/nope/invocations?type=event", json={}, timeout=5)
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "Function.NotFound")
    resp = appliance.http.get(base + "/events?status=lost", timeout=5)
    assert (resp.status_code, resp.json()["error"]["field"]) == (400, "status")
    resp = appliance.http.post(f"{appliance.api_url}/v1/triggers", json={"function": name, "method": "POST",
                                                                    "path": f"/x/{name}", "invocation": "later"})
    assert (resp.status_code, resp.json()["error"]["field"]) == (400, "invocation")
    # A PATCH keeps the fields it does not name; null clears a destination.
    appliance.api.update_function(name, **{"async": {"max_retry_attempts": 1, "on_failure": {"queue": "q"}}})
    out = appliance.api.update_function(name, **{"async": {"max_event_age_s": 120}})
    assert out["async"] == {"max_retry_attempts": 1, "max_event_age_s": 120, "on_failure": {"queue": "q"}}
    out = appliance.api.update_function(name, **{"async": {"on_failure": None}})
    assert out["async"] == {"max_retry_attempts": 1, "max_event_age_s": 120}


def test_cli_async_invoke_events_settings_and_trigger(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    out = faas(appliance, "async", name, "--max-retry-attempts", "0", "--on-failure", "queue:cli-dlq")
    assert json.loads(out.stdout) == {"max_retry_attempts": 0, "max_event_age_s": 21600,
                                      "on_failure": {"queue": "cli-dlq"}}
    bad = faas(appliance, "async", name, "--on-failure", "mail:x", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: Request.Invalid")
    ok = faas(appliance, "invoke", name, "--async", "--data", '{"ok_at": 1}').stdout.strip()
    dead = faas(appliance, "invoke", name, "--async", "--data", '{"ok_at": 0}').stdout.strip()
    wait_for(lambda: settled(appliance, name, ok) and settled(appliance, name, dead), 30)
    listing = faas(appliance, "events", name).stdout
    assert "succeeded=1" in listing and "dead=1" in listing
    assert ok in listing and dead in listing and "RetriesExhausted" in listing
    assert dead in faas(appliance, "events", name, "--status", "dead").stdout
    assert ok not in faas(appliance, "events", name, "--status", "dead").stdout
    faas(appliance, "trigger", "add", name, "POST", f"/cli/{name}", "--async")
    (line,) = [x for x in faas(appliance, "trigger", "ls", name).stdout.splitlines() if f"/cli/{name}" in x]
    assert "async" in line.split()[3:], line  # the column after the function: auth type, cors, invocation
    assert requests.post(f"{appliance.edge}/cli/{name}", timeout=10).status_code == 202


def test_nodejs_context_has_the_attempt_too(appliance):
    src = ("exports.handler = async (event, context) => {\n"
           "  if (context.attempt < 2) throw new Error('first attempt fails');\n"
           "  return {attempt: context.attempt, id: context.awsRequestId};\n};\n")
    name = appliance.deploy({"index.js": src}, runtime="nodejs20")
    appliance.api.update_function(name, **{"async": {"on_success": {"queue": f"ok-{name}"}}})
    rid = appliance.api.invoke_raw(name, {}, asynchronous=True).json()["requestId"]
    body = wait_for(lambda: messages(appliance, f"ok-{name}"), 30, message="the retried event")[0]["body"]
    assert body["responsePayload"] == {"attempt": 2, "id": f"{rid}.2"}
