"""Shared pieces of the cluster backend and end-to-end tests: moto's S3 server as a real process,
a small HTTP proxy that can fail requests on purpose, function packages, waiting with deadlines."""
from __future__ import annotations

import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import requests

VENV_BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until truthy (returned) or raise at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = predicate()
            if v:
                return v
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last one
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


class MotoServer:
    """moto's S3 in server mode, a real process on a real port."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host, self.port = host, free_port(host)
        self.proc = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", host, "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: requests.get(self.url, timeout=1).status_code < 500, 30, "moto_server to listen")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def moto_s3():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    m = MotoServer()
    yield m
    m.close()


def package(source: str, filename: str = "index.py") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(filename, source)
    return buf.getvalue()


HELLO = "def handler(event, context):\n    return 'Hello Serverless'\n"


class FaultyProxy:
    """Forwards HTTP to ``target``; ``plan`` is a list of actions consumed per matching request:
    ``("reply", status, body)`` answers without forwarding, ``("forward_then", status, body)``
    forwards, discards the real answer and replies with this one (a lost response)."""

    def __init__(self, target: str, match: str = ""):
        self.target, self.match = target.rstrip("/"), match
        self.plan: list[tuple] = []
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with proxy._lock:
                    proxy.seen.append((self.command, self.path))
                    action = proxy.plan.pop(0) if proxy.plan and proxy.match in self.path else None
                if action and action[0] == "reply":
                    return self._send(action[1], action[2].encode())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = requests.request(self.command, proxy.target + self.path, data=body or None, headers=headers,
                                     timeout=60)
                if action and action[0] == "forward_then":
                    return self._send(action[1], action[2].encode())
                self._send(r.status_code, r.content, r.headers.get("Content-Type"),
                           {k: v for k, v in r.headers.items() if k.startswith("X-Nomad")})

            def _send(self, status, data, ctype="text/plain; charset=utf-8", extra=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype or "text/plain")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, fragment: str) -> int:
        with self._lock:
            return sum(1 for _, p in self.seen if fragment in p)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def job_vars(consul_url: str, code_cache: str, *, python_count: int = 1, node_count: int = 0, provided_count: int = 0,
             extra: str = "") -> str:
    """An HCL2 var-file pointing the jobspecs at this checkout's venv and the test's Consul."""
    return "\n".join([
        f'instance_command = "{sys.executable}"',
        'instance_args = ["-m", "appliance", "instance"]',
        f'code_cache_dir = "{code_cache}"',
        'check_interval = "1s"',
        f'consul_http_addr = "{consul_url}"',
        f"python_count = {python_count}",
        f"node_count = {node_count}",
        f"provided_count = {provided_count}",
        'kill_timeout = "5s"',
    ]) + "\n" + extra


def alloc_logs(nomad_double) -> str:
    """All allocation stderr logs the Nomad double wrote (task output)."""
    out = []
    for dirpath, _, files in os.walk(nomad_double.data_dir):
        for f in files:
            if f.endswith((".stderr.0", ".stdout.0")):
                with open(os.path.join(dirpath, f), errors="replace") as fh:
                    out.append(fh.read())
    return "\n".join(out)


def dumps(o) -> str:
    return json.dumps(o, sort_keys=True)
