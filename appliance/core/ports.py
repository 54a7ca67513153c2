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
