"""Faults tried against real appliances on loopback, with what they must not lose or break:

- the appliance killed with ``kill -9`` under load and restarted: every answered request has its
  record (0 missing);
- an instance killed mid-request: that request gets 502 Instance.Crashed and the next ones are
  served;
- SIGTERM during an upload: no version, no package, no unpacked directory is left;
- a flood of slow clients on both ports while a normal client is served.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time

import requests

from tests.integration.conftest import make_zip, start_appliance, stop_appliance, wait_for

HELLO = "def handler(event, context):\n    return 'hi'\n"
SLOW = "import time\ndef handler(event, context):\n    time.sleep(float(event.get('s', 5)))\n    return 'late'\n"


def load(edge: str, path: str, stop: threading.Event, answered: list, errors: list, threads: int = 4) -> list:
    host, port = edge.removeprefix("http://").rsplit(":", 1)

    def run():
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    answered.append(resp.getheader("X-Request-Id"))
                else:
                    errors.append(resp.status)
            except (OSError, http.client.HTTPException):
                errors.append("conn")
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                if stop.wait(0.05):
                    break
        conn.close()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    return ts


def all_record_ids(r, name: str) -> set[str]:
    ids, before = set(), None
    while True:
        params = {"limit": 1000, **({"before": before} if before else {})}
        page = r.http.get(f"{r.api_url}/v1/functions/{name}/invocations", params=params, timeout=30).json()
        if not page["invocations"]:
            return ids
        ids.update(r["request_id"] for r in page["invocations"])
        before = page["next"]


def test_kill_9_under_load_loses_no_answered_record(tmp_path, report):
    r = start_appliance(tmp_path)
    try:
        name = r.deploy({"index.py": HELLO}, trigger=("GET", "/k9"), max_instances=4, concurrency=4)
        assert r.get("/k9").status_code == 200
        stop, answered, errors = threading.Event(), [], []
        ts = load(r.edge, "/k9", stop, answered, errors)
        wait_for(lambda: len(answered) >= 600, 60, message="load under way")
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait(10)
        stop.set()
        for t in ts:
            t.join(15)
        elapsed_answered = len(answered)
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
    (r.data_dir / "appliance.json").unlink(missing_ok=True)
    r2 = start_appliance(tmp_path)
    try:
        recorded = all_record_ids(r2, name)
        missing = [rid for rid in answered if rid not in recorded]
        report(answered=elapsed_answered, recorded=len(recorded), missing=len(missing),
               errors_at_kill=len(errors))
        assert missing == []
        assert len(set(answered)) == len(answered)   # no id answered twice
    finally:
        stop_appliance(r2)


def test_an_instance_killed_mid_request(make_appliance, report):
    r = make_appliance()
    name = r.deploy({"index.py": SLOW}, timeout_s=30)
    out = {}

    def call():
        out["resp"] = r.api.invoke_raw(name, {"s": 20})

    t = threading.Thread(target=call)
    t.start()
    inst = wait_for(lambda: r.instances(name), 30, message="the instance")[0]
    wait_for(lambda: r.api.get_function(name)["scaling"]["inflight"] == 1, 30, message="the request running")
    os.kill(inst["pid"], signal.SIGKILL)
    t.join(60)
    resp = out["resp"]
    after = [r.api.invoke_raw(name, {"s": 0}).status_code for _ in range(3)]
    report(killed_request_status=resp.status_code, code=resp.json()["error"]["code"], after=after)
    assert resp.status_code == 502 and resp.json()["error"]["code"] in ("Instance.Crashed", "Function.OutOfMemory")
    assert after == [200, 200, 200]


def test_sigterm_during_an_upload_leaves_nothing(tmp_path, report):
    r = start_appliance(tmp_path)
    try:
        name = r.deploy()
        versions_before = r.http.get(f"{r.api_url}/v1/functions/{name}/versions", timeout=10).json()["versions"]
        code_before = {p.name for p in (r.data_dir / "code").iterdir()}
        packages_before = {p.name for p in (r.data_dir / "packages").glob("*/*")}
        # Many small modules: byte-compiling them at upload takes long enough to be interrupted.
        files = {f"m{i}.py": "".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(200)) for i in range(1500)}
        files["index.py"] = HELLO
        data = make_zip(files)
        done = {}

        def upload():
            try:
                done["resp"] = r.http.put(f"{r.api_url}/v1/functions/{name}/code", data=data,
                                            headers={"Content-Type": "application/zip"}, timeout=120)
            except requests.RequestException as exc:
                done["error"] = exc

        t = threading.Thread(target=upload)
        t.start()
        # SIGTERM once the package is being unpacked (its temporary directory exists)
        wait_for(lambda: any(p.name.startswith(".") for p in (r.data_dir / "code").iterdir()), 60,
                 interval_s=0.002, message="the unpack to begin")
        r.proc.send_signal(signal.SIGTERM)
        r.proc.wait(60)
        t.join(130)
        (r.data_dir / "appliance.json").unlink(missing_ok=True)
        r2 = start_appliance(tmp_path)
        try:
            versions = r2.http.get(f"{r2.api_url}/v1/functions/{name}/versions", timeout=10).json()["versions"]
            code_after = {p.name for p in (r2.data_dir / "code").iterdir()}
            packages_after = {p.name for p in (r2.data_dir / "packages").glob("*/*")}
            report(upload_answered=getattr(done.get("resp"), "status_code", None), versions_before=len(versions_before),
                   versions_after=len(versions), leftover_dirs=len(code_after - code_before),
                   leftover_packages=len(packages_after - packages_before))
            if "resp" in done and done["resp"].status_code == 201:
                return   # it finished before the signal took: then it must be whole (the next test's business)
            assert versions == versions_before
            assert code_after == code_before and packages_after == packages_before
        finally:
            stop_appliance(r2)
    finally:  # whatever failed above, the first appliance does not outlive the test
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(10)


def open_slow(addr: tuple[str, int], source: str, n: int) -> tuple[list[socket.socket], int]:
    """``n`` connections from ``source`` that send half a request's headers and stop."""
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.bind((source, 0))
            s.connect(addr)
            s.sendall(b"GET /v1/functions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        except OSError:
            refused += 1
            s.close()
    return socks, refused


def test_slow_client_flood_while_a_normal_client_is_served(make_appliance, report):
    r = make_appliance({"APPLIANCE_HEADER_TIMEOUT_S": "2", "APPLIANCE_MAX_CONNECTIONS_PER_CLIENT": "50"})
    name = r.deploy(trigger=("GET", "/normal"))
    api = ("127.0.0.1", int(r.api_url.rsplit(":", 1)[1]))
    edge = ("127.0.0.1", int(r.edge.rsplit(":", 1)[1]))
    flood_api, _ = open_slow(api, "127.0.0.2", 300)
    flood_edge, _ = open_slow(edge, "127.0.0.2", 300)
    served = failed = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:   # longer than the header timeout: the flood is cut meanwhile
        try:
            ok_api = r.http.get(f"{r.api_url}/v1/functions/{name}", timeout=5).status_code == 200
            ok_edge = requests.get(f"{r.edge}/normal", timeout=5).status_code == 200
            served += ok_api + ok_edge
            failed += (not ok_api) + (not ok_edge)
        except requests.RequestException:
            failed += 1

    def cut(socks):
        n = 0
        for s in socks:
            try:
                s.settimeout(0.01)
                data = s.recv(4096)
                n += 1 if data == b"" or data.startswith(b"HTTP/1.1 408") else 0
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                n += 1
        return n

    cut_api, cut_edge = cut(flood_api), cut(flood_edge)
    for s in flood_api + flood_edge:
        s.close()
    report(normal_served=served, normal_failed=failed, flood_per_port=300, api_flood_closed=cut_api,
           edge_flood_closed=cut_edge)
    assert failed == 0 and served > 0
    assert cut_api == 300 and cut_edge == 300   # over the per-client bound at once, the rest at the deadline


def test_a_steady_load_keeps_memory_flat_and_loses_nothing(tmp_path, report):
    from bench.soak import soak

    out = soak(30.0, 200.0, 4, 5.0, tmp_path / "soak")
    report(requests=out["requests"], errors=out["errors"], lost=out["lost"], duplicated=out["duplicated"],
           usage_short=out["usage_short"], rss_mb_start=out["rss_mb_start"], rss_mb_end=out["rss_mb_end"])
    assert out["errors"] == 0 and out["lost"] == 0 and out["duplicated"] == 0 and out["usage_short"] == 0
    assert out["rss_mb_end"] - out["rss_mb_start"] <= 25   # flat: no growth with the requests served
