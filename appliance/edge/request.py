"""One representation of a trigger request, taken from the HTTP engine once.

Every trigger request, whether its function is warm or must cold-start, becomes a
:class:`RawRequest` straight from what the engine received (Granian's RSGI scope: header lines
in order, names lowercased, nothing joined or renamed), and the event is built from it by one
function (:func:`appliance.edge.events.build_event`). Why: a second route through WSGI used to
rebuild the request from an environ, where repeated headers are already joined and ``_`` in a
header name has become ``-``, so a handler saw one event cold and another warm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawRequest:
    method: str
    #: The path as the engine decoded it (percent-escapes undone, as API Gateway's rawPath).
    path: str
    #: The query string exactly as sent, without the ``?``.
    query: str
    #: Header lines as received: lowercase names, repeated names kept as separate lines.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    source_ip: str
    #: The name the client addressed (Host header, else the request target's authority).
    host: str
    protocol: str = "HTTP/1.1"
    scheme: str = "http"
    #: The port the client connected to (the edge's), for ``x-forwarded-port``.
    port: int = 80

    @classmethod
    def from_scope(cls, scope, body: bytes) -> "RawRequest":
        """From Granian's RSGI scope and the body read in full."""
        headers = scope.headers
        return cls(method=scope.method.upper(), path=scope.path, query=scope.query_string,
                   headers=tuple(headers.items()), body=body, source_ip=client_ip(scope.client or ""),
                   host=host_name(headers.get("host") or scope.authority or scope.server or ""),
                   protocol=protocol_name(scope.http_version), scheme=scope.scheme, port=server_port(scope.server or ""))


def client_ip(client: str) -> str:
    """``ip:port`` (``[v6]:port`` for IPv6) as Granian reports the peer, without the port."""
    host = client.rpartition(":")[0] if ":" in client else client
    return host.strip("[]")


#: Granian's ``http_version`` is ``1`` for an HTTP/1.0 request line (``1.1`` and ``2`` are as named).
_PROTOCOLS = {"1": "HTTP/1.0"}


def protocol_name(http_version: str) -> str:
    return _PROTOCOLS.get(http_version) or f"HTTP/{http_version}"


def server_port(server: str) -> int:
    """The port of Granian's ``ip:port`` server address (80 when it has none)."""
    port = server.rpartition(":")[2]
    return int(port) if port.isdigit() else 80


def host_name(host: str) -> str:
    """The name in a Host header, without the port (``[v6]:port`` too)."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.partition(":")[0]
