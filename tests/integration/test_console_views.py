"""The console's views of what runs a function besides HTTP calls, in a real browser: the Layers
page and a function's layers, the asynchronous events after an async invoke (status, attempts,
destinations, refresh), and schedule and queue triggers with their next run or queue. Screenshots
at 1280x800 and 390 px wide are kept in the test's tmp dir (the path is printed)."""

import re

import pytest
from playwright.sync_api import expect

from tests.integration.conftest import make_zip
from tests.integration.console_browser import WIDE, at_both_widths, browser, log_in, shots  # noqa: F401
from tests.waiting import wait_for

FLAKY = ("def handler(event, context):\n"
         "    if event.get('fail'):\n"
         "        raise ValueError('asked to fail')\n"
         "    return {'ok': event.get('n')}\n")


@pytest.fixture(scope="module")
def page(appliance, browser):  # noqa: F811 - the fixture imported above
    pg = log_in(browser, appliance, WIDE)
    yield pg
    pg.close()


def publish_layer(appliance, name, files, description=""):
    resp = appliance.http.post(f"{appliance.api_url}/v1/layers/{name}", data=make_zip(files),
                               params={"description": description} if description else None,
                               headers={"Content-Type": "application/zip"}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["ref"]


def test_the_layers_page_lists_versions_and_their_functions_and_publishes_one(appliance, page, browser, shots):  # noqa: F811
    page.goto(appliance.api_url + "/console/#/layers")
    expect(page.locator("#layers-empty")).to_be_visible()  # nothing published yet, and it says how
    expect(page.locator("#layers-empty")).to_contain_text("faas layer publish")
    ref = publish_layer(appliance, "shared", {"python/shared_util.py": "X = 1\n"}, "helpers")
    name = appliance.deploy(layers=[ref])

    page.reload()
    row = page.locator("section[data-layer=shared] tr[data-ref='shared:1']")
    expect(row).to_contain_text("helpers")
    expect(row.locator("td.used-by a")).to_have_text(name)
    expect(row.locator("button:has-text('Delete')")).to_be_disabled()  # a function lists it
    # publish a second version from the page: a missing package is said next to its field
    page.fill("#layer-publish input[name=name]", "shared")
    page.click("#layer-publish button[type=submit]")
    expect(page.locator("#layer-publish .field-error[data-for=package]")).to_contain_text("choose a .zip")
    page.set_input_files("#layer-publish input[name=package]", files=[
        {"name": "shared.zip", "mimeType": "application/zip", "buffer": make_zip({"python/shared_util.py": "X = 2\n"})}])
    page.fill("#layer-publish input[name=description]", "second")
    page.click("#layer-publish button[type=submit]")
    page.wait_for_selector("#status:has-text('Published layer shared:2')")
    v2 = page.locator("section[data-layer=shared] tr[data-ref='shared:2']")
    expect(v2.locator("td.used-by")).to_contain_text("no function")
    expect(v2.locator("button:has-text('Delete')")).to_be_enabled()
    # the name link leads to the function, whose page lists its layers and changes them
    row.locator("td.used-by a").click()
    expect(page.locator("#fn-layers li[data-ref='shared:1']")).to_be_visible()
    page.select_option("#layers-form select[name=layer]", "shared:2")
    expect(page.locator("#fn-layers li")).to_have_count(2)
    page.click("#layers-form button[type=submit]")  # the API's own check, shown at the field
    expect(page.locator("#layers-form .field-error[data-for=layers]")).to_contain_text("listed twice")
    page.click("#fn-layers li[data-ref='shared:1'] button:has-text('Remove')")
    page.click("#layers-form button[type=submit]")
    page.wait_for_selector("#status:has-text('Layers saved: shared:2')")
    expect(page.locator("#layers-form .field-error[data-for=layers]")).to_be_hidden()
    fn = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}", timeout=10).json()
    assert fn["layers"] == ["shared:2"]
    at_both_widths(browser, appliance, shots, "#/layers", "section[data-layer=shared] tr[data-ref='shared:2']", "layers", "main")
    at_both_widths(browser, appliance, shots, f"#/functions/{name}", "#fn-layers li[data-ref='shared:2']", "function-layers", "#layers-card")


def test_async_events_show_status_attempts_and_destinations(appliance, page, browser, shots):  # noqa: F811
    name = appliance.deploy({"index.py": FLAKY})
    resp = appliance.http.patch(f"{appliance.api_url}/v1/functions/{name}", timeout=10,
                                json={"async": {"max_retry_attempts": 0, "on_failure": {"queue": "failed-events"}}})
    assert resp.status_code == 200, resp.text
    page.goto(appliance.api_url + f"/console/#/functions/{name}")
    expect(page.locator("#events-empty")).to_contain_text("No asynchronous events yet")
    expect(page.locator("#events-destinations [data-destination=on_failure]")).to_have_text("on failure → queue failed-events")
    expect(page.locator("#events-destinations")).to_contain_text("Retries: 0")

    page.check("#invoke-async")
    page.fill("#event", '{"n": 7}')
    page.click("#invoke")
    expect(page.locator("#result")).to_contain_text("HTTP 202")
    expect(page.locator("#result")).to_contain_text("queued")
    # the list refreshes itself while an event is pending, until it has run
    ok = page.locator("#events tbody tr[data-state=succeeded]")
    expect(ok).to_have_count(1)
    expect(ok.locator("td[data-label=Attempts]")).to_have_text("1")
    expect(page.locator("#events-counts [data-state=succeeded]")).to_have_text("succeeded 1")

    # an event queued elsewhere shows (on Refresh, or when its log lines arrive); it fails once (no
    # retries) and is dead with its error
    resp = appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json={"fail": True},
                               headers={"X-Amz-Invocation-Type": "Event"}, timeout=10)
    assert resp.status_code == 202, resp.text
    dead = page.locator("#events tbody tr[data-state=dead]")

    def refreshed_dead():
        page.click("#events-refresh")
        return dead.count() == 1
    wait_for(refreshed_dead, 30, message="the dead event after Refresh")
    expect(dead.locator("td[data-label='Last error']")).to_contain_text("asked to fail")
    page.select_option("#events-status", "dead")
    expect(page.locator("#events tbody tr")).to_have_count(1)
    page.select_option("#events-status", "retrying")
    expect(page.locator("#events-empty")).to_have_text("No retrying events.")
    page.select_option("#events-status", "")
    at_both_widths(browser, appliance, shots, f"#/functions/{name}", "#events tbody tr[data-state=dead]", "events", "#events-card")


def test_schedules_and_queues_show_next_run_and_queue(appliance, page, browser, shots):  # noqa: F811
    name = appliance.deploy()
    page.goto(appliance.api_url + f"/console/#/functions/{name}")
    expect(page.locator("#event-triggers-empty")).to_be_visible()
    made = {}
    for body in ({"kind": "schedule", "schedule": "rate(1 hour)", "event": {"tick": True}},
                 {"kind": "queue", "queue": "orders", "batch_size": 5}):
        resp = appliance.http.post(f"{appliance.api_url}/v1/triggers", json={"function": name, **body}, timeout=10)
        assert resp.status_code == 201, resp.text
        made[body["kind"]] = resp.json()
    page.reload()
    sched = page.locator(f"#event-triggers li[data-trigger={made['schedule']['id']}]")
    expect(sched).to_contain_text("rate(1 hour)")
    expect(sched.locator(".next-run")).to_contain_text(re.compile(r"Next run: .+ \(in (\d+ min|1 h)\)"))
    expect(sched).to_contain_text('{"tick":true}')
    queue = page.locator(f"#event-triggers li[data-trigger={made['queue']['id']}]")
    expect(queue.locator(".queue-name")).to_have_text("orders")
    expect(queue).to_contain_text("batch 5")
    expect(page.locator("#triggers li")).to_have_count(0)  # neither is drawn as an HTTP route
    at_both_widths(browser, appliance, shots, f"#/functions/{name}", f"li[data-trigger={made['queue']['id']}]", "schedules", "#event-triggers-card")

    sched.locator("button:has-text('Disable')").click()
    expect(sched.locator(".badge.warn")).to_have_text("disabled")
    expect(sched.locator(".next-run")).to_contain_text("none (disabled)")
    got = appliance.http.get(f"{appliance.api_url}/v1/triggers?function={name}", timeout=10).json()["triggers"]
    assert [t["enabled"] for t in got if t["kind"] == "schedule"] == [False]
    # the functions list names them
    page.goto(appliance.api_url + "/console/#/")
    listed = page.locator(f"#functions tbody tr:has-text('{name}') td[data-label=Triggers]")
    expect(listed).to_contain_text("schedule rate(1 hour)")
    expect(listed).to_contain_text("queue orders")
