"""Who is calling the control API, from where, and may they: checked before any view runs.

Order of the checks, and why:

1. ``Host`` must name this appliance (``APPLIANCE_ALLOWED_HOSTS``): a page that rebinds its own
   DNS name to 127.0.0.1 still sends its own name as ``Host``, so it is refused (DNS rebinding).
2. A request with an ``Origin`` other than the API's own is refused: the console is served by the
   API itself, so no legitimate browser request is cross-origin. No CORS headers are ever sent.
3. ``Authorization: Bearer <token>``; there are no cookies, so a browser never attaches a
   credential on its own and a forged cross-site request carries none.
4. A state-changing request must carry the body type its route reads, so the "simple" requests a
   browser sends without asking (``text/plain`` forms) never reach a view.

Identity comes from the token alone; nothing is inferred from the connection (function instances
share the host's loopback, so an address or a port says nothing about who is calling).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable

from flask import Flask, g, request

from appliance.core.errors import ApplianceError
from appliance.core.tokens import AuthRequired, Forbidden, InvalidToken, Token, TokenStore, allows, matches

log = logging.getLogger("appliance.control.audit")

WWW_AUTHENTICATE = 'Bearer realm="faas"'
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Routes (endpoint names) anyone may call.
PUBLIC_ENDPOINTS = frozenset({"health", "root", "console", "static"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BadHost(ApplianceError):
    code = "Request.BadHost"
    status = 421


class ForeignOrigin(ApplianceError):
    code = "Auth.ForeignOrigin"
    status = 403


class UnsupportedMediaType(ApplianceError):
    code = "Request.UnsupportedMediaType"
    status = 415


def allowed_hosts(setting: str, listen_hosts: list[str], extra: list[str] = ()) -> frozenset[str] | None:
    """The host names the API answers to, lower case and without ports; None means any (``*``).

    Empty setting: the loopback names, the addresses it listens on, and when it listens on every
    address, this machine's names and addresses too (an operator reaches a cluster's control plane
    by them)."""
    names = [h.strip().lower() for h in setting.split(",") if h.strip()]
    if "*" in names:
        return None
    if names:
        return frozenset(n.strip("[]") for n in names)
    out = set(LOOPBACK_NAMES)
    for h in [*listen_hosts, *extra]:
        h = (h or "").strip().lower().strip("[]")
        if not h:
            continue
        if h in ("0.0.0.0", "::"):
            out.add(h)
            for name in (socket.gethostname(), socket.getfqdn()):
                out.add(name.lower())
            out.update(local_addresses())
            continue
        out.add(h)
    return frozenset(out)


def local_addresses() -> set[str]:
    """This machine's own IP addresses (a rebinding attack sends a name, never one of these)."""
    import psutil

    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%")[0].lower())
    return out


def host_name(header: str) -> str:
    """``Host`` without its port: ``example.com:8081`` -> ``example.com``, ``[::1]:80`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


def host_allowed(header: str, allowed: frozenset[str] | None) -> bool:
    if allowed is None:
        return True
    name = host_name(header)
    if not name:
        return False
    if name in allowed:
        return True
    try:  # any loopback address is this machine
        return ipaddress.ip_address(name).is_loopback and "127.0.0.1" in allowed
    except ValueError:
        return False


def bearer(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Guard:
    """The checks above, installed on a Flask app; views then call :meth:`require`."""

    def __init__(self, tokens: TokenStore, hosts: frozenset[str] | None, *, clock: Callable[[], float] = time.time):
        self.tokens = tokens
        self.hosts = hosts
        self.clock = clock

    def install(self, app: Flask) -> None:
        app.before_request(self._before)
        app.after_request(self._after)

    def _before(self):
        if not host_allowed(request.host, self.hosts):
            raise BadHost(f"this appliance does not serve the host {host_name(request.host)!r}; add it to "
                          "APPLIANCE_ALLOWED_HOSTS if it should")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() != f"{request.scheme}://{request.host}".lower():
            raise ForeignOrigin("requests from other web origins are refused; use the console served by this API, "
                                "the CLI or a client that sends no Origin")
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise ForeignOrigin("cross-site requests are refused")
        g.token = None
        header = request.headers.get("Authorization")
        if header is not None:
            secret = bearer(header)
            token = self.tokens.authenticate(secret) if secret else None
            if token is None:
                raise InvalidToken("the token is not valid (unknown, malformed or revoked); "
                                   "`faas token create` makes one")
            if token.expired(self.clock()):
                raise InvalidToken(f"the token {token.name!r} has expired; make a new one")
            g.token = token
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return None
        if g.token is None:
            raise AuthRequired("this call needs a token: send Authorization: Bearer <token> (the CLI finds the "
                               "admin token in the data directory, or give --token / FAAS_TOKEN)")
        return None

    @staticmethod
    def _after(resp):
        if resp.status_code == 401:
            resp.headers["WWW-Authenticate"] = WWW_AUTHENTICATE + (
                ', error="invalid_token"' if request.headers.get("Authorization") else "")
        token = g.get("token")
        if request.method not in SAFE_METHODS:
            log.info("event=api_change token=%s method=%s path=%s status=%s request_id=%s",
                     token.name if token else "-", request.method, request.path, resp.status_code,
                     resp.headers.get("X-Request-Id", "-"))
        return resp

    def token(self) -> Token:
        token = g.get("token")
        if token is None:
            raise AuthRequired("this call needs a token")
        return token

    def require(self, action: str, function: str | None = None) -> Token:
        """The caller's token, when its scope allows ``action`` (on ``function``); else 403. A target
        ``NAME:VERSION`` or ``NAME:ALIAS`` is checked as its function: patterns name bare functions."""
        token = self.token()
        if function:
            function = function.partition(":")[0]
        if not allows(token, action, function, self.clock()):
            what = f"{action} on function {function!r}" if function else action
            raise Forbidden(f"the token {token.name!r} (scope {token.scope}"
                            + (f", functions {token.functions}" if token.functions else "")
                            + f") does not allow {what}")
        return token

    def visible(self, function: str) -> bool:
        """Whether a listing shows ``function`` to the caller (its pattern, if any, matches)."""
        token = g.get("token")
        return token is not None and matches(token.functions, function.partition(":")[0])


def require_content_type(*allowed: str) -> None:
    """Refuse a body of any other media type (a browser's simple POSTs are text/plain or forms)."""
    mimetype = (request.mimetype or "").lower()
    if mimetype in allowed:
        return
    if not mimetype and not request.get_data(cache=True).strip():
        return  # no body at all
    raise UnsupportedMediaType(f"send the body as {' or '.join(allowed)}; got {mimetype or 'no Content-Type'}",
                               field="Content-Type")
