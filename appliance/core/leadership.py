"""Which edge router decides how many instances each function gets.

Scaling up ahead of traffic and reaping idle instances must be done by one edge for the whole
cluster: an edge deciding from its own traffic sees only its share, and several edges reaping
fight over the same instances. The edges elect one (cluster mode: a Consul session and a KV lock,
``appliance.backends.consul_leader.ConsulLeaderLock``); the others keep starting instances for
their own waiting requests, which needs no agreement.

A leadership object has four methods, which the wiring module picks the implementation of:

* ``start(holder)`` begins campaigning; ``holder`` is ``{"edge": id, "url": base URL}``, what
  the others read to find the leader.
* ``is_leader()`` answers from memory (it is asked on every scaler tick).
* ``leader()`` says who leads now (``holder`` of the winner), or None; it may ask Consul.
* ``close()`` steps down so another edge takes over at once.

Embedded mode has one edge, which is its own leader: :class:`SoleLeader`.
"""

from __future__ import annotations


class SoleLeader:
    """The only edge there is; no election, no Consul."""

    def __init__(self, edge: str):
        self.holder: dict = {"edge": edge, "url": None}

    def start(self, holder: dict) -> None:
        self.holder = dict(holder)

    def is_leader(self) -> bool:
        return True

    def leader(self) -> dict | None:
        return self.holder

    def close(self) -> None:
        pass
