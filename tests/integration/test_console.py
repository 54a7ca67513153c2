"""The web console in a real browser: create, edit online, deploy, bind a trigger, invoke, read logs."""

import re
import shutil

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(appliance, tmp_path_factory):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(appliance.api_url + "/console/")
        pg.fill("#login input[name=token]", appliance.token)  # kept in the tab's sessionStorage
        pg.click("#login button[type=submit]")
        pg.wait_for_selector("#create")
        yield pg
        pg.screenshot(path=str(tmp_path_factory.mktemp("console") / "last.png"), full_page=True)
        browser.close()


def test_a_function_is_created_edited_deployed_triggered_and_invoked_from_the_console(appliance, page):
    page.goto(appliance.api_url + "/")
    assert page.url.endswith("/console/")
    page.fill("#create input[name=name]", "webfn")
    page.click("#create button[type=submit]")
    page.wait_for_selector("#fn-title:has-text('webfn')")
    # the editor fills in once the function's files have loaded, after the title shows
    expect(page.locator("#editor")).to_have_value(re.compile('return "Hello Serverless"'))
    page.fill("#editor", "def handler(event, context):\n    print('edited online')\n    return 'from the console'\n")
    page.click("#save-code")
    page.wait_for_selector("#status:has-text('Deployed version 2')")
    page.wait_for_selector("#fn-summary:has-text('version 2')")
    page.select_option("#trigger-add select[name=method]", "GET")
    page.fill("#trigger-add input[name=path]", "/web")
    page.click("#trigger-add button[type=submit]")
    page.wait_for_selector("#triggers li:has-text('GET /web')")
    assert requests.get(appliance.edge + "/web", timeout=10).text == "from the console"
    page.fill("#event", '{"k": 1}')
    page.click("#invoke")
    page.wait_for_selector("#result:has-text('from the console')")
    result = page.text_content("#result")
    assert "HTTP 200" in result and ("warm" in result or "cold start" in result)
    page.wait_for_selector("#phases .bar span")
    page.wait_for_selector("#invocations tbody tr")
    page.wait_for_selector("#logs:has-text('edited online')")


def test_api_errors_are_shown_with_the_field_to_fix(appliance, page):
    page.goto(appliance.api_url + "/console/#/")
    page.fill("#create input[name=name]", "Bad_Name")
    page.click("#create button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "Request.Invalid" in page.text_content("#status") and "(field: name)" in page.text_content("#status")


def test_usage_page_lists_invocations_and_gb_seconds(appliance, page):
    fn = appliance.deploy()
    appliance.http.post(f"{appliance.api_url}/v1/functions/{fn}/invocations", json={}, timeout=30)
    page.goto(appliance.api_url + "/console/#/usage")
    row = page.wait_for_selector(f"#usage tbody tr:has-text('{fn}')")
    assert row.text_content().startswith(fn)


def test_the_online_editor_reads_the_files_of_a_version(appliance):
    index = "def handler(event, context):\n    return 1\n"
    name = appliance.deploy({"index.py": index, "lib/util.py": "y = 2\n", "blob.bin": b"\xff\xfe\x00"})
    files = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/files", timeout=10).json()
    assert files["files"] == {"index.py": index, "lib/util.py": "y = 2\n"}
    assert files["omitted"] == ["blob.bin"]
