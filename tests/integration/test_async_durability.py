"""Accepted asynchronous events survive ``kill -9`` of the appliance: after the 202 (queued, and
one attempt under way) and during a retry's backoff. The function reports every run to a counter
server of the test, so runs are counted outside the appliance: nothing accepted is lost, nothing
runs twice except the attempt the kill cut short (run again, with the next attempt number)."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from .conftest import start_appliance, stop_appliance, wait_for

REPORTING = """
import time, urllib.request

def handler(event, context):
    rid = context.aws_request_id.split(".")[0]
    def report(what):
        urllib.request.urlopen(f"{event['counter']}/{what}?id={rid}&attempt={context.attempt}", timeout=5).read()
    report("start")
    if event.get("ok_at", 1) == 0 or context.attempt < event.get("ok_at", 1):
        raise RuntimeError(f"attempt {context.attempt} fails")
    if context.attempt == 1:
        time.sleep(event.get("sleep", 0))
    report("end")
    return "done"
"""


class Counting(BaseHTTPRequestHandler):
    runs: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        q = parse_qs(url.query)
        self.runs.append((url.path.strip("/"), q["id"][0], int(q["attempt"][0])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def counter():
    Counting.runs = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


#: The functions report to a counter on this host's loopback, which a sandboxed instance (its own network
#: namespace and packet filter, README: Network policy) cannot reach; these tests are about durability,
#: so their functions run as plain processes.
REACH_HOST = {"APPLIANCE_SANDBOX": "off"}


def kill9(r) -> None:
    r.proc.kill()
    r.proc.wait(10)
    # The dead process's addresses: the restart writes its own, which start_appliance waits for.
    (r.data_dir / "appliance.json").unlink()


def events(r, name) -> dict:
    return r.http.get(f"{r.api_url}/v1/functions/{name}/events", params={"limit": 1000}, timeout=5).json()


def accept(r, name, event) -> str:
    resp = r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json=event,
                         headers={"X-Amz-Invocation-Type": "Event"}, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()["requestId"]


def test_kill_after_accept_and_mid_run_loses_nothing(tmp_path, counter):
    r = start_appliance(tmp_path, REACH_HOST)
    try:
        name = r.deploy(max_instances=1, concurrency=1, timeout_s=60, files={"index.py": REPORTING})
        first = accept(r, name, {"counter": counter, "sleep": 20})
        wait_for(lambda: ("start", first, 1) in Counting.runs, 30, message="the first event to start")
        queued = [accept(r, name, {"counter": counter}) for _ in range(5)]  # behind it: one at a time
    finally:
        kill9(r)
    assert [x for x in Counting.runs if x[1] in queued] == []  # accepted, not yet run
    r = start_appliance(tmp_path, REACH_HOST)
    try:
        wait_for(lambda: events(r, name)["counts"] == {"succeeded": 6}, 90, message="every event to succeed")
        starts = Counter(i for what, i, _ in Counting.runs if what == "start")
        ends = Counter(i for what, i, _ in Counting.runs if what == "end")
        assert starts == {first: 2, **{i: 1 for i in queued}}
        # The attempt cut short ran again as attempt 2; every event ended exactly once after the restart.
        assert [a for what, i, a in Counting.runs if i == first] == [1, 2, 2]
        assert ends == {i: 1 for i in [first, *queued]}
    finally:
        stop_appliance(r)


def test_kill_during_retry_backoff_resumes_the_retries(tmp_path, counter):
    env = {"APPLIANCE_ASYNC_BACKOFF_S": "2", **REACH_HOST}
    r = start_appliance(tmp_path, env)
    try:
        name = r.deploy(max_instances=2, files={"index.py": REPORTING})
        doomed = r.deploy(files={"index.py": REPORTING})
        r.api.update_function(doomed, **{"async": {"max_retry_attempts": 1}})
        ids = [accept(r, name, {"counter": counter, "ok_at": 2}) for _ in range(4)]
        dead = accept(r, doomed, {"counter": counter, "ok_at": 0})
        wait_for(lambda: events(r, name)["counts"] == {"retrying": 4} and events(r, doomed)["counts"] == {"retrying": 1},
                 30, message="every first attempt to fail")
    finally:
        kill9(r)
    assert sorted(i for _, i, _ in Counting.runs) == sorted([*ids, dead])  # one attempt each so far
    r = start_appliance(tmp_path, env)
    try:
        wait_for(lambda: events(r, name)["counts"] == {"succeeded": 4} and events(r, doomed)["counts"] == {"dead": 1},
                 60, message="the retries after the restart")
        # accepted 5; runs 10 (two each); successes 4; dead letters 1.
        assert sorted((i, a) for what, i, a in Counting.runs if what == "start") == \
            sorted([(i, a) for i in [*ids, dead] for a in (1, 2)])
        assert sorted(i for what, i, _ in Counting.runs if what == "end") == sorted(ids)
        e = events(r, doomed)["events"][0]
        assert (e["id"], e["attempts"], e["failures"]) == (dead, 2, 2)
    finally:
        stop_appliance(r)
