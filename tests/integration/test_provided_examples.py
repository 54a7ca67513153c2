"""The ``provided`` runtime through a real, sandboxed appliance: the examples (shell, Go, Java,
awslambdaric) built as ``make examples`` builds them, deployed as ``faas up --example`` deploys, and
called through the edge; and escapes tried from inside a ``provided`` instance.

Builds are cached: ``examples/build`` skips an example whose output is newer than its sources, and
runs once per test session. A missing toolchain fails the test with the package to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from appliance.cli import _deploy_example

from .conftest import REPO, make_zip, wait_for

EXAMPLES = REPO / "examples"
PROBE = (REPO / "tests" / "runtimes" / "provided" / "probe_runtime.py").read_text()
SANDBOX_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def built_examples():
    env = dict(os.environ, PIP=f"{sys.executable} -m pip")
    out = subprocess.run(["bash", str(EXAMPLES / "build"), "go", "java", "python-ric"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        pytest.fail(f"building the examples failed (make system-deps installs the toolchains):\n{out.stderr[-3000:]}")
    return EXAMPLES


def deploy(appliance, directory: Path, **override) -> tuple[str, str]:
    """Deploy an example directory under a fresh name and path; (function name, trigger path)."""
    cfg = json.loads((directory / "function.json").read_text())
    name = f"{cfg['name']}-{uuid.uuid4().hex[:6]}"
    path = f"/{name}"
    cfg.update(override, name=name, triggers=[{"method": "GET", "path": path}])
    tmp = appliance.data_dir.parent / f"src-{name}"
    tmp.mkdir()
    for f in directory.rglob("*"):
        rel = f.relative_to(directory)
        if f.is_file():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(f.read_bytes())
            (tmp / rel).chmod(f.stat().st_mode & 0o777)
    (tmp / "function.json").write_text(json.dumps(cfg))
    _deploy_example(appliance.api, tmp)
    return name, path


def log_lines(appliance, name):
    return [entry["line"] for entry in appliance.api.logs(name)["lines"]]


@pytest.mark.parametrize("example, expected", [
    ("shell", "Hello from sh at "),
    ("go", "Hello you from Go"),
    ("java", "Hello you from Java"),
    ("python-ric", "Hello you from awslambdaric, True"),
])
def test_each_example_answers_through_the_edge_cold_and_warm(appliance, built_examples, example, expected):
    name, path = deploy(appliance, built_examples / example)
    for cold in (True, False):
        r = appliance.get(path, params={"name": "you"}, timeout=60)
        assert r.status_code == 200, (r.status_code, r.text, appliance.log()[-3000:])
        assert r.text.startswith(expected), r.text
        assert r.headers["Content-Type"].startswith("text/plain")
        assert ("cold;" in r.headers["Server-Timing"]) == cold
    assert "user_init" in appliance.api.invocations(name)[-1]["phases"]
    if example != "shell":
        wait_for(lambda: any("greeting" in line and "you" in line for line in log_lines(appliance, name)), 10,
                 message="the handler's log line")


@pytest.mark.parametrize("example, error_type", [("go", "HandlerError"), ("java", "IllegalArgumentException")])
def test_a_handler_error_is_the_function_error(appliance, built_examples, example, error_type):
    name, path = deploy(appliance, built_examples / example)
    r = appliance.get(path, params={"name": "fail"}, timeout=60)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    # An HTTP trigger's caller gets the code and request id only (README: expose_errors) ...
    assert err["code"] == error_type and "function" not in err and "asked to fail" not in r.text
    # ... an authorised caller of the API gets the function's own error.
    r = appliance.api.invoke_raw(name, {"queryStringParameters": {"name": "fail"}})
    err = r.json()["error"]
    assert (r.status_code, err["code"], err["function"]["errorMessage"]) == (502, error_type, "asked to fail")


def test_a_function_without_network_still_reaches_its_runtime_api(appliance, built_examples):
    _, path = deploy(appliance, built_examples / "go", network="none")
    r = appliance.get(path, params={"name": "offline"}, timeout=60)
    assert r.status_code == 200 and r.text == "Hello offline from Go", r.text


def test_a_bootstrap_that_exits_is_exit_error_and_the_next_request_gets_a_new_instance(appliance):
    script = "#!/bin/sh\ncurl -sS -o /dev/null \"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation/next\"\nexit 7\n"
    name = appliance.deploy({"bootstrap": script}, runtime="provided", handler="x")
    r = appliance.api.invoke_raw(name, {})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "Runtime.ExitError" and "exit status 7" in err["message"]
    r = appliance.api.invoke_raw(name, {})
    assert r.json()["error"]["code"] == "Runtime.ExitError"   # a fresh instance, which exits again


def test_an_init_error_is_reported_as_such(appliance):
    script = ("#!/bin/sh\necho loading\ncurl -sS -o /dev/null -X POST -H 'Lambda-Runtime-Function-Error-Type: Init.Bad' "
              "-d '{\"errorMessage\": \"no config\", \"errorType\": \"Init.Bad\"}' "
              "\"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/init/error\"\nsleep 30\n")
    name = appliance.deploy({"bootstrap": script}, runtime="provided", handler="x")
    r = appliance.api.invoke_raw(name, {})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "Init.Bad" and err["function"]["errorMessage"] == "no config"


def test_provided_functions_refuse_a_concurrency_above_one(appliance):
    r = appliance.http.post(f"{appliance.api_url}/v1/functions", json={"name": f"p-{uuid.uuid4().hex[:6]}",
                                                                 "runtime": "provided", "concurrency": 4}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["field"] == "concurrency"


# --- sandbox escapes from a provided instance ----------------------------------------------------------

@pytest.fixture(scope="module")
def probes(appliance):
    """Two provided functions running the test bootstrap under the sandbox's python3, and a Python one."""
    if not os.path.exists(SANDBOX_PYTHON):
        pytest.fail(f"{SANDBOX_PYTHON} is needed for the provided probe (python3 package)")
    code = {"bootstrap": f"#!{SANDBOX_PYTHON}\n{PROBE}"}
    a = appliance.deploy(code, runtime="provided", handler="probe")
    b = appliance.deploy(code, runtime="provided", handler="probe")
    return a, b


def run(appliance, name, **event):
    r = appliance.api.invoke_raw(name, event)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_provided_instance_runs_as_an_unprivileged_uid(appliance, probes):
    out = run(appliance, probes[0], do="try", op="uid")
    assert out == {"ok": True, "value": [1000, 1000]}


def test_the_runtime_api_checks_its_peer_with_sock_diag_inside_the_sandbox(appliance, probes):
    # the exact, cheap lookup works under the sandbox (user namespace, seccomp): no /proc/net/tcp scan
    assert run(appliance, probes[0], do="try", op="diag") == {"ok": True, "value": 1000}


def test_another_instance_cannot_reach_a_runtime_api(appliance, probes):
    a, b = probes
    port_a = int(run(appliance, a, do="echo")["env"]["AWS_LAMBDA_RUNTIME_API"].split(":")[1])
    own = int(run(appliance, b, do="echo")["env"]["AWS_LAMBDA_RUNTIME_API"].split(":")[1])
    assert port_a != own
    out = run(appliance, b, do="try", op="connect", arg=port_a)
    # refused by the host's packet filter, or (where it is absent) answered 403 by the runtime itself
    assert (not out["ok"] and out["error"] == "ConnectionRefusedError") or out["value"].startswith("HTTP/1.1 403"), out
    assert run(appliance, a, do="text") == "plain words"     # a's own bootstrap is still served


def test_a_python_instance_cannot_reach_a_runtime_api_either(appliance, probes):
    a, _ = probes
    port_a = int(run(appliance, a, do="echo")["env"]["AWS_LAMBDA_RUNTIME_API"].split(":")[1])
    py = appliance.deploy({"index.py": "import socket\n"
                                       "def handler(event, context):\n"
                                       "    try:\n"
                                       "        s = socket.create_connection(('127.0.0.1', event['port']), timeout=3)\n"
                                       "        s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                                       "        return s.recv(100).decode('latin-1')\n"
                                       "    except OSError as e:\n"
                                       "        return type(e).__name__\n"})
    out = appliance.api.invoke_raw(py, {"port": port_a}).json()
    assert out == "ConnectionRefusedError" or out.startswith("HTTP/1.1 403"), out


def test_a_provided_instance_cannot_read_other_code_or_host_secrets(appliance, probes):
    a, _ = probes
    other = appliance.deploy({"index.py": "SECRET = 'other-function-code'\ndef handler(e, c):\n    return 1\n"})
    appliance.api.invoke(other, {})
    code_dirs = [p for p in (appliance.data_dir).rglob("index.py") if "other-function-code" in p.read_text()]
    assert code_dirs, "the other function's code exists on the host"
    out = run(appliance, a, do="try", op="read", arg=str(code_dirs[0]))
    assert out["ok"] is False and out["error"] == "FileNotFoundError"
    assert Path("/etc/shadow").exists()
    assert run(appliance, a, do="try", op="read", arg="/etc/shadow")["ok"] is False
    assert run(appliance, a, do="try", op="listdir", arg=str(appliance.data_dir))["ok"] is False
    listing = run(appliance, a, do="try", op="listdir", arg="/var/task")
    assert listing == {"ok": True, "value": ["bootstrap"]}


@pytest.mark.parametrize("path", ["/var/task/bootstrap", "/var/runtime/bootstrap.py", "/usr/bin/escaped", "/etc/escaped"])
def test_a_provided_instance_cannot_write_outside_tmp(appliance, probes, path):
    out = run(appliance, probes[0], do="try", op="write", arg=path)
    assert out["ok"] is False, out
    assert run(appliance, probes[0], do="try", op="write", arg="/tmp/fine")["ok"] is True


def test_a_provided_instance_cannot_connect_to_the_control_api(appliance, probes):
    port = int(appliance.api_url.rsplit(":", 1)[1])
    out = run(appliance, probes[0], do="try", op="connect", arg=port)
    assert out["ok"] is False and out["error"] == "ConnectionRefusedError", out


def test_zip_uploads_keep_a_bootstrap_executable(appliance):
    name = appliance.deploy({"bootstrap": "#!/bin/sh\nwhile true; do\n"
                             "  H=$(mktemp); curl -sS -D $H -o /dev/null \"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation/next\"\n"
                             "  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id $H | tr -d '[:space:]' | cut -d: -f2)\n"
                             "  curl -sS -o /dev/null \"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation/$ID/response\" -d '\"ok\"'\n"
                             "done\n"}, runtime="provided", handler="x")
    assert appliance.api.invoke(name, {}) == "ok"
    # the fixture's zips carry no file modes: the unpacker makes a top-level bootstrap executable


def test_doctor_lists_the_languages_available_to_custom_runtimes(appliance):
    out = subprocess.run([sys.executable, "-m", "appliance", "--api", appliance.api_url, "doctor"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "FAAS_TOKEN": appliance.token}).stdout
    line = next(line for line in out.splitlines() if "provided runtime languages" in line)
    assert "sh" in line and "java" in line and "go" in line, line


def test_the_shell_example_runs_without_the_sandbox_too(make_appliance, built_examples):
    plain = make_appliance(env={"APPLIANCE_SANDBOX": "off"})
    _, path = deploy(plain, built_examples / "shell")
    r = plain.get(path, timeout=60)
    assert r.status_code == 200 and r.text == f"Hello from sh at {path}", r.text


def test_a_package_without_a_bootstrap_is_warned_about_and_fails_as_an_invalid_entrypoint(appliance):
    name = f"nb-{uuid.uuid4().hex[:6]}"
    appliance.api.create_function(name=name, runtime="provided.al2023", handler="function.handler")
    out = appliance.api.upload_code(name, make_zip({"function.sh": "handler () { echo hi; }\n"}))
    assert any("no bootstrap" in w and "Runtime.InvalidEntrypoint" in w for w in out["warnings"]), out
    r = appliance.api.invoke_raw(name, {})
    assert r.status_code == 502 and r.json()["error"]["code"] == "Runtime.InvalidEntrypoint"
