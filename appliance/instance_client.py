"""The data plane's HTTP client to instances: pooled keep-alive connections per instance.

Built on urllib3's connection pools (one per instance address, sized to the instance's
concurrency), with a Unix-socket connection class for sandboxed instances that have no network.
Errors are split by what they mean for a retry: :class:`InstanceUnreachable` means the request
never reached the instance (safe to send elsewhere); :class:`InstanceLost` means it may have run.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .model import Instance

JSON = {"Content-Type": "application/json"}


class InstanceUnreachable(Exception):
    """Could not connect: the request was not delivered."""


class InstanceLost(Exception):
    """The connection broke after the request was sent: it may have run."""


class InstanceTimeout(Exception):
    """No reply before the read deadline."""


@dataclass
class InvokeReply:
    status: int
    body: dict
    refused: str | None = None
    exiting: bool = False


class _UnixConnection(HTTPConnection):
    def __init__(self, *args, socket_path: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else None)
        try:
            s.connect(self._socket_path)
        except OSError as exc:
            s.close()
            raise NewConnectionError(self, f"cannot connect to {self._socket_path}: {exc}") from exc
        return s


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


def _make_pool(address: str, maxsize: int) -> urllib3.HTTPConnectionPool:
    kw = dict(maxsize=max(1, maxsize), block=False, retries=False, timeout=urllib3.Timeout(connect=2.0, read=None))
    if address.startswith("unix:"):
        return _UnixPool("localhost", socket_path=address[5:], **kw)  # extra keywords go to each connection
    host, _, port = address.rpartition(":")
    pool = urllib3.HTTPConnectionPool(host, int(port), **kw)
    # Small request/response pairs: Nagle would add 40 ms delays to keep-alive round trips.
    pool.conn_kw["socket_options"] = HTTPConnection.default_socket_options + [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    return pool


class InstanceClient:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def _pool(self, instance: Instance) -> urllib3.HTTPConnectionPool:
        pool = self._pools.get(instance.address)
        if pool is None:
            with self._lock:
                pool = self._pools.get(instance.address)
                if pool is None:
                    pool = self._pools[instance.address] = _make_pool(instance.address, instance.concurrency + 1)
        return pool

    def close(self, address: str) -> None:
        with self._lock:
            pool = self._pools.pop(address, None)
        if pool is not None:
            pool.close()

    def close_all(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for p in pools:
            p.close()

    def _request(self, instance: Instance, method: str, path: str, *, body: bytes | None = None,
                 headers: dict | None = None, timeout: float | None = 5.0):
        try:
            return self._pool(instance).urlopen(
                method, path, body=body, headers=headers, retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=2.0, read=timeout), preload_content=True, release_conn=True)
        except NewConnectionError as exc:
            raise InstanceUnreachable(str(exc)) from None
        except ReadTimeoutError as exc:
            raise InstanceTimeout(str(exc)) from None
        except MaxRetryError as exc:
            if isinstance(exc.reason, NewConnectionError):
                raise InstanceUnreachable(str(exc.reason)) from None
            if isinstance(exc.reason, ReadTimeoutError):
                raise InstanceTimeout(str(exc.reason)) from None
            raise InstanceLost(str(exc.reason)) from None
        except (ProtocolError, OSError, urllib3.exceptions.HTTPError) as exc:
            raise InstanceLost(str(exc)) from None

    def invoke(self, instance: Instance, body: bytes, *, request_id: str, deadline_ms: int,
               read_timeout_s: float) -> InvokeReply:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id, "X-Deadline-Ms": str(deadline_ms)}
        resp = self._request(instance, "POST", "/_/invoke", body=body, headers=headers, timeout=read_timeout_s)
        try:
            parsed = json.loads(resp.data) if resp.data else {}
        except ValueError:
            raise InstanceLost(f"instance {instance.id} answered with a body that is not JSON") from None
        refused = resp.headers.get("X-Faas-Refused") if resp.status == 503 else None
        return InvokeReply(status=resp.status, body=parsed, refused=refused,
                           exiting=resp.headers.get("X-Faas-Exiting") == "1")

    def ready(self, instance: Instance, wait_ms: int = 0) -> tuple[int, dict]:
        """``/_/ready``; with ``wait_ms`` the runtime holds the answer while the code loads (a runtime
        that ignores the parameter answers at once, and the caller polls)."""
        path = f"/_/ready?waitMs={int(wait_ms)}" if wait_ms else "/_/ready"
        resp = self._request(instance, "GET", path, timeout=2.0 + wait_ms / 1000)
        try:
            return resp.status, json.loads(resp.data or b"{}")
        except ValueError:
            return resp.status, {}

    def health(self, instance: Instance) -> dict:
        resp = self._request(instance, "GET", "/_/health", timeout=2.0)
        return json.loads(resp.data or b"{}")

    def drain(self, instance: Instance, min_idle_ms: int) -> bool:
        """Ask the instance to drain; True when it accepted (it will exit)."""
        body = json.dumps({"minIdleMs": int(min_idle_ms)}).encode()
        try:
            resp = self._request(instance, "POST", "/_/drain", body=body, headers=JSON, timeout=2.0)
        except (InstanceUnreachable, InstanceLost):
            return True  # already gone
        return resp.status == 200
