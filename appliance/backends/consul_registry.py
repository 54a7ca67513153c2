"""Ready instances from Consul's service catalog: cluster mode's Registry (the warm cache's source).

An instance of function F is ready when it is a *passing* entry of the Consul service ``fn-F``:
dispatched instances are registered by their Nomad job's service block, specialised pool instances
register themselves through their node's agent, and both carry an HTTP check on ``/_/ready``.

Why blocking queries: a lookup per request would put Consul on every request's path. Instead one
thread per watched function holds a blocking query (``index`` + ``wait``) on
``/v1/health/service/fn-F?passing`` and keeps the answer in memory; ``ready()`` reads memory only.
A catalog watcher notices new ``fn-*`` services, so this edge adopts instances other edges started.
Subscribers are told when a function's ready set changed.

Why a last good view: an edge must keep serving warm instances through a Consul restart or a short
partition. While Consul does not answer, the last view is served for ``stale_limit_s`` seconds
(``status()`` says so, for the edge's health endpoint); after that it is dropped, since instances
may have gone meanwhile. Cold starts need Consul (claims, registration), so
:meth:`require_available` refuses them with ``Registry.Unavailable`` during an outage.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable

import consul
import requests

from appliance.backends.consul_kv import consul_client
from appliance.core.errors import RegistryUnavailable
from appliance.core.model import Instance

log = logging.getLogger("appliance.consul_registry")

SERVICE_PREFIX = "fn-"
#: Shortest time between two blocking queries of one watcher (Consul's client rule: rate-limit).
MIN_QUERY_GAP_S = 0.05
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0


def service_name(function: str) -> str:
    return f"{SERVICE_PREFIX}{function}"


def instance_from_entry(entry: dict) -> Instance | None:
    """An Instance from one entry of /v1/health/service (None when it is not one of ours)."""
    svc, node = entry.get("Service") or {}, entry.get("Node") or {}
    meta = svc.get("Meta") or {}
    function = meta.get("function")
    if not function or not svc.get("Port"):
        return None
    address = svc.get("Address") or node.get("Address")  # "" means: the node's address
    try:
        version = int(meta.get("version") or 0)
        concurrency = max(1, int(meta.get("concurrency") or 1))
        # The published version it runs (README "Versions and aliases"), once registrations carry it.
        published = int(meta.get("published") or 0)
    except ValueError:
        return None
    return Instance(id=meta.get("instance_id") or svc.get("ID"), function=function, version=version,
                    address=f"{address}:{svc['Port']}", concurrency=concurrency, node=node.get("Node") or "",
                    published=published)


class _Watch:
    """One function's view: the passing instances its watcher thread last saw."""

    def __init__(self, function: str):
        self.function = function
        self.instances: dict[str, Instance] = {}
        self.absent_since: dict[str, float] = {}
        self.loaded = threading.Event()
        self.thread: threading.Thread | None = None


class ConsulRegistry:
    """The Registry port over Consul's health API (see the module docstring).

    ``stale_limit_s``: how long the last view is served while Consul does not answer.
    ``removal_grace_s``: how long an entry that stopped passing is kept (Consul restart blips). After
    an agent restart Consul probes each check again only after a random stagger of up to its
    interval (agent/checks/check.go), then within its timeout: with the jobs' 2 s interval and 1 s
    timeout an entry can be critical for 3 s, so the grace is 5 s."""

    def __init__(self, addr: str, *, token: str = "", wait_s: float = 30.0, stale_limit_s: float = 60.0,
                 removal_grace_s: float = 5.0, clock=time.monotonic):
        self.addr = addr
        self.wait_s = wait_s
        self.stale_limit_s = stale_limit_s
        self.removal_grace_s = removal_grace_s
        self.clock = clock
        self._c = consul_client(addr, token, timeout_s=10.0)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._watches: dict[str, _Watch] = {}
        self._forgotten: dict[str, str] = {}     # instance id -> function
        self._subscribers: list[Callable[[str], None]] = []
        self._down_since: float | None = None    # monotonic
        self._down_wall: float | None = None
        self._down_error = ""
        self._dropped = False
        self._stop = threading.Event()
        self._catalog = threading.Thread(target=self._catalog_loop, daemon=True, name="consul-catalog")
        self._catalog.start()

    # -- Registry port ------------------------------------------------------------------------

    def ready(self, function: str) -> list[Instance]:
        w = self.watch(function)
        w.loaded.wait(1.0)  # the first answer, when this function was not watched yet
        with self._lock:
            if self._dropped:
                return []
            return [i for i in w.instances.values() if i.id not in self._forgotten]

    def forget(self, instance_id: str) -> None:
        """Drop an instance from this edge's view now (it refused or failed); it stays out until
        Consul stops listing it, so a check that has not noticed yet cannot bring it back."""
        with self._lock:
            function = next((f for f, w in self._watches.items() if instance_id in w.instances), None)
            if function is None or instance_id in self._forgotten:
                return
            self._forgotten[instance_id] = function
        self._notify(function)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    # -- for the scheduler and the edge -------------------------------------------------------

    def watch(self, function: str) -> _Watch:
        with self._lock:
            w = self._watches.get(function)
            if w is None:
                w = self._watches[function] = _Watch(function)
                w.thread = threading.Thread(target=self._watch_loop, args=(w,), daemon=True,
                                            name=f"consul-watch-{function}")
                w.thread.start()
            return w

    def wait_for(self, function: str, instance_id: str, deadline: float) -> Instance | None:
        """Block until ``instance_id`` is a passing entry of ``fn-<function>`` or ``deadline``."""
        w = self.watch(function)
        with self._cond:
            while True:
                inst = w.instances.get(instance_id)
                if inst is not None and instance_id not in self._forgotten:
                    return inst
                left = deadline - self.clock()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def require_available(self) -> None:
        """Raise Registry.Unavailable while Consul does not answer (cold starts need it).

        The flag is set by a watcher whose query failed; it may be stale (the watcher is in its
        backoff while Consul is back), so a set flag is confirmed with a quick direct request."""
        with self._lock:
            since, err = self._down_wall, self._down_error
        if since is not None:
            try:
                self._c.status.leader()
            except (requests.RequestException, consul.ConsulException) as exc:
                err = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                self._reachable()
                return
            raise RegistryUnavailable(
                f"Consul at {self.addr} is unreachable since {_iso(since)} ({err}); new instances cannot be "
                "started or registered until it answers again; warm instances keep serving")

    def status(self) -> dict:
        """For the edge's health endpoint."""
        with self._lock:
            if self._down_since is None:
                return {"consul": "ok", "address": self.addr, "watched": len(self._watches)}
            view = "dropped" if self._dropped else "serving last view"
            return {"consul": "unreachable", "address": self.addr, "since": _iso(self._down_wall),
                    "view": view, "error": self._down_error,
                    "message": f"consul unreachable since {_iso(self._down_wall)}, {view}"}

    def close(self) -> None:
        self._stop.set()

    # -- watchers -----------------------------------------------------------------------------

    def _watch_loop(self, w: _Watch) -> None:
        index, backoff, last, wait_s = 0, RETRY_MIN_S, 0.0, self.wait_s
        name = service_name(w.function)
        while not self._stop.is_set():
            gap = MIN_QUERY_GAP_S - (self.clock() - last)
            if gap > 0:
                time.sleep(gap)
            last = self.clock()
            try:
                new_index, entries = self._c.health.service(
                    name, passing=True, index=index or None, wait=f"{int(wait_s * 1000)}ms" if index else None)
            except (requests.RequestException, consul.ConsulException, ValueError) as exc:
                w.loaded.set()
                self._unreachable(exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, RETRY_MAX_S)
                index = 0  # ask afresh: Consul may have restarted with a lower index
                continue
            backoff = RETRY_MIN_S
            self._reachable()
            new_index = int(new_index or 0)
            # Consul's client rules: an index that went backwards (Consul lost its state) starts
            # over; never block on an index below 1.
            index = 0 if new_index < index else max(1, new_index)
            seen = {}
            for e in entries or []:
                inst = instance_from_entry(e)
                if inst is not None and inst.function == w.function:
                    seen[inst.id] = inst
            now = self.clock()
            with self._cond:
                # An entry that stops passing is kept for removal_grace_s: after a Consul restart
                # every check is critical until probed again, and dropping warm instances for that
                # blip would cost cold starts. A truly dead instance is caught by the data plane
                # (connection refused or a draining refusal), which calls forget().
                keep = {}
                for iid, inst in w.instances.items():
                    if iid in seen:
                        continue
                    first = w.absent_since.setdefault(iid, now)
                    if now - first < self.removal_grace_s:
                        keep[iid] = inst
                for iid in list(w.absent_since):
                    if iid in seen or iid not in keep:
                        del w.absent_since[iid]
                new = {**keep, **seen}
                changed = set(new) != set(w.instances)
                w.instances = new
                pending = min((self.removal_grace_s - (now - t) for t in w.absent_since.values()), default=None)
                for iid, fn in list(self._forgotten.items()):
                    if fn == w.function and iid not in new:
                        del self._forgotten[iid]
                w.loaded.set()
                self._cond.notify_all()
            if changed:
                log.info("event=registry_changed function=%s instances=%d index=%s", w.function, len(new), index)
                self._notify(w.function)
            wait_s = self.wait_s if pending is None else max(0.05, pending)

    def _catalog_loop(self) -> None:
        """Watch the catalog's service list to adopt functions this edge has not seen yet."""
        index, backoff = 0, RETRY_MIN_S
        while not self._stop.is_set():
            try:
                new_index, services = self._c.catalog.services(index=index or None,
                                                               wait=f"{int(self.wait_s)}s" if index else None)
            except (requests.RequestException, consul.ConsulException, ValueError) as exc:
                self._unreachable(exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, RETRY_MAX_S)
                index = 0
                continue
            backoff = RETRY_MIN_S
            self._reachable()
            new_index = int(new_index or 0)
            index = max(1, new_index)
            for svc in services or {}:
                if svc.startswith(SERVICE_PREFIX):
                    self.watch(svc[len(SERVICE_PREFIX):])
            time.sleep(MIN_QUERY_GAP_S)

    def _unreachable(self, exc: Exception) -> None:
        drop = False
        with self._cond:
            now = self.clock()
            if self._down_since is None:
                self._down_since, self._down_wall = now, time.time()
                self._down_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("event=consul_unreachable address=%s error=%r serving=last_view limit_s=%s",
                            self.addr, self._down_error, self.stale_limit_s)
            elif not self._dropped and now - self._down_since >= self.stale_limit_s:
                self._dropped = drop = True
                log.warning("event=registry_view_dropped address=%s down_s=%.1f", self.addr, now - self._down_since)
            functions = list(self._watches)
            self._cond.notify_all()
        if drop:
            for f in functions:
                self._notify(f)

    def _reachable(self) -> None:
        with self._cond:
            if self._down_since is None:
                return
            down_s = self.clock() - self._down_since
            self._down_since = self._down_wall = None
            self._down_error = ""
            was_dropped, self._dropped = self._dropped, False
            functions = list(self._watches)
        log.info("event=consul_reachable address=%s down_s=%.1f view_was_dropped=%s", self.addr, down_s, was_dropped)
        for f in functions:
            self._notify(f)

    def _notify(self, function: str) -> None:
        with self._lock:
            subs = list(self._subscribers)
        for cb in subs:
            try:
                cb(function)
            except Exception:  # noqa: BLE001 - one subscriber must not stop the others
                log.exception("event=registry_subscriber_failed function=%s", function)


def _iso(t: float | None) -> str:
    return datetime.fromtimestamp(t or 0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
