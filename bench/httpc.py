"""A small HTTP client for timing single requests, plus a threaded load client used when wrk is missing.

Loopback only: every target is built by the benchmark from addresses its own servers reported.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    method: str = "GET"
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    unix_path: str | None = None

    @property
    def url(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}:{self.path}"
        return f"http://{self.host}:{self.port}{self.path}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def connection(t: Target, timeout: float = 30.0) -> http.client.HTTPConnection:
    if t.unix_path:
        return _UnixHTTPConnection(t.unix_path, timeout)
    assert t.host in ("127.0.0.1", "localhost", "::1"), f"loopback only, not {t.host}"
    return http.client.HTTPConnection(t.host, t.port, timeout=timeout)


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes
    ms: float


def send(conn: http.client.HTTPConnection, t: Target) -> Reply:
    """One request on ``conn`` (connecting if needed); ``ms`` is from send to the last body byte."""
    headers = dict(t.headers)
    if t.body:
        headers.setdefault("Content-Length", str(len(t.body)))
    t0 = time.perf_counter()
    conn.request(t.method, t.path, body=t.body or None, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    ms = (time.perf_counter() - t0) * 1000
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, ms)


def once(t: Target, timeout: float = 30.0) -> Reply:
    """One request on a fresh connection (a new client arriving), closed afterwards."""
    conn = connection(t, timeout)
    try:
        return send(conn, t)
    finally:
        conn.close()


def wait_ok(t: Target, timeout_s: float, interval_s: float = 0.001, proc=None) -> Reply:
    """Poll ``t`` until it answers 200; the reply of the first success. Raises on timeout or if
    ``proc`` (a Popen) exits meanwhile."""
    end = time.monotonic() + timeout_s
    last: Exception | str = "no attempt"
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before answering {t.url}")
        try:
            r = once(t, timeout=max(1.0, end - time.monotonic()))
            if r.status == 200:
                return r
            last = f"status {r.status}: {r.body[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{t.url} did not answer 200 within {timeout_s:.0f}s (last: {last})")


def sequential(t: Target, *, count: int | None = None, duration_s: float | None = None) -> list[float]:
    """Latencies (ms) of back-to-back requests on one keep-alive connection."""
    conn = connection(t)
    out: list[float] = []
    end = time.monotonic() + duration_s if duration_s else None
    try:
        while True:
            if count is not None and len(out) >= count:
                break
            if end is not None and time.monotonic() >= end:
                break
            try:
                r = send(conn, t)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = connection(t)
                continue
            if r.status != 200:
                raise RuntimeError(f"{t.url} answered {r.status}: {r.body[:300]!r}")
            out.append(r.ms)
    finally:
        conn.close()
    return out


def load(t: Target, *, concurrency: int, duration_s: float) -> dict:
    """Closed-loop load: ``concurrency`` threads, each with a keep-alive connection, for ``duration_s``.

    The fallback when wrk is not installed. The client shares the GIL, so it saturates near a few
    thousand requests per second: figures above that say more about the client than the server.
    """
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        conn = connection(t)
        start.wait()
        try:
            while time.monotonic() < stop_at[0]:
                try:
                    r = send(conn, t)
                except (OSError, http.client.HTTPException):
                    errors[i] += 1
                    conn.close()
                    conn = connection(t)
                    continue
                if r.status != 200:
                    errors[i] += 1
                else:
                    lat[i].append(r.ms)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for th in threads:
        th.start()
    t0 = time.monotonic()
    stop_at[0] = t0 + duration_s
    start.wait()
    for th in threads:
        th.join(duration_s + 60)
    elapsed = time.monotonic() - t0
    all_lat = [x for xs in lat for x in xs]
    return {"tool": "python", "requests": len(all_lat), "errors": sum(errors), "duration_s": elapsed,
            "rps": len(all_lat) / elapsed if elapsed > 0 else 0.0, "latencies_ms": all_lat}
