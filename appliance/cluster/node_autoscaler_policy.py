"""When to add or remove a host in cluster mode: a pure decision over Nomad's view of the nodes.

Node autoscalers that know nothing about functions scale on CPU or memory percentages, which
say little about whether the next cold start will find room. This one scales on the question a
FaaS platform actually has: how many more function instances of a reference size (a *warm
slot*) fit on the hosts we have? It adds hosts when Nomad has blocked evaluations (something
could not be placed at all) or when fewer than ``target_headroom_slots`` slots are free, and it
removes the emptiest host only when the slots would still be enough without it and the cluster
would still be under ``scale_in_utilisation`` afterwards, so a removal is never followed by an
immediate addition.

Cooldowns are kept in :class:`NodeScalerState`, passed in and returned like the instance
autoscaler's state, and ``now`` is a parameter: the actuator (boto3 Auto Scaling, Nomad drain,
Consul checks) lives elsewhere and acts on :class:`NodeDecision`. The Nomad Autoscaler's
aws-asg target was the model for the drain-then-terminate order and the 15 minute drain deadline.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from appliance.core.errors import ValidationError

NONE = "none"
SCALE_OUT = "scale_out"
SCALE_IN = "scale_in"


@dataclass(frozen=True)
class NodePolicy:
    """Limits and targets of the node autoscaler. Defaults suit a small cluster on EC2."""

    #: Hosts always kept. >= 0.
    min_nodes: int = 1
    #: Hosts never exceeded (the Auto Scaling group's MaxSize should match). >= max(1, min_nodes).
    max_nodes: int = 10
    #: Seconds after a scale-out before the next one: a new host takes minutes to boot and join
    #: Nomad and Consul, and until then the shortage it fixes is still visible. >= 0.
    cooldown_out_s: float = 300.0
    #: Seconds after any action before a scale-in: a removal right after an addition or another
    #: removal acts on a cluster that has not settled. >= 0.
    cooldown_in_s: float = 600.0
    #: Free warm slots to keep, so that bursts of cold starts find room while a host boots. >= 0.
    target_headroom_slots: int = 8
    #: Scale in only if allocated / total (the larger of memory and CPU) stays below this once
    #: the candidate host is gone. 0 < x <= 1.
    scale_in_utilisation: float = 0.5
    #: Seconds a draining host gets before Nomad force-stops what is left (Nomad Autoscaler's
    #: default is 15 minutes). > 0.
    drain_deadline_s: float = 900.0
    #: Memory of the reference function instance that defines a warm slot (MB). > 0.
    slot_memory_mb: int = 128
    #: CPU of the reference function instance (MHz, as Nomad counts it). > 0.
    slot_cpu_mhz: int = 100

    def validate(self) -> NodePolicy:
        """Return self, or raise ValidationError naming the first bad field and its value."""

        def bad(name: str, rule: str) -> ValidationError:
            return ValidationError(f"{name} {rule}, was: {getattr(self, name)!r}", field=name)

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f.name, "must be a finite number")
            if f.name in ("min_nodes", "max_nodes", "target_headroom_slots", "slot_memory_mb", "slot_cpu_mhz") \
                    and not isinstance(value, int):
                raise bad(f.name, "must be an integer")
        if self.min_nodes < 0:
            raise bad("min_nodes", "cannot be negative")
        if self.max_nodes < 1:
            raise bad("max_nodes", "must be at least 1")
        if self.min_nodes > self.max_nodes:
            raise bad("min_nodes", f"cannot exceed max_nodes ({self.max_nodes})")
        for name in ("cooldown_out_s", "cooldown_in_s", "target_headroom_slots"):
            if getattr(self, name) < 0:
                raise bad(name, "cannot be negative")
        if not 0 < self.scale_in_utilisation <= 1:
            raise bad("scale_in_utilisation", "must be greater than 0 and at most 1")
        for name in ("drain_deadline_s", "slot_memory_mb", "slot_cpu_mhz"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        return self


@dataclass(frozen=True)
class NodeView:
    """One Nomad client node, from /v1/nodes?resources=true and its allocations."""

    id: str
    eligible: bool                # SchedulingEligibility == "eligible"
    status: str                   # Nomad Status: "initializing", "ready", "down", "disconnected"
    memory_mb: int                # total schedulable memory (MB)
    cpu_mhz: int                  # total schedulable CPU (MHz)
    allocated_memory_mb: int      # memory reserved by running allocations (MB)
    allocated_cpu_mhz: int        # CPU reserved by running allocations (MHz)
    instances: int                # function instances running on it
    draining: bool = False        # a drain is in progress (Nomad's Drain flag)
    #: The actuator can remove this host (it maps to a cloud instance of the scaled group and is
    #: not the autoscaler's own host). Other hosts count as capacity but are never chosen.
    removable: bool = True

    @property
    def schedulable(self) -> bool:
        """New work can land here: ready, eligible and not draining."""
        return self.status == "ready" and self.eligible and not self.draining


@dataclass(frozen=True)
class NodeObservation:
    """The cluster as the node autoscaler sees it at one moment."""

    nodes: Sequence[NodeView] = ()
    #: Nomad evaluations blocked for lack of resources (/v1/evaluations?status=blocked).
    blocked_evaluations: int = 0
    #: Free warm slots as measured elsewhere (e.g. counting pool reservations); None = computed
    #: from the nodes' free resources and the policy's reference slot.
    headroom_slots: int | None = None
    #: Hosts asked for (Auto Scaling desired capacity) that have not registered with Nomad yet.
    pending_nodes: int = 0


@dataclass(frozen=True)
class NodeScalerState:
    """What the node autoscaler remembers between ticks: when it last acted (monotonic s)."""

    last_scale_out_at: float | None = None
    last_scale_in_at: float | None = None


@dataclass(frozen=True)
class NodeDecision:
    """What to do now. ``count`` is set for scale_out, ``node_id`` for scale_in."""

    action: str                        # "none", "scale_out" or "scale_in"
    reason: str                        # one sentence for logs and dry-run output
    state: NodeScalerState             # pass back into the next decide_nodes()
    count: int = 0                     # hosts to add (scale_out)
    node_id: str | None = None         # host to drain and terminate (scale_in)
    drain_deadline_s: float | None = None  # how long the drain may take (scale_in)

    def to_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason, "count": self.count, "node_id": self.node_id,
                "drain_deadline_s": self.drain_deadline_s}


def free_slots(node: NodeView, policy: NodePolicy) -> int:
    """How many more reference-size instances fit on ``node`` (0 unless it is schedulable)."""
    if not node.schedulable:
        return 0
    memory = (node.memory_mb - node.allocated_memory_mb) // policy.slot_memory_mb
    cpu = (node.cpu_mhz - node.allocated_cpu_mhz) // policy.slot_cpu_mhz
    return max(0, int(min(memory, cpu)))


def node_slots(node: NodeView, policy: NodePolicy) -> int:
    """How many reference-size instances an empty host like ``node`` holds."""
    return max(0, int(min(node.memory_mb // policy.slot_memory_mb, node.cpu_mhz // policy.slot_cpu_mhz)))


def utilisation(nodes: Sequence[NodeView]) -> float:
    """Allocated / total over ``nodes``: the larger of the memory and the CPU fraction."""
    memory = sum(n.memory_mb for n in nodes)
    cpu = sum(n.cpu_mhz for n in nodes)
    if memory <= 0 or cpu <= 0:
        return 1.0 if nodes else 0.0
    return max(sum(n.allocated_memory_mb for n in nodes) / memory, sum(n.allocated_cpu_mhz for n in nodes) / cpu)


def emptiest(nodes: Sequence[NodeView]) -> NodeView | None:
    """The removable schedulable node with the fewest function instances, then the least
    allocated, then by id."""
    candidates = [n for n in nodes if n.schedulable and n.removable]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (n.instances, utilisation([n]), n.id))


def decide_nodes(observed: NodeObservation, policy: NodePolicy, state: NodeScalerState,
                 now: float) -> NodeDecision:
    """Add hosts, remove one, or do nothing, with the reason and the new cooldown state.

    Order: scale-out for blocked placements, a headroom shortfall or too few hosts; then scale-in
    for too many hosts or spare headroom. Each is subject to its cooldown and to min/max nodes.
    One host is removed at a time and not while another drains or hosts are still joining.
    """
    p = policy
    live = [n for n in observed.nodes if n.status != "down"]
    count = len(live) + max(0, observed.pending_nodes)
    schedulable = [n for n in live if n.schedulable]
    per_node = max((node_slots(n, p) for n in live), default=0)
    headroom = observed.headroom_slots
    if headroom is None:
        headroom = sum(free_slots(n, p) for n in schedulable)
    # Hosts that are joining will bring their slots; counting them stops a second request.
    expected = headroom + max(0, observed.pending_nodes) * per_node
    summary = (f"{count} hosts ({len(schedulable)} schedulable, {observed.pending_nodes} joining), "
               f"{headroom} free warm slots (target {p.target_headroom_slots}), "
               f"{observed.blocked_evaluations} blocked evaluations")

    def none(why: str) -> NodeDecision:
        return NodeDecision(action=NONE, reason=f"{why}; {summary}", state=state)

    out_wait = _remaining(state.last_scale_out_at, p.cooldown_out_s, now)

    # --- scale out ---------------------------------------------------------------------------
    want = 0
    why = ""
    if count < p.min_nodes:
        want, why = p.min_nodes - count, f"below min_nodes {p.min_nodes}"
    shortfall = p.target_headroom_slots - expected
    if shortfall > 0:
        n = math.ceil(shortfall / per_node) if per_node > 0 else 1
        if n > want:
            want, why = n, f"{shortfall} warm slots short of the target"
    if observed.blocked_evaluations > 0 and observed.pending_nodes == 0 and want < 1:
        want, why = 1, f"{observed.blocked_evaluations} evaluations blocked for lack of room"
    if want > 0:
        room = p.max_nodes - count
        if room <= 0:
            return none(f"scale-out wanted ({why}) but already at max_nodes {p.max_nodes}")
        if out_wait > 0:
            return none(f"scale-out wanted ({why}) but cooling down for {out_wait:.0f} s more")
        n = min(want, room)
        capped = f", capped by max_nodes {p.max_nodes}" if n < want else ""
        return NodeDecision(
            action=SCALE_OUT, count=n,
            reason=f"scale out by {n}: {why}{capped}; {summary}",
            state=dataclasses.replace(state, last_scale_out_at=now))

    # --- scale in ----------------------------------------------------------------------------
    in_wait = max(_remaining(state.last_scale_in_at, p.cooldown_in_s, now),
                  _remaining(state.last_scale_out_at, p.cooldown_in_s, now))
    if count <= p.min_nodes:
        return none(f"at min_nodes {p.min_nodes}: nothing to remove")
    if observed.pending_nodes > 0:
        return none("hosts are still joining: no scale-in until they have")
    draining = [n.id for n in live if n.draining]
    if draining:
        return none(f"{draining[0]} is still draining: one host is removed at a time")
    if observed.blocked_evaluations > 0:
        return none("evaluations are blocked: no scale-in")
    candidate = emptiest(live)
    if candidate is None:
        return none("no removable schedulable host")
    remaining = [n for n in schedulable if n.id != candidate.id]
    after = headroom - free_slots(candidate, p) - candidate.instances
    moved = dataclasses.replace(candidate, memory_mb=0, cpu_mhz=0)  # its allocations move, its room goes
    use_after = utilisation(remaining + [moved]) if remaining else 1.0
    if count > p.max_nodes:
        why = f"above max_nodes {p.max_nodes}"
    elif after < p.target_headroom_slots:
        return none(f"removing {candidate.id} would leave {max(after, 0)} free warm slots, "
                    f"below the target")
    elif use_after >= p.scale_in_utilisation:
        return none(f"removing {candidate.id} would put utilisation at {use_after:.0%}, "
                    f"not below {p.scale_in_utilisation:.0%}")
    else:
        why = (f"{after} free warm slots and {use_after:.0%} utilisation would remain without it "
               f"({candidate.instances} function instances to move)")
    if in_wait > 0:
        return none(f"scale-in of {candidate.id} possible ({why}) but cooling down for {in_wait:.0f} s more")
    return NodeDecision(
        action=SCALE_IN, node_id=candidate.id, drain_deadline_s=p.drain_deadline_s,
        reason=f"scale in {candidate.id}, the emptiest host: {why}; {summary}",
        state=dataclasses.replace(state, last_scale_in_at=now))


def _remaining(last: float | None, cooldown: float, now: float) -> float:
    """Seconds of ``cooldown`` left after an action at ``last`` (0 when none or over)."""
    if last is None:
        return 0.0
    return max(0.0, last + cooldown - now)
