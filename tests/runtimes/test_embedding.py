"""Embedding the bootstraps: settings from the environment, and the Python bootstrap served from a forking zygote."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from runtime_handlers import code

PY_BOOTSTRAP_DIR = ROOT / "runtimes" / "python"

# A minimal zygote: imports the bootstrap once (checking the import started nothing), forks, and the child
# serves; the zygote reports the child's exit status on its stdout.
ZYGOTE = r"""
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
stdout = sys.stdout
import bootstrap
assert threading.active_count() == 1, "import started threads"
assert sys.stdout is stdout, "import replaced sys.stdout"
bootstrap.preload()
pid = os.fork()
if pid == 0:
    os._exit(bootstrap.serve(bootstrap.config_from_env(os.environ)))
print(json.dumps({"child": pid}), flush=True)
_, status = os.waitpid(pid, 0)
print(json.dumps({"childExit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def test_python_zygote_forks_and_serves(start_runtime):
    inst = start_runtime("python3.11", code("python3.11"), handler="index.logs",
                         command=[sys.executable, "-c", ZYGOTE, str(PY_BOOTSTRAP_DIR)])
    body = inst.invoke({"tag": "Z"}, request_id="rz").body
    assert body["result"] == "Z" and body["logs"] == ["Z out", "Z err", "Z ctx", "Z no newline"]
    child = inst.health()["pid"]
    assert child != inst.pid
    assert inst.request("POST", "/_/drain").status == 200
    assert inst.wait_exit() == 0
    assert json.dumps({"child": child}) in inst.stdout_lines
    assert json.dumps({"childExit": 0}) in inst.stdout_lines
    assert "requestId=rz Z out" in inst.stdout_lines


def python_config(env):
    sys.path.insert(0, str(PY_BOOTSTRAP_DIR))
    try:
        import bootstrap
        return bootstrap.config_from_env(env)
    finally:
        sys.path.remove(str(PY_BOOTSTRAP_DIR))


def node_config(env):
    if not shutil.which("node"):
        pytest.fail("node is not installed: make system-deps installs it")
    script = f"process.stdout.write(JSON.stringify(require({json.dumps(str(ROOT / 'runtimes/node/bootstrap.js'))})" \
             f".configFromEnv({json.dumps(env)})))"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30, check=True).stdout
    c = json.loads(out)
    return {"port": c["port"], "instance_id": c["instanceId"], "function_name": c["functionName"],
            "max_inflight": c["maxInflight"], "pool": c["pool"], "timeout_s": c["timeoutS"], "host": c["host"],
            "memory_mb": c["memoryMb"], "ready_fd": c["readyFd"], "socket": c["socket"]}


@pytest.mark.parametrize("read", [python_config, node_config], ids=["python3.11", "nodejs20"])
def test_config_from_env(read):
    d = read({})
    assert d["port"] == 8080 and d["host"] == "127.0.0.1" and d["function_name"] == "function"
    assert d["memory_mb"] == 128 and d["timeout_s"] == 3 and d["max_inflight"] == 1 and d["pool"] is False
    assert d["ready_fd"] is None and d["socket"] is None
    nomad = read({"NOMAD_PORT_http": "23456", "NOMAD_ALLOC_ID": "alloc-1"})
    assert nomad["port"] == 23456 and nomad["instance_id"] == "alloc-1"
    ours = read({"FAAS_PORT": "1234", "NOMAD_PORT_http": "23456", "FAAS_INSTANCE_ID": "i-9", "NOMAD_ALLOC_ID": "a",
                 "FAAS_POOL": "1", "FAAS_MAX_INFLIGHT": "4", "FAAS_TIMEOUT_S": "12", "FAAS_SOCKET": "/tmp/x.sock",
                 "FAAS_READY_FD": "3", "FAAS_FUNCTION_NAME": "f"})
    assert ours["port"] == 1234 and ours["instance_id"] == "i-9" and ours["pool"] is True
    assert ours["max_inflight"] == 4 and ours["timeout_s"] == 12 and ours["socket"] == "/tmp/x.sock"
    assert ours["ready_fd"] == 3 and ours["function_name"] == "f"
