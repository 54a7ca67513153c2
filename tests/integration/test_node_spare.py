"""Node.js cold starts through a started, unspecialised spare (appliance/instances/zygote_launcher.py).

Which instance came from a spare is read from the appliance's own record of it (``event=node_spare_used
instance=<id>``), never from timing. The escapes of test_sandbox.py that depend on how the code is
attached are tried again from a Node.js instance that was a spare: its code is attached from outside
after node started, so that path must give the same view as the ordinary one.
"""

from __future__ import annotations

import glob
import json
import re
import secrets
import socket
import tempfile

import psutil
import pytest

from .conftest import wait_for

PROBE = r'''
const fs = require('fs');
function tryIt(fn) {
  try { return { ok: true, value: fn() }; } catch (e) { return { ok: false, error: e.code || String(e) }; }
}
exports.handler = async (event) => {
  const { op, arg } = event;
  if (op === 'read') return tryIt(() => fs.readFileSync(arg, 'latin1').slice(0, 100));
  if (op === 'listdir') return tryIt(() => fs.readdirSync(arg).sort());
  if (op === 'write') return tryIt(() => { fs.writeFileSync(arg, 'escaped'); return arg; });
  if (op === 'mounts') {
    return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === arg);
  }
  if (op === 'whoami') {
    return { uid: process.getuid(), pid: process.pid, cwd: process.cwd(), execArgv: process.execArgv,
             pool: process.env.FAAS_POOL || null, key: process.env.API_KEY || null,
             name: process.env.FAAS_FUNCTION_NAME || null, data: fs.readFileSync('data.txt', 'utf8') };
  }
  throw new Error('unknown op ' + op);
};
'''
FILES = {"index.js": PROBE, "data.txt": "read by a relative path"}


def deploy_node(r, files=None, **config) -> str:
    config.setdefault("runtime", "nodejs20")
    config.setdefault("handler", "index.handler")
    return r.deploy(files or FILES, **config)


def invoke(r, name, event=None):
    resp = r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json=event or {}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp


def call(r, name, op, arg=None):
    return invoke(r, name, {"op": op, "arg": arg}).json()


def _pool_ids(r) -> set[str]:
    """Instance ids reported by the appliance's instances that are still unspecialised pool instances."""
    out = set()
    for sock in glob.glob(f"{tempfile.gettempdir()}/faas-sbx-{r.proc.pid}-*/run/*/instance.sock"):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(sock)
                s.sendall(b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            health = json.loads(data.split(b"\r\n\r\n", 1)[1])
        except (OSError, ValueError, IndexError):
            continue   # gone or going meanwhile
        if health.get("state") == "pool":
            out.add(health["instanceId"])
    return out


def free_spares(r) -> dict[int, int]:
    """pid -> memory_mb of the Node.js spares the launcher has ready: reported ready in its log, and
    still unspecialised when asked."""
    ready = {sid: (int(p), int(m)) for sid, p, m in
             re.findall(r"event=node_spare_ready spare=(\S+) pid=(\d+) network=\w+ memory_mb=(\d+)", r.log())}
    gone = set(re.findall(r"event=node_spare_(?:used|discarded|failed|exit) (?:instance=\S+ )?pid=(\d+)", r.log()))
    pool = _pool_ids(r)
    return {p: m for sid, (p, m) in ready.items() if sid in pool and str(p) not in gone}


def wait_spare(r, memory_mb=128) -> int:
    return wait_for(lambda: next((p for p, m in free_spares(r).items() if m == memory_mb), None), 30,
                    message=f"a Node.js spare of {memory_mb} MB")


def instance_ids(r, name) -> list[str]:
    return [i["id"] for i in r.instances(name)]


def from_spare(r, instance_id) -> bool:
    # the launcher records a spare's use before the scheduler records the instance ready
    wait_for(lambda: f"event=instance_ready instance={instance_id} " in r.log(), 10,
             message=f"the appliance to log {instance_id} ready")
    return f"event=node_spare_used instance={instance_id} " in r.log()


@pytest.fixture(scope="module")
def spare_probe(appliance):
    """The probe function, its one instance started from a spare."""
    invoke(appliance, deploy_node(appliance), {"op": "whoami"})   # any Node launch leaves a spare behind
    wait_spare(appliance)
    name = deploy_node(appliance)
    invoke(appliance, name, {"op": "whoami"})
    (iid,) = instance_ids(appliance, name)
    assert from_spare(appliance, iid)
    return name


def test_a_second_cold_start_after_scale_to_zero_is_a_specialised_spare(appliance):
    secret = "node-secret-" + secrets.token_hex(8)
    name = deploy_node(appliance, keep_alive_s=1, environment={"API_KEY": secret})
    invoke(appliance, name, {"op": "whoami"})
    wait_for(lambda: not appliance.instances(name), 30, message="scale to zero")
    wait_spare(appliance)
    resp = invoke(appliance, name, {"op": "whoami"})
    assert 'cold;desc="no-instance"' in resp.headers["Server-Timing"]
    timing = dict(p.strip().split(";dur=") for p in resp.headers["Server-Timing"].split(",") if ";dur=" in p)
    assert all(float(timing[k]) > 0 for k in ("sandbox", "runtime_init", "user_init", "placement")), timing
    (iid,) = instance_ids(appliance, name)
    assert from_spare(appliance, iid)
    me = resp.json()
    assert me["pool"] == "1"                      # it did start as a pool instance...
    assert me["key"] == secret and me["name"] == name   # ...and has its function's variables
    assert me["uid"] == 1000 and me["pid"] == 1 and me["cwd"] == "/var/task"
    assert me["data"] == "read by a relative path"
    assert "--max-old-space-size=128" in me["execArgv"]
    health = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/instances", timeout=5).json()
    assert health["instances"][0]["id"] == iid


def test_a_spare_of_another_memory_size_is_not_used(appliance):
    wait_spare(appliance, 128)
    big = deploy_node(appliance, memory_mb=256)
    me = call(appliance, big, "whoami")
    (iid,) = instance_ids(appliance, big)
    assert not from_spare(appliance, iid)
    assert "--max-old-space-size=256" in me["execArgv"]
    assert "reason=memory-128-not-256" in appliance.log()
    # the spare kept from then on is of the size launched last, and the next such launch uses it
    wait_spare(appliance, 256)
    again = deploy_node(appliance, memory_mb=256)
    me = call(appliance, again, "whoami")
    (iid,) = instance_ids(appliance, again)
    assert from_spare(appliance, iid)
    assert "--max-old-space-size=256" in me["execArgv"]


def test_a_spare_that_dies_is_replaced(appliance):
    invoke(appliance, deploy_node(appliance), {"op": "whoami"})   # a 128 MB launch: the size kept
    pid = wait_spare(appliance)
    psutil.Process(pid).kill()
    wait_for(lambda: f"event=node_spare_exit pid={pid} " in appliance.log(), 10, message="the spare's death noticed")
    new = wait_spare(appliance)
    assert new != pid
    name = deploy_node(appliance)
    assert call(appliance, name, "whoami")["uid"] == 1000
    assert from_spare(appliance, instance_ids(appliance, name)[0])


def test_a_spares_code_is_read_only_and_its_own(appliance, spare_probe):
    assert call(appliance, spare_probe, "listdir", "/var/task")["value"] == ["data.txt", "index.js"]
    own = call(appliance, spare_probe, "read", "/var/task/index.js")
    assert own["ok"] and "tryIt" in own["value"]
    got = call(appliance, spare_probe, "write", "/var/task/index.js")
    assert got == {"ok": False, "error": "EROFS"}
    assert call(appliance, spare_probe, "write", "/var/task/new.js")["error"] == "EROFS"
    # the code is stacked on the spare's empty /var/task: every mount there is read-only
    lines = call(appliance, spare_probe, "mounts", "/var/task")
    assert len(lines) == 2, lines
    for line in lines:
        assert {"ro", "nosuid", "nodev"} <= set(line.split(" ")[5].split(",")), line


def test_a_spare_cannot_read_another_functions_code(appliance, spare_probe):
    other = deploy_node(appliance, {"index.js": "exports.handler = async () => 'other-function-secret';\n"})
    assert invoke(appliance, other).json() == "other-function-secret"
    digest = appliance.http.get(f"{appliance.api_url}/v1/functions/{other}", timeout=5).json()["code_sha256"]
    host_copy = appliance.data_dir / "code" / digest / "index.js"
    assert "other-function-secret" in host_copy.read_text()
    got = call(appliance, spare_probe, "read", str(host_copy))
    assert got == {"ok": False, "error": "ENOENT"}


@pytest.mark.parametrize("path", ["metadata.sqlite3", "appliance.json", "packages", "code"])
def test_a_spare_cannot_see_the_data_dir(appliance, spare_probe, path):
    host = appliance.data_dir / path
    assert host.exists()
    got = call(appliance, spare_probe, "read" if host.is_file() else "listdir", str(host))
    assert got == {"ok": False, "error": "ENOENT"}, got


def test_without_the_mount_api_node_starts_the_ordinary_way(make_appliance):
    r = make_appliance({"FAAS_SANDBOX_MOUNT_API": "0"})
    secret = "node-secret-" + secrets.token_hex(8)
    name = deploy_node(r, keep_alive_s=1, environment={"API_KEY": secret})
    for _ in range(2):
        wait_for(lambda: not r.instances(name), 30, message="scale to zero")
        resp = invoke(r, name, {"op": "whoami"})
        assert "cold;" in resp.headers["Server-Timing"]
        me = resp.json()
        assert me["key"] == secret and me["pool"] is None and me["uid"] == 1000
        assert call(r, name, "write", "/var/task/index.js")["error"] == "EROFS"
    assert "node_spare" not in r.log()


def test_no_process_is_left_when_the_appliance_stops(make_appliance):
    from .conftest import stop_appliance
    r = make_appliance()
    name = deploy_node(r)
    invoke(r, name, {"op": "whoami"})
    spare = wait_spare(r)
    procs = psutil.Process(r.proc.pid).children(recursive=True)
    assert spare in [p.pid for p in procs]
    stop_appliance(r)

    def gone(p):
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(lambda: all(gone(p) for p in procs), 20, message="every process of the appliance to end")
