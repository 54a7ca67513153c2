"""What a newcomer does first: start the appliance with the example and call it."""

import requests

from .conftest import REPO


def test_the_hello_example_answers_over_its_http_trigger(make_appliance):
    r = make_appliance(example=str(REPO / "examples" / "hello"))
    resp = r.get("/hello/serverless") if _deployed(r) else None
    assert resp is not None and resp.status_code == 200
    assert resp.text == "Hello Serverless"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert len(resp.headers["X-Request-Id"]) >= 16


def test_server_timing_phases_add_up_to_the_total(make_appliance):
    r = make_appliance(example=str(REPO / "examples" / "hello"))
    assert _deployed(r)
    for expect_cold in (True, False):
        timing = dict(_parse_timing(r.get("/hello/serverless").headers["Server-Timing"]))
        total = timing.pop("total")
        cold = timing.pop("cold", None)
        assert (cold is not None) == expect_cold
        if expect_cold:
            assert {"placement", "code_fetch", "sandbox", "runtime_init", "user_init"} <= set(timing)
        assert {"queue", "run", "overhead"} <= set(timing)
        assert abs(sum(timing.values()) - total) < 0.01 * len(timing)


def _deployed(r):
    from .conftest import wait_for
    return wait_for(lambda: any(t["path"] == "/hello/serverless" for t in _triggers(r)), 30,
                    message="the example to deploy")


def _triggers(r):
    try:
        return r.http.get(f"{r.api_url}/v1/triggers", timeout=5).json()["triggers"]
    except requests.RequestException:
        return []


def _parse_timing(header):
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            yield name, float(rest[4:])
        else:
            yield name, rest
