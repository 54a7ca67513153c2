"""What the core tells an observer (metrics) about the work it does, and nothing about how it is shown.

Why an interface here: the core must stay free of any metrics library (it imports nothing outside
``core/``), yet the numbers operators want are only known inside it: an invocation's status, error
code, phases and cold-start cause exist as one record at the invoker's record point, and a failed
instance start only in the activator. So the core calls an :class:`Observer` it is given, and the
wiring injects one that exports them (``appliance/backends/prometheus_metrics.py``, Prometheus). The default does
nothing, so tests and tools that build a core without the wiring pay nothing.

Calls happen on the request path (``invocation``, once per invocation after its record is complete),
so an implementation must be cheap and must not block; it must not raise either, but the core guards
against it anyway: a broken observer never fails an invocation.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("appliance.observe")


class Observer(Protocol):
    def invocation(self, rec) -> None:
        """One invocation ended; ``rec`` is its complete :class:`~.records.InvocationRecord`."""

    def backend_error(self, component: str, kind: str) -> None:
        """A scheduler or backend call failed (``component``: scheduler, scaler, pool; ``kind``: an
        error code or exception class name, a small set)."""


class NullObserver:
    """Observes nothing (the default)."""

    def invocation(self, rec) -> None:
        pass

    def backend_error(self, component: str, kind: str) -> None:
        pass


NULL_OBSERVER = NullObserver()


def safely(fn, *args) -> None:
    """Call an observer method; a failure is logged once per call, never raised."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - metrics must never fail the work they observe
        log.exception("event=observer_failed")
