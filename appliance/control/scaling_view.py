"""A function's scaling decision as the control API shows it: the decision of the edge that leads.

Embedded mode has one edge, and it decides: its latest decision is read in process. In cluster
mode the elected edge decides for everyone; a control plane that is not that edge asks it, on
``GET /_/scaling/<name>``, found through the lock's value (``{"edge", "url"}``).

Why ask the leader rather than have it write each decision to Consul KV: the leader decides every
function every tick (a second by default), and a KV write per function per tick would put a
steady stream of writes through Consul's Raft log for something only read when a person runs
``faas describe``. Asking costs one HTTP request per read, is always the current decision, and
needs nothing cleaned up when a function is deleted. When no edge leads, or the leader does not
answer in time, the answer says so instead of showing an old decision as if it were current.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import consul
import requests

log = logging.getLogger("appliance.control.scaling_view")

#: Seconds the control plane waits for the leader's answer.
LEADER_TIMEOUT_S = 2.0


class ScalingView:
    def __init__(self, scaler, leadership, *, timeout_s: float = LEADER_TIMEOUT_S, credential: str = ""):
        self.scaler = scaler
        self.leadership = leadership
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if credential:  # the leader's /_/scaling answers only the appliance's own parts
            self._session.headers["Authorization"] = f"Bearer {credential}"

    def get(self, name: str) -> dict:
        """The decision's fields (see ``ScalingRecord.to_dict``) with ``leader``; ``desired`` is
        None and ``reason`` says why when there is no decision to show."""
        try:
            leader = self.leadership.leader()
        except (consul.ConsulException, requests.RequestException) as exc:
            return _none(f"the scaling leader is unknown: Consul did not answer ({str(exc)[:120]})", None)
        record = self.scaler.decision(name)
        if record is not None:
            return {**record.to_dict(), "leader": leader}
        if self.scaler.peers is None:
            return _none("no traffic seen yet", leader)
        if leader is None:
            return _none("no edge leads the cluster's scaling now (an election is under way, or no edge runs)", None)
        if leader.get("edge") == self.scaler.edge_id or not leader.get("url"):
            return _none(f"no decision yet by the leader {leader.get('edge')}", leader)
        try:
            resp = self._session.get(f"{leader['url'].rstrip('/')}/_/scaling/{quote(name, safe='')}",
                                     timeout=(self.timeout_s, self.timeout_s))
            resp.raise_for_status()
            found = resp.json().get("scaling")
        except (requests.RequestException, ValueError, AttributeError) as exc:
            log.warning("event=scaling_leader_unavailable leader=%s error=%r", leader.get("url"), str(exc)[:200])
            return _none(f"the leader {leader.get('edge')} did not answer: {str(exc)[:120]}", leader)
        if not isinstance(found, dict):
            return _none(f"no decision yet by the leader {leader.get('edge')}", leader)
        return {**found, "leader": leader}

    def close(self) -> None:
        self._session.close()


def _none(reason: str, leader: dict | None) -> dict:
    return {"decided_by": None, "edges": 0, "edge_ids": [], "edges_missing": [], "concurrency": None, "queued": None,
            "current": None, "desired": None, "mode": None, "reason": reason, "stable_concurrency": None,
            "panic_concurrency": None, "decided_at": None, "leader": leader}
