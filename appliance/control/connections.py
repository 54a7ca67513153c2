"""Bounds on the control API's connections (waitress), so slow clients cannot starve others.

waitress closes a connection only after ``channel_timeout`` seconds *without any byte*: a client
that sends one byte of its headers every few seconds held a connection for as long as it liked,
and 2,100 half-sent requests filled the connection limit and made the API unavailable. Here:

- a request's headers must arrive within ``header_timeout_s`` of its first byte, and its body
  within ``body_timeout_s`` more (total deadlines, not inactivity timers);
- an idle keep-alive connection is closed after ``header_timeout_s`` of silence;
- at most ``per_client`` connections per client address (0: no bound; set it so behind a proxy
  or load balancer, where every client has the proxy's address); further ones are closed at
  once. The total bound is waitress's own ``connection_limit`` (accepting pauses at it).

A request being served (a long direct invoke) is never cut: the deadlines apply to receiving.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import types

from waitress.channel import HTTPChannel

log = logging.getLogger("appliance.http")


class ConnectionGuard:
    """Counts connections per client address. Pure bookkeeping, shared by the channels."""

    def __init__(self, *, per_client: int, header_timeout_s: float, body_timeout_s: float):
        self.per_client = per_client
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self._lock = threading.Lock()
        self._open: collections.Counter = collections.Counter()
        self.refused = 0
        self.timed_out = 0

    def admit(self, client: str) -> bool:
        with self._lock:
            if self.per_client and self._open[client] >= self.per_client:
                self.refused += 1
                return False
            self._open[client] += 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def overdue(self, started: float, headers_done: bool, now: float) -> bool:
        """Whether a request still being received at ``now`` is past its deadline."""
        limit = self.header_timeout_s + (self.body_timeout_s if headers_done else 0.0)
        return now - started > limit


class GuardedChannel(HTTPChannel):
    """waitress's channel, counted per client address and timed per request."""

    def __init__(self, server, sock, addr, adj, map=None):
        self._client = addr[0] if isinstance(addr, tuple) and addr else str(addr)
        self._counted = False
        self._started = time.time()
        super().__init__(server, sock, addr, adj, map)
        if server.guard.admit(self._client):
            self._counted = True
        else:
            self.will_close = True   # closed on the loop's next pass, before reading anything

    def readable(self):
        return not self.will_close and super().readable()

    def received(self, data):
        if self.request is None:
            self._started = time.time()   # the first byte of a new request
        return super().received(data)

    def del_channel(self, map=None):
        super().del_channel(map)
        if self._counted:
            self._counted = False
            self.server.guard.release(self._client)


def guard_server(server, guard: ConnectionGuard) -> None:
    """Make a waitress server (from ``waitress.create_server``) use the guard: its channels are
    :class:`GuardedChannel` and its maintenance pass (every ``cleanup_interval``) also closes
    requests past their receive deadline."""
    server.guard = guard
    server.channel_class = GuardedChannel
    plain = server.maintenance

    def maintenance(self, now):
        plain(now)
        for channel in list(self.active_channels.values()):
            request = getattr(channel, "request", None)
            if request is None or channel.requests or channel.will_close:
                continue
            if guard.overdue(getattr(channel, "_started", now), request.headers_finished, now):
                channel.will_close = True
                guard.timed_out += 1

    server.maintenance = types.MethodType(maintenance, server)
