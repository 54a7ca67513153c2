"""Edge routers listed in Consul, so a control plane can find every edge's invocation records.

Each edge registers itself with its node's Consul agent as service ``faas-edge`` (an HTTP check on
``/_/health``, removed by Consul if it stays critical) and deregisters when it stops. An edge run
by the edge-router Nomad job is registered by Nomad too; the records view drops duplicates.
"""

from __future__ import annotations

import logging
import threading
import time

import consul

from appliance.backends.consul_kv import consul_client

log = logging.getLogger("appliance.edges")

SERVICE = "faas-edge"
#: Seconds a list of edges is reused before Consul is asked again.
CACHE_S = 2.0


class EdgeDirectory:
    def __init__(self, addr: str, *, token: str = "", clock=time.monotonic):
        self._consul = consul_client(addr, token, timeout_s=3.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: tuple[float, list[str]] | None = None
        self.self_id: str | None = None

    def register(self, service_id: str, address: str, port: int) -> None:
        check = consul.Check.http(f"http://{address}:{port}/_/health", interval="5s", timeout="2s",
                                  deregister="1m")
        self._consul.agent.service.register(SERVICE, service_id=service_id, address=address, port=port,
                                            tags=["faas", "edge"], check=check)
        self.self_id = service_id
        log.info("event=edge_registered service_id=%s address=%s port=%d", service_id, address, port)

    def deregister(self) -> None:
        if self.self_id is None:
            return
        try:
            self._consul.agent.service.deregister(self.self_id)
        except (consul.ConsulException, OSError) as exc:
            log.warning("event=edge_deregister_failed service_id=%s error=%r", self.self_id, str(exc))
        self.self_id = None

    def edges(self) -> list[str]:
        """Base URLs of the passing edges, this process excluded."""
        now = self._clock()
        with self._lock:
            if self._cache and now - self._cache[0] < CACHE_S:
                return self._cache[1]
        try:
            _, entries = self._consul.health.service(SERVICE, passing=True)
        except (consul.ConsulException, OSError) as exc:
            log.warning("event=edge_list_failed error=%r", str(exc))
            return self._cache[1] if self._cache else []
        urls = sorted({f"http://{e['Service'].get('Address') or e['Node']['Address']}:{e['Service']['Port']}"
                       for e in entries if e["Service"]["ID"] != self.self_id})
        with self._lock:
            self._cache = (now, urls)
        return urls
