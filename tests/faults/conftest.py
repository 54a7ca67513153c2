"""The fault suite: real appliances killed, flooded and interrupted on loopback; each test
reports what it counted (``-s`` shows the lines, and ``tests/faults/last-run.json`` keeps them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import make_appliance  # noqa: F401 - the fixture, shared

RESULTS = Path(__file__).with_name("last-run.json")


@pytest.fixture
def report(request):
    """``report(**counts)``: print the counts of a fault test and keep them."""
    def put(**counts):
        line = f"[fault] {request.node.name}: " + " ".join(f"{k}={v}" for k, v in counts.items())
        print(line)
        try:
            data = json.loads(RESULTS.read_text())
        except (OSError, ValueError):
            data = {}
        data[request.node.name] = counts
        RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True))
        request.node.user_properties.append(("counts", counts))
    return put
