"""Which errors the node autoscaler retries, and how often: only the ones a retry can fix."""

from __future__ import annotations

import botocore.exceptions as bce
import consul.exceptions as consul_exc
import nomad.api.exceptions as nomad_exc
import pytest
import requests

from appliance.cluster.node_autoscaler import RetryPolicy, is_transient


def aws(code: str, status: int = 400) -> bce.ClientError:
    return bce.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "SetDesiredCapacity")


def nomad_response(status: int, text: str) -> nomad_exc.BaseNomadException:
    r = requests.Response()
    r.status_code = status
    r._content = text.encode()
    return nomad_exc.BaseNomadException(r)


@pytest.mark.parametrize("exc, transient", [
    (aws("Throttling"), True),
    (aws("RequestLimitExceeded"), True),
    (aws("ScalingActivityInProgress"), True),
    (aws("Whatever", status=503), True),
    (aws("ValidationError"), False),
    (aws("AccessDenied", status=403), False),
    (bce.EndpointConnectionError(endpoint_url="http://x"), True),
    (bce.ReadTimeoutError(endpoint_url="http://x"), True),
    (nomad_exc.BaseNomadException(requests.ConnectionError("refused")), True),
    (nomad_response(500, "No cluster leader"), True),
    (nomad_response(503, "busy"), True),
    (nomad_response(500, "can not set node's scheduling eligibility to eligible while it is draining"), False),
    (nomad_exc.URLNotFoundNomadException(nomad_response(404, "node not found").nomad_resp), False),
    (consul_exc.ConsulException("500 rpc error"), True),
    (consul_exc.ClientError("429 rate limited"), True),
    (consul_exc.ACLPermissionDenied("denied"), False),
    (requests.ConnectionError("refused"), True),
    (ValueError("a bug"), False),
])
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_transient_errors_are_retried_then_the_last_one_is_raised():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise aws("Throttling")
        return "done"
    policy = RetryPolicy(attempts=4, initial_s=1.0, max_s=3.0)
    assert policy.call("op", flaky, sleep=sleeps.append) == "done"
    assert len(calls) == 3 and len(sleeps) == 2 and all(0 < s <= 3.0 for s in sleeps)

    def always():
        calls.append(1)
        raise aws("Throttling")
    calls.clear()
    with pytest.raises(bce.ClientError, match="Throttling"):
        policy.call("op", always, sleep=sleeps.append)
    assert len(calls) == 4


def test_permanent_errors_are_raised_at_once():
    calls = []

    def denied():
        calls.append(1)
        raise aws("AccessDenied", status=403)
    with pytest.raises(bce.ClientError):
        RetryPolicy(attempts=5).call("op", denied, sleep=lambda s: pytest.fail("slept"))
    assert calls == [1]
