"""The interfaces the core owns; backends implement them and ``wiring`` picks which.

They are kept narrow on purpose: the core must be able to run against the embedded backends
(processes on this host, an in-memory registry, files, SQLite) and the cluster ones (Nomad,
Consul, S3, Consul KV) without knowing which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from appliance.core.model import Instance, InstanceSpec


class Scheduler(Protocol):
    """Places and removes instances. The only part of the platform that starts processes."""

    def start(self, spec: InstanceSpec, deadline: float) -> Instance:
        """Start one instance and return it once it answers ``/_/ready``.

        Blocks until then or until ``deadline`` (``time.monotonic()`` seconds). Raises
        :class:`~appliance.core.errors.FunctionError` when the code fails to load (the runtime's
        structured error), :class:`~appliance.core.errors.PlacementFailed` when no instance can be
        placed, :class:`~appliance.core.errors.SchedulerUnavailable` when the scheduler cannot be reached.
        A started instance is already registered when this returns.
        """

    def stop(self, instance: Instance, *, graceful: bool = True) -> None:
        """Stop an instance; graceful lets in-flight work finish (SIGTERM), else kill."""

    def instances(self, function: str | None = None) -> list[Instance]:
        """The instances this scheduler has placed and believes alive."""

    def exit_cause(self, instance_id: str) -> str | None:
        """Why a gone instance ended (``"oom"``, ``"crashed"``, ``"timeout"``, ``"drained"``), if known."""


class Registry(Protocol):
    """Where ready instances are listed: the warm-instance cache's source of truth."""

    def ready(self, function: str) -> list[Instance]:
        """Instances of ``function`` that passed their readiness check.

        Called under the data plane's per-function lock: it must answer from memory (a cached
        view kept fresh in the background), never wait on the network.
        """

    def forget(self, instance_id: str) -> None:
        """Drop an instance now (it refused as draining, or its connection failed)."""

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(function)`` whenever that function's ready set may have changed."""


class BlobStore(Protocol):
    """Code packages, addressed by the sha256 of their bytes."""

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest``; durable once this returns. Idempotent."""

    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; raises CodeNotFound."""

    def exists(self, digest: str) -> bool: ...

    def delete(self, digest: str) -> None: ...


class MetadataStore(Protocol):
    """A small document store with check-and-set, for function settings, versions and triggers.

    ``revision`` is an opaque, increasing integer per key (a SQLite counter, Consul's ModifyIndex).
    ``expected_revision=0`` means "must not exist yet"; ``None`` writes unconditionally.
    ``remote`` says whether a read may wait on the network (the edge's event loop must not).
    """

    remote: bool

    def get(self, key: str) -> tuple[dict, int] | None: ...

    def list(self, prefix: str) -> list[tuple[str, dict, int]]: ...

    def put(self, key: str, doc: dict, expected_revision: int | None = None) -> int:
        """Write ``doc``; returns the new revision; raises RevisionConflict when CAS fails."""

    def delete(self, key: str, expected_revision: int | None = None) -> None: ...


class SecretBox(Protocol):
    """Encrypts function secrets for the metadata store, with a key kept out of that store."""

    def seal(self, values: dict[str, str]) -> str:
        """An opaque, authenticated ciphertext of ``values``."""

    def open(self, sealed: str) -> dict[str, str]:
        """The values back; raises ApplianceError when the key is missing or not the one that sealed them."""


# The instance protocol (runtimes/README.md): what the core needs to say to an instance and what it
# may hear back. ``appliance.instances.client`` speaks it over HTTP/1.1; the errors are split by what
# they mean for a retry.

class InstanceUnreachable(Exception):
    """Could not connect: the request was not delivered."""


class InstanceLost(Exception):
    """The connection broke after the request was sent: it may have run."""


class ReplyTooLarge(InstanceLost):
    """The instance's reply was over the reply limit; it was not read to its end (the request ran)."""


class InstanceTimeout(Exception):
    """No reply before the read deadline."""


@dataclass
class InvokeReply:
    status: int
    body: dict
    refused: str | None = None
    exiting: bool = False


class InstanceClient(Protocol):
    """Sends one invocation to an instance and waits for its reply (blocking)."""

    def invoke(self, instance: Instance, body: bytes, *, request_id: str, deadline_ms: int,
               read_timeout_s: float) -> InvokeReply:
        """Raises :class:`InstanceUnreachable` (not delivered), :class:`InstanceLost` (may have run)
        or :class:`InstanceTimeout` (no reply before ``read_timeout_s``)."""

    def drain(self, instance: Instance, min_idle_ms: int) -> bool:
        """Ask the instance to drain if idle for ``min_idle_ms``; True when it accepted (it will exit)."""

    def close(self, address: str) -> None:
        """Drop the pooled connections to ``address``."""


@dataclass
class QueuedEvent:
    """One asynchronous event as the queue holds it (appliance.core.async_invoke has its rules)."""
    id: str
    function: str
    payload: bytes
    created_at: float
    state: str = "queued"
    attempts: int = 0             # attempts started
    failures: int = 0             # attempts that counted against max_retry_attempts
    available_at: float = 0.0
    source: str = "api"           # api, a trigger's route key, a destination, a schedule
    last_error: str | None = None
    updated_at: float = 0.0


class EventQueue(Protocol):
    """Durable queue of asynchronous events (embedded: SQLite). Every write is durable on return:
    an accepted event survives ``kill -9`` of any process."""

    def put(self, event: QueuedEvent) -> bool:
        """Queue ``event``; False when an event of that id was already accepted (nothing changes)."""

    def claim(self, now: float, limit: int, busy: dict[str, int], caps: Callable[[str], int]) -> list[QueuedEvent]:
        """Mark up to ``limit`` due events running (attempts + 1) and return them; a function with
        ``busy[f] >= caps(f)`` events running here gets no more."""

    def finish(self, event_id: str, state: str, *, now: float, available_at: float = 0.0, failures: int = 0,
               error: str | None = None, destination: dict | None = None) -> None:
        """Record the step after an attempt (``retrying`` at ``available_at``, ``succeeded``, ``dead``);
        ``destination`` is a destination delivery to make, stored in the same transaction."""

    def recover(self, now: float) -> int:
        """Events left ``running`` by a process that ended: due again now. Returns how many."""

    def next_due(self) -> float | None: ...

    def get(self, event_id: str) -> QueuedEvent | None: ...

    def list(self, function: str, *, state: str | None, limit: int) -> list[dict]: ...

    def counts(self, function: str | None = None) -> dict[str, int]: ...

    def deliveries(self, limit: int) -> list[dict]:
        """Destination deliveries not yet made: ``{"id", "event_id", "kind", "target", "record"}``."""

    def complete_delivery(self, delivery_id: int, *, event: QueuedEvent | None = None,
                          message: tuple[str, bytes] | None = None, error: str | None = None) -> None:
        """Drop a delivery; in the same transaction queue ``event`` (a function destination) or append
        ``message`` = (queue, body) to an embedded queue, so a delivery is made exactly once."""


@dataclass
class Message:
    """One message received from a queue (a queue source's batch item)."""
    id: str
    receipt: str
    body: str
    receive_count: int = 1
    sent_at_ms: int = 0
    first_receive_ms: int = 0
    attributes: dict | None = None


class MessageQueues(Protocol):
    """Named message queues with visibility timeouts: SQS through boto3, or the embedded queue
    (SQLite). A received message is hidden for ``visibility_s``; one not deleted by then is
    received again (and, on SQS, moved to its dead-letter queue by the queue's redrive policy)."""

    def send(self, queue: str, body: str) -> str: ...

    def receive(self, queue: str, max_messages: int, wait_s: float, visibility_s: int) -> list[Message]: ...

    def delete(self, queue: str, receipts: list[str]) -> None: ...

    def arn(self, queue: str) -> str: ...
