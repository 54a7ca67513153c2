"""Bounds and the platform's say over instances, tried against a real appliance: what a function,
an input or a client can grow is limited, refused with a stable code, and cleaned up."""

from __future__ import annotations

import json
import uuid
from pathlib import Path


from tests.integration.conftest import make_zip, wait_for

FLOOD = """
import os
def handler(event, context):
    for _ in range(int(event.get("mb", 1)) * 16):
        os.write(1, b"x" * 65535 + b"\\n")       # straight to the process's stdout, past the runtime's capture
    print("y" * 100000)                          # and through it: head and tail of the log are kept
    return "flooded"
"""

DAEMON = """
import subprocess, sys
def handler(event, context):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", event["marker"]],
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return "started"
"""

DEAF = """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def handler(event, context):
    return "deaf"
"""

BIG = """
def handler(event, context):
    return {"statusCode": 200, "body": "z" * (7 << 20)}
"""


def host_pids_with(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def log_files(appliance) -> dict[str, int]:
    d = appliance.data_dir / "logs" / "instances"
    return {p.name: p.stat().st_size for p in d.glob("*.log*")} if d.exists() else {}


def test_a_function_flooding_stdout_fills_no_disk(make_appliance):
    r = make_appliance({"APPLIANCE_INSTANCE_LOG_BYTES": str(1 << 20)})
    name = r.deploy({"index.py": FLOOD}, timeout_s=30)
    out = r.api.invoke(name, {"mb": 12})
    assert out == "flooded"
    inst = r.instances(name)[0]["id"]
    wait_for(lambda: f"{inst}.log.1" in log_files(r), 20, message="the log rotated")
    files = {k: v for k, v in log_files(r).items() if k.startswith(inst)}
    assert set(files) <= {f"{inst}.log", f"{inst}.log.1"} and all(v <= 1 << 20 for v in files.values())
    rec = r.api.invocations(name)[0]
    assert rec["logs"] == ["y" * 100000]


def test_deleting_a_function_kills_what_its_instances_started_and_collects_its_code(appliance):
    name = appliance.deploy({"index.py": DAEMON})
    marker = f"daemon-{uuid.uuid4().hex}"
    assert appliance.api.invoke(name, {"marker": marker}) == "started"
    assert wait_for(lambda: host_pids_with(marker), 10, message="the daemon to run")
    digest = appliance.api.get_function(name)["code_sha256"]
    code = appliance.data_dir / "code" / digest
    assert code.exists()
    appliance.api.delete_function(name)
    wait_for(lambda: not host_pids_with(marker), 20, message="the daemon to die with its instance")
    wait_for(lambda: not code.exists(), 20, message="the unpacked code to be collected")
    assert not (appliance.data_dir / "packages" / digest[:2] / digest).exists()


def test_an_instance_ignoring_sigterm_is_killed_after_the_grace(appliance):
    name = appliance.deploy({"index.py": DEAF}, timeout_s=1)
    assert appliance.api.invoke(name) == "deaf"
    inst = appliance.instances(name)[0]["id"]
    appliance.api.delete_function(name)
    # timeout_s (1) + the grace (2 s): then SIGKILL
    wait_for(lambda: f"event=instance_exit instance={inst} " in appliance.log(), 30, message="the instance killed")
    assert f"event=instance_killed instance={inst} reason=ignored-sigterm" in appliance.log()


def test_a_reply_over_6_mib_is_502_response_too_large(appliance):
    name = appliance.deploy({"index.py": BIG}, trigger=("GET", f"/big-{uuid.uuid4().hex[:6]}"))
    resp = appliance.api.invoke_raw(name)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "Function.ResponseTooLarge"
    rec = appliance.api.invocations(name)[0]
    assert rec["error_type"] == "Function.ResponseTooLarge" and rec["billed_gb_s"] > 0


def test_the_direct_invoke_refuses_an_event_over_the_limit(appliance):
    name = appliance.deploy()
    body = json.dumps({"pad": "p" * (7 << 20)})
    url, json_type = f"{appliance.api_url}/v1/functions/{name}/invocations", {"Content-Type": "application/json"}
    resp = appliance.http.post(url, data=body, headers=json_type, timeout=30)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "Request.TooLarge"
    chunked = appliance.http.post(url, data=iter([body[i:i + 65536].encode() for i in range(0, len(body), 65536)]),
                                  headers=json_type, timeout=30)
    assert chunked.status_code == 413


def test_colliding_zip_entries_are_refused_and_add_no_version(appliance):
    name = appliance.deploy()
    before = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/versions", timeout=10).json()["versions"]
    for files in ({"./index.py": "x = 1", "index.py": "x = 2"}, {"a": "file", "a/b.py": "x = 3"}):
        resp = appliance.http.put(f"{appliance.api_url}/v1/functions/{name}/code", data=make_zip(files),
                            headers={"Content-Type": "application/zip"}, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "Code.Unsafe"
    after = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/versions", timeout=10).json()["versions"]
    assert after == before


def test_invocation_answers_are_bounded_and_page_on(make_appliance):
    r = make_appliance({"APPLIANCE_MAX_ANSWER_BYTES": str(300_000)})
    name = r.deploy({"index.py": "def handler(event, context):\n    print('l' * 100000)\n    return 1\n"})
    for _ in range(8):
        r.api.invoke(name)
    seen, before = [], None
    while True:
        params = {"limit": 1000, **({"before": before} if before else {})}
        page = r.http.get(f"{r.api_url}/v1/functions/{name}/invocations", params=params, timeout=10).json()
        if not page["invocations"]:
            break
        assert len(page["invocations"]) <= 3
        seen += [x["request_id"] for x in page["invocations"]]
        before = page["next"]
    assert len(seen) == len(set(seen)) == 8
    usage = {u["function"]: u for u in r.api.usage()}
    assert usage[name]["invocations"] == 8


def test_unpacked_code_of_old_versions_is_collected_once_no_instance_runs_it(appliance):
    name = appliance.deploy({"index.py": "def handler(e, c):\n    return 'v1'\n"})
    assert appliance.api.invoke(name) == "v1"
    old = appliance.api.get_function(name)["code_sha256"]
    for i in range(2, 5):
        appliance.api.upload_code(name, make_zip({"index.py": f"def handler(e, c):\n    return 'v{i}'\n"}))
    assert appliance.api.invoke(name) == "v4"
    new = appliance.api.get_function(name)["code_sha256"]
    code = appliance.data_dir / "code"
    # the old version's instance is drained by the keep-alive loop; then its code goes
    wait_for(lambda: not (code / old).exists(), 30, message="the old version's unpacked code to go")
    assert (code / new).exists()
    versions = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/versions", timeout=10).json()["versions"]
    assert len(versions) == 4   # versions and their packages stay: downloadable
    assert appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/code?version=1", timeout=10).status_code == 200


def test_a_body_sent_too_slowly_is_cut_on_both_ports(make_appliance):
    import socket

    r = make_appliance({"APPLIANCE_BODY_TIMEOUT_S": "1", "APPLIANCE_HEADER_TIMEOUT_S": "1"})
    name = r.deploy(trigger=("POST", "/slow-body"))
    answers = {}
    for port_name, url, path in (("edge", r.edge, "/slow-body"), ("api", r.api_url, f"/v1/functions/{name}/invocations")):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100\r\n\r\n{{".encode())   # 1 of 100 bytes, then nothing
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and port_name == "edge":
                break
        s.close()
        answers[port_name] = data
    assert answers["edge"].startswith(b"HTTP/1.1 408") and b"Request.Timeout" in answers["edge"]
    assert answers["api"] == b""   # the control API closes the connection
