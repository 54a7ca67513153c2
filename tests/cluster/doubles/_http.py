"""Shared plumbing of the doubles: a threaded werkzeug server that can go down and come
back on the same port, a tiny router, plain-text errors and Go duration parsing."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Callable

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


class HTTPError(Exception):
    """An error answered as a plain-text body (reference §1 and §15: errors are not JSON)."""

    def __init__(self, status: int, message: str = "", headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def text(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(message, status=status, headers=headers or {},
                    content_type="text/plain; charset=utf-8")


def as_json(value, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(value), status=status, headers=headers or {},
                    content_type="application/json")


_DUR = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(value: str) -> float:
    """Go ``time.ParseDuration`` subset: ``"1m30s"``, ``"500ms"``, ``"0"``. Seconds out."""
    s = value.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if s[:1] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if not s:
        raise ValueError(f"time: invalid duration {value!r}")
    pos, total = 0, 0.0
    for m in _DUR.finditer(s):
        if m.start() != pos:
            raise ValueError(f"time: invalid duration {value!r}")
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"time: invalid duration {value!r}")
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Inverse of :func:`parse_go_duration` for whole milliseconds, Go style (``1m30s``)."""
    ms = int(round(seconds * 1000))
    if ms == 0:
        return "0s"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, msec = divmod(rem, 1000)
    out = ""
    if h:
        out += f"{h}h"
    if h or m:
        out += f"{m}m"
    if msec:
        out += f"{s}.{msec:03d}".rstrip("0") + "s"
    else:
        out += f"{s}s"
    return out


class Route:
    def __init__(self, methods: tuple[str, ...], pattern: str, handler: Callable):
        self.methods = methods
        self.regex = re.compile("^" + pattern + "$")
        self.handler = handler


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # one line per request would drown test output
        pass

    def log(self, type, message, *args):
        if type == "error":
            super().log(type, message, *args)


class DoubleServer:
    """Serves a WSGI app on ``host``:``port`` in a thread; ``down()`` closes the listening
    socket (connections refused) and cuts requests in flight, ``up()`` rebinds the same port.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self._app = app
        self.host = host
        self.port = port
        self._server = None
        self._thread = None
        self._lock = threading.Lock()
        self.is_down = True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _wsgi(self, environ, start_response):
        try:
            if self.is_down:
                raise ConnectionAbortedError("double is down")
            return self._app(environ, start_response)
        except ConnectionAbortedError:
            # A process that is going away: drop the connection without an answer.
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            raise

    def up(self) -> None:
        with self._lock:
            if not self.is_down:
                return
            deadline = time.monotonic() + 10
            while True:
                try:
                    self._server = make_server(self.host, self.port, self._wsgi, threaded=True,
                                               request_handler=_QuietHandler)
                    break
                except OSError:
                    # The old socket of a restart may linger for a moment.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._server.daemon_threads = True
            self.port = self._server.server_port
            self.is_down = False
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True,
                                            name=f"double-{self.port}")
            self._thread.start()

    def down(self) -> None:
        with self._lock:
            if self.is_down:
                return
            self.is_down = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None


class App:
    """Minimal router: ``routes`` are matched in order against the path; a path that matches
    with the wrong method gets 405, no match 404."""

    not_found_body = "404 page not found\n"

    def __init__(self):
        self.routes: list[Route] = []
        # Query parameters the double does not implement: answered 400 rather than ignored, so a
        # test never silently gets unfiltered results.
        self.unsupported_params: tuple[str, ...] = ("filter",)

    def route(self, methods, pattern):
        def deco(fn):
            self.routes.append(Route(tuple(methods), pattern, fn))
            return fn
        return deco

    def method_not_allowed(self, method: str) -> Response:
        return text(405, f"method {method} not allowed")

    def decorate(self, request: Request, response: Response) -> Response:
        return response

    def authorize(self, request: Request) -> None:
        """Called before a matched route's handler; raises :class:`HTTPError` to refuse it."""

    def __call__(self, environ, start_response):
        request = Request(environ)
        path = request.path
        response = None
        for name in self.unsupported_params:
            if name in request.args:
                return self.decorate(request, text(400, f"query parameter {name!r} is not supported by this API double"))(
                    environ, start_response)
        allowed = False
        for r in self.routes:
            m = r.regex.match(path)
            if not m:
                continue
            allowed = True
            if request.method not in r.methods:
                continue
            try:
                self.authorize(request)
                response = r.handler(request, *m.groups())
            except HTTPError as e:
                response = text(e.status, e.message, e.headers)
            break
        if response is None:
            response = self.method_not_allowed(request.method) if allowed else text(404, self.not_found_body)
        return self.decorate(request, response)(environ, start_response)



class BlockingQueries:
    """The blocking-query behaviour Nomad (§9) and Consul (§21) share: with ``index`` > 0, hold the
    read until the watched index moves past it or ``wait`` (a Go duration, capped at ``max_wait``)
    runs out. A double using it has ``_cond``, ``max_wait`` and ``blocked_queries``, and implements
    ``_wait_index(want, index_fn, deadline, token)``; ``_block_token()`` lets it tell a wait that the
    server went down meanwhile."""

    def _block_token(self):
        return None

    def _block(self, request, index_fn) -> int:
        raw = request.args.get("index")
        with self._cond:
            if raw not in (None, ""):
                try:
                    want = int(raw)
                except ValueError:
                    raise HTTPError(400, "Invalid index")
                wait_raw = request.args.get("wait")
                try:
                    wait = parse_go_duration(wait_raw) if wait_raw else 300.0
                except ValueError:
                    raise HTTPError(400, "Invalid wait time")
                wait = min(wait, self.max_wait)
                token = self._block_token()
                deadline = time.monotonic() + wait
                blocked = want > 0 and index_fn() <= want
                if blocked:
                    self.blocked_queries += 1
                    self._cond.notify_all()
                try:
                    self._wait_index(want, index_fn, deadline, token)
                finally:
                    if blocked:
                        self.blocked_queries -= 1
            return max(1, index_fn())

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
