"""Cold-start phases shown to the user add up to the start they describe."""

from appliance.core.activator import Lease
from appliance.core.invoker import Invoker
from appliance.core.records import InvocationRecord


def _phases(start_phases, queue_ms):
    lease = Lease(slot=None, cold=True, cause="no-instance", queue_ms=queue_ms, phases=start_phases)
    rec = InvocationRecord(request_id="r", function="f", version=1, started_at=0.0)
    Invoker._lease_phases(lease, rec)
    return rec.phases


def test_phases_that_fit_leave_the_rest_to_placement():
    p = _phases({"placement": 10.0, "code_fetch": 1.0, "sandbox": 3.0, "runtime_init": 2.0, "user_init": 1.0}, 10.0)
    assert p["sandbox"] == 3.0 and p["placement"] == 3.0 and p["queue"] == 0.0
    assert abs(sum(p.values()) - 10.0) < 0.01


def test_overlapping_phases_are_scaled_to_the_start_they_belong_to():
    # the runtime's own user_init overlapped the launcher's runtime_init: 12 ms measured in a 10 ms start
    p = _phases({"placement": 10.0, "code_fetch": 0.0, "sandbox": 4.0, "runtime_init": 5.0, "user_init": 3.0}, 10.0)
    assert p["placement"] == 0.0
    assert abs(sum(p.values()) - 10.0) < 0.01
    assert p["sandbox"] > p["user_init"] > 0


def test_a_request_that_joined_a_start_late_shows_its_share():
    p = _phases({"placement": 10.0, "code_fetch": 0.0, "sandbox": 4.0, "runtime_init": 4.0, "user_init": 2.0}, 5.0)
    assert abs(sum(p.values()) - 5.0) < 0.01
