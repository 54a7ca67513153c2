"""The edge's event-loop client to instances: the warm path's round trip without a thread.

Same wire format and the same error meanings as :mod:`.instance_client` (whose request encoder
and reply parser it uses): :class:`InstanceUnreachable` means the request never reached the
instance, :class:`InstanceLost` that it may have run, :class:`InstanceTimeout` that no reply came
before the read deadline. Connections are kept per instance address, most recently used first,
and belong to the event loop's thread: nothing here takes a lock.
"""

from __future__ import annotations

import asyncio

from appliance.core.model import Instance
from appliance.instances.client import (
    CONNECT_TIMEOUT_S,
    EXTRA_IDLE,
    LOGS_ALLOWANCE,
    MAX_REPLY_BYTES,
    BodyTooLarge,
    InstanceLost,
    InstanceTimeout,
    InstanceUnreachable,
    InvokeReply,
    ProtocolError,
    ReplyParser,
    ReplyTooLarge,
    encode_invoke,
    invoke_reply,
)

#: How often read deadlines are checked: a reply later than its deadline fails within this.
TICK_S = 0.1
#: Invocations between sweeps of the idle connections of instances that have ended.
SWEEP_EVERY = 1024


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight on it."""

    __slots__ = ("transport", "parser", "waiter", "lost")

    def __init__(self, max_body: int = MAX_REPLY_BYTES + LOGS_ALLOWANCE) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ReplyParser(max_body)
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        w = self.waiter
        if w is None or w.done():
            # Bytes nobody asked for: the connection is out of step; drop it.
            self.lost = True
            self.transport.close()
            return
        self.parser.feed(data)
        try:
            out = self.parser.reply()
        except ProtocolError as exc:
            self.lost = True
            self.transport.close()
            w.set_exception(ReplyTooLarge(str(exc)) if isinstance(exc, BodyTooLarge)
                            else InstanceLost(f"bad reply: {exc}"))
            return
        if out is not None:
            self.waiter = None
            w.set_result(out)

    def connection_lost(self, exc) -> None:
        self.lost = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(InstanceLost(f"the connection closed mid-request ({exc or 'EOF'})"))

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class AsyncInstanceClient:
    def __init__(self, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        self.max_body = max_reply_bytes + LOGS_ALLOWANCE
        self._idle: dict[str, list[_Conn]] = {}
        self._calls = 0
        self._deadlines: dict[asyncio.Future, tuple[float, str, float]] = {}
        self._ticking = False

    def _protocol(self) -> _Conn:
        return _Conn(self.max_body)

    async def _connect(self, address: str) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if address.startswith("unix:"):
                # A Unix socket connects or fails at once: no timeout task needed.
                _, conn = await loop.create_unix_connection(self._protocol, address[5:])
            else:
                host, _, port = address.rpartition(":")
                _, conn = await asyncio.wait_for(loop.create_connection(self._protocol, host.strip("[]"), int(port)),
                                                 CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            raise InstanceUnreachable(f"cannot connect to {address}: {exc or 'timed out'}") from None
        return conn

    async def invoke(self, instance: Instance, body: bytes, *, request_id: str, deadline_ms: int,
                     read_timeout_s: float) -> InvokeReply:
        address = instance.address
        idle = self._idle.get(address)
        conn = None
        while idle:
            c = idle.pop()
            if not c.lost and not c.transport.is_closing():
                conn = c
                break
        if conn is None:
            conn = await self._connect(address)
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            self._sweep()
        loop = asyncio.get_running_loop()
        waiter = conn.waiter = loop.create_future()
        conn.transport.write(encode_invoke(body, request_id, deadline_ms))
        self._deadlines[waiter] = (loop.time() + read_timeout_s, address, read_timeout_s)
        if not self._ticking:
            self._ticking = True
            loop.call_later(TICK_S, self._tick, loop)
        try:
            status, hdrs, data, will_close = await waiter
        except BaseException:
            conn.close()
            raise
        finally:
            self._deadlines.pop(waiter, None)
        if will_close:
            conn.close()
        else:
            pool = self._idle.setdefault(address, [])
            if len(pool) < instance.concurrency + EXTRA_IDLE:
                pool.append(conn)
            else:
                conn.close()
        return invoke_reply(instance, status, hdrs, data)

    def _tick(self, loop) -> None:
        """Fail the round trips past their read deadline. One timer for all of them, every
        TICK_S, rather than a timer per request: deadlines are seconds, and a per-request
        timer's heap push and cancel cost the loop more than the check."""
        now = loop.time()
        for waiter, (deadline, address, timeout_s) in list(self._deadlines.items()):
            if now >= deadline:
                del self._deadlines[waiter]
                _expire(waiter, address, timeout_s)
        if self._deadlines:
            loop.call_later(TICK_S, self._tick, loop)
        else:
            self._ticking = False

    def _sweep(self) -> None:
        """Forget addresses whose connections all closed (their instances ended)."""
        for address, conns in list(self._idle.items()):
            conns[:] = [c for c in conns if not c.lost]
            if not conns:
                del self._idle[address]

    def close(self, address: str) -> None:
        for c in self._idle.pop(address, []):
            c.close()

    def close_all(self) -> None:
        for address in list(self._idle):
            self.close(address)


def _expire(waiter: asyncio.Future, address: str, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(InstanceTimeout(f"no answer from {address} within {timeout_s} s"))
