"""The ``provided`` runtime (alias ``provided.al2023``): any language, through the Lambda Runtime API.

The function's package holds an executable ``bootstrap`` (a shell script, a Go or Java program,
AWS's own runtime interface clients...). This process serves the platform's runtime contract
(runtimes/README.md: ``/_/invoke``, ``/_/ready``, ``/_/drain``, ...) on its usual socket, and the
Lambda Runtime API (``/2018-06-01/runtime/...``) on ``127.0.0.1:<port>`` to the ``bootstrap`` it runs
as its child, with ``AWS_LAMBDA_RUNTIME_API=127.0.0.1:<port>`` as on Lambda. An invoke from the edge
becomes the answer to the bootstrap's ``GET .../invocation/next``; the bootstrap's ``POST
.../invocation/<id>/response`` (or ``/error``) becomes the invoke's reply.

Why the shape it has:

* Standard library only (``http.server``), like the other bootstraps: nothing here can clash with
  what a function brings, and it runs unchanged under the sandbox, under plain processes and in
  cluster mode. The extra hop costs a loopback round trip per invocation, which is what Lambda's own
  Runtime API costs too.
* One bootstrap process, one invocation at a time (Lambda's model): a ``provided`` function's
  ``concurrency`` is 1, and a second invoke is refused (``503 capacity``) before it reaches anyone.
* The Runtime API endpoint serves this instance only. Sandboxed, the instance runs as a host uid of its
  own and the host's packet filter (appliance/instances/netfilter.py) lets a TCP connection to a local
  address through only when the listening socket belongs to the connecting socket's uid, so no other
  instance can reach it. On top of that (and where that filter is not installed) each connection's
  peer socket is looked up (one ``sock_diag`` netlink query, about 15 us; scanning ``/proc/net/tcp``
  took 12.5 ms on a host with 6,700 sockets): only a socket owned by this process's uid is served,
  anything else gets ``403`` and is closed. In an instance without network the loopback interface of
  its own network namespace (brought up by the sandbox) carries it.
* In the sandbox it runs in the runtime zygote's preloaded interpreter (``appliance/instances/zygote.py``
  loads this file next to the Python bootstrap), so a cold start pays no interpreter start for it:
  ``runtime_init`` 2-5 ms instead of 40-190 ms on the loaded 2-core build machine. Importing it has
  no side effects; ``serve(config_from_env(environ))`` runs it.
* Init is the time from starting ``bootstrap`` to its first ``GET .../next`` (the cold start's
  ``user_init`` phase, ``initDurationMs``). A ``POST /runtime/init/error``, or the bootstrap exiting
  before that first call, fails the instance with that error (``/_/ready`` 500, every invoke answers
  it), as a Python import error does.
* The bootstrap exiting while it holds an invocation answers it ``Runtime.ExitError``; then, like a
  timed-out instance, this one answers with ``X-Faas-Exiting: 1`` and exits, and the platform starts a
  fresh one for the next request (Lambda re-initialises the environment too).
* What the bootstrap (and its children) write to stdout and stderr is read from one pipe and
  attributed to the invocation it holds, as Lambda's logs are: before the response is read, the pipe
  is drained, so every line written before answering belongs to that invocation.
"""

import errno
import http.server
import json
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time

RUNTIME = "provided"
API_PREFIX = "/2018-06-01"
#: Lambda's limit of a synchronous response (bytes), with its error type and message.
MAX_RESPONSE = 6291556
MAX_EVENT = 32 * 1024 * 1024
#: Error documents and init errors a bootstrap may post.
MAX_ERROR_BODY = 1024 * 1024
LOG_CAP = 256 * 1024
#: Connections the bootstrap may hold open to its Runtime API at once (one thread each); more are refused.
API_MAX_CONNECTIONS = 64
#: Bytes of a refused (too large) body read and dropped before the connection closes.
DISCARD_MAX = 64 * 1024 * 1024
DRAIN_GRACE_S = 2.0
BOOTSTRAP_NAMES = ("bootstrap",)

POOL, STARTING, READY, FAILED, DRAINING = "pool", "starting", "ready", "failed", "draining"


def config_from_env(environ):
    """The settings of runtimes/README.md section 1 (the same keys as the Python bootstrap's)."""
    e = environ
    fd = e.get("FAAS_READY_FD")
    return {
        "handler": e.get("FAAS_HANDLER") or "",
        "code_dir": e.get("FAAS_CODE_DIR") or None,
        "host": e.get("FAAS_HOST") or "127.0.0.1",
        "port": int(e.get("FAAS_PORT") or e.get("NOMAD_PORT_http") or "8080"),
        "socket": e.get("FAAS_SOCKET") or None,
        "function_name": e.get("FAAS_FUNCTION_NAME") or "function",
        "function_version": e.get("FAAS_FUNCTION_VERSION") or "1",
        "memory_mb": int(e.get("FAAS_MEMORY_MB") or 128),
        "timeout_s": float(e.get("FAAS_TIMEOUT_S") or 3),
        "instance_id": e.get("FAAS_INSTANCE_ID") or e.get("NOMAD_ALLOC_ID") or "i-" + os.urandom(6).hex(),
        "pool": e.get("FAAS_POOL") in ("1", "true", "yes"),
        "ready_fd": int(fd) if fd else None,
        # cluster mode (runtimes/README.md section 6): read once, a function's own variables cannot redirect them
        "consul_addr": e.get("CONSUL_HTTP_ADDR") or None,
        "consul_token": e.get("CONSUL_HTTP_TOKEN") or "",
        "code_fetcher": e.get("FAAS_CODE_FETCHER") or None,
    }


def _runtime_dir():
    """Where this runtime is: /var/runtime in a sandbox (even when a zygote loaded it from the host's
    path), its own directory otherwise."""
    if os.path.isfile("/var/runtime/bootstrap.py"):
        return "/var/runtime"
    return os.path.dirname(os.path.abspath(__file__))


def _new_request_id():
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _trace_id():
    return f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};Parent={os.urandom(8).hex()};Sampled=0"


def _error(error_type, message, request_id=None, stack=()):
    return {"errorType": error_type, "errorMessage": message, "requestId": request_id, "stackTrace": list(stack)}


def _exit_reason(status):
    """Lambda's wording for how the bootstrap ended (``os.waitstatus_to_exitcode`` convention)."""
    if status < 0:
        try:
            name = signal.Signals(-status).name[3:].lower()
        except ValueError:
            name = str(-status)
        return f"signal: {'killed' if name == 'kill' else name}"
    return f"exit status {status}"


# --- logs ---------------------------------------------------------------------------------------------

class _Capture:
    """Lines of one invocation (or of init), capped at LOG_CAP bytes, echoed to fd 1 with a prefix."""

    def __init__(self, prefix):
        self.prefix, self.lines, self.size, self.cut = prefix, [], 0, 0

    def line(self, text):
        n = len(text.encode("utf-8", "replace")) + 1
        if self.cut or self.size + n > LOG_CAP:
            self.cut += n
            return
        self.size += n
        self.lines.append(text)
        _echo(self.prefix + text)

    def finish(self):
        if self.cut:
            note = f"[faas] log truncated: {self.cut} more bytes were not kept (limit {LOG_CAP} bytes per invocation)"
            self.lines.append(note)
            _echo(self.prefix + note)
            self.cut, self.size = 0, LOG_CAP + 1
        return list(self.lines)


def _echo(text):
    try:
        os.write(1, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class _LogPipe:
    """The read end of the bootstrap's stdout and stderr. A thread reads it as it fills; :meth:`sync`
    reads what is already written, so a response is only settled with every line written before it."""

    def __init__(self, fd, sink):
        self.fd, self.sink = fd, sink   # sink(): the capture lines go to now (None: fd 1 as they are)
        self.lock = threading.Lock()
        self.partial = b""
        self.closed = False
        os.set_blocking(fd, False)
        threading.Thread(target=self._loop, daemon=True, name="bootstrap-logs").start()

    def _loop(self):
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP)
        while not self.closed:
            poller.poll()
            if not self.sync():
                return

    def sync(self):
        """Read everything available now; False at end of file."""
        with self.lock:
            while True:
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    data = b""
                if not data:
                    self._flush_partial()
                    self.closed = True
                    return False
                self._feed(data)

    def flush(self):
        with self.lock:
            self._flush_partial()

    def _feed(self, data):
        parts = (self.partial + data).split(b"\n")
        self.partial = parts.pop()
        if len(self.partial) > LOG_CAP:   # a line without end: cut it into pieces
            parts.append(self.partial)
            self.partial = b""
        for raw in parts:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))

    def _flush_partial(self):
        if self.partial:
            p, self.partial = self.partial, b""
            self._line(p.decode("utf-8", "replace"))

    def _line(self, text):
        cap = self.sink()
        if cap is None:
            _echo(text)
        else:
            cap.line(text)


# --- invocations ------------------------------------------------------------------------------------

class _Invocation:
    def __init__(self, rid, event, deadline, headers):
        self.rid, self.event, self.deadline = rid, event, deadline
        self.mono_deadline = time.monotonic() + (deadline - time.time())
        self.client_context = headers.get("X-Client-Context")
        self.cognito_identity = headers.get("X-Cognito-Identity")
        self.trace_id = headers.get("X-Amzn-Trace-Id") or _trace_id()
        self.capture = _Capture(f"requestId={rid} ")
        self.delivered = False
        self.done = False
        self.result = None    # JSON text of the result
        self.error = None
        self.t0 = time.monotonic()


class _Instance:
    def __init__(self, config):
        self.cfg = dict(config)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.state = POOL if self.cfg["pool"] else STARTING
        self.current = None
        self.invocations = 0
        self.idle_since = time.monotonic()
        self.init_error = None
        self.init_logs = []
        self.init_capture = _Capture("")
        self.init_ms = None
        self.t_spawn = None
        self.child_pid = None
        self.child_status = None
        self.conns = 0
        self.api_conns = 0
        self.jobs = []
        self.wake_r, self.wake_w = os.pipe()
        self.logs = None
        self.platform = None
        self.api = None

    # --- process life ---------------------------------------------------------------------------------

    def run(self):
        self.api = _ApiServer(self)
        self.platform = _platform_server(self)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda *_: self._post(self._on_sigterm))
        fd = self.cfg["ready_fd"]
        if fd is not None:
            where = {"socket": self.cfg["socket"]} if self.cfg["socket"] else {"port": self.platform.server_address[1]}
            try:
                os.write(fd, (json.dumps(where) + "\n").encode())
                os.close(fd)
            except OSError:
                pass
        threading.Thread(target=self.api.serve_forever, daemon=True, name="runtime-api").start()
        threading.Thread(target=self.platform.serve_forever, daemon=True, name="platform").start()
        if not self.cfg["pool"]:
            self._start_bootstrap()
        try:
            while True:
                try:
                    os.read(self.wake_r, 512)
                except InterruptedError:
                    pass
                while self.jobs:
                    if self.jobs.pop(0)():
                        return 0
        finally:
            self._close()

    def _post(self, job):
        self.jobs.append(job)
        try:
            os.write(self.wake_w, b"j")
        except BlockingIOError:
            pass

    def _close(self):
        self._kill_child()
        sid = getattr(self, "consul_service_id", None)
        if sid:
            try:
                _consul(self.cfg, "PUT", f"/v1/agent/service/deregister/{sid}")
            except Exception:  # noqa: BLE001 - Consul reaps it after DeregisterCriticalServiceAfter
                pass
        for server in (self.platform, self.api):
            try:
                server.socket.close()
            except OSError:
                pass
        if self.cfg["socket"]:
            try:
                os.unlink(self.cfg["socket"])
            except OSError:
                pass
        if self.logs is not None:
            self.logs.sync()
            self.logs.flush()

    def _kill_child(self):
        """Kill the bootstrap's session: the bootstrap and whatever it started (in a sandbox, this
        process is pid 1 of its own pid namespace, so its exit ends them anyway)."""
        pid = self.child_pid
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if self.child_status is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _on_sigterm(self):
        with self.lock:
            if self.state != DRAINING:
                self._set_state(DRAINING)
            idle = self.current is None
        return self._finish() if idle else False

    def _finish(self):
        """Drained: give clients a moment to close their connections, then stop (main thread)."""
        end = time.monotonic() + DRAIN_GRACE_S
        with self.lock:
            self.changed.wait_for(lambda: self.conns == 0, max(0.0, end - time.monotonic()))
        return True

    def _set_state(self, state):  # lock held
        self.state = state
        self.changed.notify_all()

    # --- the bootstrap ----------------------------------------------------------------------------------

    def _entrypoint(self):
        """The executable to run: ``bootstrap`` in the code directory, else the file the handler names."""
        code_dir = os.path.abspath(self.cfg["code_dir"] or ".")
        names = list(BOOTSTRAP_NAMES)
        handler = self.cfg["handler"]
        if handler and ".." not in handler and not handler.startswith("/"):
            names.append(handler)
        for name in names:
            path = os.path.join(code_dir, name)
            if os.path.isfile(path):
                return path, names
        return None, names

    def _child_env(self):
        cfg = self.cfg
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
        code_dir = os.path.abspath(cfg["code_dir"] or ".")
        lambda_env = {
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.api.server_address[1]}",
            "_HANDLER": cfg["handler"],
            "LAMBDA_TASK_ROOT": code_dir,
            "LAMBDA_RUNTIME_DIR": _runtime_dir(),
            "AWS_LAMBDA_FUNCTION_NAME": cfg["function_name"],
            "AWS_LAMBDA_FUNCTION_VERSION": str(cfg["function_version"]),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg["memory_mb"]),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/faas/{cfg['function_name']}",
            "AWS_LAMBDA_LOG_STREAM_NAME": cfg["instance_id"],
            "AWS_EXECUTION_ENV": "AWS_Lambda_provided",
        }
        for k, v in lambda_env.items():
            if k in ("AWS_LAMBDA_RUNTIME_API", "_HANDLER", "LAMBDA_TASK_ROOT"):
                env[k] = v
            else:
                env.setdefault(k, v)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env.setdefault("TZ", ":UTC")
        return env

    def _start_bootstrap(self):
        """Start the function's ``bootstrap`` with the Runtime API's address; init runs until its first
        ``GET .../next``."""
        path, names = self._entrypoint()
        if path is None:
            where = os.path.abspath(self.cfg["code_dir"] or ".")
            self._fail_init(_error("Runtime.InvalidEntrypoint",
                                   f"Couldn't find valid bootstrap(s): {[os.path.join(where, n) for n in names]}"))
            return
        r, w = os.pipe()
        try:
            os.chdir(os.path.dirname(path) if os.path.basename(path) in BOOTSTRAP_NAMES else
                     os.path.abspath(self.cfg["code_dir"]))
        except OSError:
            pass
        self.logs = _LogPipe(r, self._log_sink)
        self.t_spawn = time.monotonic()
        try:
            pid = os.posix_spawn(path, [path], self._child_env(), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)])
        except OSError as e:
            os.close(w)
            why = {errno.EACCES: "permission denied (is it executable?)",
                   errno.ENOEXEC: "exec format error (a script needs a #! line)"}.get(e.errno, e.strerror)
            self._fail_init(_error("Runtime.InvalidEntrypoint", f"Couldn't start {path}: {why}"))
            return
        os.close(w)
        with self.lock:
            self.child_pid = pid
        threading.Thread(target=self._reap, args=(pid,), daemon=True, name="reaper").start()

    def _log_sink(self):
        cur = self.current
        if cur is not None and not cur.done:
            return cur.capture
        if self.state == STARTING:
            return self.init_capture
        return None

    def _reap(self, pid):
        """Wait for the bootstrap; as pid 1 of a sandbox, also reap the orphans its children leave."""
        while True:
            try:
                got, status = os.waitpid(-1 if os.getpid() == 1 else pid, 0)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if got == pid:
                self._bootstrap_exited(os.waitstatus_to_exitcode(status))
                if os.getpid() != 1:
                    return

    def _bootstrap_exited(self, status):
        if self.logs is not None:
            self.logs.sync()
            self.logs.flush()
        reason = _exit_reason(status)
        with self.lock:
            self.child_status = status
            state, cur = self.state, self.current
            if state == STARTING:
                err = self.init_error or _error("Runtime.ExitError",
                                                f"Runtime exited with error: {reason}"
                                                if status else "Runtime exited without providing a reason")
                if self.init_error:
                    err["errorMessage"] += f" (the runtime then exited: {reason})"
                self._fail_init_locked(err)
                return
            if cur is not None and not cur.done:
                cur.error = _error("Runtime.ExitError",
                                   f"RequestId: {cur.rid} Error: Runtime exited with error: {reason}"
                                   if status else f"RequestId: {cur.rid} Error: Runtime exited without providing a reason",
                                   cur.rid)
                cur.done = True
            if state in (READY, DRAINING):
                self._set_state(DRAINING)
                if cur is None:
                    self._post(self._finish)
            self.changed.notify_all()
        _echo(f"[faas] the bootstrap exited ({reason}); this instance stops")

    def _fail_init(self, err):
        with self.lock:
            self._fail_init_locked(err)

    def _fail_init_locked(self, err):
        if self.state not in (STARTING, POOL):
            return
        self.init_error = err
        self.init_logs = self.init_capture.finish()
        self.init_ms = round((time.monotonic() - (self.t_spawn or time.monotonic())) * 1000, 3)
        self.idle_since = time.monotonic()
        self._set_state(FAILED)

    # --- Runtime API (called by the bootstrap) -------------------------------------------------------

    def api_next(self, handler):
        with self.lock:
            if self.state == STARTING:   # the first /next: init is over
                self.init_ms = round((time.monotonic() - self.t_spawn) * 1000, 3)
                self.init_logs = self.init_capture.finish()
                self.idle_since = time.monotonic()
                self._set_state(READY)
            while True:
                if self.state == FAILED:
                    return 500, {"errorType": "Runtime.InvalidState",
                                 "errorMessage": "init failed; this runtime will not get invocations"}, {}
                cur = self.current
                if cur is not None and not cur.delivered and not cur.done:
                    cur.delivered = True
                    break
                self.changed.wait()
        headers = {"Lambda-Runtime-Aws-Request-Id": cur.rid,
                   "Lambda-Runtime-Deadline-Ms": str(int(cur.deadline * 1000)),
                   "Lambda-Runtime-Invoked-Function-Arn":
                       f"arn:faas:local:function:{self.cfg['function_name']}:{self.cfg['function_version']}",
                   "Lambda-Runtime-Trace-Id": cur.trace_id}
        if cur.client_context:
            headers["Lambda-Runtime-Client-Context"] = cur.client_context
        if cur.cognito_identity:
            headers["Lambda-Runtime-Cognito-Identity"] = cur.cognito_identity
        return 200, cur.event, headers

    def _held(self, rid):
        cur = self.current
        if cur is None or cur.rid != rid or not cur.delivered or cur.done:
            return None
        return cur

    def api_response(self, rid, body, too_large):
        if self.logs is not None:
            self.logs.sync()
        with self.lock:
            cur = self._held(rid)
            if cur is None:
                return 400, {"errorType": "InvalidRequestID", "errorMessage": "Invalid request ID"}
            if too_large:
                cur.error = _error("Function.ResponseSizeTooLarge",
                                   f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).",
                                   rid)
                answer = (413, {"errorType": "RequestEntityTooLarge",
                                "errorMessage": f"Exceeded maximum allowed payload size ({MAX_RESPONSE} bytes)."})
            else:
                cur.result = _result_json(body)
                answer = (202, {"status": "OK"})
            cur.done = True
            self.changed.notify_all()
        return answer

    def api_error(self, rid, body, header_type):
        if self.logs is not None:
            self.logs.sync()
        with self.lock:
            cur = self._held(rid)
            if cur is None:
                return 400, {"errorType": "InvalidRequestID", "errorMessage": "Invalid request ID"}
            cur.error = _posted_error(body, header_type, rid)
            cur.done = True
            self.changed.notify_all()
        return 202, {"status": "OK"}

    def api_init_error(self, body, header_type):
        with self.lock:
            if self.state != STARTING:
                return 403, {"errorType": "InvalidStateTransition",
                             "errorMessage": "State transition from Ready to InitError failed for runtime. "
                                             "Error: init error reported after init"}
            err = _posted_error(body, header_type, None)
        if self.logs is not None:
            self.logs.sync()
        self._fail_init(err)
        return 202, {"status": "OK"}

    # --- platform contract (called by the edge) ------------------------------------------------------

    def health(self):
        cfg = self.cfg
        with self.lock:
            busy = self.current is not None
            return {"state": self.state, "instanceId": cfg["instance_id"], "function": cfg["function_name"],
                    "version": cfg["function_version"], "runtime": RUNTIME, "inflight": int(busy), "maxInflight": 1,
                    "invocations": self.invocations,
                    "idleMs": 0 if busy else int((time.monotonic() - self.idle_since) * 1000),
                    "initDurationMs": self.init_ms, "pid": os.getpid(), "bootstrapPid": self.child_pid}

    def ready(self, wait_s):
        with self.lock:
            if wait_s and self.state == STARTING:
                self.changed.wait_for(lambda: self.state != STARTING, wait_s)
            state = self.state
            if state == READY:
                return 200, {"state": state, "initDurationMs": self.init_ms}
            if state == FAILED:
                return 500, {"state": state, "error": self.init_error, "initDurationMs": self.init_ms,
                             "logs": self.init_logs}
            return 503, {"state": state}

    def drain(self, min_idle_ms):
        with self.lock:
            if self.state == DRAINING:
                return 200, {"drained": True}
            if self.current is not None:
                return 409, {"drained": False, "reason": "busy"}
            if (time.monotonic() - self.idle_since) * 1000 < min_idle_ms:
                return 409, {"drained": False, "reason": "recently-used"}
            self._set_state(DRAINING)
        self._post(self._finish)
        return 200, {"drained": True}

    def specialize(self, s):
        env = {str(k): str(v) for k, v in (s.get("env") or {}).items()}
        with self.lock:
            if self.state != POOL:
                return 409, {"error": "already specialized", "state": self.state}
            self.cfg.update({"function_name": str(s.get("function") or "function"),
                             "function_version": str(s.get("version") or "1"),
                             "handler": str(s.get("handler") or ""), "code_dir": s.get("codeDir"),
                             "memory_mb": int(s.get("memoryMb") or self.cfg["memory_mb"]),
                             "timeout_s": float(s.get("timeoutS") or self.cfg["timeout_s"])})
            if s.get("instanceId"):
                self.cfg["instance_id"] = str(s["instanceId"])
            self._set_state(STARTING)   # accepted once: it has left the pool
        if not self.cfg["code_dir"]:
            try:
                self.cfg["code_dir"] = _fetch_code(self.cfg, s.get("codeUrl"), s.get("codeSha256"))
            except Exception as e:  # noqa: BLE001 - any fetch failure: leave, the platform starts it elsewhere
                return self._leave(502, f"code fetch failed: {type(e).__name__}: {e}")
        os.environ.update(env)
        self._start_bootstrap()
        with self.lock:
            self.changed.wait_for(lambda: self.state != STARTING)
            out = {"state": self.state, "function": self.cfg["function_name"],
                   "version": self.cfg["function_version"], "initDurationMs": self.init_ms}
            if self.state == FAILED:
                out["error"], out["logs"] = self.init_error, self.init_logs
        if out["state"] == READY and self.cfg.get("consul_addr"):
            try:
                out["registered"] = self._register()
            except Exception as e:  # noqa: BLE001 - unlisted, it would serve nobody: leave
                return self._leave(502, f"Consul registration failed: {type(e).__name__}: {e}")
        return 200, out

    def _leave(self, status, message):
        with self.lock:
            self._set_state(DRAINING)
        self._post(self._finish)
        return status, {"error": message}

    def _register(self):
        """A specialised pool instance lists itself as ``fn-<function>`` through the node's Consul agent
        (runtimes/README.md section 6), as the other bootstraps do."""
        cfg = self.cfg
        host, port = cfg["host"], self.platform.server_address[1]
        name, version, iid = cfg["function_name"], cfg["function_version"], cfg["instance_id"]
        sid = f"fn-{name}-{iid}"
        _consul(cfg, "PUT", "/v1/agent/service/register", {
            "ID": sid, "Name": f"fn-{name}", "Address": host, "Port": port,
            "Tags": ["faas", f"function={name}", f"version={version}", f"instance={iid}", "source=pool"],
            "Meta": {"function": name, "version": version, "instance_id": iid, "runtime": RUNTIME,
                     "concurrency": "1", "source": "pool"},
            "Check": {"CheckID": f"{sid}-ready", "Name": "ready", "HTTP": f"http://{host}:{port}/_/ready",
                      "Interval": os.environ.get("FAAS_CHECK_INTERVAL") or "2s", "Timeout": "1s",
                      "DeregisterCriticalServiceAfter": "1m"}})
        self.consul_service_id = sid
        return sid

    def invoke(self, headers, body):
        """(status, reply object, extra headers) of one ``POST /_/invoke``."""
        rid = headers.get("X-Request-Id") or _new_request_id()
        now = time.time()
        try:
            deadline = float(headers["X-Deadline-Ms"]) / 1000
        except (KeyError, TypeError, ValueError):
            deadline = now + float(self.cfg["timeout_s"])
        if not body.strip():
            body = b"{}"
        try:
            json.loads(body)
        except ValueError as e:
            return 400, {"ok": False, "error": _error("Runtime.InvalidEvent", f"The event is not valid JSON: {e}",
                                                      rid)}, {}
        with self.lock:
            state = self.state
            if state == FAILED:
                return 200, {"ok": False, "error": dict(self.init_error, requestId=rid), "logs": self.init_logs,
                             "durationMs": 0}, {}
            if state != READY:
                refused = "draining" if state == DRAINING else "starting"
                return 503, {"refused": refused}, {"X-Faas-Refused": refused}
            if self.current is not None:
                return 503, {"refused": "capacity"}, {"X-Faas-Refused": "capacity"}
            if deadline <= now:
                return 200, {"ok": False, "error": _error(
                    "Function.Timeout", "Task timed out before it started: the deadline had passed", rid),
                    "logs": [], "durationMs": 0}, {}
            inv = _Invocation(rid, body, deadline, headers)
            self.current = inv
            self.changed.notify_all()
            while not inv.done:
                left = inv.mono_deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            timed_out = not inv.done
            if timed_out:
                inv.done = True
        if self.logs is not None:
            self.logs.sync()
        logs = inv.capture.finish()
        took = time.monotonic() - inv.t0
        with self.lock:
            self.current = None
            self.invocations += 1
            self.idle_since = time.monotonic()
            exiting = timed_out or self.child_status is not None
            if exiting and self.state != DRAINING:
                self._set_state(DRAINING)
            drained = self.state == DRAINING
            self.changed.notify_all()
        if timed_out:
            self._kill_child()
            reply = {"ok": False, "error": _error("Function.Timeout", f"Task timed out after {took:.2f} seconds", rid),
                     "logs": logs, "durationMs": round(took * 1000, 3)}
        elif inv.error is not None:
            reply = {"ok": False, "error": inv.error, "logs": logs, "durationMs": round(took * 1000, 3)}
        else:
            reply = {"ok": True, "result": _Raw(inv.result), "logs": logs, "durationMs": round(took * 1000, 3)}
        if drained:
            self._post(self._finish)
        return 200, reply, ({"X-Faas-Exiting": "1", "Connection": "close"} if exiting else {})


def _fetch_code(cfg, url, digest):
    """Cluster mode: the directory of the code named by ``codeSha256`` in the node's cache, fetched from
    ``codeUrl`` at most once per node by the command in ``FAAS_CODE_FETCHER`` (``python -m
    appliance.instances.launcher``: the same lock, checks and unpacking as every other runtime's)."""
    import subprocess
    if not digest:
        raise ValueError("codeDir or codeSha256 is required")
    if not cfg.get("code_fetcher"):
        raise ValueError("FAAS_CODE_FETCHER is not set, so code named by URL cannot be fetched")
    cmd = json.loads(cfg["code_fetcher"])
    env = dict(os.environ, FAAS_CODE_DIGEST=str(digest), FAAS_CODE_URL=str(url or ""))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise ValueError((out.stderr or out.stdout).strip()[-500:] or f"the fetcher exited {out.returncode}")
    return out.stdout.strip().splitlines()[-1]


def _consul(cfg, method, path, body=None):
    import urllib.request
    addr = cfg["consul_addr"]
    addr = addr if "://" in addr else "http://" + addr
    req = urllib.request.Request(addr.rstrip("/") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if cfg.get("consul_token"):
        req.add_header("X-Consul-Token", cfg["consul_token"])
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


class _Raw(str):
    """JSON text already encoded (the bootstrap's response), spliced into the reply as it is."""


def _encode(obj):
    if isinstance(obj, dict) and isinstance(obj.get("result"), _Raw):
        rest = dict(obj)
        raw = rest.pop("result")
        text = json.dumps(rest, separators=(",", ":"))
        return ('{"result":' + raw + "," + text[1:]).encode()
    return json.dumps(obj, separators=(",", ":")).encode()


def _result_json(body):
    """The bootstrap's response as the invoke's JSON result: JSON as it is, other bytes as a string
    (so a script that prints text answers ``200 text/plain``), nothing as ``null``."""
    if not body.strip():
        return "null"
    try:
        json.loads(body)
        return body.decode("utf-8")
    except ValueError:
        return json.dumps(body.decode("utf-8", "replace"))


def _posted_error(body, header_type, rid):
    """A Runtime API error document (``errorMessage``, ``errorType``, ``stackTrace``) as a structured error;
    the ``Lambda-Runtime-Function-Error-Type`` header names the type when the body does not."""
    doc = {}
    try:
        parsed = json.loads(body) if body.strip() else {}
        if isinstance(parsed, dict):
            doc = parsed
    except ValueError:
        pass
    stack = doc.get("stackTrace")
    if not isinstance(stack, list):
        stack = [] if stack is None else [str(stack)]
    error_type = doc.get("errorType") if isinstance(doc.get("errorType"), str) and doc.get("errorType") else None
    error_type = error_type or header_type or "Runtime.Unknown"
    message = doc.get("errorMessage")
    if not isinstance(message, str):
        message = body.decode("utf-8", "replace")[:4096] if body.strip() and not doc else (
            "" if message is None else json.dumps(message))
    return _error(error_type[:256], message, rid, [str(s) for s in stack][:1000])


# --- HTTP plumbing -------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faas-provided"
    sys_version = ""
    inst = None

    def log_message(self, fmt, *args):  # no access log
        pass

    def address_string(self):
        return "local"

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        if self.connection.family != socket.AF_UNIX:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status, obj, headers=None):
        data = _encode(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._end(data)

    def _end(self, data):
        """Head and body in one write: two small writes would meet Nagle's algorithm and the client's
        delayed ACK (40 ms per exchange on Linux)."""
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)
        self.flush_headers()

    def _body(self, limit):
        """(body, too_large). Reads a Content-Length or chunked body up to ``limit`` bytes; past that,
        stops reading and closes the connection after answering."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                except ValueError:
                    self.close_connection = True
                    return bytes(out), False
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out), False
                if len(out) + size > limit:
                    self._discard(size, chunked=True)
                    return b"", True
                out += self.rfile.read(size)
                self.rfile.readline(8)
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if n > limit:
            self._discard(n)
            return b"", True
        return (self.rfile.read(n) if n > 0 else b""), False

    def _discard(self, n, chunked=False):
        """Read and drop what the client still sends of a refused body (at most DISCARD_MAX bytes, for at
        most 5 s), so that it reads the answer rather than a reset; the connection closes after it."""
        self.close_connection = True
        left = DISCARD_MAX if chunked else min(n, DISCARD_MAX)
        try:
            self.connection.settimeout(5.0)
            while left > 0:
                data = self.rfile.read1(min(left, 65536)) if not chunked else self.rfile.read1(65536)
                if not data:
                    break
                left -= len(data)
                if chunked and data.endswith(b"0\r\n\r\n"):
                    break
        except OSError:
            pass


class _PlatformHandler(_Handler):
    def setup(self):
        super().setup()
        with self.inst.lock:
            self.inst.conns += 1

    def finish(self):
        try:
            super().finish()
        finally:
            with self.inst.lock:
                self.inst.conns -= 1
                self.inst.changed.notify_all()

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/_/health":
            return self._send(200, self.inst.health())
        if path == "/_/ready":
            wait = 0.0
            for item in query.split("&"):
                k, _, v = item.partition("=")
                if k == "waitMs":
                    try:
                        wait = min(max(float(v), 0.0), 600000.0) / 1000
                    except ValueError:
                        pass
            return self._send(*self.inst.ready(wait))
        if path == "/_/pool":
            st = self.inst.state
            return self._send(200 if st == POOL else 503, {"state": st})
        return self._not_here(path, "GET")

    def do_POST(self):
        path = self.path.partition("?")[0]
        body, too_large = self._body(MAX_EVENT)
        if too_large:
            return self._send(413, {"ok": False, "error": _error("Runtime.InvalidEvent", "the event is too large")},
                              {"Connection": "close"})
        if path == "/_/invoke":
            status, reply, headers = self.inst.invoke(self.headers, body)
            return self._send(status, reply, headers)
        if path == "/_/drain":
            try:
                min_idle = float((json.loads(body) if body.strip() else {}).get("minIdleMs") or 0)
            except (ValueError, AttributeError, TypeError):
                return self._send(400, {"error": "body must be a JSON object like {\"minIdleMs\": 1000}"})
            return self._send(*self.inst.drain(min_idle))
        if path == "/_/specialize":
            try:
                s = json.loads(body)
                if not isinstance(s, dict):
                    raise ValueError
            except ValueError:
                return self._send(400, {"error": "body must be a JSON object: {function, version, handler, codeDir, "
                                                 "memoryMb, timeoutS, env}"})
            return self._send(*self.inst.specialize(s))
        return self._not_here(path, "POST")

    def _not_here(self, path, method):
        if path in ("/_/health", "/_/ready", "/_/pool", "/_/invoke", "/_/drain", "/_/specialize"):
            return self._send(405, {"error": f"method {method} not allowed on {path}"})
        return self._send(404, {"error": f"no such path: {path}"})

    do_PUT = do_DELETE = do_PATCH = lambda self: self._not_here(self.path.partition("?")[0], self.command)


class _ApiHandler(_Handler):
    """The Lambda Runtime API, 2018-06-01."""

    def setup(self):
        super().setup()
        with self.inst.lock:
            self.inst.api_conns += 1

    def finish(self):
        try:
            super().finish()
        finally:
            with self.inst.lock:
                self.inst.api_conns -= 1

    def do_GET(self):
        if self.path == API_PREFIX + "/runtime/invocation/next":
            status, body, headers = self.inst.api_next(self)
            if status != 200:
                return self._send(status, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self._end(body)
            return None
        return self._unknown()

    def do_POST(self):
        path = self.path
        err_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        if path == API_PREFIX + "/runtime/init/error":
            body, too_large = self._body(MAX_ERROR_BODY)
            return self._send(*self.inst.api_init_error(b"" if too_large else body, err_type))
        prefix = API_PREFIX + "/runtime/invocation/"
        if path.startswith(prefix):
            rid, _, what = path[len(prefix):].partition("/")
            if what == "response":
                body, too_large = self._body(MAX_RESPONSE)
                status, obj = self.inst.api_response(rid, body, too_large)
                return self._send(status, obj, {"Connection": "close"} if too_large else None)
            if what == "error":
                body, too_large = self._body(MAX_ERROR_BODY)
                return self._send(*self.inst.api_error(rid, b"" if too_large else body, err_type))
        return self._unknown()

    def _unknown(self):
        self._body(MAX_ERROR_BODY)
        return self._send(404, {"errorType": "InvalidPath", "errorMessage": f"no such path: {self.path}"})

    do_PUT = do_DELETE = do_PATCH = _unknown


def _quiet_error(server, request, client_address):
    """A client that went away mid-answer is no news; anything else is one line, not a traceback."""
    exc = sys.exc_info()[1]
    if not isinstance(exc, (ConnectionError, TimeoutError)):
        _echo(f"[faas] provided runtime: {type(exc).__name__}: {exc}")


class _ApiServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    handle_error = _quiet_error
    allow_reuse_address = False
    request_queue_size = 16

    def __init__(self, inst):
        self.inst = inst
        handler = type("ApiHandler", (_ApiHandler,), {"inst": inst})
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self):   # no getfqdn(): a DNS lookup per start for nothing
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def verify_request(self, request, client_address):
        if self.inst.api_conns >= API_MAX_CONNECTIONS:
            body = b'{"errorType":"TooManyConnections","errorMessage":"too many connections to the Runtime API"}'
            status = b"429 Too Many Requests"
        elif _peer_is_ours(client_address, self.server_address[1]):
            return True
        else:
            body = b'{"errorType":"Forbidden","errorMessage":"this Runtime API serves its own instance only"}'
            status = b"403 Forbidden"
        try:
            request.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                            b"Connection: close\r\n\r\n%s" % (status, len(body), body))
        except OSError:
            pass
        return False


def _peer_is_ours(client_address, server_port):
    """Whether the connecting socket (``127.0.0.1:<port>`` connected to ours) belongs to this process's
    uid. The kernel shows uids of other user namespaces as the overflow uid, so only sockets of this
    instance's own processes match. Asked of the kernel for that one socket (sock_diag netlink, about
    20 us); where that is refused, read from ``/proc/net/tcp`` (milliseconds on a host with thousands of
    sockets). True when neither can be read: the packet filter is the barrier then."""
    host, port = client_address[0], client_address[1]
    if host != "127.0.0.1":
        return False
    try:
        return _sock_diag_uid(port, server_port) == os.getuid()
    except OSError:
        pass
    v4, v6 = "0100007F", "0000000000000000FFFF00000100007F"  # IPv4, or dual-stack IPv6 (Java's)
    wanted = {(f"{a}:{port:04X}", f"{a}:{server_port:04X}") for a in (v4, v6)}
    uid = os.getuid()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and (fields[1], fields[2]) in wanted and fields[3] == "01" \
                            and int(fields[7]) == uid:
                        return True
    except OSError:
        return True
    return False


_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, _NLMSG_ERROR = 4, 20, 1, 2


def _sock_diag_uid(sport, dport):
    """The uid owning the TCP socket 127.0.0.1:sport -> 127.0.0.1:dport (an exact lookup, which also
    finds a dual-stack IPv6 socket connected to ::ffff:127.0.0.1); -1 when there is none."""
    import struct
    lo = socket.inet_aton("127.0.0.1") + bytes(12)
    sockid = struct.pack(">HH", sport, dport) + lo + lo + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(msg, (0, 0))
        data = nl.recv(8192)
    _, mtype = struct.unpack_from("=IH", data)
    if mtype == _NLMSG_ERROR:
        err = -struct.unpack_from("=i", data, 16)[0]
        if err == errno.ENOENT:
            return -1
        raise OSError(err, os.strerror(err))
    if mtype != _SOCK_DIAG_BY_FAMILY:
        raise OSError(errno.EPROTO, "unexpected sock_diag answer")
    return struct.unpack_from("=I", data, 16 + 64)[0]


def _platform_server(inst):
    handler = type("PlatformHandler", (_PlatformHandler,), {"inst": inst})
    cfg = inst.cfg
    if cfg["socket"]:
        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True
            handle_error = _quiet_error
            request_queue_size = 1024
        try:
            os.unlink(cfg["socket"])
        except FileNotFoundError:
            pass
        return Server(cfg["socket"], handler)

    class TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        handle_error = _quiet_error
        request_queue_size = 1024
        address_family = socket.AF_INET6 if ":" in cfg["host"] else socket.AF_INET

        def server_bind(self):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(self.server_address)
            self.server_address = self.socket.getsockname()
            self.server_name, self.server_port = cfg["host"], self.server_address[1]
    return TcpServer((cfg["host"], int(cfg["port"])), handler)


def serve(config):
    return _Instance(config).run()


def main():
    try:
        config = config_from_env(os.environ)
    except ValueError as e:
        print(f"bootstrap: bad setting: {e}", file=sys.stderr)
        return 2
    code = serve(config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
