"""The CLI for scripts and shells: --output json, --version, --data @file and -, readable describe,
trigger URLs, shell completion of function names, and logs --follow starting at --since."""

import json
import os
import subprocess
import sys

import requests

from appliance import __version__

from .conftest import REPO, wait_for


def faas(r, *args, input=None, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "appliance", "--api", r.api_url, *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=60, input=input, env={**os.environ, "FAAS_TOKEN": r.token, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


ECHO = "def handler(event, context):\n    print('seen', event.get('n'))\n    return {'echo': event}\n"


def test_version():
    proc = subprocess.run([sys.executable, "-m", "appliance", "--version"], cwd=str(REPO), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == f"faas {__version__}"


def test_json_output_of_every_data_command(appliance, tmp_path):
    src = tmp_path / "index.py"
    src.write_text(ECHO)
    fn = json.loads(faas(appliance, "deploy", str(src), "--name", "jsonout", "-o", "json").stdout)
    assert fn["name"] == "jsonout"
    added = json.loads(faas(appliance, "trigger", "add", "jsonout", "GET", "/jsonout", "-o", "json").stdout)
    assert added["url"] == f"{appliance.edge}/jsonout"
    assert requests.get(added["url"], timeout=30).status_code == 200
    listed = json.loads(faas(appliance, "trigger", "ls", "jsonout", "-o", "json").stdout)
    assert [t["url"] for t in listed] == [added["url"]]
    assert "jsonout" in [f["name"] for f in json.loads(faas(appliance, "ls", "-o", "json").stdout)]
    described = json.loads(faas(appliance, "-o", "json", "describe", "jsonout").stdout)  # the global form
    assert described["triggers"][0]["url"] == added["url"]
    assert json.loads(faas(appliance, "invoke", "jsonout", "-o", "json").stdout) == {"echo": {}}
    lines = [json.loads(x) for x in faas(appliance, "logs", "jsonout", "-o", "json").stdout.splitlines()]
    assert lines and all({"seq", "request_id", "ts", "line"} <= set(x) for x in lines)
    usage = json.loads(faas(appliance, "usage", "-o", "json").stdout)
    assert any(u["function"] == "jsonout" and u["invocations"] >= 2 for u in usage)
    assert json.loads(faas(appliance, "trigger", "rm", "GET", "/jsonout", "-o", "json").stdout)["deleted"]["path"] \
        == "/jsonout"
    assert json.loads(faas(appliance, "rm", "jsonout", "-o", "json").stdout) == {"deleted": "jsonout"}
    checks = json.loads(faas(appliance, "doctor", "-o", "json", check=False).stdout)
    assert {"check": "control API", "status": "ok", "detail": f"{appliance.api_url} (local mode)"} in checks


def test_describe_is_readable_text(appliance, tmp_path):
    src = tmp_path / "index.py"
    src.write_text(ECHO)
    faas(appliance, "deploy", str(src), "--name", "readable", "--env", "SECRET=shh", "--memory", "256")
    faas(appliance, "trigger", "add", "readable", "POST", "/readable/{id}")
    text = faas(appliance, "describe", "readable").stdout
    assert not text.lstrip().startswith("{")
    assert "Name:         readable" in text
    assert "256 MB" in text and "version 1" in text
    assert f"POST    /readable/{{id}}  {appliance.edge}/readable/{{id}}" in text
    assert "SECRET" in text and "shh" not in text  # names only; values with --output json


def test_data_from_a_file_and_from_stdin(appliance, tmp_path):
    src = tmp_path / "index.py"
    src.write_text(ECHO)
    faas(appliance, "deploy", str(src), "--name", "datafrom")
    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    assert json.loads(faas(appliance, "invoke", "datafrom", "--data", f"@{event}").stdout) == {"echo": {"from": "file"}}
    assert json.loads(faas(appliance, "invoke", "datafrom", "--data", "-", input='{"from": "stdin"}').stdout) == \
        {"echo": {"from": "stdin"}}
    missing = faas(appliance, "invoke", "datafrom", "--data", f"@{tmp_path / 'nope.json'}", check=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    bad = faas(appliance, "invoke", "datafrom", "--data", "-", input="{not json", check=False)
    assert bad.returncode == 1 and "--data is not valid JSON (stdin)" in bad.stderr


def test_shell_completion_offers_function_names(appliance, tmp_path):
    src = tmp_path / "index.py"
    src.write_text(ECHO)
    faas(appliance, "deploy", str(src), "--name", "completable")
    proc = subprocess.run([sys.executable, "-m", "appliance", "--api", appliance.api_url, "describe", "compl"],
                          cwd=str(REPO), capture_output=True, text=True, timeout=30,
                          env={**os.environ, "FAAS_TOKEN": appliance.token, "_FAAS_COMPLETE": "bash_complete",
                               "COMP_WORDS": f"faas --api {appliance.api_url} describe compl", "COMP_CWORD": "4"})
    assert proc.returncode == 0
    assert "plain,completable" in proc.stdout.splitlines()


def test_logs_follow_starts_at_since(appliance, tmp_path):
    src = tmp_path / "index.py"
    src.write_text(ECHO)
    faas(appliance, "deploy", str(src), "--name", "sincefollow")
    faas(appliance, "invoke", "sincefollow", "--data", '{"n": "old"}')
    out = tmp_path / "follow.out"
    with open(out, "w") as sink:
        # The old invocation is older than 1 ms by the time the command starts.
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "--api", appliance.api_url, "logs", "sincefollow",
                                 "--follow", "--since", "0.001"], cwd=str(REPO), stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "FAAS_TOKEN": appliance.token})
    try:
        def invoked_and_followed():
            # Invoke until one is printed: the follow's first answer (empty) has no visible mark.
            faas(appliance, "invoke", "sincefollow", "--data", '{"n": "new"}')
            return "seen new" in out.read_text()

        wait_for(invoked_and_followed, 30, message="a new invocation to be followed")
    finally:
        proc.terminate()
        proc.wait(10)
    text = out.read_text()
    assert "seen old" not in text, text
