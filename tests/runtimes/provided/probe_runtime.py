"""A Lambda custom runtime written against the Runtime API with the standard library only: the
contract suite's test bootstrap. What it does per invocation is named by the event's ``do``; what it
does while initialising by ``TEST_INIT``."""

import json
import os
import sys
import time
import urllib.error
import urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"


def call(method, path, body=None, headers=None):
    req = urllib.request.Request(API + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post(path, obj, headers=None):
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return call("POST", path, data, headers)


init = os.environ.get("TEST_INIT", "")
print("init line", flush=True)
if init == "error":
    post("/init/error", {"errorMessage": "config missing", "errorType": "Init.ConfigError",
                         "stackTrace": ["at main"]}, {"Lambda-Runtime-Function-Error-Type": "Init.ConfigError"})
    sys.exit(1)
if init == "exit":
    sys.exit(3)
if init == "sleep":
    time.sleep(float(os.environ.get("TEST_INIT_SLEEP", "0.5")))

while True:
    status, headers, body = call("GET", "/invocation/next")
    if status != 200:
        print("next failed", status, body, flush=True)
        sys.exit(9)
    rid = headers["Lambda-Runtime-Aws-Request-Id"]
    event = json.loads(body)
    do = event.get("do", "echo")
    print(f"handling {do}", flush=True)
    sys.stderr.write("to stderr\n")
    sys.stderr.flush()
    if do == "echo":
        post(f"/invocation/{rid}/response", {"event": event, "headers": headers,
                                             "env": {k: v for k, v in os.environ.items()
                                                     if k.startswith(("AWS_", "LAMBDA_", "_HANDLER", "TZ"))},
                                             "cwd": os.getcwd()})
    elif do == "text":
        post(f"/invocation/{rid}/response", b"plain words")
    elif do == "error":
        post(f"/invocation/{rid}/error", {"errorMessage": "bad thing", "errorType": "HandlerError",
                                          "stackTrace": ["line 1", "line 2"]},
             {"Lambda-Runtime-Function-Error-Type": "HandlerError"})
    elif do == "error-header-only":
        post(f"/invocation/{rid}/error", b"not json", {"Lambda-Runtime-Function-Error-Type": "Custom.Type"})
    elif do == "exit":
        sys.exit(int(event.get("code", 2)))
    elif do == "sleep":
        time.sleep(event["seconds"])
        post(f"/invocation/{rid}/response", {"slept": True})
    elif do == "big":
        st, _, b = post(f"/invocation/{rid}/response", b'"' + b"x" * event["size"] + b'"')
        print("big answered", st, b.decode(), flush=True)
    elif do == "probe":
        # every answer the Runtime API gives to a misbehaving runtime, then a good response
        out = {"wrong_id": post("/invocation/not-the-id/response", {"a": 1})[0:3:2],
               "init_error_late": post("/init/error", {"errorMessage": "late"})[0:3:2],
               "unknown_path": call("GET", "/nope")[0:3:2]}
        out = {k: [v[0], json.loads(v[1])] for k, v in out.items()}
        st, _, b = post(f"/invocation/{rid}/response", out)
        again = post(f"/invocation/{rid}/response", {"twice": True})
        print("second response", again[0], flush=True)
    elif do == "chunked":
        import http.client
        host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
        c = http.client.HTTPConnection(host, int(port))
        c.request("POST", f"/2018-06-01/runtime/invocation/{rid}/response", body=iter([b'{"chun', b'ked": true}']),
                  encode_chunked=True)
        c.getresponse().read()
    elif do == "hoard":   # hold many connections to the Runtime API open: the runtime bounds them
        import socket
        host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
        held, answers = [], []
        for _ in range(event["n"]):
            s = socket.create_connection((host, int(port)), timeout=5)
            held.append(s)
        s = held[-1]
        s.sendall(b"GET /2018-06-01/runtime/nope HTTP/1.1\r\nHost: x\r\n\r\n")
        answers.append(s.recv(100).decode("latin-1").split("\r\n")[0])
        for s in held:
            s.close()
        time.sleep(0.2)
        post(f"/invocation/{rid}/response", {"last": answers[0]})
    elif do == "deadline":
        post(f"/invocation/{rid}/response", {"deadline": int(headers["Lambda-Runtime-Deadline-Ms"]),
                                             "now": int(time.time() * 1000)})
    elif do == "try":
        # sandbox escape attempts (tests/integration/test_provided_examples.py): each says what happened
        import socket
        op, arg = event["op"], event.get("arg")
        try:
            if op == "read":
                with open(arg, "rb") as f:
                    value = f.read(100).decode("latin-1")
            elif op == "write":
                with open(arg, "w") as f:
                    f.write("escaped")
                value = arg
            elif op == "listdir":
                value = sorted(os.listdir(arg))
            elif op == "connect":
                s = socket.create_connection(("127.0.0.1", int(arg)), timeout=3)
                s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
                s.settimeout(3)
                try:
                    value = s.recv(200).decode("latin-1")
                except TimeoutError:
                    value = "connected, no answer"
                s.close()
            elif op == "diag":   # the runtime's own cheap peer check, run here in the sandbox
                sys.path.insert(0, "/var/runtime")
                import bootstrap as runtime_module
                host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
                s = socket.create_connection((host, int(port)), timeout=3)
                value = runtime_module._sock_diag_uid(s.getsockname()[1], int(port))
                s.close()
            elif op == "uid":
                value = [os.getuid(), os.getgid()]
            out = {"ok": True, "value": value}
        except OSError as e:
            out = {"ok": False, "error": type(e).__name__, "errno": e.errno}
        post(f"/invocation/{rid}/response", out)
