"""Approvals and change windows on the dashboard, in a real browser with JavaScript off
and on (as tests/test_browser.py drives it): a plan that needs two people inside a
standing freeze — the first approval recorded, the second applied with an override and
its reason; the windows, the policy and the notifications on their page."""

from __future__ import annotations

import re

import pytest

from .conftest import folder_bucket
from .serving import serve  # noqa: F401 — the fixture
from .test_browser import browser  # noqa: F401 — the fixture
from .test_dashboard import KEYS
from .test_notify import SECRET

pytestmark = pytest.mark.slow

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef0000"
FREEZE = {"name": "release freeze", "kind": "deny", "schedule": "* * * * *", "duration": "2m"}


def log_in(page, url: str, token: str) -> None:
    page.goto(url + "/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()


@pytest.mark.parametrize("javascript", [False, True], ids=["js-off", "js-on"])
def test_two_approvers_and_an_override_of_a_freeze(browser, serve, receiver, tmp_path, sql, javascript):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS), serve={"approvals": {"required": 2}, "windows": [FREEZE]},
              notify=[{"type": "webhook", "name": "audit", "url": receiver.url, "secret_env": "HOOK_SECRET"}],
              env={"RECONCILER_API_TOKENS": f"alice:{ALICE},bob:{BOB}", "HOOK_SECRET": SECRET}, token=ALICE)
    run = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    ctx = browser.new_context(java_script_enabled=javascript, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        log_in(page, s.url, ALICE)
        expect(page.locator("#window-state")).to_contain_text("Applies wait: inside the deny window 'release freeze'")
        page.goto(f"{s.url}/runs/{run['id']}")
        expect(page.locator("#window-state")).to_contain_text("release freeze")
        expect(page.locator("#approvals")).to_contain_text("needs 2, has 0")
        expect(page.get_by_text("Apply now, inside the closed window")).to_have_count(0)  # alice alone cannot
        page.get_by_role("button", name="Approve", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("Your approval is recorded")
        expect(page.locator("#approvals")).to_contain_text("needs 2, has 1 (alice)")
        expect(page.locator("#you-approved")).to_be_visible()
        expect(page.locator("h1 .state")).to_have_text("planned")

        page.get_by_role("button", name="Log out").click()
        log_in(page, s.url, BOB)
        page.goto(f"{s.url}/runs/{run['id']}")
        expect(page.get_by_role("button", name="Approve", exact=True)).to_be_visible()  # it would wait for the window
        page.get_by_text("Apply now, inside the closed window").click()
        page.get_by_label("Why it cannot wait").fill("hotfix for INC-42")
        page.get_by_role("button", name="Approve and apply now").click()
        expect(page.locator("h1 .state")).to_have_text("applied")
        expect(page.locator("#approvals")).to_contain_text("has 2 (alice, bob)")
        expect(page.locator(".facts")).to_contain_text("hotfix for INC-42")

        s.wait_for(lambda: sql("SELECT 1 FROM reconciler_deliveries WHERE event = 'applied' AND status = 'delivered'"),
                   what="the applied notification delivered")
        page.get_by_role("link", name="Notifications", exact=True).click()
        expect(page.locator("h1")).to_have_text("Approvals, windows and notifications")
        expect(page.locator("table.windows")).to_contain_text("release freeze")
        expect(page.locator("main")).to_contain_text("A plan needs 2 approvers")
        expect(page.locator("table.deliveries")).to_contain_text("applied")
        expect(page.locator("table.deliveries")).to_contain_text("delivered")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- server output ---\n{s.output()}") from None
    finally:
        ctx.close()
    assert problems == [], problems
    assert sql("SELECT os_user, override_reason FROM reconciler_applies")[0][1] == "hotfix for INC-42"
    assert re.match(r"^alice, bob", sql("SELECT os_user FROM reconciler_applies")[0][0])
