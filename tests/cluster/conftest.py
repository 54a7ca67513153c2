"""Fixtures for cluster tests: the Consul and Nomad API doubles (see doubles/)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from doubles.consul import ConsulDouble  # noqa: E402
from doubles.nomad import FakeNode, NomadDouble  # noqa: E402

# Knobs that make the doubles quick without changing what they do: restart/reschedule delays
# are scaled down, the reaper and Nomad's Consul re-sync run often, and the minimum
# DeregisterCriticalServiceAfter is lowered. Tests that check a real default pass their own.
# Consul's random first-probe stagger stays on (ConsulDouble's default, as real agents do it), so
# every cluster and end-to-end test sees checks that are critical for up to one interval.
FAST_CONSUL = {"reap_interval": 0.1, "min_deregister_after": 0.5}
FAST_NOMAD = {"delay_scale": 0.01, "consul_sync_interval": 0.5}

#: The conformance run against real agents belongs to `make test-cluster-real` alone: elsewhere it
#: is not collected at all, so it is never reported as skipped (nor as passed).
collect_ignore = [] if os.environ.get("FAAS_REAL_CLUSTER") == "1" else ["test_real_cluster.py"]


@pytest.fixture
def make_consul_double():
    """Factory: ``make_consul_double(**kwargs) -> ConsulDouble`` (started; closed at teardown).
    kwargs are :class:`ConsulDouble` arguments, applied over the fast test defaults."""
    made = []

    def make(**kwargs) -> ConsulDouble:
        d = ConsulDouble(**{**FAST_CONSUL, **kwargs}).start()
        made.append(d)
        return d
    yield make
    for d in reversed(made):
        d.close()


@pytest.fixture
def consul_double(make_consul_double) -> ConsulDouble:
    """A running Consul double on 127.0.0.1 (``.url``, ``.host``, ``.port``)."""
    return make_consul_double()


@pytest.fixture
def make_nomad_double(consul_double, tmp_path):
    """Factory: ``make_nomad_double(nodes=None, consul=<consul_double>, **kwargs) -> NomadDouble``.
    Started; at teardown every process it started is stopped. ``nodes`` is a list of
    :class:`FakeNode` (default: one node ``node-1`` on 127.0.0.1)."""
    made = []

    def make(nodes=None, consul=consul_double, **kwargs) -> NomadDouble:
        kwargs.setdefault("data_dir", str(tmp_path / f"nomad-{len(made)}"))
        d = NomadDouble(nodes=nodes, consul=consul, **{**FAST_NOMAD, **kwargs}).start()
        made.append(d)
        return d
    yield make
    for d in reversed(made):
        d.close()


@pytest.fixture
def nomad_double(make_nomad_double) -> NomadDouble:
    """A running Nomad double with one node on 127.0.0.1, registering services into
    ``consul_double``."""
    return make_nomad_double()


TINY_SERVER = os.path.join(os.path.dirname(__file__), "doubles", "tiny_server.py")


@pytest.fixture
def tiny_server() -> list[str]:
    """Command line of a tiny real HTTP server for allocations: ``[python, tiny_server.py]``.
    It binds ``NOMAD_IP_http:NOMAD_PORT_http`` (or ``FAAS_HOST:FAAS_PORT``) and serves
    ``/_/health``, ``/_/ready`` and ``/env``; see doubles/tiny_server.py for its knobs."""
    return [sys.executable, TINY_SERVER]


__all__ = ["ConsulDouble", "NomadDouble", "FakeNode"]
