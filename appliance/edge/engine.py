"""The edge's HTTP server: Granian's Rust HTTP/1.1 engine, inside this process.

Why not waitress (which still serves the control API): the edge is the data plane, and every
warm request pays its server's cost. Measured on 2 cores with wrk at 16 connections, a Flask app
forwarding each request to a warm instance reached about 1,700 req/s under waitress (its
asyncore thread hands every request to a worker thread and every response back, and the
handoffs contend for the GIL) and about 3,000 req/s under Granian's WSGI interface, where
connections, parsing and keep-alive live in Rust threads. Its RSGI interface, which runs
requests as coroutines on one asyncio loop, went further (see :mod:`.trigger_path`).

Why uvloop: the loop's own work (readiness polling, the cross-thread wake-up Granian uses to
hand each request over, transport writes and reads) was about a fifth of the warm path's CPU
under the standard asyncio loop; uvloop does it in C (7,700 -> 8,100 req/s at 16 connections,
alone). Why Granian's asyncio task implementation and not its Rust one: with the Rust one, a
request whose coroutine waited on a thread-pool future (the invoker settling a timeout) was
closed mid-wait and answered 500; the asyncio one was also the faster of the two on uvloop.

Why in this process rather than Granian's own supervisor: Granian runs its workers as child
processes, but the embedded appliance keeps its instance pools, single-flight cold starts and
the local scheduler in the edge's memory, shared with the scaler and the control API. So this
module starts one Granian RSGI worker on our own listening socket (port 0 works: we bind it, so
we know the port) and stops it with the worker's signal. It relies on the worker constructor of
the pinned Granian version (requirements.txt); ``tests/integration`` start it on every run, so
an upgrade that changes it fails there, not in production.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvloop

log = logging.getLogger("appliance.http")


class GranianServer:
    """One RSGI app (:class:`.trigger_path.EdgeApp`) on ``host:port``, its Python side on a uvloop
    event loop in a thread of its own. Connections, parsing and keep-alive live in Granian's Rust
    threads; ``backpressure`` keeps further requests queued in Rust, not refused."""

    def __init__(self, app, host: str, port: int, *, backlog: int = 1024, backpressure: int = 1024,
                 runtime_threads: int = 1, header_timeout_s: float = 10.0):
        from granian._futures import _future_watcher_wrapper, _new_cbscheduler
        from granian._granian import RSGIWorker, SocketHolder, WorkerSignal
        from granian.http import HTTP1Settings

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
        self._loop = uvloop.new_event_loop()
        self._scheduler = _new_cbscheduler(self._loop, _future_watcher_wrapper(app), impl_asyncio=True)
        no_tls = (False, None, None, None, "tls1.3", None, [], False)
        self._worker = RSGIWorker(
            1, (None, SocketHolder(self._sock.fileno(), False, backlog)), None,
            runtime_threads, 512, 1, 30, backpressure,
            # Headers must arrive within header_timeout_s (Granian's default was 30 s); the body's
            # deadline is the trigger path's (read_body).
            "1", HTTP1Settings(header_read_timeout=int(header_timeout_s * 1000)), None, False, None, *no_tls,
            (None, None))
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin serving; returns at once (the engine and the loop run on their own threads)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop.run_forever, name="edge-loop", daemon=True)
                self._thread.start()
                self._worker.serve_mtr(self._scheduler, self._loop, self._signal)

    def close(self) -> None:
        """Stop accepting, let the engine wind down its connections, then stop the loop."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._signal.set()
                self._loop.call_soon_threadsafe(self._loop.stop)
                thread.join(timeout=5)
            try:
                self._sock.close()
            except OSError:
                pass
