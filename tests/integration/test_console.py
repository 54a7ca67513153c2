"""The web console in a real browser: log in, create, edit in the code editor, deploy, bind a
trigger and open its URL, invoke, watch the log line arrive live, see a chart change, redeploy an
old version; screenshots at 1280x800 and 390 px wide are kept in the test's tmp dir."""

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.integration.console_browser import PHONE, WIDE, log_in
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def page(appliance, browser, shots):
    pg = log_in(browser, appliance)
    yield pg
    pg.screenshot(path=str(shots / "last.png"), full_page=True)
    pg.close()


def set_code(page, text):
    """Replace the open file's text as a paste would (typing would let the editor auto-indent)."""
    page.click("#editor .cm-content")
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(text)


def test_a_wrong_token_is_refused_next_to_the_field(appliance, browser):
    pg = browser.new_page(viewport=WIDE)
    pg.goto(appliance.api_url + "/console/")
    pg.fill("#login input[name=token]", "faas_not-a-token")
    pg.click("#login button[type=submit]")
    expect(pg.locator("#login .field-error[data-for=token]")).to_contain_text("refused")
    assert pg.get_attribute("#login input[name=token]", "aria-invalid") == "true"
    assert pg.evaluate("sessionStorage.getItem('faas.token')") is None
    pg.close()


def test_a_narrow_token_sees_its_functions_and_an_invoke_token_is_told_why_not(appliance, browser):
    appliance.deploy(name="tok-mine")
    appliance.deploy(name="not-mine")
    made = {}
    for scope, pattern in (("deploy", "tok-*"), ("invoke", None)):
        body = {"name": f"console-{scope}", "scope": scope, **({"functions": pattern} if pattern else {})}
        resp = appliance.http.post(f"{appliance.api_url}/v1/tokens", json=body, timeout=10)
        assert resp.status_code == 201, resp.text
        made[scope] = resp.json()["token"]
    pg = browser.new_page(viewport=WIDE)
    pg.goto(appliance.api_url + "/console/")
    pg.fill("#login input[name=token]", made["invoke"])
    pg.click("#login button[type=submit]")
    expect(pg.locator("#login .field-error[data-for=token]")).to_contain_text("scope read, deploy or admin")
    pg.fill("#login input[name=token]", made["deploy"])
    pg.click("#login button[type=submit]")
    expect(pg.locator("#functions tbody tr:has-text('tok-mine')")).to_be_visible()
    assert pg.locator("#functions tbody tr").count() == 1  # not-mine is not listed
    pg.close()


def test_a_function_is_created_edited_deployed_triggered_invoked_and_charted(appliance, page, shots):
    page.goto(appliance.api_url + "/")
    assert page.url.endswith("/console/")
    page.fill("#create input[name=name]", "webfn")
    page.click("#create button[type=submit]")
    page.wait_for_selector("#fn-title:has-text('webfn')")
    # the editor: CodeMirror with highlighting, line numbers and the file tree of the package
    expect(page.locator("#editor .cm-content")).to_contain_text('return "Hello Serverless"')
    expect(page.locator("#editor .cm-lineNumbers")).to_be_visible()
    expect(page.locator("#file-tree li[data-path='index.py']")).to_have_class(re.compile("selected"))
    assert page.locator("#editor .cm-content span[class^='ͼ']").count() > 0  # highlighted tokens
    # the charts start empty, and say so
    expect(page.locator("#chart-invocations")).to_have_attribute("data-total", "0")
    expect(page.locator("#charts-state")).to_contain_text("No invocations")

    set_code(page, "def handler(event, context):\n    print('edited online')\n    return 'from the console'\n")
    expect(page.locator("#file-tree li[data-path='index.py']")).to_have_class(re.compile("modified"))
    page.click("#save-code")
    page.wait_for_selector("#status:has-text('Deployed version 2')")
    expect(page.locator("#file-tree li[data-path='index.py']")).not_to_have_class(re.compile("modified"))
    page.wait_for_selector("#fn-summary:has-text('version 2')")
    page.wait_for_selector("#versions tbody tr[data-version='2']:has-text('current')")

    page.select_option("#trigger-add select[name=method]", "GET")
    page.fill("#trigger-add input[name=path]", "/web/{who}")
    page.click("#trigger-add button[type=submit]")
    item = page.locator("#triggers li[data-path='/web/{who}']")
    expect(item).to_be_visible()
    # the full URL with the path parameter filled in, a copy button and a link that works
    item.locator(".params input").fill("ada")
    url = item.locator("code.url").text_content()
    assert url.startswith(appliance.edge) and url.endswith("/web/ada"), url
    item.locator("button.copy").click()
    expect(item.locator("button.copy")).to_have_text("Copied")
    assert item.locator("a:has-text('Open')").get_attribute("href") == url
    with page.expect_popup() as popup:
        item.locator("a:has-text('Open')").click()
    opened = popup.value
    opened.wait_for_load_state()
    assert opened.text_content("body").strip() == "from the console"
    opened.close()
    assert requests.get(appliance.edge + "/web/x", timeout=10).text == "from the console"

    # the log tail is live: a call made elsewhere shows up without reloading
    page.fill("#event", '{"k": 1}')
    page.click("#invoke")
    page.wait_for_selector("#result:has-text('from the console')")
    result = page.text_content("#result")
    assert "HTTP 200" in result and ("warm" in result or "cold start" in result)
    page.wait_for_selector("#phases .bar span")
    page.wait_for_selector("#invocations tbody tr")
    page.wait_for_selector("#logs:has-text('edited online')")
    printed = page.locator("#logs .line:has-text('edited online')")
    expect(printed).to_have_count(3)  # the link opened, the request above, the invoke: each line once
    appliance.http.post(f"{appliance.api_url}/v1/functions/webfn/invocations", json={}, timeout=30)
    expect(printed).to_have_count(4)
    page.fill("#log-filter", "EDITED ONLINE")  # the filter keeps the matching lines only
    expect(page.locator("#logs .line:visible")).to_have_count(4)
    page.fill("#log-filter", "")
    # the charts count the calls (two through the trigger, two invocations); the window can be changed
    expect(page.locator("#chart-invocations")).to_have_attribute("data-total", "4")
    assert float(page.get_attribute("#chart-gbs", "data-total")) > 0
    page.select_option("#window", "15m")
    expect(page.locator("#chart-invocations figcaption")).to_contain_text("4 in the window")
    page.screenshot(path=str(shots / "webfn-after-calls-1280.png"), full_page=True)


def test_an_old_version_is_redeployed_from_the_versions_list(appliance, page):
    page.goto(appliance.api_url + "/console/#/functions/webfn")
    page.wait_for_selector("#versions tbody tr[data-version='1']")
    page.once("dialog", lambda d: d.accept())
    page.click("#versions tbody tr[data-version='1'] button:has-text('Redeploy')")
    page.wait_for_selector("#status:has-text('Version 1 redeployed as version 3')")
    page.wait_for_selector("#versions tbody tr[data-version='3']:has-text('current')")
    expect(page.locator("#editor .cm-content")).to_contain_text('return "Hello Serverless"')  # the editor shows it
    assert requests.get(appliance.edge + "/web/x", timeout=10).text == "Hello Serverless"


def test_api_errors_are_shown_next_to_the_field_to_fix(appliance, page):
    page.goto(appliance.api_url + "/console/#/")
    page.fill("#create input[name=name]", "Bad_Name")
    page.click("#create button[type=submit]")
    expect(page.locator("#create .field-error[data-for=name]")).to_contain_text("lowercase")
    # the API's own check, when the browser's passes: the error names the field
    page.fill("#create input[name=name]", "okname")
    page.fill("#create input[name=memory_mb]", "1")
    page.click("#create button[type=submit]")
    expect(page.locator("#create .field-error[data-for=memory_mb]")).to_contain_text("Request.Invalid")
    expect(page.locator("#create .field-error[data-for=name]")).to_be_hidden()  # the old error is gone
    assert page.get_attribute("#create input[name=memory_mb]", "aria-invalid") == "true"


def test_settings_are_saved_and_a_bad_one_is_marked_at_its_field(appliance, page):
    page.goto(appliance.api_url + "/console/#/functions/webfn")
    page.wait_for_selector("#settings input[name=handler]")
    expect(page.locator("#settings input[name=handler]")).to_have_value("index.handler")
    page.fill("#settings input[name=min_instances]", "50")
    page.click("#settings button[type=submit]")
    expect(page.locator("#settings .field-error[data-for=min_instances]")).to_contain_text("cannot exceed max_instances")
    page.fill("#settings input[name=min_instances]", "0")
    page.fill("#settings input[name=description]", "says hello from the console")
    page.select_option("#settings select[name=network]", "none")
    page.select_option("#settings select[name=snapshot]", "auto")
    page.click("#settings button[type=submit]")
    page.wait_for_selector("#status:has-text('Settings saved')")
    expect(page.locator("#fn-description")).to_have_text("says hello from the console")
    expect(page.locator("#settings .field-error[data-for=min_instances]")).to_be_hidden()
    fn = appliance.http.get(f"{appliance.api_url}/v1/functions/webfn", timeout=10).json()
    assert fn["description"] == "says hello from the console" and fn["network"] == "none"
    assert fn["snapshot"] == "auto"
    # the next cold start makes the version's template; the settings card says what became of it
    appliance.http.post(f"{appliance.api_url}/v1/functions/webfn/invocations", json={}, timeout=30)
    wait_for(lambda: any(t["state"] == "ready" for t in appliance.http.get(
        f"{appliance.api_url}/v1/functions/webfn", timeout=10).json()["snapshots"]), 60, message="template")
    page.reload()
    expect(page.locator("#s-snapshot-state")).to_contain_text("ready")
    # the list shows the last hour's calls
    page.goto(appliance.api_url + "/console/#/")
    expect(page.locator("#functions tbody tr:has-text('webfn') td[data-label='Calls (1 h)']")).not_to_have_text("0")


def test_usage_page_lists_invocations_and_gb_seconds(appliance, page):
    fn = appliance.deploy()
    appliance.http.post(f"{appliance.api_url}/v1/functions/{fn}/invocations", json={}, timeout=30)
    page.goto(appliance.api_url + "/console/#/usage")
    row = page.wait_for_selector(f"#usage tbody tr:has-text('{fn}')")
    assert row.text_content().startswith(fn)


def test_a_missing_function_shows_an_error_state(appliance, page):
    page.goto(appliance.api_url + "/console/#/functions/no-such-fn")
    expect(page.locator(".state.error")).to_contain_text("There is no function called no-such-fn")


def test_the_console_fits_a_phone_and_a_laptop(appliance, browser, shots):
    """At 390 px and at 1280x800 nothing is wider than the window, and the editor is usable."""
    name = appliance.deploy({"index.py": "def handler(e, c):\n    return 1\n", "lib/util.py": "y = 2\n"})
    for label, viewport in (("390", PHONE), ("1280", WIDE)):
        pg = log_in(browser, appliance, viewport)
        pg.screenshot(path=str(shots / f"functions-{label}.png"), full_page=True)
        pg.goto(appliance.api_url + f"/console/#/functions/{name}")
        pg.wait_for_selector("#file-tree li[data-path='lib/util.py']")
        pg.wait_for_selector("#chart-invocations")
        overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{label}: the page is {overflow}px wider than the window"
        pg.click("#file-tree li[data-path='lib/util.py'] button.file")
        expect(pg.locator("#editor .cm-content")).to_contain_text("y = 2")
        pg.click("#editor .cm-content")
        pg.keyboard.press("Control+f")  # the editor's own search panel
        expect(pg.locator("#editor .cm-search input[name=search]")).to_be_visible()
        pg.keyboard.press("Escape")
        box = pg.locator("#editor .cm-editor").bounding_box()
        assert box["width"] >= viewport["width"] * 0.75 or label == "1280"
        pg.screenshot(path=str(shots / f"function-{label}.png"), full_page=True)
        pg.close()


def test_the_online_editor_reads_the_files_of_a_version(appliance):
    index = "def handler(event, context):\n    return 1\n"
    name = appliance.deploy({"index.py": index, "lib/util.py": "y = 2\n", "blob.bin": b"\xff\xfe\x00"})
    files = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/files", timeout=10).json()
    assert files["files"] == {"index.py": index, "lib/util.py": "y = 2\n"}
    assert files["omitted"] == ["blob.bin"]


def test_series_are_a_fixed_number_of_points_and_count_calls(appliance):
    name = appliance.deploy({"index.py": "def handler(e, c):\n    if e.get('fail'):\n        raise ValueError('x')\n    return 1\n"})
    for body in ({}, {}, {"fail": True}):
        appliance.http.post(f"{appliance.api_url}/v1/functions/{name}/invocations", json=body, timeout=30)
    s = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/series?window=15m", timeout=10).json()
    assert len(s["points"]) == 60 and s["step_s"] == 15
    assert sum(p["invocations"] for p in s["points"]) == 3
    assert sum(p["errors"] for p in s["points"]) == 1
    assert sum(p["cold_starts"] for p in s["points"]) >= 1
    busy = [p for p in s["points"] if p["invocations"]]
    assert all(p["p50_ms"] is not None and p["p99_ms"] >= p["p50_ms"] for p in busy)
    bad = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/series?window=2y", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "window"
