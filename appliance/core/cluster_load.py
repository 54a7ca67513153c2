"""What every edge router sees of each function's load, summed for one cluster-wide decision: pure.

Each edge keeps its own :class:`~appliance.core.autoscaler.ConcurrencyWindow` per function, stamped with
its monotonic clock. With two edges each sees half of the traffic, so a decision taken from one
edge's view under-scales (and two edges deciding both reap). One elected edge therefore asks every
edge for an :class:`EdgeReport` and decides from the sum.

Why wall-clock seconds: monotonic clocks of two hosts share no origin, wall clocks do (NTP keeps
them within a few milliseconds; a fraction of a second is tolerated). An edge converts its samples
to wall-clock time when it reports them (:func:`report_of`); the leader puts every sample on the
nearest whole wall-clock second and adds them up. The samples of one edge are one second apart, so
rounding never puts two of them on the same second, and two edges whose clocks differ by less than
half a second put their samples of the same second together.

Everything here takes its inputs and ``now`` (wall-clock seconds) and returns values; fetching the
reports over HTTP is :mod:`appliance.cluster.peer_loads`, acting on the decision is :mod:`appliance.core.scaler`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from appliance.core.autoscaler import Observation
from appliance.core.errors import ValidationError

#: Seconds of history an edge reports: the default stable window (60 s) and a margin.
REPORT_HORIZON_S = 62.0


@dataclass(frozen=True)
class FunctionLoad:
    """One edge's view of one function."""

    #: (t, in-flight average over the second ending at t), t in wall-clock seconds.
    samples: tuple[tuple[float, float], ...] = ()
    #: Requests running on instances now, and waiting at the edge's activator now.
    in_flight: float = 0.0
    queued: int = 0
    #: Instances this edge is starting now (other edges cannot see them yet).
    starting: int = 0
    #: Wall-clock time of the edge's first record for the function; None: covers every window.
    since: float | None = None

    def to_json(self) -> dict:
        return {"samples": [[round(t, 3), round(v, 6)] for t, v in self.samples], "in_flight": self.in_flight,
                "queued": self.queued, "starting": self.starting, "since": self.since}

    @classmethod
    def from_json(cls, doc: object) -> FunctionLoad:
        if not isinstance(doc, dict):
            raise ValidationError("a function's load must be an object", field="functions")
        try:
            samples = tuple((float(t), float(v)) for t, v in doc.get("samples") or ())
            since = doc.get("since")
            load = cls(samples=samples, in_flight=float(doc.get("in_flight") or 0),
                       queued=int(doc.get("queued") or 0), starting=int(doc.get("starting") or 0),
                       since=None if since is None else float(since))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"a function's load is malformed: {exc}", field="functions") from None
        if not all(math.isfinite(t) and math.isfinite(v) and v >= 0 for t, v in samples):
            raise ValidationError("samples must be finite, in-flight values not negative", field="samples")
        return load


@dataclass(frozen=True)
class EdgeReport:
    """What one edge answers on ``GET /_/concurrency``."""

    edge: str
    functions: Mapping[str, FunctionLoad] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"edge": self.edge, "functions": {n: f.to_json() for n, f in sorted(self.functions.items())}}

    @classmethod
    def from_json(cls, doc: object) -> EdgeReport:
        """Parse a peer's answer; ValidationError if it is not a report (the peer is then left out)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("edge"), str) or not doc["edge"]:
            raise ValidationError("a concurrency report needs an edge id", field="edge")
        functions = doc.get("functions")
        functions = {} if functions is None else functions
        if not isinstance(functions, dict):
            raise ValidationError("functions must be an object", field="functions")
        return cls(edge=doc["edge"], functions={str(n): FunctionLoad.from_json(f) for n, f in functions.items()})


def report_of(edge: str, views: Mapping[str, Observation], starting: Mapping[str, int], now_mono: float,
              now_wall: float) -> EdgeReport:
    """This edge's report: its observations (monotonic clock) restated in wall-clock seconds.

    ``views`` are the pools' :meth:`~appliance.core.activator.FunctionPool.observe` results taken at
    ``now_mono``; ``now_wall`` is the wall clock read at the same moment.
    """
    shift = now_wall - now_mono
    functions = {}
    for name, o in views.items():
        functions[name] = FunctionLoad(
            samples=tuple((t + shift, v) for t, v in o.samples), in_flight=float(o.in_flight), queued=int(o.queued),
            starting=int(starting.get(name, 0)),
            since=None if o.observed_since is None else o.observed_since + shift)
    return EdgeReport(edge=edge, functions=functions)


@dataclass(frozen=True)
class ClusterLoad:
    """One function's load summed over the edges that reported it."""

    #: (whole wall-clock second, summed in-flight average), increasing.
    samples: tuple[tuple[float, float], ...] = ()
    in_flight: float = 0.0
    queued: int = 0
    starting: int = 0
    since: float | None = None
    #: Edges whose report carried this function.
    edges: tuple[str, ...] = ()

    def observation(self, instances: int) -> Observation:
        """The autoscaler's input: the summed load and the instances the cluster has."""
        return Observation(samples=self.samples, instances=instances, in_flight=self.in_flight, queued=self.queued,
                           observed_since=self.since)


@dataclass(frozen=True)
class SummedLoad:
    """The result of :func:`sum_reports`."""

    functions: Mapping[str, ClusterLoad]
    #: Edges whose report was summed, and edges that were asked but did not answer (in order).
    edges: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def load(self, function: str) -> ClusterLoad:
        return self.functions.get(function) or ClusterLoad()


def wall_second(t: float) -> int:
    """The whole wall-clock second nearest to ``t`` (halves go up: ``round`` would send 100.5 and
    101.5 to 100 and 102, and 102.5 to 102 too, putting two samples of one edge together)."""
    return math.floor(t + 0.5)


def sum_reports(reports: Mapping[str, EdgeReport | None], now: float,
                horizon_s: float = REPORT_HORIZON_S) -> SummedLoad:
    """Per function, the samples of every edge added up per wall-clock second, and the present
    in-flight, queued and starting counts added up.

    ``reports`` maps each edge asked to its report, or None when it did not answer in time: it is
    left out and listed in ``missing``. Two reports of the same edge (an edge listed twice) count
    once. Samples older than ``horizon_s`` before ``now`` are dropped; later ones are kept even
    past ``now`` (a clock slightly ahead): the decision only reads samples up to its ``now``.
    ``since`` is the earliest edge's, or None if any edge's window covers everything.
    """
    seen: set[str] = set()
    edges: list[str] = []
    missing: list[str] = []
    per_second: dict[str, dict[int, float]] = {}
    totals: dict[str, dict] = {}
    oldest = now - horizon_s
    for key in sorted(reports):
        report = reports[key]
        if report is None:
            missing.append(key)
            continue
        if report.edge in seen:
            continue
        seen.add(report.edge)
        edges.append(report.edge)
        for name, load in report.functions.items():
            seconds = per_second.setdefault(name, {})
            for t, v in load.samples:
                s = wall_second(t)
                if s > oldest and v > 0:
                    seconds[s] = seconds.get(s, 0.0) + v
            t = totals.setdefault(name, {"in_flight": 0.0, "queued": 0, "starting": 0, "since": math.inf,
                                         "full": False, "edges": []})
            t["in_flight"] += max(0.0, load.in_flight)
            t["queued"] += max(0, load.queued)
            t["starting"] += max(0, load.starting)
            if load.since is None:
                t["full"] = True
            else:
                t["since"] = min(t["since"], load.since)
            t["edges"].append(report.edge)
    functions = {}
    for name, t in totals.items():
        since = None if t["full"] or t["since"] == math.inf else t["since"]
        functions[name] = ClusterLoad(
            samples=tuple((float(s), v) for s, v in sorted(per_second[name].items())), in_flight=t["in_flight"],
            queued=t["queued"], starting=t["starting"], since=since, edges=tuple(t["edges"]))
    return SummedLoad(functions=functions, edges=tuple(edges), missing=tuple(missing))
