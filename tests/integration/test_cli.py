"""The `faas` command as a user types it."""

import json
import signal
import subprocess
import sys

import requests

from .conftest import REPO


def faas(r, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "appliance", "--api", r.api_url, "--token", r.token, *args],
                          cwd=str(REPO), capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_deploy_trigger_invoke_logs_ls_describe_rm(appliance, tmp_path):
    src = tmp_path / "greeter"
    src.mkdir()
    (src / "index.py").write_text("def handler(event, context):\n    print('greeting', event.get('name'))\n"
                                  "    return {'greeting': 'hi ' + event.get('name', 'there')}\n")
    out = faas(appliance, "deploy", str(src), "--name", "greeter", "--memory", "256", "--timeout", "5",
               "--concurrency", "2", "--env", "MODE=test")
    fn = json.loads(out.stdout)
    assert (fn["name"], fn["memory_mb"], fn["timeout_s"], fn["concurrency"], fn["version"]) == ("greeter", 256, 5, 2, 1)
    assert fn["environment"] == {"MODE": "test"}
    assert "Deployed greeter version 1" in out.stderr
    assert faas(appliance, "trigger", "add", "greeter", "GET", "/greet").stdout.strip() == \
        f"GET /greet -> greeter  {appliance.edge}/greet"
    assert requests.get(appliance.edge + "/greet", timeout=10).json() == {"greeting": "hi there"}
    out = faas(appliance, "invoke", "greeter", "--data", '{"name": "cli"}')
    assert json.loads(out.stdout) == {"greeting": "hi cli"}
    logs = faas(appliance, "logs", "greeter").stdout
    assert "greeting cli" in logs and "START RequestId" in logs and "END RequestId" in logs
    assert "greeter" in faas(appliance, "ls").stdout
    described = json.loads(faas(appliance, "describe", "greeter", "-o", "json").stdout)
    assert described["triggers"][0]["path"] == "/greet" and described["scaling"]["ready"] >= 1
    assert "greeter" in faas(appliance, "usage").stdout
    # a second deploy is an update with a new version
    (src / "index.py").write_text("def handler(event, context):\n    return 'v2'\n")
    assert json.loads(faas(appliance, "deploy", str(src), "--name", "greeter").stdout)["version"] == 2
    assert faas(appliance, "invoke", "greeter").stdout.strip() == "v2"
    assert faas(appliance, "rm", "greeter").stdout.strip() == "deleted greeter"
    assert requests.get(appliance.edge + "/greet", timeout=10).status_code == 404


def test_a_single_file_deploys(appliance, tmp_path):
    f = tmp_path / "index.py"
    f.write_text("def handler(event, context):\n    return 'single'\n")
    faas(appliance, "deploy", str(f), "--name", "single")
    assert faas(appliance, "invoke", "single").stdout.strip() == "single"


def test_errors_are_one_clear_line_and_a_non_zero_exit(appliance, tmp_path):
    proc = faas(appliance, "describe", "ghost", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: Function.NotFound: function 'ghost' does not exist"]
    proc = faas(appliance, "deploy", str(tmp_path), "--name", "Bad_Name", check=False)
    assert proc.returncode == 1 and "(field: name)" in proc.stderr.strip().splitlines()[-1]
    proc = faas(appliance, "invoke", "ghost", "--data", "{not json", check=False)
    assert proc.returncode == 1 and "--data is not valid JSON" in proc.stderr


def test_an_unreachable_api_says_how_to_start_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "appliance", "--api", "http://127.0.0.1:9", "ls"], cwd=str(REPO),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: Client.Unreachable") and "make up" in line


def test_a_zip_deploys(appliance, tmp_path):
    import zipfile
    z = tmp_path / "packed.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("index.py", "def handler(event, context):\n    return 'zipped'\n")
    fn = json.loads(faas(appliance, "deploy", str(z), "--memory", "256").stdout)
    assert (fn["name"], fn["memory_mb"], fn["version"]) == ("packed", 256, 1)
    assert faas(appliance, "invoke", "packed").stdout.strip() == "zipped"


def test_logs_follow_prints_new_invocations_as_they_happen(appliance, tmp_path):
    from .conftest import wait_for
    f = tmp_path / "index.py"
    f.write_text("def handler(event, context):\n    print('seen', event['n'])\n    return 'ok'\n")
    faas(appliance, "deploy", str(f), "--name", "followed")
    faas(appliance, "invoke", "followed", "--data", '{"n": 1}')
    out = tmp_path / "follow.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "--api", appliance.api_url, "--token",
                                 appliance.token, "logs", "followed", "--follow"], cwd=str(REPO), stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "seen 1" in out.read_text(), 20, message="the earlier invocation")
        faas(appliance, "invoke", "followed", "--data", '{"n": 2}')
        wait_for(lambda: "seen 2" in out.read_text(), 20, message="the new invocation to be followed")
        assert proc.poll() is None, "--follow ended by itself"
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends a follow normally
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.read_text()
    assert "Aborted" not in text
    assert text.count("seen 1") == 1 and text.count("START RequestId") == 2


def test_a_failed_invocation_is_one_line_and_a_non_zero_exit(appliance, tmp_path):
    f = tmp_path / "index.py"
    f.write_text("def handler(event, context):\n    raise ValueError('bad\\ninput')\n")
    faas(appliance, "deploy", str(f), "--name", "raiser")
    proc = faas(appliance, "invoke", "raiser", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Function.Error: ValueError: bad input (request ")
    verbose = faas(appliance, "invoke", "raiser", "-v", check=False)
    assert verbose.returncode == 1 and 'File "/var/task/index.py"' in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: Function.Error")


def test_a_failed_deploy_of_a_new_function_leaves_nothing_behind(appliance, tmp_path):
    proc = faas(appliance, "deploy", str(tmp_path / "missing"), "--name", "never", check=False)
    assert proc.returncode == 1 and "Client.NoSource" in proc.stderr.strip().splitlines()[-1]
    bad = tmp_path / "notes.txt"
    bad.write_text("not code")
    proc = faas(appliance, "deploy", str(bad), "--name", "never", check=False)
    assert proc.returncode == 1 and "(field: filename)" in proc.stderr.strip().splitlines()[-1]
    assert "never" not in [f["name"] for f in appliance.api.list_functions()]


def test_up_on_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    import socket
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "appliance", "up", "--edge-port", str(port), "--api-port", "0",
                               "--data-dir", str(tmp_path / "data")], cwd=str(REPO), capture_output=True, text=True,
                              timeout=60)
    finally:
        taken.close()
    assert proc.returncode == 1
    # Log lines are written by a background thread, so one may come after the error line.
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line.startswith(f"error: cannot listen on 127.0.0.1 (edge port {port} and API port 0)"), proc.stderr
    assert "--edge-port" in line and "Traceback" not in proc.stderr
