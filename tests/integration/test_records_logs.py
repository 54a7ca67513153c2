"""Invocation records, logs and usage, read back over the API."""

import math
import time


PRINTS = ("import sys\ndef handler(event, context):\n    print('hello from', event.get('who'))\n"
          "    print('to stderr', file=sys.stderr)\n    context.log('via context')\n"
          "    if event.get('fail'):\n        raise RuntimeError('asked to fail')\n    return 'ok'\n")


def test_every_invocation_is_recorded_with_its_cost_and_output(appliance):
    name = appliance.deploy({"index.py": PRINTS}, memory_mb=256)
    t0 = time.time()
    r1 = appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={"who": "one"}, timeout=30)
    r2 = appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={"who": "two", "fail": True},
                       timeout=30)
    assert r1.status_code == 200 and r2.status_code == 502
    recs = {r["request_id"]: r for r in appliance.api.invocations(name)}
    first, second = recs[r1.headers["X-Request-Id"]], recs[r2.headers["X-Request-Id"]]
    assert first["function"] == name and first["version"] == 1 and first["started_at"] >= t0 - 1
    assert first["status"] == "ok" and first["cold"] is True and first["cold_cause"] == "no-instance"
    assert first["init_ms"] > 0 and first["duration_ms"] >= first["run_ms"] > 0
    assert first["billed_gb_s"] == round(256 / 1024 * math.ceil(first["run_ms"]) / 1000, 9)
    assert first["logs"][:3] == ["hello from one", "to stderr", "via context"]
    assert set(first["phases"]) >= {"queue", "placement", "code_fetch", "runtime_init", "user_init", "run"}
    assert second["status"] == "error" and second["error_type"] == "Function.Error" and second["cold"] is False
    assert "asked to fail" in second["error_message"] and second["logs"][0] == "hello from two"


def test_invocation_filters(appliance):
    name = appliance.deploy({"index.py": PRINTS})
    for i in range(4):
        appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={"fail": i % 2 == 1}, timeout=30)
    assert len(appliance.api.invocations(name, limit=2)) == 2
    assert {r["status"] for r in appliance.api.invocations(name, status="error")} == {"error"}
    assert len(appliance.api.invocations(name, status="error")) == 2
    assert appliance.api.invocations(name, since=time.time() + 60) == []
    assert len(appliance.api.invocations(name, since=-300)) == 4  # negative: seconds ago
    for params, field in (({"since": "yesterday"}, "since"), ({"limit": 0}, "limit"), ({"limit": "x"}, "limit")):
        resp = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/invocations", params=params, timeout=5)
        assert resp.status_code == 400 and resp.json()["error"]["field"] == field, resp.text
    resp = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/invocations", params={"status": "meh"}, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "status"


def test_logs_show_each_invocation_with_its_lines(appliance):
    name = appliance.deploy({"index.py": PRINTS})
    rid = appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={"who": "log"},
                        timeout=30).headers["X-Request-Id"]
    lines = [x["line"] for x in appliance.api.logs(name)["lines"]]
    assert lines[0].startswith(f"START RequestId: {rid}") and "Cold: no-instance" in lines[0]
    assert lines[1:4] == ["hello from log", "to stderr", "via context"]
    assert lines[4].startswith(f"END RequestId: {rid} Status: ok") and "Billed GB-s" in lines[4]


def test_usage_adds_up_invocations_and_gb_seconds(appliance):
    name = appliance.deploy({"index.py": PRINTS}, memory_mb=512)
    for _ in range(3):
        appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={}, timeout=30)
    usage = {u["function"]: u for u in appliance.api.usage()}[name]
    recs = appliance.api.invocations(name)
    assert usage["invocations"] == 3 and usage["cold_starts"] == 1 and usage["errors"] == 0
    assert abs(usage["gb_seconds"] - sum(r["billed_gb_s"] for r in recs)) < 1e-6
