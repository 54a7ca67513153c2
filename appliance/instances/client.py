"""The data plane's HTTP client to instances: pooled keep-alive connections per instance.

A small pool of keep-alive connections per instance address (TCP with TCP_NODELAY, or a Unix
socket for sandboxed instances without a network). We measured a warm invoke round trip on this
path at 126 us with ``http.client`` against 407 us through urllib3's pool, whose generality
(retries, timeouts objects, response wrappers) we do not use; the edge pays this on every
request, so it now speaks the runtime contract's small HTTP/1.1 subset itself (:class:`_Connection`).

Errors are split by what they mean for a retry: :class:`InstanceUnreachable` means the request
never reached the instance (safe to send elsewhere); :class:`InstanceLost` means it may have run;
:class:`InstanceTimeout` means no answer came before the read deadline.
"""

from __future__ import annotations

import json
import socket
import threading

from appliance.core.codec import loads
from appliance.core.model import Instance
from appliance.core.ports import (  # noqa: F401
    InstanceLost,
    InstanceTimeout,
    InstanceUnreachable,
    InvokeReply,
    ReplyTooLarge,
)

CONNECT_TIMEOUT_S = 2.0
#: Bound on a reply's status line and headers.
MAX_HEADER_BYTES = 64 * 1024
#: Largest reply body read from an instance by default (Lambda's synchronous response limit);
#: the wiring passes ``APPLIANCE_MAX_REPLY_BYTES`` plus :data:`LOGS_ALLOWANCE`.
MAX_REPLY_BYTES = 6 << 20
#: Room in a reply for the invocation's captured logs beside the result (the runtimes cap the logs
#: at 256 KiB per invocation; JSON escaping can grow them).
LOGS_ALLOWANCE = 1 << 20
#: Idle connections kept per instance beyond its concurrency.
EXTRA_IDLE = 1


def encode_request(method: str, path: str, body: bytes | None, headers: dict) -> bytes:
    """One request as bytes, for a single write."""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: instance\r\n"]
    for k, v in headers.items():
        lines.append(f"{k}: {v}\r\n")
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}\r\n")
    lines.append("\r\n")
    data = "".join(lines).encode("latin-1")
    return data + body if body else data


def invoke_headers(request_id: str, deadline_ms: int, attempt: int | None = None) -> dict:
    """The headers of ``POST /_/invoke`` (runtimes/README.md); ``attempt`` for asynchronous events."""
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id, "X-Deadline-Ms": str(deadline_ms)}
    if attempt:
        headers["X-Faas-Attempt"] = str(attempt)
    return headers


def encode_invoke(body: bytes, request_id: str, deadline_ms: int) -> bytes:
    """``encode_request("POST", "/_/invoke", body, invoke_headers(...))`` in one format step: the
    edge's event loop sends one per warm request."""
    return (f"POST /_/invoke HTTP/1.1\r\nHost: instance\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {request_id}\r\nX-Deadline-Ms: {deadline_ms}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("latin-1") + body


def invoke_reply(instance: Instance, status: int, headers: dict, data: bytes) -> InvokeReply:
    """What an instance's answer to ``POST /_/invoke`` says."""
    try:
        parsed = loads(data) if data else {}
    except ValueError:
        raise InstanceLost(f"instance {instance.id} answered with a body that is not JSON") from None
    refused = headers.get("x-faas-refused") if status == 503 else None
    return InvokeReply(status=status, body=parsed, refused=refused, exiting=headers.get("x-faas-exiting") == "1")


class ProtocolError(Exception):
    """The instance's reply was not the HTTP/1.1 the runtime contract promises."""


class BodyTooLarge(ProtocolError):
    """The reply's body is over the parser's limit (refused as soon as that is known)."""


class ReplyParser:
    """Incremental parser of the replies on one connection, without IO, so the blocking client
    and the event-loop client (:mod:`.instance_aio`) read replies the same way. Feed it bytes as
    they arrive; :meth:`reply` returns ``(status, lower-cased headers, body, will_close)`` once a
    whole reply (Content-Length or chunked) is in, else None.

    Linear in the reply's size: bytes go into one ``bytearray`` (appending and dropping from its
    front are amortised O(1)); a ``bytes`` buffer grown with ``+=`` copied everything received so
    far on each read, which took 12 s for a 50 MB reply. A body over ``max_body`` raises
    :class:`BodyTooLarge` as soon as its Content-Length (or the chunks so far) says so."""

    __slots__ = ("_buf", "_status", "_headers", "_close", "_need", "_chunked", "_parts", "_got", "max_body")

    def __init__(self, max_body: int = MAX_REPLY_BYTES + LOGS_ALLOWANCE) -> None:
        self._buf = bytearray()
        self.max_body = max_body
        self._start()

    def _start(self) -> None:
        self._status: int | None = None
        self._headers: dict = {}
        self._close = False
        self._need: int | None = None   # body bytes, or the current chunk's size
        self._chunked = False
        self._parts: list[bytes] = []
        self._got = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def reply(self) -> tuple[int, dict, bytes, bool] | None:
        if self._status is None and not self._head():
            return None
        if self._chunked:
            body = self._chunks()
            if body is None:
                return None
        else:
            n = self._need
            if len(self._buf) < n:
                return None
            body = bytes(self._buf[:n])
            del self._buf[:n]
        out = (self._status, self._headers, body, self._close)
        self._start()
        return out

    def _head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise ProtocolError("the reply's headers are too large")
            return False
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[:end + 4]
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {head[0][:80]!r}")
        headers = {}
        for line in head[1:]:
            k, sep, v = line.partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            headers[k.strip().lower()] = v.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        else:
            try:
                self._need = int(headers.get("content-length", "0"))
            except ValueError:
                raise ProtocolError("bad Content-Length in the reply") from None
            if self._need < 0:
                raise ProtocolError("bad Content-Length in the reply")
            if self._need > self.max_body:
                raise BodyTooLarge(f"the reply is {self._need} bytes; the limit is {self.max_body}")
        self._headers = headers
        self._close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
        self._status = int(parts[1])
        return True

    def _chunks(self) -> bytes | None:
        while True:
            if self._need is None:
                i = self._buf.find(b"\r\n")
                if i < 0:
                    if len(self._buf) > MAX_HEADER_BYTES:
                        raise ProtocolError("bad chunk size in the reply")
                    return None
                try:
                    self._need = int(bytes(self._buf[:i]).split(b";", 1)[0], 16)
                except ValueError:
                    raise ProtocolError("bad chunk size in the reply") from None
                if self._need < 0:
                    raise ProtocolError("bad chunk size in the reply")
                self._got += self._need
                if self._got > self.max_body:
                    raise BodyTooLarge(f"the reply is over the limit of {self.max_body} bytes")
                del self._buf[:i + 2]
            size = self._need
            if len(self._buf) < size + 2:
                return None
            if size == 0:
                # no trailers expected from a runtime: the terminating CRLF follows at once
                del self._buf[:2]
                return b"".join(self._parts)
            self._parts.append(bytes(self._buf[:size]))
            del self._buf[:size + 2]
            self._need = None


class _Connection:
    """One keep-alive HTTP/1.1 connection to an instance, speaking just what the runtime contract
    uses: a request written with one ``sendall``, a reply with Content-Length (or chunked) read
    into one buffer. ``http.client`` parsed every reply's headers with the ``email`` package; on
    the edge's hot path that was about a tenth of its Python time per warm request."""

    __slots__ = ("address", "timeout", "sock", "_parser", "max_body")

    def __init__(self, address: str, timeout: float, max_body: int = MAX_REPLY_BYTES + LOGS_ALLOWANCE):
        self.address = address
        self.timeout = timeout
        self.max_body = max_body
        self.sock: socket.socket | None = None
        self._parser = ReplyParser(max_body)

    def connect(self) -> None:
        self.sock = connect_socket(self.address, self.timeout)
        self._parser = ReplyParser(self.max_body)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def send(self, method: str, path: str, body: bytes | None, headers: dict) -> None:
        self.sock.sendall(encode_request(method, path, body, headers))

    def read_reply(self) -> tuple[int, dict, bytes, bool]:
        """(status, lower-cased headers, body, will_close)."""
        parser = self._parser
        while True:
            out = parser.reply()
            if out is not None:
                return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the instance closed the connection")
            parser.feed(chunk)


def connect_socket(address: str, timeout: float | None) -> socket.socket:
    """A connected socket to ``unix:/path`` or ``host:port`` (TCP_NODELAY)."""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address[5:]
    else:
        host, _, port = address.rpartition(":")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host.strip("[]"), int(port))
    s.settimeout(timeout)
    try:
        s.connect(target)
        if s.family != socket.AF_UNIX:
            # Small request/response pairs: Nagle would add delayed-ACK stalls to keep-alive round trips.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        s.close()
        raise
    return s


class _Pool:
    """Idle connections to one address, most recently used first."""

    def __init__(self, address: str, max_idle: int, max_body: int):
        self.address = address
        self.max_idle = max_idle
        self.max_body = max_body
        self.idle: list[_Connection] = []
        self.lock = threading.Lock()
        self.closed = False

    def new(self) -> _Connection:
        return _Connection(self.address, CONNECT_TIMEOUT_S, self.max_body)

    def get(self) -> tuple[_Connection, bool]:
        """(connection, reused?)"""
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        return self.new(), False

    def put(self, conn: _Connection) -> None:
        with self.lock:
            if not self.closed and len(self.idle) < self.max_idle:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for c in idle:
            c.close()


class InstanceClient:
    def __init__(self, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        #: The largest reply body read: the result's limit plus room for its logs.
        self.max_body = max_reply_bytes + LOGS_ALLOWANCE
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}

    def _pool(self, instance: Instance) -> _Pool:
        pool = self._pools.get(instance.address)
        if pool is None:
            with self._lock:
                pool = self._pools.get(instance.address)
                if pool is None:
                    pool = self._pools[instance.address] = _Pool(instance.address, instance.concurrency + EXTRA_IDLE,
                                                                    self.max_body)
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
                 headers: dict | None = None, timeout: float | None = 5.0) -> tuple[int, dict, bytes]:
        """One request; (status, headers, body). A reused idle connection that fails while the
        request is being *sent* is retried once on a fresh one (the instance closed it while idle
        and cannot have read the request); a failure after that is never retried."""
        pool = self._pool(instance)
        for attempt in (0, 1):
            conn, reused = pool.get()
            try:
                if conn.sock is None:
                    try:
                        conn.connect()
                    except OSError as exc:
                        conn.close()
                        raise InstanceUnreachable(f"cannot connect to {instance.address}: {exc}") from None
                conn.sock.settimeout(timeout)
                try:
                    conn.send(method, path, body, headers or {})
                except OSError as exc:
                    conn.close()
                    if reused and attempt == 0:
                        continue  # the idle connection was dead; the request did not go out
                    raise InstanceUnreachable(f"cannot send to {instance.address}: {exc}") from None
                try:
                    status, hdrs, data, will_close = conn.read_reply()
                except (TimeoutError, socket.timeout):
                    conn.close()
                    raise InstanceTimeout(f"no answer from {instance.address} within {timeout} s") from None
                except BodyTooLarge as exc:
                    conn.close()
                    raise ReplyTooLarge(str(exc)) from None
                except (OSError, ProtocolError) as exc:
                    # Once the request is out, a broken connection cannot tell "closed before
                    # reading it" from "died while running it", so it is never retried here.
                    conn.close()
                    raise InstanceLost(f"{instance.address} failed mid-request: {exc}") from None
                if will_close:
                    conn.close()
                else:
                    pool.put(conn)
                return status, hdrs, data
            except BaseException:
                conn.close()
                raise
        raise InstanceUnreachable(f"cannot reach {instance.address}")  # pragma: no cover

    def invoke(self, instance: Instance, body: bytes, *, request_id: str, deadline_ms: int,
               read_timeout_s: float, attempt: int | None = None) -> InvokeReply:
        status, hdrs, data = self._request(instance, "POST", "/_/invoke", body=body,
                                           headers=invoke_headers(request_id, deadline_ms, attempt),
                                           timeout=read_timeout_s)
        return invoke_reply(instance, status, hdrs, data)

    def ready(self, instance: Instance, wait_ms: int = 0) -> tuple[int, dict]:
        """Readiness; with ``wait_ms`` the runtime holds the answer until its code has loaded."""
        path = f"/_/ready?waitMs={int(wait_ms)}" if wait_ms > 0 else "/_/ready"
        status, _, data = self._request(instance, "GET", path, timeout=2.0 + wait_ms / 1000)
        try:
            return status, json.loads(data or b"{}")
        except ValueError:
            return status, {}

    def health(self, instance: Instance) -> dict:
        _, _, data = self._request(instance, "GET", "/_/health", timeout=2.0)
        return json.loads(data or b"{}")

    def drain(self, instance: Instance, min_idle_ms: int) -> bool:
        """Ask the instance to drain; True when it accepted (it will exit)."""
        body = json.dumps({"minIdleMs": int(min_idle_ms)}).encode()
        try:
            status, _, _ = self._request(instance, "POST", "/_/drain", body=body,
                                         headers={"Content-Type": "application/json"}, timeout=2.0)
        except (InstanceUnreachable, InstanceLost):
            return True  # already gone
        return status == 200
