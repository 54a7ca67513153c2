"""Lambda's execution model, logging and environment in both bootstraps (runtimes/README.md).

Real bootstrap processes: the handler's thread, asyncio and signals (Python), the root logger /
console records with the request id (text and JSON), the Lambda variables and the ARN.
"""

import json
import re
import threading

import pytest
from conftest import wait_until

PY_THREADS = r'''
import asyncio, signal, threading
LOADED_ON = threading.get_ident()
local = threading.local()
local.value = "set at import"

def where(event, context):
    loop = asyncio.get_event_loop()
    got = loop.run_until_complete(asyncio.sleep(0, result="async ok"))
    out = {"main": threading.current_thread() is threading.main_thread(), "sameAsImport": threading.get_ident() == LOADED_ON,
           "local": getattr(local, "value", None), "async": got, "loop": id(loop)}
    try:
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0)
        out["signal"] = "ok"
    except ValueError as e:
        out["signal"] = str(e)
    return out

def hang(event, context):
    import time
    print("before the hang")
    while True:
        time.sleep(0.01)

def alarm(event, context):
    import signal, time
    class Late(Exception):
        pass
    def on_alarm(*_):
        raise Late()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        while True:
            time.sleep(0.01)
    except Late:
        return "interrupted by SIGALRM"

import threading as _t
gate = _t.Barrier(2, timeout=20)
def pair(event, context):
    loop = asyncio.get_event_loop()
    gate.wait()  # both invocations run at once, each on its own thread with its own loop
    return {"main": threading.current_thread() is threading.main_thread(), "loop": id(loop),
            "async": loop.run_until_complete(asyncio.sleep(0, result="ok"))}
'''

PY_LOGGING = r'''
import logging, os
logger = logging.getLogger()
logger.setLevel(logging.INFO)
logging.getLogger("init").warning("loading")

def handler(event, context):
    logger.info("hello %s", "world")
    logger.debug("not shown at INFO")
    logging.getLogger("app.db").warning("slow", extra={"table": "users"})
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("failed")
    return context.aws_request_id

def env(event, context):
    return {k: os.environ.get(k) for k in event["names"]}
'''

NODE_LOGGING = r'''
exports.handler = async (event, context) => {
  console.log('hello %s', 'world');
  console.debug('debug line');
  console.warn('careful');
  console.error(new Error('bad thing'));
  return context.awsRequestId;
};
exports.env = async (event) => Object.fromEntries(event.names.map((k) => [k, process.env[k] === undefined ? null : process.env[k]]));
'''

LAMBDA_VARS = ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
               "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "TZ", "_HANDLER",
               "AWS_LAMBDA_INITIALIZATION_TYPE"]


def result(reply):
    body = reply.body
    assert body.get("ok") is True, body
    return body["result"]


def test_python_handler_runs_on_the_main_thread_with_concurrency_1(start_runtime):
    inst = start_runtime("python3.11", {"index.py": PY_THREADS}, handler="index.where")
    for _ in range(3):  # every invocation, on fresh and kept connections alike
        got = result(inst.invoke({}))
        assert got["main"] and got["sameAsImport"] and got["local"] == "set at import"
        assert got["async"] == "async ok" and got["signal"] == "ok"


def test_python_signal_based_timeout_in_the_handler(start_runtime):
    inst = start_runtime("python3.11", {"index.py": PY_THREADS}, handler="index.alarm")
    assert result(inst.invoke({})) == "interrupted by SIGALRM"
    assert result(inst.invoke({})) == "interrupted by SIGALRM"


def test_python_timeout_on_the_main_thread_answers_and_exits(start_runtime):
    inst = start_runtime("python3.11", {"index.py": PY_THREADS}, handler="index.hang", env={"FAAS_TIMEOUT_S": "0.3"})
    reply = inst.invoke({})
    body = reply.body
    assert body["error"]["errorType"] == "Function.Timeout" and body["logs"] == ["before the hang"]
    assert any("index.py" in frame for frame in body["error"]["stackTrace"])
    assert reply.header("x-faas-exiting") == "1"
    assert inst.wait_exit() == 0


def test_python_concurrent_handlers_each_get_an_event_loop(start_runtime):
    inst = start_runtime("python3.11", {"index.py": PY_THREADS}, handler="index.pair", env={"FAAS_MAX_INFLIGHT": "2"})
    out = [None, None]

    def call(i):
        out[i] = inst.invoke({})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    a, b = result(out[0]), result(out[1])
    assert not a["main"] and not b["main"]
    assert a["async"] == b["async"] == "ok" and a["loop"] != b["loop"]


TEXT_LINE = r"\[(?P<level>[A-Z]+)\]\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t(?P<rid>[^\t]*)\t(?P<msg>.*)"


def test_python_root_logger_writes_lambda_text_records(start_runtime):
    inst = start_runtime("python3.11", {"index.py": PY_LOGGING})
    init = inst.ready().body
    assert init["state"] == "ready"
    reply = inst.invoke({}, request_id="rid-log-1")
    body = reply.body
    assert body["result"] == "rid-log-1"
    records = [re.fullmatch(TEXT_LINE, line) for line in body["logs"]]
    parsed = [(m["level"], m["rid"], m["msg"]) for m in records if m]
    assert ("INFO", "rid-log-1", "hello world") in parsed
    assert ("WARNING", "rid-log-1", "slow") in parsed
    assert ("ERROR", "rid-log-1", "failed") in parsed
    assert not any("not shown" in line for line in body["logs"])
    assert any(line.startswith("ZeroDivisionError") for line in body["logs"])  # the traceback follows
    # The same lines reach the process's output with the invocation's prefix.
    wait_until(lambda: any(line.startswith("requestId=rid-log-1 [INFO]") for line in inst.stdout_lines))


def test_python_json_log_format_and_level(start_runtime):
    inst = start_runtime("python3.11", {"index.py": PY_LOGGING},
                         env={"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "WARN"})
    body = inst.invoke({}, request_id="rid-json").body
    records = [json.loads(line) for line in body["logs"]]
    # WARN from the environment: the handler's own setLevel(INFO) at import came before? No: the
    # runtime sets the level before the module loads, and the module sets INFO afterwards, as on Lambda.
    by_msg = {r["message"]: r for r in records}
    hello = by_msg["hello world"]
    assert hello["level"] == "INFO" and hello["logger"] == "root" and hello["requestId"] == "rid-json"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", hello["timestamp"])
    slow = by_msg["slow"]
    assert slow["level"] == "WARN" and slow["logger"] == "app.db" and slow["table"] == "users"
    failed = by_msg["failed"]
    assert failed["errorType"] == "ZeroDivisionError" and failed["errorMessage"] == "division by zero"
    assert failed["stackTrace"] and failed["location"].endswith(":handler:14")


def test_python_log_level_from_the_environment_filters(start_runtime):
    code = "import logging\ndef handler(event, context):\n    logging.getLogger('x').info('quiet')\n" \
           "    logging.getLogger('x').error('loud')\n    return 1\n"
    inst = start_runtime("python3.11", {"index.py": code}, env={"AWS_LAMBDA_LOG_LEVEL": "ERROR"})
    logs = inst.invoke({}).body["logs"]
    assert len(logs) == 1 and logs[0].startswith("[ERROR]") and logs[0].endswith("\tloud")


NODE_TEXT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t(?P<rid>[^\t]*)\t(?P<level>[A-Z]+)\t(?P<msg>.*)"


def test_node_console_writes_lambda_text_records(start_runtime):
    inst = start_runtime("nodejs20", {"index.js": NODE_LOGGING})
    body = inst.invoke({}, request_id="rid-node").body
    assert body["result"] == "rid-node"
    parsed = [(m["level"], m["rid"], m["msg"]) for m in (re.fullmatch(NODE_TEXT, line) for line in body["logs"]) if m]
    assert ("INFO", "rid-node", "hello world") in parsed
    assert ("DEBUG", "rid-node", "debug line") in parsed
    assert ("WARN", "rid-node", "careful") in parsed
    assert any(level == "ERROR" and msg.startswith("Error: bad thing") for level, _, msg in parsed)


def test_node_console_json_format_and_level(start_runtime):
    inst = start_runtime("nodejs20", {"index.js": NODE_LOGGING}, env={"AWS_LAMBDA_LOG_FORMAT": "JSON"})
    records = [json.loads(line) for line in inst.invoke({}, request_id="rid-nj").body["logs"]]
    levels = [r["level"] for r in records]
    assert levels == ["INFO", "WARN", "ERROR"]  # JSON without a level: INFO, so DEBUG is dropped
    assert all(r["requestId"] == "rid-nj" for r in records)
    assert records[0]["message"] == "hello world"
    assert records[2]["errorType"] == "Error" and records[2]["errorMessage"] == "bad thing"


@pytest.mark.parametrize("runtime", ["python3.11", "nodejs20"])
def test_lambda_environment_variables(runtime, start_runtime):
    src = {"python3.11": {"index.py": PY_LOGGING}, "nodejs20": {"index.js": NODE_LOGGING}}[runtime]
    inst = start_runtime(runtime, src, handler="index.env",
                         env={"FAAS_FUNCTION_NAME": "orders", "FAAS_FUNCTION_VERSION": "4", "FAAS_MEMORY_MB": "256",
                              "FAAS_INSTANCE_ID": "i-env", "FAAS_REGION": "eu-west-3",
                              "FAAS_ACCOUNT_ID": "123456789012"})
    got = result(inst.invoke({"names": LAMBDA_VARS}))
    assert got["AWS_REGION"] == got["AWS_DEFAULT_REGION"] == "eu-west-3"
    assert got["AWS_LAMBDA_FUNCTION_NAME"] == "orders" and got["AWS_LAMBDA_FUNCTION_VERSION"] == "4"
    assert got["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert got["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/orders"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[4\]i-env", got["AWS_LAMBDA_LOG_STREAM_NAME"])
    assert got["AWS_EXECUTION_ENV"] == "AWS_Lambda_" + runtime
    assert got["LAMBDA_TASK_ROOT"] == str(inst.code_dir) and got["LAMBDA_RUNTIME_DIR"]
    assert got["TZ"] == ":UTC" and got["_HANDLER"] == "index.env"
    assert got["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"


@pytest.mark.parametrize("runtime", ["python3.11", "nodejs20"])
def test_a_functions_own_region_is_kept_and_arn_has_the_account(runtime, start_runtime):
    src = {"python3.11": ("index.py", "import os\ndef handler(e, c):\n    return [os.environ['AWS_REGION'], "
                                      "c.invoked_function_arn]\n"),
           "nodejs20": ("index.js", "exports.handler = async (e, c) => [process.env.AWS_REGION, c.invokedFunctionArn];\n")}
    name, text = src[runtime]
    inst = start_runtime(runtime, {name: text}, env={"AWS_REGION": "ap-south-1", "FAAS_FUNCTION_NAME": "f",
                                                     "FAAS_ACCOUNT_ID": "210987654321"})
    region, arn = result(inst.invoke({}))
    assert region == "ap-south-1"
    assert arn == "arn:aws:lambda:us-east-1:210987654321:function:f" and arn.split(":")[4] == "210987654321"


PY_IMPORTS = r'''
import sys, importlib.util
def handler(event, context):
    return {"path": sys.path, "found": {m: importlib.util.find_spec(m) is not None for m in event["modules"]}}
'''


def test_python_imports_only_the_code_layers_runtime_and_stdlib(start_runtime):
    """The bootstrap runs here on the test's interpreter (a virtualenv with Flask, requests, pytest):
    none of that may be importable by a function."""
    inst = start_runtime("python3.11", {"index.py": PY_IMPORTS, "mine.py": "X = 1\n"},
                         env={"PYTHONPATH": "/srv/extra"})
    got = result(inst.invoke({"modules": ["flask", "requests", "pytest", "granian", "appliance", "mine", "json",
                                          "sqlite3", "asyncio"]}))
    assert got["found"] == {"flask": False, "requests": False, "pytest": False, "granian": False, "appliance": False,
                            "mine": True, "json": True, "sqlite3": True, "asyncio": True}
    path = got["path"]
    assert path[:4] == [str(inst.code_dir), "/opt/python/lib/python3.11/site-packages", "/opt/python", "/srv/extra"]
    assert not any("site-packages" in p or "dist-packages" in p for p in path[2:])
