"""User code that fails to import, raises, hangs or eats memory: a clear error, others unharmed."""

import threading

import pytest

from .conftest import HELLO, wait_for


def invoke(r, name, event=None, timeout=30):
    return r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json=event or {}, timeout=timeout)


@pytest.mark.parametrize("files, handler, error_type", [
    ({"index.py": "import not_a_module_anywhere\ndef handler(event, context):\n    return 1\n"}, "index.handler",
     "Runtime.ImportModuleError"),
    # The handler's own module is compiled at upload; a module it imports is only warned about.
    ({"index.py": "import helper\ndef handler(event, context):\n    return 1\n",
      "helper.py": "def broken(event, context)\n    return 1\n"}, "index.handler", "Runtime.UserCodeSyntaxError"),
    # Bound in a branch the upload check cannot rule out, never at run time.
    ({"index.py": "if False:\n    def handler(event, context):\n        return 1\n"}, "index.handler",
     "Runtime.HandlerNotFound"),
    # The handler setting changed after the upload to a module the package does not have.
    ({"main.py": HELLO}, "main.handler>index.handler", "Runtime.ImportModuleError"),
    ({"index.py": "raise RuntimeError('init failed')\ndef handler(event, context):\n    return 1\n"},
     "index.handler", "Runtime.ImportModuleError"),
])
def test_code_that_fails_to_load_gets_a_structured_error(appliance, files, handler, error_type):
    handler, _, later = handler.partition(">")
    name = appliance.deploy(files, handler=handler)
    if later:
        appliance.api.update_function(name, handler=later)
    resp = invoke(appliance, name)
    assert resp.status_code == 502, resp.text
    err = resp.json()["error"]
    assert err["code"] == error_type
    fn = err["function"]
    assert fn["errorType"] == error_type and fn["errorMessage"] and fn["requestId"] == resp.headers["X-Request-Id"]
    assert isinstance(fn["stackTrace"], list)


def test_an_exception_in_the_handler_is_a_function_error_with_its_trace(appliance):
    name = appliance.deploy({"index.py": "def handler(event, context):\n    raise ValueError('bad input')\n"})
    resp = invoke(appliance, name)
    assert resp.status_code == 502
    fn = resp.json()["error"]["function"]
    assert fn["errorType"] == "Function.Error" and "ValueError" in fn["errorMessage"] and "bad input" in fn["errorMessage"]
    assert any("index.py" in line for line in fn["stackTrace"])
    assert not any("bootstrap.py" in line for line in fn["stackTrace"])
    # the instance survives a handler exception
    before = [i["id"] for i in appliance.instances(name)]
    invoke(appliance, name)
    assert [i["id"] for i in appliance.instances(name)] == before


def test_a_hanging_handler_times_out_and_its_instance_is_replaced(appliance):
    src = ("import time\ndef handler(event, context):\n    if event.get('hang'):\n        while True:\n"
           "            time.sleep(0.01)\n    return 'ok'\n")
    name = appliance.deploy({"index.py": src}, timeout_s=1)
    assert invoke(appliance, name).json() == "ok"
    first = appliance.instances(name)[0]["id"]
    resp = invoke(appliance, name, {"hang": True})
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "Function.Timeout"
    wait_for(lambda: first not in [i["id"] for i in appliance.instances(name)], 10, message="the instance to go")
    # the replacement is started either by this request (a cold start) or ahead of it by the scaler,
    # which still wants one instance for the recent traffic: either way a new instance serves it
    resp = invoke(appliance, name)
    assert resp.status_code == 200 and resp.json() == "ok"
    now = [i["id"] for i in appliance.instances(name)]
    assert now and first not in now


def test_a_memory_hog_gets_out_of_memory_and_others_keep_serving(appliance):
    hog = appliance.deploy({"index.py": "def handler(event, context):\n    x = bytearray(2 << 30)\n    return len(x)\n"},
                           memory_mb=128)
    hello = appliance.deploy()
    resp = invoke(appliance, hog)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "Function.OutOfMemory"
    assert invoke(appliance, hello).json() == "Hello Serverless"


def test_a_busy_broken_function_does_not_stop_a_healthy_one(appliance):
    broken = appliance.deploy({"index.py": "import time\ndef handler(e, c):\n    time.sleep(0.3)\n    raise KeyError('x')\n"},
                              max_instances=2)
    hello = appliance.deploy()
    results = []
    threads = [threading.Thread(target=lambda: results.append(invoke(appliance, broken).status_code)) for _ in range(6)]
    for t in threads:
        t.start()
    for _ in range(5):
        assert invoke(appliance, hello).status_code == 200
    for t in threads:
        t.join(30)
    assert results == [502] * 6


def test_an_instance_that_stops_answering_is_killed_and_billed_for_the_timeout(appliance):
    """Through the edge's event loop: a handler stuck in one C call that never lets go of the
    GIL freezes its whole instance, so even the runtime's own timeout reply cannot be sent. Past
    timeout_s plus the grace, the edge answers 504, kills the instance and bills the invocation
    for its timeout; the next request is served."""
    src = ("def handler(event, context):\n"
           "    if (event.get('queryStringParameters') or {}).get('freeze'):\n"
           "        sum(range(10 ** 15))  # one C loop: the interpreter never switches threads\n"
           "    return 'ok'\n")
    name = appliance.deploy({"index.py": src}, timeout_s=1, trigger=("GET", "/freezes"))
    assert appliance.get("/freezes").text == "ok"
    first = appliance.instances(name)[0]["id"]
    resp = appliance.get("/freezes?freeze=1")
    assert resp.status_code == 504, resp.text
    err = resp.json()["error"]
    assert err["code"] == "Function.Timeout" and "its instance was stopped" in err["message"]
    wait_for(lambda: first not in [i["id"] for i in appliance.instances(name)], 10, message="the frozen instance to go")
    rid = resp.headers["X-Request-Id"]
    rec = wait_for(lambda: [r for r in appliance.api.invocations(name) if r["request_id"] == rid], 10,
                   message="the record of the frozen request")[0]
    assert rec["status"] == "timeout" and rec["run_ms"] == 1000.0
    assert rec["billed_gb_s"] == pytest.approx(128 / 1024 * 1.0)
    assert appliance.get("/freezes").text == "ok"
