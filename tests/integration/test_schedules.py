"""Schedule triggers through the API and the CLI: they fire asynchronous events of their function,
show their next run, can be disabled, and go with their function."""

from __future__ import annotations

import json


from .conftest import wait_for
from .test_async_events import FLAKY, faas, messages


def schedule_events(r, name):
    out = r.http.get(f"{r.api_url}/v1/functions/{name}/events", params={"limit": 1000}, timeout=5).json()
    return [e for e in out["events"] if (e["source"] or "").startswith("schedule:")]


def test_schedule_fires_its_event_and_shows_its_next_run(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    appliance.api.update_function(name, **{"async": {"on_success": {"queue": f"sched-{name}"}}})
    out = faas(appliance, "trigger", "add", name, "--schedule", "rate(1 second)", "--event", '{"ping": true}').stdout
    trigger_id = out.split()[0]
    assert trigger_id.startswith("schedule-") and "next run" in out
    got = wait_for(lambda: [e for e in schedule_events(appliance, name) if e["state"] == "succeeded"], 30,
                   message="a scheduled run")
    assert got[0]["source"] == f"schedule:{trigger_id}"
    body = wait_for(lambda: messages(appliance, f"sched-{name}"), 10)[0]["body"]
    assert body["requestPayload"] == {"ping": True}
    listing = faas(appliance, "trigger", "ls", name).stdout
    assert trigger_id in listing and "rate(1 second)" in listing and "next run 20" in listing
    (t,) = [t for t in appliance.api.list_triggers(name) if t.get("kind") == "schedule"]
    assert t["last_run"] and t["next_run"] and t["enabled"] is True
    assert faas(appliance, "trigger", "disable", trigger_id).stdout.strip() == f"{trigger_id} disabled"
    assert "disabled" in faas(appliance, "trigger", "ls", name).stdout
    (t,) = [t for t in appliance.api.list_triggers(name) if t.get("kind") == "schedule"]
    assert (t["enabled"], t["next_run"]) == (False, None)
    faas(appliance, "trigger", "rm", trigger_id)
    assert [t for t in appliance.api.list_triggers(name) if t.get("kind") == "schedule"] == []


def test_default_event_is_eventbridges_scheduled_event_and_triggers_go_with_the_function(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    appliance.api.update_function(name, **{"async": {"on_success": {"queue": f"eb-{name}"}}})
    t = appliance.http.post(f"{appliance.api_url}/v1/triggers", json={"function": name, "kind": "schedule",
                                                               "schedule": "rate(1 second)"}, timeout=5).json()
    body = wait_for(lambda: messages(appliance, f"eb-{name}"), 30, message="a scheduled run")[0]["body"]
    event = body["requestPayload"]
    assert (event["detail-type"], event["source"], event["detail"]) == ("Scheduled Event", "aws.events", {})
    assert event["resources"] == [f"arn:faas:local:rule/{t['id']}"] and event["time"].endswith("Z")
    described = appliance.api.get_function(name)
    assert [x["id"] for x in described["triggers"] if x.get("kind") == "schedule"] == [t["id"]]
    appliance.api.delete_function(name)
    assert [x for x in appliance.api.list_triggers() if x.get("id") == t["id"]] == []


def test_schedule_input_errors(appliance):
    name = appliance.deploy({"index.py": FLAKY})
    url = f"{appliance.api_url}/v1/triggers"
    for body, field in (({"function": name, "kind": "schedule", "schedule": "rate(5 weeks)"}, "schedule"),
                        ({"function": name, "kind": "schedule", "schedule": "cron(0 9 * * ? *)",
                          "timezone": "Nowhere/City"}, "timezone"),
                        ({"function": name, "kind": "timer", "schedule": "rate(1 minute)"}, "kind"),
                        ({"function": name, "kind": "schedule", "schedule": "rate(1 minute)", "enabled": "no"},
                         "enabled")):
        resp = appliance.http.post(url, json=body, timeout=5)
        assert (resp.status_code, resp.json()["error"]["code"], resp.json()["error"]["field"]) == \
            (400, "Request.Invalid", field), body
    resp = appliance.http.post(url, json={"function": "missing", "kind": "schedule", "schedule": "rate(1 minute)"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "Function.NotFound")
    resp = appliance.http.patch(f"{url}/schedule-nope", json={"enabled": False}, timeout=5)
    assert resp.status_code == 404
    bad = faas(appliance, "trigger", "add", name, "--schedule", "rate(1 minute)", "--event", "{", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: Request.Invalid")
    out = faas(appliance, "trigger", "add", name, "--schedule", "cron(0 9 ? * MON-FRI *)", "--timezone",
               "Europe/Paris", "--disabled").stdout
    assert "next run -" in out
    (t,) = [t for t in appliance.api.list_triggers(name) if t.get("kind") == "schedule"]
    assert json.loads(json.dumps(t))["timezone"] == "Europe/Paris"
    t = appliance.api.update_trigger(t["id"], enabled=True)
    assert t["next_run"].endswith(":00:00Z")  # 09:00 in Paris is 08:00 or 07:00 UTC
