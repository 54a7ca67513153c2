"""The other edges' concurrency reports, fetched for the elected edge's decision.

The edges are the passing ``faas-edge`` entries of Consul (``EdgeDirectory.edges``, this process
excluded). All are asked at once; the answers that arrive within ``timeout_s`` are used and the
others are left out of this tick, with one log line each: a slow or dead edge must never hold up
the decisions for the edges that answer (its share of the load then counts as zero for that tick,
which the stable window smooths over, and a dead edge has no load to count).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import requests

from appliance.core.cluster_load import EdgeReport
from appliance.core.errors import ValidationError

log = logging.getLogger("appliance.cluster.peer_loads")

#: Seconds the elected edge waits for the other edges' reports in one tick.
PEER_TIMEOUT_S = 1.0


class PeerLoads:
    def __init__(self, edges: Callable[[], list[str]], *, timeout_s: float = PEER_TIMEOUT_S, credential: str = ""):
        self.edges = edges
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if credential:  # the edges' /_/concurrency answers only the appliance's own parts
            self._session.headers["Authorization"] = f"Bearer {credential}"
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="peer-loads")

    def _ask(self, url: str) -> EdgeReport:
        resp = self._session.get(url.rstrip("/") + "/_/concurrency", timeout=(self.timeout_s, self.timeout_s))
        resp.raise_for_status()
        return EdgeReport.from_json(resp.json())

    def collect(self) -> dict[str, EdgeReport | None]:
        """Report per edge URL; None for an edge that did not answer in time or answered nonsense."""
        urls = list(self.edges())
        if not urls:
            return {}
        jobs = {url: self._pool.submit(self._ask, url) for url in urls}
        wait(list(jobs.values()), timeout=self.timeout_s)
        out: dict[str, EdgeReport | None] = {}
        for url, job in jobs.items():
            if not job.done():
                job.cancel()
                log.warning("event=edge_load_missing edge=%s error=%r", url, f"no answer within {self.timeout_s:g} s")
                out[url] = None
                continue
            try:
                out[url] = job.result()
            except (requests.RequestException, ValueError, ValidationError) as exc:
                log.warning("event=edge_load_missing edge=%s error=%r", url, str(exc)[:200])
                out[url] = None
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()
