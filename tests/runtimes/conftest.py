"""Start real runtime bootstrap processes for tests.

``start_runtime(runtime, code_files, env=...)`` writes the code into a fresh directory, starts the
bootstrap of ``runtime`` with the contract's environment variables, waits for its ``FAAS_READY_FD`` line
and (unless told otherwise) for ``/_/ready`` to leave ``starting``, and returns a :class:`RuntimeProcess`
to talk to it. Every process is killed at the end of the test. Other suites may use the fixture too.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAPS = {
    "python3.11": [sys.executable, "-u", str(ROOT / "runtimes" / "python" / "bootstrap.py")],
    "nodejs20": ["node", str(ROOT / "runtimes" / "node" / "bootstrap.js")],
    "provided": [sys.executable, "-I", str(ROOT / "runtimes" / "provided" / "bootstrap.py")],
}
#: The runtimes whose handlers the shared contract suite runs (provided has its own: test_provided.py).
RUNTIMES = ("python3.11", "nodejs20")
START_TIMEOUT_S = 20.0


def wait_until(predicate, timeout=10.0, interval=0.005, what="condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError)."""
    return wait_for(predicate, timeout, interval, what)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Reply:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, headers, raw

    @property
    def body(self):
        return json.loads(self.raw)

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"<Reply {self.status} {self.raw[:300]!r}>"


class RuntimeProcess:
    """One running bootstrap: its process, where it listens, its stdout, and HTTP helpers."""

    def __init__(self, runtime, proc, code_dir, port=None, socket_path=None):
        self.runtime, self.proc, self.code_dir = runtime, proc, code_dir
        self.port, self.socket_path = port, socket_path
        self.pid = proc.pid
        self._out, self._err = [], []
        self._readers = [threading.Thread(target=self._pump, args=(proc.stdout, self._out), daemon=True),
                         threading.Thread(target=self._pump, args=(proc.stderr, self._err), daemon=True)]
        for t in self._readers:
            t.start()

    @staticmethod
    def _pump(stream, sink):
        for line in iter(stream.readline, b""):
            sink.append(line.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    @property
    def stdout_lines(self):
        return list(self._out)

    @property
    def stderr_lines(self):
        return list(self._err)

    def connection(self, timeout=30.0):
        if self.socket_path:
            return UnixHTTPConnection(self.socket_path, timeout=timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None, timeout=30.0):
        """One request; on ``conn`` (kept open, keep-alive) when given, else on a fresh connection."""
        own = conn is None
        c = conn or self.connection(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            raw = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, raw)
        finally:
            if own:
                c.close()

    def invoke(self, event=None, *, raw=None, request_id=None, deadline_ms=None, conn=None, timeout=30.0):
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        if deadline_ms is not None:
            headers["X-Deadline-Ms"] = str(int(deadline_ms))
        body = raw if raw is not None else json.dumps(event if event is not None else {})
        return self.request("POST", "/_/invoke", body, headers, conn=conn, timeout=timeout)

    def health(self):
        return self.request("GET", "/_/health").body

    def ready(self, wait_ms=None):
        return self.request("GET", "/_/ready" + (f"?waitMs={wait_ms}" if wait_ms else ""))

    def wait_exit(self, timeout=15.0):
        """Wait for the process to exit; returns its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.runtime} bootstrap pid {self.pid} did not exit within {timeout}s") from None

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._readers:
            t.join(5)


def _read_ready_line(fd, proc, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("bootstrap wrote no FAAS_READY_FD line in time")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"bootstrap closed FAAS_READY_FD without a line (exit status {proc.poll()})")
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


@pytest.fixture
def start_runtime(tmp_path):
    """Factory: ``start_runtime(runtime, code_files, env=None, *, handler="index.handler", pool=False,
    unix_socket=False, preexec_fn=None, wait_loaded=True, command=None)`` -> :class:`RuntimeProcess`.
    ``command`` replaces the bootstrap's command line (for example a zygote that forks it)."""
    started = []

    def start(runtime, code_files=None, env=None, *, handler="index.handler", pool=False, unix_socket=False,
              preexec_fn=None, wait_loaded=True, command=None):
        if runtime == "nodejs20" and not shutil.which("node"):
            pytest.fail("node is not installed (make system-deps installs it)")
        code_dir = tmp_path / f"code{len(started)}"
        code_dir.mkdir()
        for name, text in (code_files or {}).items():
            f = code_dir / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
            if name == "bootstrap" or text.startswith("#!"):
                f.chmod(0o755)
        r, w = os.pipe()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FAAS_", "NOMAD_"))}
        full_env.update({"FAAS_PORT": "0", "FAAS_READY_FD": str(w), "PYTHONDONTWRITEBYTECODE": "1"})
        sock_path = None
        if unix_socket:
            sock_path = str(tmp_path / f"rt{len(started)}.sock")
            full_env["FAAS_SOCKET"] = sock_path
        if pool:
            full_env["FAAS_POOL"] = "1"
        else:
            full_env.update({"FAAS_HANDLER": handler, "FAAS_CODE_DIR": str(code_dir)})
        full_env.update(env or {})
        proc = subprocess.Popen(command or BOOTSTRAPS[runtime], env=full_env, pass_fds=(w,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn,
                                cwd=str(tmp_path))
        os.close(w)
        inst = RuntimeProcess(runtime, proc, code_dir)
        started.append(inst)
        try:
            where = _read_ready_line(r, proc, START_TIMEOUT_S)
        finally:
            os.close(r)
        inst.port, inst.socket_path = where.get("port"), where.get("socket")
        if wait_loaded and not pool:
            inst.ready(wait_ms=int(START_TIMEOUT_S * 1000))
        return inst

    yield start
    for inst in started:
        inst.stop()


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    return request.param
