"""Several edges, one scaling decision: two edge processes share the load of one function; the edge
elected through the Consul lock sums both edges' concurrency, scales to what the sum needs, is the
only one that reaps, and hands over to the other edge when it stops."""
from __future__ import annotations

import re
import threading
import time

import requests
from helpers import moto_s3, package, wait_until  # noqa: F401 - moto_s3 is a fixture
from test_end_to_end import ADMIN_TOKEN, cluster_env
from test_records_merge import control_and_two_edges, stop

from appliance.client import ApplianceClient

# Each request waits until the gate file exists: the test decides when the load ends, not a clock.
GATED = ("import os, time\n"
         "def handler(event, context):\n"
         "    gate = (event.get('queryStringParameters') or {}).get('gate')\n"
         "    while gate and not os.path.exists(gate):\n"
         "        time.sleep(0.02)\n"
         "    return 'through'\n")
PER_EDGE = 2      # requests each edge holds at once
# ceil(2 * PER_EDGE / (1 request per instance * 0.7 utilisation)): what the summed load needs.
# One edge's own share would ask for ceil(PER_EDGE / 0.7) = 3.
DESIRED = 6


def drained(log_path) -> list[str]:
    return re.findall(r"event=instance_drained instance=(\S+) function=gated", log_path.read_text())


def test_the_elected_edge_scales_on_the_sum_of_both_edges_and_hands_over_when_it_stops(
        consul_double, nomad_double, moto_s3, tmp_path):
    env = {**cluster_env(consul_double, nomad_double, moto_s3, tmp_path),
           # Short windows, so the load's end reaches the decisions (and the reaping) quickly.
           "APPLIANCE_STABLE_WINDOW_S": "4", "APPLIANCE_PANIC_WINDOW_S": "1"}
    procs, threads = [], []
    gate = tmp_path / "gate"
    try:
        control, edge1, edge2 = control_and_two_edges(tmp_path, env, procs, consul_double)
        logs = {edge1["edge_url"]: tmp_path / "e1" / "edge.log", edge2["edge_url"]: tmp_path / "e2" / "edge.log"}

        api = ApplianceClient(control["api_url"], token=ADMIN_TOKEN)
        api.create_function(name="gated", concurrency=1, max_instances=10, keep_alive_s=2, timeout_s=120)
        api.upload_code("gated", package(GATED))
        api.add_trigger("gated", "GET", "/gated")

        def scaling() -> dict:
            return api.get_function("gated")["scaling"]

        leader = wait_until(lambda: scaling()["leader"], 30, "an edge to lead")
        assert leader["url"] in logs
        follower_url = next(u for u in logs if u != leader["url"])

        # Each edge holds PER_EDGE requests that wait at the gate.
        answers: list[int] = []
        for url in logs:
            for _ in range(PER_EDGE):
                t = threading.Thread(target=lambda u=url: answers.append(
                    requests.get(f"{u}/gated", params={"gate": str(gate)}, timeout=120).status_code))
                t.start()
                threads.append(t)
        busy = wait_until(lambda: (s := scaling())["concurrency"] == 2 * PER_EDGE and s["desired"] == DESIRED and s,
                          60, f"the leader to see {2 * PER_EDGE} requests in flight over both edges")
        assert busy["edges"] == 2 and busy["edges_missing"] == [] and busy["decided_by"] == leader["edge"]
        assert f"-> {DESIRED}" in busy["reason"]
        # It starts what the sum needs, ahead of any further request: more than the requests hold.
        wait_until(lambda: len(consul_double.passing_instances("fn-gated")) == DESIRED, 60,
                   f"{DESIRED} instances of the function")

        gate.write_text("open")
        for t in threads:
            t.join(60)
        assert answers == [200] * (2 * PER_EDGE)
        # Idle past the keep-alive: the leader, and only the leader, drains them all.
        wait_until(lambda: not consul_double.passing_instances("fn-gated"), 60, "scale to zero")
        wait_until(lambda: len(drained(logs[leader["url"]])) == DESIRED, 30, "the leader's drain log lines")
        assert drained(logs[follower_url]) == []
        assert "role=follower" in logs[follower_url].read_text()

        # The leader stops: the other edge takes the lock and decides from then on.
        stopped_at = time.time()
        stop(procs.pop(1 if leader["url"] == edge1["edge_url"] else 2))
        new = wait_until(lambda: (s := scaling())["leader"] and s["leader"]["url"] == follower_url and s, 30,
                         "the other edge to take over")
        assert requests.get(f"{follower_url}/gated", params={"gate": str(gate)}, timeout=60).status_code == 200
        after = wait_until(lambda: (s := scaling())["decided_by"] == new["leader"]["edge"]
                           and (s["decided_at"] or 0) > stopped_at and s["edges"] == 1 and s, 30,
                           "decisions by the new leader")
        assert after["desired"] is not None and after["edges_missing"] == []
    finally:
        if not gate.exists():
            gate.write_text("open")
        for t in threads:
            t.join(30)
        for p in procs:
            stop(p)
