"""What the console's browser tests share: headless Chromium, the two window sizes, logging in and
the screenshot folder (a test artifact: its path is printed, so a CI log says where to find it)."""

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from appliance.control.api import CONSOLE_DIST

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SIZES = (("1280", WIDE), ("390", PHONE))
# The page polls (logs every second, events every 5 s): a busy shared host may take longer than expect's 5 s.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("console-screenshots")
    print(f"console screenshots: {d}")
    return d


@pytest.fixture(scope="module")
def browser():
    if not (CONSOLE_DIST / "console.js").is_file():
        pytest.fail("the console's bundle is not built: run `make console` (make test does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def log_in(browser, appliance, viewport=WIDE):
    pg = browser.new_page(viewport=viewport)
    pg.set_default_timeout(30_000)
    pg.goto(appliance.api_url + "/console/")
    pg.fill("#login input[name=token]", appliance.token)
    pg.click("#login button[type=submit]")
    pg.wait_for_selector("#create")
    return pg


def no_overflow(pg, label: str) -> None:
    """Nothing on the page is wider than the window."""
    overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{label}: the page is {overflow}px wider than the window"


def at_both_widths(browser, appliance, shots, hash_, ready, name, detail=None):
    """Open ``hash_`` at 1280x800 and at 390 px, wait for ``ready``, check the width and keep a screenshot
    of the page (and one of the ``detail`` element alone, easier to look at than a long page)."""
    for label, viewport in SIZES:
        pg = log_in(browser, appliance, viewport)
        pg.goto(appliance.api_url + "/console/" + hash_)
        pg.wait_for_selector(ready)
        no_overflow(pg, f"{name} at {label}")
        pg.screenshot(path=str(shots / f"{name}-{label}.png"), full_page=True)
        if detail:  # the sticky header would cover the top of a card taller than the window
            pg.add_style_tag(content="header.top { position: static; }")
            pg.locator(detail).screenshot(path=str(shots / f"{name}-{label}-detail.png"))
        pg.close()
