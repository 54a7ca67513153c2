"""Invocation records in a cluster where edges and control planes are separate processes: each edge
keeps its own, registers in Consul as faas-edge, and the control plane merges them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
from helpers import moto_s3, package, wait_until  # noqa: F401 - moto_s3 is a fixture
from test_end_to_end import ADMIN_TOKEN, cluster_env

from appliance.client import ApplianceClient

REPO = Path(__file__).resolve().parents[2]
PRINTS = "def handler(event, context):\n    print('served', event.get('rawPath'))\n    return 'ok'\n"


def serve(tmp: Path, env: dict, role: str) -> tuple[subprocess.Popen, dict]:
    data = tmp / role
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--role", role, "--data-dir", str(data),
                             "--edge-port", "0", "--api-port", "0"], cwd=str(REPO), env={**os.environ, **env},
                            stdout=open(tmp / f"{role}.log", "wb"), stderr=subprocess.STDOUT)
    info = wait_until(lambda: (data / "appliance.json").exists() and json.loads((data / "appliance.json").read_text()),
                      30, f"the {role} process to listen")
    return proc, info


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def control_and_two_edges(tmp: Path, env: dict, procs: list, consul_double) -> tuple[dict, dict, dict]:
    """A control plane and two edge processes, as Ansible deploys them; each process is appended to
    ``procs`` as it starts (for the caller to stop), and both edges are registered in Consul on return."""
    (tmp / "e1").mkdir()
    (tmp / "e2").mkdir()
    infos = []
    for where, role in ((tmp, "control"), (tmp / "e1", "edge"), (tmp / "e2", "edge")):
        p, info = serve(where, env, role)
        procs.append(p)
        infos.append(info)
    wait_until(lambda: len(consul_double.passing_instances("faas-edge")) == 2, 30, "both edges in Consul")
    return tuple(infos)


def test_the_control_plane_merges_the_records_of_every_edge(consul_double, nomad_double, moto_s3, tmp_path):
    env = cluster_env(consul_double, nomad_double, moto_s3, tmp_path)
    procs = []
    try:
        control, edge1, edge2 = control_and_two_edges(tmp_path, env, procs, consul_double)
        assert control["edge_url"] is None and edge1["api_url"] is None

        api = ApplianceClient(control["api_url"], token=ADMIN_TOKEN)
        api.create_function(name="merged", keep_alive_s=600)
        api.upload_code("merged", package(PRINTS))
        api.add_trigger("merged", "GET", "/merged")
        wait_until(lambda: requests.get(edge1["edge_url"] + "/merged", timeout=30).status_code == 200, 30,
                   "edge 1 to see the new trigger")
        ids = [requests.get(edge1["edge_url"] + "/merged", timeout=30).headers["X-Request-Id"] for _ in range(2)]
        wait_until(lambda: requests.get(edge2["edge_url"] + "/merged", timeout=30).status_code == 200, 30,
                   "edge 2 to serve")
        served = {edge1["edge_url"]: 3, edge2["edge_url"]: 1}

        records = wait_until(lambda: (rows := api.invocations("merged", limit=100)) and len(rows) == 4 and rows, 15,
                             "all four records through the control plane")
        assert {r["edge"] for r in records} == set(served)
        assert sum(r["edge"] == edge1["edge_url"] for r in records) == 3
        assert set(ids) <= {r["request_id"] for r in records}
        assert [r["started_at"] for r in records] == sorted((r["started_at"] for r in records), reverse=True)

        logs = api.logs("merged")
        assert sum(line["line"].startswith("START RequestId") for line in logs["lines"]) == 4
        assert sum(line["line"] == "served /merged" for line in logs["lines"]) == 4
        # Following: only what came after the cursor, from whichever edge served it.
        new = requests.get(edge2["edge_url"] + "/merged", timeout=30).headers["X-Request-Id"]
        follow = wait_until(lambda: (out := api.logs("merged", after=logs["next"]))["lines"] and out, 15,
                            "the new invocation to show up when following")
        assert {line["request_id"] for line in follow["lines"]} == {new}
        usage = {u["function"]: u for u in api.usage()}["merged"]
        assert usage["invocations"] == 5 and usage["cold_starts"] >= 1
        # The console's charts: both edges' buckets, merged.
        series = requests.get(control["api_url"] + "/v1/functions/merged/series", params={"window": "15m"},
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).json()
        assert sum(p["invocations"] for p in series["points"]) == 5 and len(series["points"]) == 60
        assert max(p["p99_ms"] or 0 for p in series["points"]) > 0

        # An edge that stops leaves Consul; the merge goes on with the others.
        stop(procs.pop())
        wait_until(lambda: len(consul_double.passing_instances("faas-edge")) == 1, 30, "edge 2 to leave Consul")
        left = api.invocations("merged", limit=100)
        assert {r["edge"] for r in left} == {edge1["edge_url"]} and len(left) == 3
    finally:
        for p in procs:
            stop(p)
