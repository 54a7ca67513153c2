"""Snapshots: a template per Python function version, forked into confined instances for cold starts.

Each test runs a real appliance and real sandboxed instances. A deploy starts the version's template
in the background (so does a cold start that finds none, which then starts the ordinary way); once the
template is ready, every cold start of that version forks from it.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, make_zip, start_appliance, stop_appliance, wait_for

HOOKED = r'''
import os, random
from snapshot_restore_py import register_after_restore, register_before_snapshot

ORDER = []
SEEN_AT_INIT = random.random()

@register_before_snapshot
def first_registered():
    ORDER.append("before-1")

@register_before_snapshot
def second_registered():
    ORDER.append("before-2")

register_after_restore(ORDER.append, "after-1")

@register_after_restore
def after_two():
    ORDER.append("after-2")

def handler(event, context):
    import time
    if event.get("write"):
        with open(f"/tmp/{event['write']}", "w") as f:
            f.write("mine")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {"order": ORDER, "random": random.random(), "init_random": SEEN_AT_INIT, "tmp": sorted(os.listdir("/tmp")),
            "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()), "seccomp": status.get("Seccomp"),
            "caps": status.get("CapEff"), "uid": os.getuid(), "init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"],
            "instance": context.log_stream_name, "urandom": os.urandom(8).hex()}
'''


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    r = start_appliance(tmp_path_factory.mktemp("snapshots"))
    yield r
    stop_appliance(r)


def invoke(r, name, event=None):
    resp = r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json=event or {}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp


def snapshots(r, name) -> list[dict]:
    return r.http.get(f"{r.api_url}/v1/functions/{name}", timeout=5).json()["snapshots"]


def template_state(r, name, version=1) -> dict | None:
    return next((t for t in snapshots(r, name) if t["version"] == version), None)


def ready_and_idle(r, name, version=1) -> None:
    """The version's template is ready and no instance is left: the next cold start forks."""
    wait_for(lambda: (template_state(r, name, version) or {}).get("state") == "ready", 60, message="template ready")
    wait_for(lambda: not r.instances(name), 30, message="no instance left")


def forked(resp) -> bool:
    timing = resp.headers["Server-Timing"]
    return 'cold;desc="snapshot"' in timing and "restore;dur=" in timing


def test_cold_starts_fork_from_the_template_with_the_hooks_in_lambdas_order(appliance):
    r = appliance
    name = r.deploy({"index.py": HOOKED}, snapshot="auto", keep_alive_s=1)
    ready_and_idle(r, name)                        # made at deploy: even the first cold start forks
    resp = invoke(r, name)
    assert forked(resp), resp.headers["Server-Timing"]
    out = resp.json()
    # before-snapshot: the last registered first; after-restore: in the order of registration
    assert out["order"] == ["before-2", "before-1", "after-1", "after-2"]
    assert out["init_type"] == "snap-start"
    assert out["seccomp"] == "2" and int(out["caps"], 16) == 0 and out["uid"] == 1000
    assert out["pids"] == ["1"]                   # neither the template nor a sibling is visible
    assert "user_init" not in resp.headers["Server-Timing"] or "user_init;dur=0.000" in resp.headers["Server-Timing"]
    # the record of that invocation names the restore
    rid = resp.headers["X-Request-Id"]
    recs = r.http.get(f"{r.api_url}/v1/functions/{name}/invocations", timeout=5).json()["invocations"]
    rec = next(x for x in recs if x["request_id"] == rid)
    assert rec["cold"] and "restore" in rec["phases"]
    state = template_state(r, name)
    assert state["forks"] >= 1 and state["memory_bytes"] > 0 and state["init_ms"] is not None


def test_forked_instances_are_isolated_and_reseeded(appliance):
    r = appliance
    name = r.deploy({"index.py": HOOKED}, snapshot="auto", keep_alive_s=1, max_instances=3)
    invoke(r, name)
    ready_and_idle(r, name)
    # three requests at once: three instances, each forked from the template
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        resps = list(pool.map(lambda i: invoke(r, name, {"write": f"mark-{i}", "sleep": 1.0}), range(3)))
    outs = [x.json() for x in resps]
    assert all(forked(x) for x in resps), [x.headers["Server-Timing"] for x in resps]
    assert len({o["instance"] for o in outs}) == 3
    for i, o in enumerate(outs):
        assert o["tmp"] == [f"mark-{i}"]           # a private /tmp each
        assert o["pids"] == ["1"]
        assert o["seccomp"] == "2" and int(o["caps"], 16) == 0
    # random reseeded in each instance; what initialisation drew is the template's, the same for all
    assert len({o["random"] for o in outs}) == 3
    assert len({o["urandom"] for o in outs}) == 3
    assert len({o["init_random"] for o in outs}) == 1
    # each has a memory cgroup of its own with the function's limit; the template is in none of them
    insts = r.instances(name)
    pids = [i["pid"] for i in insts]
    assert len(pids) == 3 and all(pids)
    groups = set()
    for pid in pids:
        line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in x)
        groups.add(line.split(":", 2)[2])
    assert len(groups) == 3
    for g in groups:
        base = next(Path(p) for p in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup") if Path(p).is_dir())
        limit = base / g.lstrip("/") / "memory.limit_in_bytes"
        if limit.exists():
            assert int(limit.read_text()) == 128 << 20


def test_a_socket_opened_at_import_refuses_the_snapshot_and_says_why(appliance):
    r = appliance
    code = "import socket\nCONN = socket.socket()\ndef handler(event, context):\n    return 'ok'\n"
    name = r.deploy({"index.py": code}, snapshot="auto", keep_alive_s=1)
    invoke(r, name)
    wait_for(lambda: (template_state(r, name) or {}).get("state") == "refused", 60, message="refusal")
    reason = template_state(r, name)["reason"]
    assert "socket" in reason and "descriptors opened during initialisation" in reason
    wait_for(lambda: not r.instances(name), 30)
    resp = invoke(r, name)                        # the ordinary way, and it works
    assert not forked(resp) and resp.json() == "ok"
    text = subprocess.run([sys.executable, "-m", "appliance", "describe", name], capture_output=True, text=True,
                          env={**os.environ, "FAAS_TOKEN": r.token, "FAAS_API": r.api_url}, cwd=REPO, timeout=30)
    assert "refused" in text.stdout and "socket" in text.stdout, text.stdout + text.stderr


RENEWED = r'''
import asyncio, os, socket
from snapshot_restore_py import register_after_restore, register_before_snapshot

LOOP = asyncio.new_event_loop()          # as Mangum does at import
asyncio.set_event_loop(LOOP)
EMITTER = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # as the X-Ray SDK's emitter does
DB = socket.socket()                     # a connection: closed before the snapshot, made again after

@register_before_snapshot
def close_db():
    DB.close()

@register_after_restore
def reopen_db():
    global DB
    DB = socket.socket()

async def answer():
    await asyncio.sleep(0)
    return "from the loop"

def handler(event, context):
    import time
    time.sleep(event.get("sleep", 0))
    EMITTER.connect(("127.0.0.1", 9))    # takes a port of its own, sends nothing
    return {"loop": LOOP.run_until_complete(answer()), "emitter_fd": EMITTER.fileno(),
            "emitter_port": EMITTER.getsockname()[1], "db_open": DB.fileno() >= 0, "stream": context.log_stream_name}
'''


def test_an_idle_event_loop_and_a_sender_socket_are_made_anew_in_each_instance(appliance):
    r = appliance
    name = r.deploy({"index.py": RENEWED}, snapshot="auto", keep_alive_s=1, max_instances=2)
    ready_and_idle(r, name)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        resps = list(pool.map(lambda _: invoke(r, name, {"sleep": 1.0}), range(2)))
    assert all(forked(x) for x in resps), [x.headers["Server-Timing"] for x in resps]
    outs = [x.json() for x in resps]
    assert all(o["loop"] == "from the loop" and o["db_open"] for o in outs)
    assert outs[0]["stream"] != outs[1]["stream"]  # two instances: two sockets, at the same number
    assert outs[0]["emitter_fd"] == outs[1]["emitter_fd"]
    assert outs[0]["emitter_port"] != outs[1]["emitter_port"]


def test_a_thread_alive_after_import_falls_back_to_ordinary_cold_starts(appliance):
    r = appliance
    code = ("import threading, time\n"
            "threading.Thread(target=time.sleep, args=(3600,), daemon=True, name='poller').start()\n"
            "def handler(event, context):\n    return 'ok'\n")
    name = r.deploy({"index.py": code}, snapshot="auto", keep_alive_s=1)
    invoke(r, name)
    wait_for(lambda: (template_state(r, name) or {}).get("state") == "refused", 60, message="refusal")
    assert "thread" in template_state(r, name)["reason"] and "poller" in template_state(r, name)["reason"]
    wait_for(lambda: not r.instances(name), 30)
    assert not forked(invoke(r, name))


def test_a_new_version_gets_a_template_of_its_own(appliance):
    r = appliance
    name = r.deploy({"index.py": HOOKED}, snapshot="auto", keep_alive_s=1)
    invoke(r, name)
    ready_and_idle(r, name, 1)
    r.api.upload_code(name, make_zip({"index.py": "def handler(event, context):\n    return 'two'\n"}))
    wait_for(lambda: not r.instances(name), 30)
    assert invoke(r, name).json() == "two"         # never the old version's template
    ready_and_idle(r, name, 2)
    resp = invoke(r, name)
    assert resp.json() == "two" and forked(resp)


def test_a_cold_start_that_finds_no_template_starts_the_ordinary_way_and_makes_one(appliance):
    r = appliance
    name = r.deploy({"index.py": HOOKED}, snapshot="off", keep_alive_s=1)
    r.http.patch(f"{r.api_url}/v1/functions/{name}", json={"snapshot": "auto"}, timeout=5).raise_for_status()
    first = invoke(r, name)                        # settings changed, no new code: no deploy-time template
    assert not forked(first) and first.json()["init_type"] == "on-demand" and first.json()["order"] == []
    ready_and_idle(r, name)
    assert forked(invoke(r, name))


def test_snapshot_off_never_makes_a_template(appliance):
    r = appliance
    name = r.deploy({"index.py": HOOKED}, keep_alive_s=1)
    assert r.api.get_function(name)["snapshot"] == "off"
    first = invoke(r, name)
    wait_for(lambda: not r.instances(name), 30)
    assert not forked(first) and not forked(invoke(r, name))
    assert snapshots(r, name) == []


def test_a_bad_snapshot_setting_is_a_validation_error(appliance):
    r = appliance
    resp = r.http.post(f"{r.api_url}/v1/functions", json={"name": "snap-bad", "snapshot": "always"}, timeout=5)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "Request.Invalid" and "snapshot" in (err.get("field") or err["message"]), err


def test_templates_over_the_memory_budget_are_dropped(tmp_path):
    r = start_appliance(tmp_path, {"APPLIANCE_SNAPSHOT_BUDGET_MB": "1"})
    try:
        name = r.deploy({"index.py": HOOKED}, snapshot="auto", keep_alive_s=1)
        # the deploy makes a template; it costs more than 1 MB and has no instance: the keeper drops it
        wait_for(lambda: "event=snapshot_dropped" in r.log(), 60, message="drop")
        wait_for(lambda: template_state(r, name) is None, 30, message="template gone")
        resp = invoke(r, name)                     # the ordinary way again, and a new template is made
        assert not forked(resp)
        wait_for(lambda: template_state(r, name) is not None, 30, message="a new template")
    finally:
        stop_appliance(r)


def test_without_the_sandbox_snapshot_auto_says_why_it_is_not_used(tmp_path):
    r = start_appliance(tmp_path, {"APPLIANCE_SANDBOX": "off"})
    try:
        name = r.deploy({"index.py": HOOKED}, snapshot="auto")
        assert invoke(r, name).json()["init_type"] == "on-demand"
        fn = r.api.get_function(name)
        assert fn["snapshots"] == [] and "sandbox" in fn["snapshot_unavailable"]
    finally:
        stop_appliance(r)


def test_deleting_a_function_drops_its_template_at_once(appliance):
    r = appliance
    name = r.deploy({"index.py": HOOKED}, snapshot="auto", keep_alive_s=1)
    pid = wait_for(lambda: (template_state(r, name) or {}).get("pid"), 60, message="template ready")
    assert Path(f"/proc/{pid}").exists()
    r.http.delete(f"{r.api_url}/v1/functions/{name}", timeout=10).raise_for_status()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, message="the template process to end")
    assert "its code is no longer used" in r.log()
