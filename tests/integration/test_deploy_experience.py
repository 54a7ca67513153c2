"""Deploying as a new user does: mistakes found at deploy with file and line, names and runtimes
derived from the code, nothing half-made, --env replace or merge, a re-created function starting
empty, /v1/ trigger paths, and `faas up --example` leaving a user's own function alone."""

import json
import os
import subprocess
import sys

import requests

from .conftest import REPO, start_appliance, stop_appliance, wait_for


def faas(r, *args, check=True, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "appliance", "--api", r.api_url, *args], cwd=str(cwd or REPO),
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), "FAAS_TOKEN": r.token})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def error_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def names(r) -> list[str]:
    return [f["name"] for f in r.api.list_functions()]


def test_a_syntax_error_is_reported_at_deploy_with_file_and_line(appliance, tmp_path):
    src = tmp_path / "broken"
    src.mkdir()
    (src / "index.py").write_text("import json\ndef handler(event, context)\n    return 1\n")
    line = error_line(faas(appliance, "deploy", str(src), check=False))
    assert line.startswith("error: Code.SyntaxError: index.py, line 2: ") and "(field: code)" in line
    assert "broken" not in names(appliance)  # a new function: nothing left behind
    # An existing function keeps serving its previous version.
    (src / "index.py").write_text("def handler(event, context):\n    return 'v1'\n")
    faas(appliance, "deploy", str(src))
    (src / "index.py").write_text("def handler(event, context):\n    return (\n")
    assert "Code.SyntaxError: index.py, line 2" in error_line(faas(appliance, "deploy", str(src), check=False))
    assert faas(appliance, "invoke", "broken").stdout.strip() == "v1"
    assert appliance.api.get_function("broken")["version"] == 1


def test_a_missing_handler_is_reported_at_deploy(appliance, tmp_path):
    f = tmp_path / "index.py"
    f.write_text("def handle(event, context):\n    return 1\n")
    line = error_line(faas(appliance, "deploy", str(f), "--name", "nohandler", check=False))
    assert line.startswith("error: Code.HandlerNotFound: index.py defines no 'handler'")
    resp = appliance.http.put(f"{appliance.api_url}/v1/functions/nohandler/code", params={"filename": "index.py"},
                        data=b"x = 1\n", timeout=10)
    assert resp.status_code == 404  # the failed deploy removed the function it had created
    appliance.api.create_function(name="nohandler", handler="main.handler")
    resp = appliance.http.put(f"{appliance.api_url}/v1/functions/nohandler/code", params={"filename": "index.py"},
                        data=f.read_bytes(), timeout=10)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "Code.HandlerNotFound" and err["file"] == "main.py" and err["field"] == "handler"
    resp = appliance.http.put(f"{appliance.api_url}/v1/functions/nohandler/code", params={"filename": "main.py"},
                        data=b"def handler(e, c):\n  return [\n", timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "Code.SyntaxError"
    assert (resp.json()["error"]["file"], resp.json()["error"]["line"]) == ("main.py", 2)


def test_a_single_file_gives_the_name_the_module_and_the_runtime(appliance, tmp_path):
    f = tmp_path / "My_Func.py"
    f.write_text("def handler(event, context):\n    return 'derived'\n")
    fn = json.loads(faas(appliance, "deploy", str(f)).stdout)
    assert (fn["name"], fn["handler"], fn["runtime"]) == ("my-func", "My_Func.handler", "python3.11")
    assert faas(appliance, "invoke", "my-func").stdout.strip() == "derived"
    js = tmp_path / "index.js"
    js.write_text("exports.handler = async () => 'node';\n")
    fn = json.loads(faas(appliance, "deploy", str(js), "--name", "from-js").stdout)
    assert (fn["runtime"], fn["handler"]) == ("nodejs20", "index.handler")
    d = tmp_path / "nodedir"
    d.mkdir()
    (d / "index.js").write_text("exports.handler = async () => 'node';\n")
    assert json.loads(faas(appliance, "deploy", str(d)).stdout)["runtime"] == "nodejs20"


def test_a_trigger_that_cannot_be_bound_leaves_nothing_half_made(appliance, tmp_path):
    owner = tmp_path / "owner.py"
    owner.write_text("def handler(event, context):\n    return 'owner'\n")
    faas(appliance, "deploy", str(owner))
    faas(appliance, "trigger", "add", "owner", "GET", "/taken")
    src = tmp_path / "wants"
    src.mkdir()
    (src / "index.py").write_text("def handler(event, context):\n    return 'wants'\n")
    (src / "function.json").write_text(json.dumps({"triggers": [{"method": "GET", "path": "/free"},
                                                                {"method": "GET", "path": "/taken"}]}))
    line = error_line(faas(appliance, "deploy", str(src), check=False))
    assert "Resource.Conflict" in line and "GET /taken" in line and "nothing was deployed" in line
    assert "wants" not in names(appliance)
    # One the server refuses after the function was made: it is removed again, with its other trigger.
    (src / "function.json").write_text(json.dumps({"triggers": [{"method": "GET", "path": "/free"},
                                                                {"method": "GET", "path": "/_/mine"}]}))
    line = error_line(faas(appliance, "deploy", str(src), check=False))
    assert "trigger GET /_/mine was not bound" in line and "nothing was deployed" in line
    assert "wants" not in names(appliance)
    assert [t for t in appliance.api.list_triggers() if t["path"] == "/free"] == []


def test_env_replaces_by_default_and_merges_with_a_flag(appliance, tmp_path):
    f = tmp_path / "envfn.py"
    f.write_text("import os\ndef handler(event, context):\n    return dict(os.environ)\n")
    faas(appliance, "deploy", str(f), "--env", "A=1", "--env", "B=2")
    assert appliance.api.get_function("envfn")["environment"] == {"A": "1", "B": "2"}
    faas(appliance, "deploy", str(f), "--env", "C=3")
    assert appliance.api.get_function("envfn")["environment"] == {"C": "3"}
    faas(appliance, "deploy", str(f), "--env", "D=4", "--env", "C=5", "--env-merge")
    assert appliance.api.get_function("envfn")["environment"] == {"C": "5", "D": "4"}
    assert "--env-merge" in faas(appliance, "deploy", "--help").stdout


def test_a_function_made_again_starts_with_no_records_or_usage(appliance, tmp_path):
    f = tmp_path / "again.py"
    f.write_text("def handler(event, context):\n    print('old life')\n    return 1\n")
    faas(appliance, "deploy", str(f))
    faas(appliance, "invoke", "again")
    assert appliance.api.invocations("again")
    faas(appliance, "rm", "again")
    f.write_text("def handler(event, context):\n    return 2\n")
    faas(appliance, "deploy", str(f))
    assert appliance.api.invocations("again") == []
    assert "old life" not in faas(appliance, "logs", "again").stdout
    assert [u for u in appliance.api.usage() if u["function"] == "again"] == []
    assert appliance.api.usage(function="again") == []


def test_an_identical_deploy_adds_no_version(appliance, tmp_path):
    f = tmp_path / "same.py"
    f.write_text("def handler(event, context):\n    return 'same'\n")
    assert json.loads(faas(appliance, "deploy", str(f)).stdout)["version"] == 1
    again = faas(appliance, "deploy", str(f))
    assert json.loads(again.stdout)["version"] == 1
    assert "identical to version 1" in again.stderr
    assert len(appliance.http.get(f"{appliance.api_url}/v1/functions/same/versions", timeout=10).json()["versions"]) == 1


def test_a_trigger_under_v1_is_served_by_the_edge(appliance, tmp_path):
    f = tmp_path / "v1api.py"
    f.write_text("def handler(event, context):\n    return event['rawPath']\n")
    faas(appliance, "deploy", str(f))
    faas(appliance, "trigger", "add", "v1api", "GET", "/v1/things/{id}")
    resp = requests.get(appliance.edge + "/v1/things/7", timeout=30)
    assert resp.status_code == 200 and resp.text == "/v1/things/7"


def test_up_deploys_the_example_only_when_no_function_has_its_name(tmp_path):
    first = start_appliance(tmp_path, example="examples/hello")
    try:
        wait_for(lambda: "Example deployed" in first.log(), 60, message="the example to be deployed")
        assert requests.get(first.edge + "/hello/serverless", timeout=30).text == "Hello Serverless"
        mine = tmp_path / "index.py"
        mine.write_text("def handler(event, context):\n    return 'my own hello'\n")
        faas(first, "deploy", str(mine), "--name", "hello")
        assert first.api.get_function("hello")["version"] == 2
    finally:
        stop_appliance(first)
    again = start_appliance(tmp_path, example="examples/hello")  # the same data directory
    try:
        wait_for(lambda: "is not deployed over it" in again.log(), 60, message="the example to be passed over")
        assert requests.get(again.edge + "/hello/serverless", timeout=30).text == "my own hello"
        assert again.api.get_function("hello")["version"] == 2
    finally:
        stop_appliance(again)
