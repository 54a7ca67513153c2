"""Scheduled min_instances: instances kept warm by a timetable, without traffic, through the API."""

from __future__ import annotations

from .conftest import HELLO, wait_for
from .test_async_events import faas


def test_a_scheduled_action_keeps_instances_warm_until_the_next_one(appliance):
    name = appliance.deploy({"index.py": HELLO}, keep_alive_s=0, max_instances=3)
    # An action every minute: it is always the latest one, so it is in force now.
    out = appliance.api.update_function(name, min_instances_schedule=[
        {"schedule": "cron(* * * * ? *)", "min_instances": 2}])
    assert out["min_instances_schedule"] == [{"schedule": "cron(* * * * ? *)", "min_instances": 2,
                                              "timezone": "UTC"}]
    wait_for(lambda: len(appliance.instances(name)) == 2, 30, message="two instances kept warm with no traffic")
    described = appliance.api.get_function(name)
    assert described["min_instances_in_force"]["min_instances"] == 2
    appliance.api.update_function(name, min_instances_schedule=[
        {"schedule": "cron(* * * * ? *)", "min_instances": 0}])
    wait_for(lambda: appliance.instances(name) == [], 30, message="the instances to be reclaimed")


def test_cli_sets_and_shows_the_schedule(appliance):
    name = appliance.deploy({"index.py": HELLO}, max_instances=5)
    out = faas(appliance, "warm", name, "cron(0 8 ? * MON-FRI *)=3", "cron(0 19 ? * MON-FRI *)=0",
               "--timezone", "Europe/Paris").stdout
    assert "cron(0 8 ? * MON-FRI *)" in out and "Europe/Paris" in out and "in force now: min_instances" in out
    assert len(appliance.api.get_function(name)["min_instances_schedule"]) == 2
    bad = faas(appliance, "warm", name, "cron(0 8 ? * MON-FRI *)=9", check=False)
    assert bad.returncode == 1 and "max_instances" in bad.stderr
    faas(appliance, "warm", name, "--clear")
    assert appliance.api.get_function(name)["min_instances_schedule"] == []
