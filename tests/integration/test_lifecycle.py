"""The appliance process itself: clean shutdown and many connections."""

import resource
import signal
import socket

import psutil
import requests

from .conftest import REPO, wait_for


def test_sigterm_stops_every_instance_before_the_appliance_exits(make_appliance):
    r = make_appliance(example=str(REPO / "examples" / "hello"))
    wait_for(lambda: _has_trigger(r), 30, message="the example to deploy")
    assert r.get("/hello/serverless").text == "Hello Serverless"
    tree = psutil.Process(r.proc.pid).children(recursive=True)
    assert tree, "no instance process under the appliance"
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(30) == 0
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    wait_for(lambda: not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
             message="the instances to exit")


def test_the_edge_keeps_serving_with_more_than_1024_open_connections(appliance):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    name = appliance.deploy(trigger=("GET", "/many"))
    host, port = appliance.edge.rsplit("/", 1)[1].split(":")
    idle = []
    try:
        for _ in range(1100):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        resp = requests.get(appliance.edge + "/many", timeout=30)
        assert resp.status_code == 200 and resp.text == "Hello Serverless", resp.text
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert requests.get(appliance.edge + "/many", timeout=30).text == "Hello Serverless"
    assert name


def _has_trigger(r):
    try:
        return any(t["path"] == "/hello/serverless" for t in r.api.list_triggers())
    except Exception:  # noqa: BLE001 - not up yet
        return False
