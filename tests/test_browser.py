"""The operator's path in a real browser: the system Chromium driven by Playwright
(the pip package only; never ``playwright install``), once with JavaScript off and once
on. Any console error or uncaught page error fails the test.

Chromium is found from ``RECONCILER_TEST_CHROMIUM``, else ``/usr/bin/chromium`` or
``chromium`` on the PATH; without one the tests skip and say how to get one.
"""

from __future__ import annotations

import os
import shutil

import pytest

from .conftest import folder_bucket
from .serving import serve  # noqa: F401 — the fixture
from .test_dashboard import KEYS, seed_gone

pytestmark = pytest.mark.slow

TOKEN = "ops-token-0123456789abcdef0123"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
        "--disable-sync", "--no-first-run", "--metrics-recording-only", "--disable-extensions",
        "--disable-features=Translate,OptimizationHints,MediaRouter"]


def chromium_path() -> str | None:
    explicit = os.environ.get("RECONCILER_TEST_CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium: set RECONCILER_TEST_CHROMIUM=/path or apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.parametrize("javascript", [False, True], ids=["js-off", "js-on"])
def test_operator_path(browser, serve, tmp_path, sql, javascript):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS), env={"RECONCILER_API_TOKENS": f"ops:{TOKEN}"}, token=TOKEN)
    ctx = browser.new_context(java_script_enabled=javascript, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        # log in
        page.goto(s.url + "/")
        expect(page).to_have_url(s.url + "/login?next=%2F")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#sync-state")).to_be_visible()
        expect(page.get_by_text("Signed in as")).to_contain_text("ops")

        # plan now → the new run's page, which follows the run until it is planned
        page.get_by_role("button", name="Plan now").click()
        expect(page).to_have_url(__import__("re").compile(r"/runs/\d+$"))
        approve = page.get_by_role("button", name="Approve and apply")
        expect(approve).to_be_visible()

        # review: the deletions first, in red, and the changes grouped by model
        callout = page.locator(".deletions")
        expect(callout).to_contain_text("This plan deletes 2 row(s): 1 model, 1 post.")
        expect(page.locator(".group h3", has_text="Gone")).to_be_visible()
        expect(page.locator(".change-delete").first).to_contain_text("model Gone")
        assert "rgb(179, 38, 30)" in callout.locator("h2").evaluate("e => getComputedStyle(e).color")

        # approve → the run's page with the result
        approve.click()
        expect(page.locator("h1 .state")).to_have_text("applied")
        expect(page.get_by_text("by ops")).to_be_visible()

        # the overview says in sync
        page.get_by_role("link", name="Overview", exact=True).click()
        expect(page.locator("#sync-state")).to_have_text("In sync")

        # history → roll back → review → approve the rollback
        page.get_by_role("link", name="History", exact=True).click()
        expect(page.locator("table.history tbody tr")).to_have_count(1)
        expect(page.locator("table.history")).to_contain_text("ops")
        page.get_by_role("button", name="Roll back apply 1").click()
        expect(page.locator("h1 .state")).to_have_text("planned")
        expect(page.get_by_text("rollback of")).to_be_visible()
        expect(page.locator(".deletions")).to_contain_text("This plan deletes")
        page.get_by_role("button", name="Approve and apply").click()
        expect(page.locator("h1 .state")).to_have_text("applied")
        page.get_by_role("link", name="History", exact=True).click()
        expect(page.locator("table.history tbody tr")).to_have_count(2)
        expect(page.locator("table.history")).to_contain_text("rolls back apply 1")

        # keyboard: the skip link is the first stop
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- server output ---\n{s.output()}") from None
    finally:
        ctx.close()
    assert problems == [], problems
    assert sql("SELECT count(*) FROM whitelabel_models WHERE folder_name = 'Gone'")[0][0] == 1  # rolled back
