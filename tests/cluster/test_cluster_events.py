"""Events in a cluster of a control plane and two edge routers (Nomad and Consul doubles, moto's
S3 and SQS): asynchronous events go through one SQS queue that every process consumes, and a
schedule fires each tick once, through the edge that holds the Consul lock."""
from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import boto3
from helpers import moto_s3, package, wait_until  # noqa: F401 - moto_s3 is a fixture
from test_end_to_end import ADMIN_TOKEN, cluster_env
from test_records_merge import control_and_two_edges, stop

from appliance.client import ApplianceClient

REPORTS = ("import urllib.request\n"
           "def handler(event, context):\n"
           "    urllib.request.urlopen(event['counter'] + '/run?id=' + context.aws_request_id, timeout=5).read()\n"
           "    return 'ok'\n")


class Runs(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.seen.append(parse_qs(urlparse(self.path).query)["id"][0])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_async_on_sqs_and_a_schedule_fire_once_per_tick_across_two_edges(consul_double, nomad_double, moto_s3,
                                                                          tmp_path):
    boto3.client("sqs", endpoint_url=moto_s3.url, region_name="us-east-1").create_queue(QueueName="events")
    env = {**cluster_env(consul_double, nomad_double, moto_s3, tmp_path),
           "APPLIANCE_SQS_ENDPOINT": moto_s3.url, "APPLIANCE_SQS_REGION": "us-east-1",
           "APPLIANCE_SQS_ACCESS_KEY": "testing", "APPLIANCE_SQS_SECRET_KEY": "testing",
           "APPLIANCE_SQS_ASYNC_QUEUE": "events", "APPLIANCE_SQS_ASYNC_VISIBILITY_S": "60"}
    Runs.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Runs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    counter = f"http://127.0.0.1:{server.server_port}"
    procs = []
    try:
        control, edge1, edge2 = control_and_two_edges(tmp_path, env, procs, consul_double)
        api = ApplianceClient(control["api_url"], token=ADMIN_TOKEN)
        api.create_function(name="ticks", max_instances=4, timeout_s=10)
        api.upload_code("ticks", package(REPORTS))
        # Accepted by the control plane, run by whichever process takes them from SQS.
        ids = [api.invoke_raw("ticks", {"counter": counter}, asynchronous=True).json()["requestId"] for _ in range(4)]
        wait_until(lambda: set(ids) <= set(Runs.seen), 90, "every async event to run")
        t = api.add_schedule("ticks", "rate(1 second)", event={"counter": counter})
        fired = lambda: sorted(i for i in Runs.seen if i.startswith(t["id"]))  # noqa: E731
        wait_until(lambda: len(fired()) >= 5, 90, "five ticks")
        api.update_trigger(t["id"], enabled=False)
        runs = Counter(fired())
        assert set(runs.values()) == {1}, runs                      # no tick ran twice
        ticks = sorted(int(i.rsplit("-", 1)[1]) for i in runs)
        assert all(b - a >= 1000 and (b - a) % 1000 == 0 for a, b in zip(ticks, ticks[1:]))  # one per second
        assert Counter(i for i in Runs.seen if i in ids) == {i: 1 for i in ids}
        listed = [x for x in api.list_triggers("ticks") if x.get("id") == t["id"]][0]
        assert listed["last_run"] and listed["enabled"] is False
    finally:
        for p in procs:
            stop(p)
        server.shutdown()
