"""Published versions and aliases in the console, in a real browser: publish version 1, point the
alias live at it, publish version 2, move live to 2 with 10 % of the calls still going to 1 (the
split bar shows it), roll back by moving it to 1; a trigger bound to NAME:live shows on the alias,
which cannot be deleted while it is there. Screenshots at 1280x800 and 390 px wide are kept in the
test's tmp dir (the path is printed)."""

import re

import pytest
from playwright.sync_api import expect

from tests.integration.conftest import make_zip
from tests.integration.console_browser import WIDE, at_both_widths, browser, log_in, shots  # noqa: F401


def returns(text):
    return {"index.py": f"def handler(event, context):\n    return {text!r}\n"}


@pytest.fixture(scope="module")
def fn(appliance):
    name = appliance.deploy(returns("one"), name="relfn")
    probe = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/published", timeout=10)
    assert probe.status_code == 200, probe.text
    return name


@pytest.fixture(scope="module")
def page(appliance, browser, fn):  # noqa: F811 - the fixture imported above
    pg = log_in(browser, appliance, WIDE)
    pg.on("dialog", lambda d: d.accept())  # the confirmations of deletes
    yield pg
    pg.close()


def alias(appliance, fn, name="live"):
    resp = appliance.http.get(f"{appliance.api_url}/v1/functions/{fn}/aliases/{name}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def save_alias(page, version, extra=None, weight=None):
    page.select_option("#alias-form select[name=version]", str(version))
    page.select_option("#alias-form select[name=extra_version]", str(extra) if extra else "")
    if weight is not None:
        page.fill("#alias-form input[name=weight]", str(weight))
    page.click("#alias-form button[type=submit]")


def test_publish_alias_weighted_move_and_rollback(appliance, page, fn, browser, shots):  # noqa: F811
    page.goto(appliance.api_url + f"/console/#/functions/{fn}")
    expect(page.locator("#published-empty")).to_be_visible()
    expect(page.locator("#aliases-empty")).to_be_visible()
    expect(page.locator("#alias-form button[type=submit]")).to_be_disabled()  # nothing to point at yet

    page.fill("#publish-form input[name=description]", "first")
    page.click("#publish-form button[type=submit]")
    page.wait_for_selector("#status:has-text('Published version 1')")
    v1 = page.locator("#published tbody tr[data-version='1']")
    expect(v1).to_contain_text("first")
    expect(v1.locator("td[data-label='Code version']")).to_contain_text("1")
    page.click("#publish-form button[type=submit]")  # nothing changed: the same version, said so
    page.wait_for_selector("#status:has-text('Nothing changed since version 1')")
    expect(page.locator("#published tbody tr")).to_have_count(1)

    # the alias's name is checked next to its field, by the page and by the API
    page.click("#alias-form button[type=submit]")
    expect(page.locator("#alias-form .field-error[data-for=name]")).to_contain_text("name the alias")
    page.fill("#alias-form input[name=name]", "123")
    page.click("#alias-form button[type=submit]")
    expect(page.locator("#alias-form .field-error[data-for=name]")).to_contain_text("not only digits")
    page.fill("#alias-form input[name=name]", "live")
    save_alias(page, 1)
    page.wait_for_selector(f"#status:has-text('Created {fn}:live → version 1')")
    live = page.locator("#aliases li[data-alias=live]")
    expect(live.locator(".split .share")).to_have_count(1)
    expect(live.locator(".split .share[data-version='1']")).to_have_text("v1 100%")
    assert alias(appliance, fn)["version"] == 1

    appliance.api.upload_code(fn, make_zip(returns("two")))
    page.fill("#publish-form input[name=description]", "second")
    page.click("#publish-form button[type=submit]")
    page.wait_for_selector("#status:has-text('Published version 2')")
    expect(page.locator("#published tbody tr[data-version='2'] td[data-label='Code version']")).to_contain_text("2")

    # move live to 2 with 10 % still on 1: a weight out of range is refused at its field first
    live.locator("button:has-text('Move')").click()
    expect(page.locator("#alias-form input[name=name]")).to_have_value("live")
    save_alias(page, 2, extra=2, weight=10)
    expect(page.locator("#alias-form .field-error[data-for=extra_version]")).to_contain_text("other than")
    save_alias(page, 2, extra=1, weight=150)
    expect(page.locator("#alias-form .field-error[data-for=weight]")).to_contain_text("below 100")
    assert page.get_attribute("#alias-form input[name=weight]", "aria-invalid") == "true"
    page.fill("#alias-form input[name=weight]", "10")  # the form draws the split it would make
    expect(page.locator("#alias-preview .share[data-version='1']")).to_have_text("v1 10%")
    save_alias(page, 2, extra=1, weight=10)
    page.wait_for_selector(f"#status:has-text('Moved {fn}:live → version 2 (10% to version 1)')")
    expect(live.locator(".split .share[data-version='2']")).to_have_text("v2 90%")
    expect(live.locator(".split .share[data-version='1']")).to_have_text("v1 10%")
    expect(page.locator("#published tbody tr[data-version='1'] td[data-label=Aliases]")).to_have_text("live 10%")
    expect(page.locator("#published tbody tr[data-version='2'] td[data-label=Aliases]")).to_have_text("live 90%")
    got = alias(appliance, fn)
    assert got["version"] == 2 and {k: pytest.approx(v) for k, v in got["weights"].items()} == {"1": 0.1}
    at_both_widths(browser, appliance, shots, f"#/functions/{fn}", "#aliases li[data-alias=live] .share[data-version='1']",
                   "alias-split", "#published-card")

    # the rollback: all calls back on version 1
    live.locator("button:has-text('Move')").click()
    expect(page.locator("#alias-form select[name=extra_version]")).to_have_value("1")
    expect(page.locator("#alias-form input[name=weight]")).to_have_value("10")
    page.fill("#alias-form input[name=weight]", "")
    save_alias(page, 1)
    page.wait_for_selector(f"#status:has-text('Moved {fn}:live → version 1')")
    expect(live.locator(".split .share")).to_have_count(1)
    expect(live.locator(".split .share[data-version='1']")).to_have_text("v1 100%")
    got = alias(appliance, fn)
    assert got["version"] == 1 and not got["weights"]


def test_the_alias_is_invoked_from_the_page_and_its_calls_say_so(appliance, page, fn):
    page.goto(appliance.api_url + f"/console/#/functions/{fn}")
    expect(page.locator("#invoke-qualifier option[value=live]")).to_have_count(1)
    page.select_option("#invoke-qualifier", "live")  # live is back on version 1
    page.click("#invoke")
    expect(page.locator("#result")).to_contain_text("HTTP 200")
    expect(page.locator("#result")).to_contain_text("version 1")
    expect(page.locator("#result")).to_contain_text('"one"')
    page.select_option("#invoke-qualifier", "")
    page.click("#invoke")
    expect(page.locator("#result")).to_contain_text('"two"')  # $LATEST runs the newest code
    expect(page.locator("#invocations tbody td[data-label=Version]:has-text('1 (live)')")).to_have_count(1)


def test_a_trigger_on_the_alias_shows_and_keeps_it_until_removed(appliance, page, fn):
    page.goto(appliance.api_url + f"/console/#/functions/{fn}")
    live = page.locator("#aliases li[data-alias=live]")
    expect(live).to_be_visible()
    page.fill("#trigger-add input[name=path]", "/rel-live")
    page.select_option("#trigger-add select[name=target]", "live")
    page.click("#trigger-add button[type=submit]")
    page.wait_for_selector(f"#status:has-text('Trigger GET /rel-live added for {fn}:live')")
    got = appliance.http.get(f"{appliance.api_url}/v1/triggers", timeout=10).json()["triggers"]
    assert [t["function"] for t in got if t.get("path") == "/rel-live"] == [f"{fn}:live"]
    expect(live.locator(".bound")).to_contain_text("GET /rel-live")
    expect(page.locator("#triggers li[data-path='/rel-live'] .badge.alias")).to_have_text(f"→ {fn}:live")
    live.locator("button:has-text('Delete')").click()
    expect(live.locator(".form-error")).to_contain_text("Alias.InUse")
    page.click("#triggers li[data-path='/rel-live'] button:has-text('Remove')")
    expect(live.locator(".bound")).to_contain_text(re.compile("No trigger targets"))
    live.locator("button:has-text('Delete')").click()
    expect(page.locator("#aliases li")).to_have_count(0)
    expect(page.locator("#aliases-empty")).to_be_visible()
