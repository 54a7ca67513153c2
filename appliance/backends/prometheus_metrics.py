"""Prometheus metrics: the core's observer (appliance/core/observe.py) and what is read at scrape time.

One :class:`Metrics` per process, built by the wiring and served by both faces: the control API's
``GET /metrics`` and the edge's ``GET /_/metrics`` (in embedded mode both are one process, so both
show the same numbers; in cluster mode each edge shows its own traffic and the control plane its own).

Two kinds of numbers:

* counted as work happens, at the invoker's record point (one call per invocation, after its record
  is complete): invocations by function and status, errors by function and code, end-to-end duration
  and queue wait, cold starts by cause, the cold-start phases; failed scheduler and backend calls.
* read when scraped, so they cost the request path nothing: instances by state and queued requests
  (the activator's pools), the runtime pool (cluster mode, as the last top-up pass saw it), the edge's
  open client connections.

Label cardinality is bounded: labels are function names (at most ``max_functions`` distinct ones;
later ones are counted under ``_other``), statuses, cold-start causes and phases (fixed sets), and
error codes, where a function's own exception names (``ValueError``, anything it raises) count as
``Function.Error`` so a handler cannot grow the label set. Request ids are never labels.

Why the request-path numbers are plain integers under one lock, turned into metric families only
when scraped: prometheus_client's own Counter and Histogram take a lock for every bucket, sum and
count they touch, and a warm invocation's three updates took about 7 us on the build machine, against
about 1.5 us this way (one lock, one bisect per histogram). prometheus_client still does the
exposition, the families and the process metrics.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

#: Distinct function names that get their own label values; later ones are counted as ``_other``.
MAX_FUNCTION_LABELS = 1000
OTHER = "_other"
#: Error code prefixes the platform owns; any other code is a function's own exception name.
PLATFORM_CODE_PREFIXES = ("Function.", "Runtime.", "Instance.", "Activation.", "Request.", "Resource.", "Auth.",
                          "Scheduler.", "Code.", "Trigger.", "Route.")
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900)
QUEUE_BUCKETS = (.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
PHASE_BUCKETS = (.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
COLD_PHASES = ("placement", "code_fetch", "sandbox", "restore", "runtime_init", "user_init")


def error_label(code: str | None) -> str:
    """A bounded label for an error code: platform codes as they are, a function's own ones as one."""
    if not code:
        return "none"
    return code if code.startswith(PLATFORM_CODE_PREFIXES) and len(code) <= 64 else "Function.Error"


class _Hist:
    """A histogram's state as plain numbers: per-bucket counts (not cumulative) and the sum."""
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:  # the owner's lock is held
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    def family_samples(self):
        """(buckets as [(le, cumulative count)], sum) for HistogramMetricFamily.add_metric."""
        out, acc = [], 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts):
            acc += n
            out.append((bound, acc))
        return out, self.sum


class _Fn:
    """One function's numbers (or ``_other``'s), updated under the owner's lock."""
    __slots__ = ("name", "counts", "errors", "colds", "duration", "queue")

    def __init__(self, name: str):
        self.name = name
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.colds: dict[str, int] = {}
        self.duration = _Hist(DURATION_BUCKETS)
        self.queue = _Hist(QUEUE_BUCKETS)


class Metrics:
    """The process's metrics registry and the core's observer (see the module docstring)."""

    def __init__(self, *, max_functions: int = MAX_FUNCTION_LABELS, process: bool = True):
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_functions = max_functions
        self._fns: dict[str, _Fn] = {}
        self._named = 0
        self._other: _Fn | None = None
        #: One lock for every number counted on the request path: one acquisition per invocation.
        self._lock = threading.Lock()
        self._phases = {p: _Hist(PHASE_BUCKETS) for p in COLD_PHASES}
        self._backend: dict[tuple[str, str], int] = {}
        self._sources: list = []
        self.registry.register(_CountedCollector(self))
        self.registry.register(_ScrapeCollector(self))
        if process:
            ProcessCollector(registry=self.registry)

    # -- the core's Observer -------------------------------------------------------------

    def invocation(self, rec) -> None:
        fn = self._fns.get(rec.function) or self._fn(rec.function)
        status = rec.status
        phases = rec.phases
        queue = phases.get("queue")
        with self._lock:
            counts = fn.counts
            counts[status] = counts.get(status, 0) + 1
            fn.duration.observe(rec.duration_ms / 1000.0)
            if queue is not None:
                fn.queue.observe(queue / 1000.0)
            if status != "ok":
                code = error_label(rec.error_type)
                fn.errors[code] = fn.errors.get(code, 0) + 1
            if rec.cold:
                cause = rec.cold_cause or "cold"
                fn.colds[cause] = fn.colds.get(cause, 0) + 1
                for phase, hist in self._phases.items():
                    ms = phases.get(phase)
                    if ms:
                        hist.observe(ms / 1000.0)

    def backend_error(self, component: str, kind: str) -> None:
        key = (component, (kind or "unknown")[:64])
        with self._lock:
            if key in self._backend or len(self._backend) < 100:
                self._backend[key] = self._backend.get(key, 0) + 1

    def _fn(self, name: str) -> _Fn:
        """The numbers of ``name``: its own while fewer than ``max_functions`` names have them,
        else the shared ``_other`` ones. The name map itself is bounded too (names past the bound
        are looked up under the lock each time; that takes churning thousands of functions)."""
        with self._lock:
            fn = self._fns.get(name)
            if fn is None:
                if self._named < self.max_functions:
                    fn = _Fn(name)
                    self._named += 1
                else:
                    fn = self._other = self._other or _Fn(OTHER)
                if len(self._fns) < 4 * self.max_functions:
                    self._fns[name] = fn
            return fn

    # -- read at scrape time ---------------------------------------------------------------

    def watch(self, *, activator=None, scheduler=None, edge_port=None) -> None:
        """What to read at each scrape: the activator's pools, the scheduler's runtime pool, and a
        callable giving the edge's listening port (known once the server listens)."""
        self._sources.append((activator, scheduler, edge_port))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4, which every Prometheus reads) and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class _CountedCollector:
    """The numbers counted on the request path, as metric families (copied under the lock)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.m
        inv = CounterMetricFamily("faas_invocations", "Invocations by function and status "
                                  "(ok, error, timeout, throttled, unavailable).", labels=["function", "status"])
        err = CounterMetricFamily("faas_invocation_errors", "Failed invocations by function and error code.",
                                  labels=["function", "code"])
        cold = CounterMetricFamily("faas_cold_starts", "Invocations that waited for a new instance, by cause "
                                   "(no-instance, all-busy, new-version, after-crash).", labels=["function", "cause"])
        dur = HistogramMetricFamily("faas_invocation_duration_seconds", "End-to-end invocation time at the edge.",
                                    labels=["function"])
        queue = HistogramMetricFamily("faas_queue_wait_seconds", "Time a request waited for a free slot, not "
                                      "counting a cold start it waited for.", labels=["function"])
        phase = HistogramMetricFamily("faas_cold_start_phase_seconds", "Cold-start phases as the requests that "
                                      "waited for them saw them.", labels=["phase"])
        backend = CounterMetricFamily("faas_backend_errors", "Failed scheduler and backend calls by component "
                                      "(scheduler, scaler, pool) and kind.", labels=["component", "kind"])
        with m._lock:
            fns = {fn.name: fn for fn in m._fns.values()}
            for fn in fns.values():
                for status, n in fn.counts.items():
                    inv.add_metric([fn.name, status], n)
                for code, n in fn.errors.items():
                    err.add_metric([fn.name, code], n)
                for cause, n in fn.colds.items():
                    cold.add_metric([fn.name, cause], n)
                dur.add_metric([fn.name], *fn.duration.family_samples())
                queue.add_metric([fn.name], *fn.queue.family_samples())
            for name, hist in m._phases.items():
                phase.add_metric([name], *hist.family_samples())
            for (component, kind), n in m._backend.items():
                backend.add_metric([component, kind], n)
        return [inv, err, cold, dur, queue, phase, backend]


class _ScrapeCollector:
    """Gauges computed when scraped (see :class:`Metrics`)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        instances = GaugeMetricFamily("faas_instances", "Instances of each function on this edge by state "
                                      "(idle, busy, starting, draining).", labels=["function", "state"])
        waiting = GaugeMetricFamily("faas_queued_requests", "Requests waiting for an instance, per function.",
                                    labels=["function"])
        pool = GaugeMetricFamily("faas_runtime_pool_instances", "Cluster mode: the runtime pool per group as the "
                                 "last top-up pass saw it (free, specialised, desired).", labels=["group", "state"])
        conns = GaugeMetricFamily("faas_edge_connections", "Open client connections to this edge router.")
        seen_conns = False
        for activator, scheduler, edge_port in self.m._sources:
            if activator is not None:
                self._pools(activator, instances, waiting)
            for group, sizes in dict(getattr(scheduler, "pool_sizes", None) or {}).items():
                for state, n in sizes.items():
                    pool.add_metric([group, state], n)
            port = edge_port() if edge_port is not None else None
            if port:
                conns.add_metric([], edge_connections(port))
                seen_conns = True
        out = [instances, waiting, pool]
        if seen_conns:
            out.append(conns)
        return out

    def _pools(self, activator, instances, waiting) -> None:
        totals: dict[str, list[int]] = {}
        queued: dict[str, int] = {}
        for p in activator.pools():
            with p.lock:
                idle = busy = draining = 0
                for s in p.slots.values():
                    if s.draining:
                        draining += 1
                    elif s.inflight:
                        busy += 1
                    else:
                        idle += 1
                starting, nwait = p.starting, len(p.waiters)
            label = self.m._fn(p.function).name  # a function's versions' pools add up under its name
            t = totals.setdefault(label, [0, 0, 0, 0])
            t[0] += idle
            t[1] += busy
            t[2] += starting
            t[3] += draining
            queued[label] = queued.get(label, 0) + nwait
        for label, t in totals.items():
            for state, n in zip(("idle", "busy", "starting", "draining"), t):
                instances.add_metric([label, state], n)
            waiting.add_metric([label], queued[label])


def edge_connections(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the kernel's count, read when scraped:
    the HTTP engine keeps its connections in Rust and reports none)."""
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    # local address "0100007F:1F90", state 01 = ESTABLISHED
                    if len(parts) > 3 and parts[3] == "01" and int(parts[1].rpartition(":")[2], 16) == port:
                        count += 1
        except OSError:
            continue
    return count
