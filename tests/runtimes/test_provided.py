"""The ``provided`` runtime: the Lambda Runtime API served to a function's own ``bootstrap``, and the
platform's runtime contract (runtimes/README.md) served to the edge, with real processes and sockets.

The test bootstrap (``provided/probe_runtime.py``) is a custom runtime written with the standard
library; the event's ``do`` says what it does with each invocation, ``TEST_INIT`` what it does first."""

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_until

HERE = Path(__file__).resolve().parent
SOURCE = (HERE / "provided" / "probe_runtime.py").read_text()
MAX_RESPONSE = 6291556


def bootstrap_code(extra=None):
    files = {"bootstrap": f"#!{sys.executable}\n{SOURCE}"}
    files.update(extra or {})
    return files


@pytest.fixture
def provided(start_runtime):
    def start(env=None, **kw):
        return start_runtime("provided", bootstrap_code(kw.pop("files", None)), env, **kw)
    return start


def ok_result(reply):
    assert reply.status == 200, reply
    assert reply.body["ok"] is True, reply.body
    return reply.body["result"]


def error_of(reply):
    assert reply.status == 200, reply
    body = reply.body
    assert body["ok"] is False, body
    assert set(body["error"]) >= {"errorType", "errorMessage", "requestId", "stackTrace"}
    return body["error"]


# --- the Runtime API: next, response, headers, environment ---------------------------------------

def test_next_carries_the_event_and_every_documented_header(provided):
    inst = provided({"FAAS_FUNCTION_NAME": "shout", "FAAS_FUNCTION_VERSION": "4", "FAAS_INSTANCE_ID": "i-x"})
    deadline = int(time.time() * 1000) + 2500
    r = inst.request("POST", "/_/invoke", json.dumps({"do": "echo", "n": 1}),
                     {"X-Request-Id": "req-1", "X-Deadline-Ms": str(deadline),
                      "X-Client-Context": '{"custom": {"a": "b"}}', "X-Cognito-Identity": '{"cognitoIdentityId": "c"}'})
    out = ok_result(r)
    h = out["headers"]
    assert out["event"] == {"do": "echo", "n": 1}
    assert h["Lambda-Runtime-Aws-Request-Id"] == "req-1"
    assert h["Lambda-Runtime-Deadline-Ms"] == str(deadline)
    assert h["Lambda-Runtime-Invoked-Function-Arn"] == "arn:faas:local:function:shout:4"
    assert h["Lambda-Runtime-Trace-Id"].startswith("Root=1-")
    assert h["Lambda-Runtime-Client-Context"] == '{"custom": {"a": "b"}}'
    assert h["Lambda-Runtime-Cognito-Identity"] == '{"cognitoIdentityId": "c"}'
    assert h["Content-Type"] == "application/json"
    env = out["env"]
    host, port = env["AWS_LAMBDA_RUNTIME_API"].split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert env["_HANDLER"] == "index.handler"
    assert env["LAMBDA_TASK_ROOT"] == str(inst.code_dir)
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "shout" and env["AWS_LAMBDA_FUNCTION_VERSION"] == "4"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == "i-x"
    assert out["cwd"] == str(inst.code_dir)


def test_optional_headers_are_absent_without_a_value(provided):
    h = ok_result(provided().invoke({"do": "echo"}))["headers"]
    assert "Lambda-Runtime-Client-Context" not in h and "Lambda-Runtime-Cognito-Identity" not in h


def test_default_deadline_comes_from_the_timeout(provided):
    inst = provided({"FAAS_TIMEOUT_S": "7"})
    out = ok_result(inst.invoke({"do": "deadline"}))
    assert 6000 < out["deadline"] - out["now"] <= 7000


def test_text_response_is_a_string_result_and_chunked_bodies_are_read(provided):
    inst = provided()
    assert ok_result(inst.invoke({"do": "text"})) == "plain words"
    assert ok_result(inst.invoke({"do": "chunked"})) == {"chunked": True}


def test_many_invocations_on_one_bootstrap_and_one_connection(provided):
    inst = provided()
    conn = inst.connection()
    try:
        for i in range(20):
            assert ok_result(inst.invoke({"do": "echo", "i": i}, conn=conn))["event"]["i"] == i
    finally:
        conn.close()
    h = inst.health()
    assert h["invocations"] == 20 and h["runtime"] == "provided" and h["state"] == "ready"
    assert h["initDurationMs"] > 0


def test_misbehaving_runtime_gets_the_documented_statuses(provided):
    out = ok_result(provided().invoke({"do": "probe"}))
    assert out["wrong_id"] == [400, {"errorType": "InvalidRequestID", "errorMessage": "Invalid request ID"}]
    assert out["init_error_late"][0] == 403
    assert out["init_error_late"][1]["errorType"] == "InvalidStateTransition"
    assert out["unknown_path"][0] == 404


def test_response_posted_twice_is_refused(provided):
    inst = provided()
    ok_result(inst.invoke({"do": "probe"}))
    wait_until(lambda: any("second response 400" in line for line in inst.stdout_lines), what="the second answer")


# --- errors -----------------------------------------------------------------------------------------

def test_invocation_error_is_the_function_error(provided):
    inst = provided()
    err = error_of(inst.invoke({"do": "error"}, request_id="r-err"))
    assert err == {"errorType": "HandlerError", "errorMessage": "bad thing", "requestId": "r-err",
                   "stackTrace": ["line 1", "line 2"]}
    assert ok_result(inst.invoke({"do": "text"})) == "plain words"   # the runtime carries on


def test_error_type_from_the_header_when_the_body_is_not_a_document(provided):
    err = error_of(provided().invoke({"do": "error-header-only"}))
    assert err["errorType"] == "Custom.Type"
    assert err["errorMessage"] == "not json"


def test_oversized_response_is_413_to_the_runtime_and_an_error_to_the_caller(provided):
    inst = provided()
    err = error_of(inst.invoke({"do": "big", "size": MAX_RESPONSE}))
    assert err["errorType"] == "Function.ResponseSizeTooLarge"
    assert "6291556 bytes" in err["errorMessage"]
    wait_until(lambda: any("big answered 413" in line and "RequestEntityTooLarge" in line
                           for line in inst.stdout_lines), what="the runtime's 413")
    # just under the limit passes whole
    result = ok_result(inst.invoke({"do": "big", "size": MAX_RESPONSE - 2}))
    assert len(result) == MAX_RESPONSE - 2


def test_bootstrap_exit_during_an_invocation_is_exit_error_then_the_instance_leaves(provided):
    inst = provided()
    r = inst.invoke({"do": "exit", "code": 2}, request_id="r-exit")
    err = error_of(r)
    assert err["errorType"] == "Runtime.ExitError"
    assert err["errorMessage"] == "RequestId: r-exit Error: Runtime exited with error: exit status 2"
    assert r.header("X-Faas-Exiting") == "1"
    assert inst.wait_exit() == 0


def test_timeout_answers_kills_the_bootstrap_and_exits(provided):
    inst = provided()
    child = inst.health()["bootstrapPid"]
    r = inst.invoke({"do": "sleep", "seconds": 30}, deadline_ms=time.time() * 1000 + 600)
    err = error_of(r)
    assert err["errorType"] == "Function.Timeout"
    assert r.body["logs"] == ["handling sleep", "to stderr"]
    assert r.header("X-Faas-Exiting") == "1"
    assert inst.wait_exit() == 0
    wait_until(lambda: not _alive(child), what="the bootstrap killed")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_deadline_passed_before_arrival_runs_nothing(provided):
    inst = provided()
    err = error_of(inst.invoke({"do": "echo"}, deadline_ms=time.time() * 1000 - 10))
    assert err["errorType"] == "Function.Timeout"
    assert ok_result(inst.invoke({"do": "text"})) == "plain words"


def test_invalid_event_is_refused_before_the_runtime(provided):
    inst = provided()
    r = inst.invoke(raw="{not json")
    assert r.status == 400 and r.body["error"]["errorType"] == "Runtime.InvalidEvent"
    assert ok_result(inst.invoke(raw=""))["event"] == {}


# --- init ---------------------------------------------------------------------------------------------

def test_init_error_fails_the_instance_with_that_error(provided):
    inst = provided({"TEST_INIT": "error"})
    r = inst.ready()
    assert r.status == 500
    body = r.body
    assert body["state"] == "failed"
    assert body["error"]["errorType"] == "Init.ConfigError"
    assert body["error"]["errorMessage"].startswith("config missing")
    assert body["error"]["stackTrace"] == ["at main"]
    assert body["logs"] == ["init line"]
    err = error_of(inst.invoke({"do": "echo"}, request_id="r-after"))
    assert err["errorType"] == "Init.ConfigError" and err["requestId"] == "r-after"
    assert inst.health()["state"] == "failed"      # stays up so the platform can read it


def test_bootstrap_exiting_during_init_is_exit_error(provided):
    inst = provided({"TEST_INIT": "exit"})
    body = inst.ready().body
    assert body["state"] == "failed"
    assert body["error"]["errorType"] == "Runtime.ExitError"
    assert body["error"]["errorMessage"] == "Runtime exited with error: exit status 3"


def test_missing_or_unrunnable_bootstrap_is_invalid_entrypoint(start_runtime):
    inst = start_runtime("provided", {"index.py": "x = 1\n"})
    err = inst.ready().body["error"]
    assert err["errorType"] == "Runtime.InvalidEntrypoint" and "bootstrap" in err["errorMessage"]
    inst = start_runtime("provided", {"bootstrap": "echo no shebang\n"})
    os.chmod(inst.code_dir / "bootstrap", 0o644)
    # written executable by the fixture; a script without #! cannot be exec'd either way
    err = inst.ready().body["error"]
    assert err["errorType"] == "Runtime.InvalidEntrypoint"


def test_the_handler_may_name_the_executable(start_runtime):
    files = {"bin/serve": f"#!{sys.executable}\n{SOURCE}"}
    inst = start_runtime("provided", files, handler="bin/serve")
    assert ok_result(inst.invoke({"do": "text"})) == "plain words"


def test_starting_until_the_first_next(provided):
    inst = provided({"TEST_INIT": "sleep", "TEST_INIT_SLEEP": "1"}, wait_loaded=False)
    r = inst.invoke({"do": "echo"})
    assert r.status == 503 and r.body == {"refused": "starting"}
    ready = inst.ready(wait_ms=20000)
    assert ready.status == 200 and ready.body["initDurationMs"] >= 1000


# --- logs, capacity, drain, signals ------------------------------------------------------------------

def test_logs_are_attributed_to_their_invocation_and_echoed_with_the_request_id(provided):
    inst = provided()
    r = inst.invoke({"do": "echo"}, request_id="r-log")
    assert r.body["logs"] == ["handling echo", "to stderr"]
    wait_until(lambda: "requestId=r-log handling echo" in inst.stdout_lines, what="the echoed line")
    assert "init line" in inst.stdout_lines


def test_one_invocation_at_a_time(provided):
    inst = provided()
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", inst.invoke({"do": "sleep", "seconds": 1},
                                                                           deadline_ms=time.time() * 1000 + 20000)))
    t.start()
    wait_until(lambda: inst.health()["inflight"] == 1, what="the first invocation running")
    r = inst.invoke({"do": "echo"})
    assert r.status == 503 and r.header("X-Faas-Refused") == "capacity"
    t.join(30)
    assert ok_result(first["r"]) == {"slept": True}


def test_drain_and_sigterm(provided):
    inst = provided()
    assert inst.request("POST", "/_/drain", {"minIdleMs": 600000}).status == 409
    r = inst.request("POST", "/_/drain", {})
    assert r.status == 200 and r.body == {"drained": True}
    assert inst.wait_exit() == 0
    inst2 = provided()
    inst2.signal(signal.SIGTERM)
    assert inst2.wait_exit() == 0


def test_pool_instance_specializes_into_the_function(start_runtime, tmp_path):
    inst = start_runtime("provided", pool=True)
    assert inst.request("GET", "/_/pool").status == 200
    code = tmp_path / "pooled"
    code.mkdir()
    (code / "bootstrap").write_text(f"#!{sys.executable}\n{SOURCE}")
    (code / "bootstrap").chmod(0o755)
    r = inst.request("POST", "/_/specialize", {"function": "late", "version": "2", "handler": "h", "codeDir": str(code),
                                               "env": {"GREETING": "hi"}})
    assert r.status == 200 and r.body["state"] == "ready", r
    out = ok_result(inst.invoke({"do": "echo"}))
    assert out["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "late" and out["env"]["_HANDLER"] == "h"
    assert inst.request("POST", "/_/specialize", {"codeDir": str(code)}).status == 409


def test_connections_to_the_runtime_api_are_bounded(provided):
    out = ok_result(provided().invoke({"do": "hoard", "n": 80}, deadline_ms=time.time() * 1000 + 20000))
    assert out["last"] == "HTTP/1.1 429 Too Many Requests"


# --- the Runtime API serves its own instance only -------------------------------------------------------

def test_runtime_api_refuses_a_socket_of_another_uid(provided):
    if os.getuid() != 0:
        pytest.fail("this test changes uid in a child process: run the suite as root (CI does)")
    inst = provided()
    port = int(ok_result(inst.invoke({"do": "echo"}))["env"]["AWS_LAMBDA_RUNTIME_API"].split(":")[1])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # another uid, as another instance would be
        try:
            os.close(r)
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            os.write(w, data[:200] or b"closed")
        except OSError as e:
            os.write(w, f"refused {e}".encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    assert got.startswith((b"HTTP/1.1 403", b"refused")), got
    assert ok_result(inst.invoke({"do": "text"})) == "plain words"   # the runtime itself still is served
