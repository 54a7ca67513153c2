"""The edge's HTTP server: Flask served by Granian's Rust HTTP/1.1 engine, inside this process.

Why not waitress (which still serves the control API): the edge is the data plane, and every
warm request pays its server's cost. Measured on 2 cores with wrk at 16 connections, a Flask app
forwarding each request to a warm instance reached about 1,700 req/s under waitress (its
asyncore thread hands every request to a worker thread and every response back, and the
handoffs contend for the GIL) and about 3,000 req/s under Granian, where connections, parsing
and keep-alive live in Rust threads and Python runs only the WSGI call.

Why in this process rather than Granian's own supervisor: Granian runs its workers as child
processes, but the embedded appliance keeps its instance pools, single-flight cold starts and
the local scheduler in the edge's memory, shared with the scaler and the control API. So this
module starts one Granian WSGI worker on our own listening socket (port 0 works: we bind it, so
we know the port) and stops it with the worker's signal. It relies on the worker constructor of
the pinned Granian version (requirements.txt); ``tests/integration`` start it on every run, so
an upgrade that changes it fails there, not in production.
"""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger("appliance.http")


class GranianServer:
    """One WSGI app on ``host:port`` with at most ``threads`` Python threads running requests.

    A request holds its Python thread for the whole invocation (including a cold start it waits
    for), so ``threads`` bounds the invocations in flight through this edge; Granian's
    ``backpressure`` keeps further connections' requests queued in Rust, not refused.
    """

    def __init__(self, app, host: str, port: int, *, threads: int, max_body_bytes: int, backlog: int = 1024,
                 idle_thread_timeout_s: int = 30, runtime_threads: int = 1):
        from granian._futures import _new_cbscheduler
        from granian._granian import SocketHolder, WorkerSignal, WSGIWorker
        from granian._loops import loops
        from granian.wsgi import _callback_wrapper

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(backlog)
        except OSError:
            self._sock.close()
            raise
        self._sock.set_inheritable(False)
        self.effective_port = self._sock.getsockname()[1]
        self._signal = WorkerSignal()
        self._loop = loops.get("asyncio")
        wsgi_app = _whole_bodies(_sized_bodies(app, max_body_bytes))
        callback = _callback_wrapper(wsgi_app, {"url_path_prefix": None}, None)
        self._scheduler = _new_cbscheduler(self._loop, callback, impl_asyncio=False)
        no_tls = (False, None, None, None, "tls1.3", None, [], False)
        self._worker = WSGIWorker(
            1, (None, SocketHolder(self._sock.fileno(), False, backlog)), None,
            runtime_threads, 512, threads, idle_thread_timeout_s, max(threads, backlog),
            "1", None, None, None, *no_tls, (None, None))
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin serving; returns at once (the engine runs on its own threads)."""
        with self._lock:
            if not self._started:
                self._worker.serve_mtr(self._scheduler, self._loop, self._signal)
                self._started = True

    def close(self) -> None:
        """Stop accepting and let the engine wind down its connections."""
        with self._lock:
            if self._started:
                self._signal.set()
                self._started = False
            try:
                self._sock.close()
            except OSError:
                pass


def _whole_bodies(app):
    """Hand Granian each response body as one list item.

    Granian sends a list in one call but pulls any other iterable item by item across the
    Python/Rust boundary; Flask returns an iterator even for a body it holds in memory. The edge
    never streams (an invocation's result is whole before it is mapped), so joining costs
    nothing and took the largest single share of the edge's Python time per warm request.
    """

    def wsgi(environ, start_response):
        rv = app(environ, start_response)
        if isinstance(rv, list):
            return rv
        try:
            return [b"".join(rv)]
        finally:
            close = getattr(rv, "close", None)
            if close is not None:
                close()

    return wsgi


def _sized_bodies(app, max_body_bytes: int):
    """Give a chunked request body a Content-Length, reading at most one byte past the limit.

    Without a length, Werkzeug reads a streamed body only up to ``MAX_CONTENT_LENGTH`` and
    silently drops the rest, so a chunked upload over the limit would reach the function cut
    short. With the length known (at most the limit plus one), Flask refuses it with a 413.
    """
    import io

    def wsgi(environ, start_response):
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            stream = environ["wsgi.input"]
            parts, size = [], 0
            while size <= max_body_bytes:
                chunk = stream.read(min(1 << 16, max_body_bytes + 1 - size))
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
            environ["wsgi.input"] = io.BytesIO(b"".join(parts))
            environ["CONTENT_LENGTH"] = str(size)
            # The body is de-chunked now; Werkzeug ignores a length beside "chunked".
            del environ["HTTP_TRANSFER_ENCODING"]
        return app(environ, start_response)

    return wsgi
