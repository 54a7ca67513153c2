"""The runtime contract (runtimes/README.md), checked against every bootstrap with real processes and sockets."""

import json
import re
import os
import resource
import signal
import threading
import time

import pytest
from conftest import RUNTIMES, wait_until
from runtime_handlers import BROKEN, code

# Node's console.* writes Lambda's record prefix (<time>\t<request id>\t<LEVEL>\t, test_lambda_runtime.py);
# these tests are about capture and routing, so they compare the messages.
_CONSOLE_PREFIX = re.compile(r"^(requestId=\S+ )?\d{4}-\d\d-\d\dT[\d:.]+Z\t[^\t]*\t[A-Z]+\t")


def msgs(lines):
    return [_CONSOLE_PREFIX.sub(r"\1", line) for line in lines]


def ms_from_now(ms):
    return time.time() * 1000 + ms


def ok_result(reply):
    assert reply.status == 200, reply
    body = reply.body
    assert body["ok"] is True, body
    return body["result"]


def error_of(reply, status=200):
    assert reply.status == status, reply
    body = reply.body
    assert body["ok"] is False, body
    assert set(body["error"]) >= {"errorType", "errorMessage", "requestId", "stackTrace"}
    assert isinstance(body["error"]["stackTrace"], list)
    return body["error"]


# --- health, readiness, invoke ----------------------------------------------------------------------

def test_health_and_ready_when_loaded(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), {"FAAS_INSTANCE_ID": "i-test", "FAAS_FUNCTION_NAME": "hello",
                                                  "FAAS_FUNCTION_VERSION": "3", "FAAS_MAX_INFLIGHT": "2"},
                         handler="index.hello")
    ready = inst.ready()
    assert ready.status == 200 and ready.body["state"] == "ready"
    h = inst.health()
    assert h["state"] == "ready" and h["instanceId"] == "i-test" and h["function"] == "hello"
    assert h["version"] == "3" and h["inflight"] == 0 and h["maxInflight"] == 2 and h["invocations"] == 0
    assert h["pid"] == inst.pid and isinstance(h["idleMs"], int)
    assert ok_result(inst.invoke({})) == "Hello Serverless"
    assert inst.health()["invocations"] == 1


def test_unknown_paths_and_methods(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    assert inst.request("GET", "/hello").status == 404
    assert inst.request("GET", "/_/invoke").status == 405
    assert inst.request("POST", "/_/health").status == 405


@pytest.mark.parametrize("kind,expected", [("string", "text"), ("dict", {"a": 1, "nested": [1, 2]}),
                                           ("list", [1, "two", None]), ("none", None), ("number", 4.5)])
def test_invoke_result_kinds(runtime, start_runtime, kind, expected):
    inst = start_runtime(runtime, code(runtime), handler="index.kinds")
    reply = inst.invoke({"kind": kind})
    assert reply.header("content-type") == "application/json"
    body = reply.body
    assert body["result"] == expected and body["logs"] == [] and isinstance(body["durationMs"], (int, float))


def test_keep_alive_serves_many_requests_on_one_connection(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    conn = inst.connection()
    try:
        for _ in range(50):
            assert ok_result(inst.invoke({}, conn=conn)) == "Hello Serverless"
    finally:
        conn.close()
    assert inst.health()["invocations"] == 50


def test_event_and_context(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), {"FAAS_FUNCTION_NAME": "fn-a", "FAAS_FUNCTION_VERSION": "7",
                                                  "FAAS_MEMORY_MB": "256", "FAAS_INSTANCE_ID": "i-ctx",
                                                  "GREETING": "hola"}, handler="index.ctx")
    event = {"a": [1, 2, {"b": None}], "s": "héllo", "n": 1.5}
    got = ok_result(inst.invoke(event, request_id="req-1", deadline_ms=ms_from_now(60_000)))
    assert got["event"] == event
    assert got["requestId"] == got["requestIdAlias"] == "req-1"
    assert got["functionName"] == "fn-a" and got["functionVersion"] == "7"
    assert got["memory"] == (256 if runtime == "python3.11" else "256")  # Lambda's Node.js context has a string
    assert got["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn-a"
    assert got["logGroup"] == "/aws/lambda/fn-a" and re.fullmatch(r"\d{4}/\d\d/\d\d/\[7\]i-ctx", got["logStream"])
    assert 0 < got["remaining"] <= 60_000
    assert got["env"] == "hola"


def test_request_id_is_made_when_absent(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.ctx")
    a, b = ok_result(inst.invoke({})), ok_result(inst.invoke({}))
    assert a["requestId"] and b["requestId"] and a["requestId"] != b["requestId"]


def test_remaining_time_decreases(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.remaining")
    first, second = ok_result(inst.invoke({}, deadline_ms=ms_from_now(10_000)))
    assert 0 < second < first <= 10_000


def test_default_deadline_comes_from_timeout_setting(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), {"FAAS_TIMEOUT_S": "30"}, handler="index.ctx")
    remaining = ok_result(inst.invoke({}))["remaining"]
    assert 3_000 < remaining <= 30_000


def test_deadline_already_passed_is_a_timeout_without_running(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, code(runtime), handler="index.touch")
    marker = tmp_path / "ran"
    err = error_of(inst.invoke({"path": str(marker)}, deadline_ms=ms_from_now(-1000)))
    assert err["errorType"] == "Function.Timeout"
    assert not marker.exists()
    assert ok_result(inst.invoke({"path": str(marker)})) == "ran"  # the instance keeps serving


def test_empty_body_is_an_empty_event(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.ctx")
    assert ok_result(inst.invoke(raw=""))["event"] == {}


def test_invalid_json_is_invalid_event(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, code(runtime), handler="index.touch")
    reply = inst.invoke(raw='{"path": ')
    err = error_of(reply, status=400)
    assert err["errorType"] == "Runtime.InvalidEvent"
    assert inst.health()["invocations"] == 0
    assert error_of(inst.invoke(raw=b"\xff\xfe"), status=400)["errorType"] == "Runtime.InvalidEvent"


# --- logs ---------------------------------------------------------------------------------------------

def test_logs_are_captured_per_invocation(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.logs")
    body = inst.invoke({"tag": "T1"}, request_id="rid-1").body
    assert body["result"] == "T1"
    assert msgs(body["logs"]) == ["T1 out", "T1 err", "T1 ctx", "T1 no newline"]
    body2 = inst.invoke({"tag": "T2"}, request_id="rid-2").body
    assert msgs(body2["logs"]) == ["T2 out", "T2 err", "T2 ctx", "T2 no newline"]
    wait_until(lambda: "requestId=rid-2 T2 no newline" in inst.stdout_lines, what="echoed lines")
    for line in ("requestId=rid-1 T1 out", "requestId=rid-1 T1 err", "requestId=rid-1 T1 ctx"):
        assert line in msgs(inst.stdout_lines)


def test_concurrent_invocations_do_not_mix_logs(runtime, start_runtime, tmp_path):
    n, lines = 4, 40
    inst = start_runtime(runtime, code(runtime), {"FAAS_MAX_INFLIGHT": str(n)}, handler="index.barrier_logs")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    replies = {}

    def call(tag):
        replies[tag] = inst.invoke({"tag": tag, "dir": str(barrier), "n": n, "lines": lines}, request_id=f"r-{tag}")

    threads = [threading.Thread(target=call, args=(f"T{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for tag, reply in replies.items():
        assert msgs(reply.body["logs"]) == [f"{tag} {i}" for i in range(lines)]
    assert len(replies) == n
    for i in range(n):
        wait_until(lambda: f"requestId=r-T{i} T{i} {lines - 1}" in msgs(inst.stdout_lines), what="echo")
    for line in msgs(inst.stdout_lines):  # the echo carries each line under its own invocation's id
        if line.startswith("requestId=r-T"):
            rid, text = line.split(" ", 1)
            assert text.startswith(rid.split("-", 1)[1] + " "), line


def test_logs_are_capped(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.big_logs")
    body = inst.invoke({}).body
    assert body["result"] == "done"
    notes = [i for i, line in enumerate(body["logs"]) if "truncated" in line]
    assert len(notes) == 1
    head, tail = msgs(body["logs"][:notes[0]]), msgs(body["logs"][notes[0] + 1:])
    kept = head + tail
    assert kept and all(len(line) == 1023 and line.endswith("x" * 1019) for line in kept)
    assert sum(len(line) + 1 for line in kept) <= 256 * 1024
    # the first lines and the last ones, in order, with what was cut between them
    assert [int(line[:4]) for line in head] == list(range(len(head)))
    assert [int(line[:4]) for line in tail] == list(range(300 - len(tail), 300))
    assert len(kept) < 300 and f"{300 - len(kept)} lines" in body["logs"][notes[0]]


# --- errors -------------------------------------------------------------------------------------------

def test_handler_exception_is_function_error(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.boom")
    err = error_of(inst.invoke({}, request_id="rid-boom"))
    assert err["errorType"] == "Function.Error"
    cls = "ValueError" if runtime == "python3.11" else "TypeError"
    assert err["errorMessage"] == f"{cls}: bad thing" and err["requestId"] == "rid-boom"
    assert err["stackTrace"] and any("index" in frame for frame in err["stackTrace"])
    assert not any("bootstrap" in frame for frame in err["stackTrace"])
    assert inst.health()["state"] == "ready"


def test_result_not_serializable(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.unserializable")
    assert error_of(inst.invoke({}))["errorType"] == "Runtime.ResultNotSerializable"


@pytest.mark.parametrize("kind", sorted(BROKEN["python3.11"]))
def test_init_failure_keeps_process_up_and_answers_every_invoke(runtime, start_runtime, kind):
    files, handler, expected = BROKEN[runtime][kind]
    inst = start_runtime(runtime, files, handler=handler)
    ready = inst.ready()
    assert ready.status == 500, ready
    assert ready.body["state"] == "failed" and ready.body["error"]["errorType"] == expected
    assert inst.health()["state"] == "failed"
    for rid in ("a", "b"):
        err = error_of(inst.invoke({}, request_id=rid))
        assert err["errorType"] == expected and err["requestId"] == rid
    if kind == "raises":
        assert "init failed" in ready.body["error"]["errorMessage"]
        assert "loading" in msgs(ready.body["logs"])
    assert inst.proc.poll() is None


def test_handler_in_a_subdirectory(runtime, start_runtime):
    name, text = next(iter(code(runtime).items()))
    inst = start_runtime(runtime, {f"lib/{name.replace('index', 'app')}": text}, handler="lib/app.hello")
    assert ok_result(inst.invoke({})) == "Hello Serverless"


def test_memory_error_is_function_out_of_memory(runtime, start_runtime):
    # An address-space limit makes the 8 GiB allocation fail inside the handler, as the platform's limit would.
    limit = (1 if runtime == "python3.11" else 4) * 1024 ** 3

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    inst = start_runtime(runtime, code(runtime), handler="index.hog", preexec_fn=limit_memory)
    err = error_of(inst.invoke({}))
    assert err["errorType"] == "Function.OutOfMemory"
    assert inst.health()["state"] == "ready"


# --- capacity, draining, signals ------------------------------------------------------------------------

def start_slow(inst, tmp_path, name="slow", **kw):
    """Start a wait_release invocation in a thread; returns (thread, replies, release path)."""
    started, release = tmp_path / f"{name}.started", tmp_path / f"{name}.release"
    replies = []
    t = threading.Thread(target=lambda: replies.append(
        inst.invoke({"started": str(started), "release": str(release)}, **kw)))
    t.start()
    wait_until(started.exists, what="slow invocation to start")
    return t, replies, release


def test_capacity_refusal_before_user_code(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, code(runtime), handler="index.wait_release")
    t, replies, release = start_slow(inst, tmp_path)
    assert inst.health()["inflight"] == 1
    other = tmp_path / "other.started"
    refused = inst.invoke({"started": str(other), "release": str(release)})
    assert refused.status == 503 and refused.header("x-faas-refused") == "capacity"
    assert refused.body == {"refused": "capacity"}
    assert not other.exists()
    release.touch()
    t.join(30)
    assert ok_result(replies[0]) == "released"
    assert inst.health()["invocations"] == 1


def test_drain_busy_recently_used_then_drained(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, code(runtime), handler="index.wait_release")
    t, replies, release = start_slow(inst, tmp_path)
    busy = inst.request("POST", "/_/drain", {"minIdleMs": 0})
    assert busy.status == 409 and busy.body == {"drained": False, "reason": "busy"}
    release.touch()
    t.join(30)
    assert ok_result(replies[0]) == "released"
    recent = inst.request("POST", "/_/drain", {"minIdleMs": 3_600_000})
    assert recent.status == 409 and recent.body == {"drained": False, "reason": "recently-used"}
    assert inst.health()["state"] == "ready"
    drained = inst.request("POST", "/_/drain", {"minIdleMs": 0})
    assert drained.status == 200 and drained.body == {"drained": True}
    assert inst.wait_exit() == 0


def test_drain_without_body(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    assert inst.request("POST", "/_/drain").body == {"drained": True}
    assert inst.wait_exit() == 0


@pytest.mark.parametrize("rounds", [8])
def test_drain_racing_invokes_never_loses_one(runtime, start_runtime, tmp_path, rounds):
    """Each invoke gets a normal reply or a 503 refusal; refused ones never ran, answered ones did."""
    for r in range(rounds):
        inst = start_runtime(runtime, code(runtime), {"FAAS_MAX_INFLIGHT": "2"}, handler="index.touch")
        outcomes, errors = [], []
        stop = threading.Event()

        def invoker(k):
            conn = inst.connection()
            try:
                i = 0
                while True:
                    i += 1
                    reply = inst.invoke({"path": str(tmp_path / "marker"), "tag": f"{r}-{k}-{i}"},
                                        request_id=f"{r}-{k}-{i}", conn=conn)
                    outcomes.append((f"{r}-{k}-{i}", reply.status, reply.raw))
                    if reply.status == 503:
                        return
            except Exception as e:  # any transport failure would be a lost invocation
                errors.append(repr(e))
            finally:
                conn.close()

        def drainer():
            conn = inst.connection()
            try:
                while not stop.is_set():
                    if inst.request("POST", "/_/drain", {"minIdleMs": 0}, conn=conn).status == 200:
                        return
            finally:
                conn.close()

        workers = [threading.Thread(target=invoker, args=(k,)) for k in range(2)] + [threading.Thread(target=drainer)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        stop.set()
        assert not errors, errors
        assert inst.wait_exit() == 0
        for rid, status, raw in outcomes:
            body = json.loads(raw)
            if status == 200:
                assert body["ok"] is True and body["result"] == "ran"
                # The echo is in the pipe before the process exits; the reader thread may lag under load.
                wait_until(lambda: f"requestId={rid} ran {rid}" in msgs(inst.stdout_lines), what="the echo")
            else:
                assert status == 503 and body == {"refused": "draining"}
                assert not any(line.startswith(f"requestId={rid} ") for line in inst.stdout_lines)


def test_sigterm_finishes_inflight_then_exits_zero(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, code(runtime), {"FAAS_MAX_INFLIGHT": "2"}, handler="index.wait_release")
    t, replies, release = start_slow(inst, tmp_path, deadline_ms=ms_from_now(60_000))
    inst.signal(signal.SIGTERM)
    wait_until(lambda: inst.health()["state"] == "draining", what="draining state")
    ready = inst.ready()
    assert ready.status == 503 and ready.body == {"state": "draining"}
    refused = inst.invoke({"release": str(release)})
    assert refused.status == 503 and refused.header("x-faas-refused") == "draining"
    assert inst.proc.poll() is None
    release.touch()
    t.join(30)
    assert ok_result(replies[0]) == "released"
    assert inst.wait_exit() == 0


def test_sigterm_when_idle_exits_zero(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit() == 0


# --- timeouts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("handler", ["spin", "hang"])
def test_timeout_answers_then_exits(runtime, start_runtime, handler):
    inst = start_runtime(runtime, code(runtime), handler=f"index.{handler}")
    reply = inst.invoke({}, request_id="rid-slow", deadline_ms=ms_from_now(300))
    err = error_of(reply)
    assert err["errorType"] == "Function.Timeout" and err["requestId"] == "rid-slow"
    assert reply.header("x-faas-exiting") == "1"
    if not (runtime == "nodejs20" and handler == "spin"):  # a blocked event loop cannot hand its logs over
        assert msgs(reply.body["logs"]) == [f"before {handler}"]
    inst.wait_exit()


# --- pool instances -------------------------------------------------------------------------------------

def test_pool_specialize_once(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, pool=True)
    assert inst.health()["state"] == "pool"
    ready = inst.ready()
    assert ready.status == 503 and ready.body == {"state": "pool"}
    free = inst.request("GET", "/_/pool")  # the pool service's check: passing while generic
    assert free.status == 200 and free.body == {"state": "pool"}
    refused = inst.invoke({})
    assert refused.status == 503 and refused.header("x-faas-refused") == "starting"
    code_dir = tmp_path / "fn"
    code_dir.mkdir()
    for name, text in code(runtime).items():
        (code_dir / name).write_text(text)
    spec = {"function": "pooled", "version": "5", "handler": "index.ctx", "codeDir": str(code_dir),
            "memoryMb": 512, "timeoutS": 20, "maxInflight": 3, "env": {"GREETING": "from-pool"}}
    reply = inst.request("POST", "/_/specialize", spec)
    assert reply.status == 200 and reply.body["state"] == "ready"
    assert inst.ready().status == 200
    assert inst.request("GET", "/_/pool").status == 503  # left the pool
    h = inst.health()
    assert h["state"] == "ready" and h["function"] == "pooled" and h["version"] == "5" and h["maxInflight"] == 3
    got = ok_result(inst.invoke({"x": 1}))
    assert got["functionName"] == "pooled" and got["env"] == "from-pool" and got["event"] == {"x": 1}
    assert got["memory"] in (512, "512") and 3_000 < got["remaining"] <= 20_000
    again = inst.request("POST", "/_/specialize", spec)
    assert again.status == 409


def test_pool_specialize_with_broken_code(runtime, start_runtime, tmp_path):
    inst = start_runtime(runtime, pool=True)
    files, handler, expected = BROKEN[runtime]["raises"]
    code_dir = tmp_path / "broken"
    code_dir.mkdir()
    for name, text in files.items():
        (code_dir / name).write_text(text)
    reply = inst.request("POST", "/_/specialize", {"function": "f", "handler": handler, "codeDir": str(code_dir)})
    assert reply.status == 200 and reply.body["state"] == "failed"
    assert reply.body["error"]["errorType"] == expected
    assert inst.ready().status == 500
    assert error_of(inst.invoke({}))["errorType"] == expected


def test_specialize_refused_for_an_ordinary_instance(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    assert inst.request("POST", "/_/specialize", {"handler": "index.hello", "codeDir": "/"}).status == 409


# --- starting state, sockets ----------------------------------------------------------------------------

def test_starting_state_until_code_loaded(runtime, start_runtime, tmp_path):
    release = tmp_path / "load.release"
    if runtime == "python3.11":
        files = {"index.py": f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.005)\n"
                             "def handler(event, context):\n    return 'loaded'\n"}
    else:
        files = {"index.js": f"const fs = require('fs');\nwhile (!fs.existsSync({json.dumps(str(release))})) {{}}\n"
                             "exports.handler = async () => 'loaded';\n"}
    inst = start_runtime(runtime, files, wait_loaded=False)
    if runtime == "python3.11":  # Node's loader blocks its event loop, so it cannot answer while loading
        ready = inst.ready()
        assert ready.status == 503 and ready.body == {"state": "starting"}
        refused = inst.invoke({})
        assert refused.status == 503 and refused.header("x-faas-refused") == "starting"
    release.touch()
    ready = inst.ready(wait_ms=20_000)
    assert ready.status == 200 and ready.body["state"] == "ready"
    assert ok_result(inst.invoke({})) == "loaded"


def test_unix_socket(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello", unix_socket=True)
    assert inst.port is None and os.path.exists(inst.socket_path)
    assert ok_result(inst.invoke({})) == "Hello Serverless"
    assert inst.request("POST", "/_/drain").status == 200
    assert inst.wait_exit() == 0
    assert not os.path.exists(inst.socket_path)


# --- Node.js handler forms -----------------------------------------------------------------------------

@pytest.fixture
def node(start_runtime):
    if "nodejs20" not in RUNTIMES:
        pytest.fail("no Node.js runtime: make system-deps installs it")
    return lambda handler, files=None: start_runtime("nodejs20", files or code("nodejs20"), handler=handler)


def test_node_callback_handler(node):
    assert ok_result(node("index.callback").invoke({"n": 3})) == {"via": "callback", "n": 3}


def test_node_callback_error(node):
    err = error_of(node("index.callback_error").invoke({}))
    assert err["errorType"] == "Function.Error" and err["errorMessage"] == "Error: cb failed"


def test_node_es_module(node):
    inst = node("index.handler", {"index.mjs": "export const handler = async (event) => ({ esm: event.v });\n"})
    assert ok_result(inst.invoke({"v": 2})) == {"esm": 2}


def test_chunked_and_expect_continue_bodies(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.kinds")
    conn = inst.connection()
    try:
        conn.request("POST", "/_/invoke", body=iter([b'{"kind":', b' "dict"}']), encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["result"] == {"a": 1, "nested": [1, 2]}
        big = json.dumps({"kind": "string", "pad": "x" * 200_000}).encode()
        conn.request("POST", "/_/invoke", body=big, headers={"Expect": "100-continue"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["result"] == "text"
    finally:
        conn.close()
