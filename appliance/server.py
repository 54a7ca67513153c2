"""Runs the appliance's HTTP servers in one process: the edge router and/or the control API.

The edge (the data plane) is served by Granian's Rust HTTP engine (see :mod:`.http_server` for
the measurements); the control API, where requests are few and uploads large, by waitress with
its own thread pool. Warm edge requests run on the edge's event loop; a request waiting for an
instance (a free slot or a cold start) holds one of the edge's threads, so it gets many.
Once listening, the server writes ``<data_dir>/appliance.json`` with the actual ports (port 0
picks free ones), which the CLI and the tests read.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import waitress

from appliance.config import Settings
from appliance.edge.engine import GranianServer
from appliance.wiring import Components, build

log = logging.getLogger("appliance.server")

EDGE_THREADS = 128
CONTROL_THREADS = 16
#: Container allocations between two collections of the youngest generation (default 700).
GC_YOUNG_THRESHOLD = 20_000


class Appliance:
    def __init__(self, settings: Settings, roles=("edge", "control")):
        self.settings = settings
        self.roles = tuple(roles)
        self.components: Components = build(settings)
        self._servers = []
        self._edge_app = None
        self._threads: list[threading.Thread] = []
        self.ports: dict[str, int] = {}
        self._stopped = threading.Event()
        self._closed = threading.Event()
        #: Where the first start wrote the admin token (None when one already existed).
        self.admin_token_path: Path | None = None

    def start(self) -> None:
        raise_open_files_limit()
        from appliance.control.api import create_control_app
        from appliance.control.connections import ConnectionGuard, guard_server
        from appliance.edge.app import create_edge

        c = self.components
        s = self.settings
        # poll() rather than select(): select() cannot watch descriptors above 1023, and past that
        # many connections waitress's IO thread would die and the server stop answering.
        # channel_timeout closes connections silent for that long; requests being served are never
        # cut, and control/connections.py adds per-request receive deadlines and per-client bounds.
        common = dict(host=s.api_listen, ident="faas-appliance", connection_limit=s.max_connections, backlog=1024,
                      asyncore_use_poll=True, channel_timeout=max(1.0, s.header_timeout_s), cleanup_interval=1,
                      clear_untrusted_proxy_headers=True)
        edge = None
        if "edge" in self.roles:
            self._edge_app = create_edge(c, threads=EDGE_THREADS)
            edge = GranianServer(self._edge_app, s.edge_listen, s.edge_port, header_timeout_s=s.header_timeout_s)
            self.ports["edge"] = edge.effective_port
            self._servers.append(edge)
        if "control" in self.roles:
            server = waitress.create_server(create_control_app(c), port=s.api_port, threads=CONTROL_THREADS,
                                            max_request_body_size=s.max_code_bytes + (1 << 20), **common)
            guard_server(server, ConnectionGuard(per_client=s.max_connections_per_client,
                                                 header_timeout_s=s.header_timeout_s, body_timeout_s=s.body_timeout_s))
            self.ports["control"] = server.effective_port
            self._servers.append(server)
        c.ports.update(self.ports)
        if "control" in self.roles:
            from appliance.wiring import ensure_admin_token
            self.admin_token_path = ensure_admin_token(c)
        c.install_net_filter()
        for server in self._servers:
            if server is edge:
                edge.start()
                continue
            t = threading.Thread(target=server.run, daemon=True, name="http")
            t.start()
            self._threads.append(t)
        c.start()
        if "edge" in self.ports:
            addr = s.advertise_addr or (s.edge_listen if s.edge_listen not in ("0.0.0.0", "::", "") else socket.getfqdn())
            if c.edge_directory is not None:
                c.edge_directory.register(f"faas-edge-{s.node_name or socket.gethostname()}-{self.ports['edge']}",
                                          addr, self.ports["edge"])
            # Only edges see traffic, so only edges stand for deciding the scaling.
            if c.leadership is not None:
                c.leadership.start({"edge": c.scaler.edge_id, "url": f"http://{addr}:{self.ports['edge']}"})
        info = {"pid": os.getpid(), "host": s.host, "mode": s.mode,
                "edge_url": f"http://{url_host(s.edge_listen)}:{self.ports['edge']}" if "edge" in self.ports else None,
                "api_url": f"http://{url_host(s.api_listen)}:{self.ports['control']}" if "control" in self.ports
                else None}
        path = s.data_path / "appliance.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)
        log.info("event=listening mode=%s edge=%s api=%s data_dir=%s", s.mode, info["edge_url"], info["api_url"],
                 s.data_path)
        tune_gc()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("event=stopping")
        try:
            for server in self._servers:
                server.close()
            if self._edge_app is not None:
                self._edge_app.close()
            self.components.close()
            try:
                (self.settings.data_path / "appliance.json").unlink()
            except FileNotFoundError:
                pass
        finally:
            self._closed.set()

    def wait(self) -> None:
        """Until stop() has finished closing everything (instances, zygotes, cgroups), not just begun."""
        self._stopped.wait()
        self._closed.wait()

    def install_signal_handlers(self) -> None:
        def handle(signum, frame):
            threading.Thread(target=self.stop, daemon=True).start()
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def url_host(host: str) -> str:
    """The address to put in a URL for a listening address: a wildcard is reached on loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    What start-up built (modules, the app, the wiring) lives as long as the process, so it is
    frozen out of the collector's generations; and the youngest generation collects every
    ``GC_YOUNG_THRESHOLD`` container allocations rather than every 700. A warm request allocates
    a few hundred containers that reference counting frees at once, so at the default threshold
    the collector ran every few requests and took about 6% of the edge loop's CPU (perf, 16
    connections); cycles are still collected, only less often.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: every client connection and every
    pooled connection to an instance is a descriptor, and 1024 is a common default."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
    return want


def read_info(data_dir: Path) -> dict | None:
    try:
        return json.loads((Path(data_dir) / "appliance.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
