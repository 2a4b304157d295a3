"""The operator's path in a real browser: the system Chromium driven by Playwright
(the pip package only; never ``playwright install``), on two catalogues (creators, and
product-images on the shop's own tables), each with JavaScript off and on, each at a
desktop's width and at a phone's (390 px), where no page may scroll sideways. Any
console error or uncaught page error fails the test. And an attacker's page,
served from another local origin, that tries to drive the server through the same
browser: nothing it sends changes anything.

Chromium is found from ``RECONCILER_TEST_CHROMIUM``, else ``/usr/bin/chromium`` or
``chromium`` on the PATH; without one the tests skip and say how to get one.
"""

from __future__ import annotations

import html
import http.server
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass

import pytest

from .conftest import folder_bucket, sql_on
from .serving import OLD, image_row, serve, shop_bucket, shop_database_url  # noqa: F401 — fixtures
from .test_dashboard import KEYS, csrf_of, seed_gone
from .test_serve_guard import snapshot

pytestmark = pytest.mark.slow

TOKEN = "ops-token-0123456789abcdef0123"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
        "--disable-sync", "--no-first-run", "--metrics-recording-only", "--disable-extensions",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        # A name of the attacker's that resolves to this machine: DNS rebinding, without DNS.
        "--host-resolver-rules=MAP rebound.test 127.0.0.1"]


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


@dataclass(frozen=True)
class Catalogue:
    """An example catalogue, as the operator's path meets it: a row whose file is gone
    (so the first plan deletes), and what its review shows."""

    name: str
    deletes: str  # the deletions callout
    group: str  # the top key that holds a deletion
    deleted: str  # the deletion's head
    in_sync_key: str  # a top key in sync once the plan is applied
    restored: str  # SQL counting the deleted row, back after the rollback


CREATORS = Catalogue("creators", "This plan deletes 2 row(s): 1 model, 1 post.", "Gone", "model Gone", "Alice",
                     "SELECT count(*) FROM whitelabel_models WHERE folder_name = 'Gone'")
PRODUCTS = Catalogue("product-images", "This plan deletes 1 row(s): 1 image.", "p7", f"image {OLD}", "p42",
                     f"SELECT count(*) FROM product_images WHERE file_name = '{OLD}'")


def started(catalogue: Catalogue, request, serve, tmp_path, env: dict):
    """The server over the catalogue's example, and a SQL runner on its database."""
    if catalogue is CREATORS:
        url = request.getfixturevalue("database_url")
        with sql_on(url) as sql:
            seed_gone(sql)
        return serve(folder_bucket(tmp_path / "bucket", *KEYS), env=env, token=TOKEN), url
    url = request.getfixturevalue("shop_database_url")
    image_row(url, OLD)
    return serve(shop_bucket(tmp_path / "bucket"), env=env, token=TOKEN, database=url, catalogue="product-images"), url


def fits(page, where: str) -> None:
    """The page does not scroll sideways, and every button and status shows whole within
    the window (a phone's 390 px too)."""
    width = page.evaluate("window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{where} scrolls sideways at {width} px"
    outside = page.evaluate("""() => [...document.querySelectorAll('button, .button, .state, .top-state, .pill')]
        .filter(e => e.offsetParent !== null && !e.closest('.sr-only'))
        .filter(e => { const r = e.getBoundingClientRect(); return r.width === 0 || r.left < 0 || r.right > innerWidth; })
        .map(e => e.outerHTML.slice(0, 120))""")
    assert outside == [], f"{where} at {width} px: {outside}"


@pytest.mark.parametrize("catalogue, javascript, width", [
    (CREATORS, False, 1280), (CREATORS, True, 390), (PRODUCTS, False, 390), (PRODUCTS, True, 1280),
], ids=["creators-js-off", "creators-js-on-390px", "product-images-js-off-390px", "product-images-js-on"])
def test_operator_path(browser, serve, request, tmp_path, catalogue, javascript, width):
    """Log in, plan, review the deletions, approve, in sync, plan one top row, roll back,
    the settings: on each page nothing scrolls sideways and the buttons and the status
    column show, at a desktop's width and at a phone's."""
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    s, url = started(catalogue, request, serve, tmp_path, {"RECONCILER_API_TOKENS": f"ops:{TOKEN}"})
    ctx = browser.new_context(java_script_enabled=javascript, viewport={"width": width, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    top = s.client().get("/api/status", params={"by": "top", "limit": 1}).json()["entity"]
    try:
        # log in
        page.goto(s.url + "/")
        expect(page).to_have_url(s.url + "/login?next=%2F")
        fits(page, "the login page")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#sync-state")).to_be_visible()
        expect(page.get_by_text("Signed in as")).to_contain_text("ops")
        fits(page, "the overview")

        # plan now → the new run's page, which follows the run until it is planned
        page.get_by_role("button", name="Plan now").click()
        expect(page).to_have_url(re.compile(r"/runs/\d+$"))
        approve = page.get_by_role("button", name="Approve and apply")
        expect(approve).to_be_visible()
        fits(page, "the run's page")

        # review: the deletions first, in red, and the changes grouped by top row, deletions first
        callout = page.locator(".deletions")
        expect(callout).to_contain_text(catalogue.deletes)
        expect(page.locator(".group h3").first).to_contain_text(catalogue.group)
        expect(page.locator(".change").first).to_have_class(re.compile("change-delete"))
        expect(page.locator(".change-delete").first).to_contain_text(catalogue.deleted)
        assert "rgb(179, 38, 30)" in callout.locator("h2").evaluate("e => getComputedStyle(e).color")

        # approve → the run's page with the result
        approve.click()
        expect(page.locator("h1 .state")).to_have_text("applied")
        expect(page.get_by_text("by ops")).to_be_visible()

        # the overview says in sync, row by row too
        page.get_by_role("link", name="Overview", exact=True).click()
        expect(page.locator("#sync-state")).to_have_text("In sync")
        row = page.locator("table.tops tbody tr", has_text=catalogue.in_sync_key)
        expect(row.locator(".top-state")).to_have_text("in sync")
        fits(page, "the overview in sync")

        # plan one top row: a run scoped to it, with nothing to do
        row.get_by_role("button", name=f"Plan {top} {catalogue.in_sync_key}").click()
        expect(page.locator("h1 .state")).to_have_text("no changes")
        expect(page.locator(".run-head")).to_contain_text(f"{top} {catalogue.in_sync_key}")

        # history → roll back → review → approve the rollback
        page.get_by_role("link", name="History", exact=True).click()
        expect(page.locator("table.history tbody tr")).to_have_count(1)
        expect(page.locator("table.history")).to_contain_text("ops")
        fits(page, "the history")
        page.get_by_role("button", name="Roll back apply 1").click()
        expect(page.locator("h1 .state")).to_have_text("planned")
        expect(page.get_by_text("rollback of")).to_be_visible()
        expect(page.locator(".deletions")).to_contain_text("This plan deletes")
        fits(page, "the rollback's page")
        page.get_by_role("button", name="Approve and apply").click()
        expect(page.locator("h1 .state")).to_have_text("applied")
        page.get_by_role("link", name="History", exact=True).click()
        expect(page.locator("table.history tbody tr")).to_have_count(2)
        expect(page.locator("table.history")).to_contain_text("rolls back apply 1")
        page.get_by_role("link", name="apply 1", exact=True).click()
        expect(page.locator("h1")).to_have_text("Apply 1")
        fits(page, "an apply's page")

        # the runs, and the settings: the catalogue and its fingerprint
        page.get_by_role("link", name="Runs", exact=True).click()
        expect(page.locator("table.stack tbody tr")).to_have_count(4)
        fits(page, "the runs")
        page.get_by_role("link", name="Settings", exact=True).click()
        expect(page.locator("#catalogue-h")).to_contain_text(catalogue.name)
        expect(page.locator("#fingerprint")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
        fits(page, "the settings")

        # keyboard: the skip link is the first stop
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- server output ---\n{s.output()}") from None
    finally:
        ctx.close()
    assert problems == [], problems
    with sql_on(url) as sql:
        assert sql(catalogue.restored)[0][0] == 1  # rolled back


ATTACK = """<!doctype html>
<html><head><title>cute cats</title></head><body>
<form id="page-form" method="post" action="{server}/runs/{run}/apply"><input name="csrf" value="{csrf}"></form>
<form id="api-form" method="post" action="{server}/api/runs/{run}/apply" enctype="text/plain">
  <input name='{{"x": "' value='"}}'></form>
<script>
const server = {server_js}, run = {run}, csrf = {csrf_js}, token = {token_js};
const form = new URLSearchParams({{csrf: csrf}});
const attempts = [
  // Requests a page may send without asking (no preflight): no body, or a form or text body.
  [server + "/api/runs/" + run + "/apply", {{method: "POST", mode: "no-cors", credentials: "include"}}],
  [server + "/api/runs/" + run + "/apply", {{method: "POST", mode: "no-cors", credentials: "include",
                                            headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}],
  [server + "/api/runs", {{method: "POST", mode: "no-cors", body: '{{"models": ["Alice"]}}'}}],
  [server + "/hooks/s3", {{method: "POST", mode: "no-cors", body: '{{"Records": []}}'}}],
  [server + "/runs/" + run + "/apply", {{method: "POST", mode: "no-cors", credentials: "include", body: form}}],
  [server + "/runs/" + run + "/discard", {{method: "POST", mode: "no-cors", credentials: "include", body: form}}],
  [server + "/runs", {{method: "POST", mode: "no-cors", credentials: "include", body: form}}],
  // Requests that need the server's consent (a preflight), even with a stolen token.
  [server + "/api/runs/" + run + "/apply", {{method: "POST", headers: {{"Content-Type": "application/json",
                                            "Authorization": "Bearer " + token}}, body: "{{}}"}}],
  // Reading a page (for its CSRF token) or the API.
  [server + "/runs/" + run, {{credentials: "include"}}],
  [server + "/api/status", {{headers: {{"Authorization": "Bearer " + token}}}}],
];
(async () => {{
  const results = [];
  for (const [url, init] of attempts) {{
    try {{
      const r = await fetch(url, init);
      results.push(r.type === "opaque" ? "opaque" : "read " + r.status + " " + (await r.text()).slice(0, 80));
    }} catch (e) {{
      results.push("blocked");
    }}
  }}
  document.body.dataset.results = JSON.stringify(results);
  document.title = "done";
}})();
</script></body></html>"""


def attacker_site(page_html: str):
    """A web server of its own on another port: another origin (the same site, to a browser)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page_html.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_a_page_of_another_origin_cannot_drive_the_server(browser, serve, tmp_path, sql):
    """The operator is logged in (the link ``serve`` gives), then opens an attacker's
    page in the same browser. Even with the page's CSRF token and the API token leaked
    to it, nothing it sends is applied, started or discarded, and it reads nothing."""
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client()
    run = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    ctx = browser.new_context()
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    page.goto(f"{s.url}/login?token={s.token}")
    assert page.url == s.url + "/"
    csrf = csrf_of(page.content())  # leaked, for the worst case
    before = snapshot(sql)
    evil = attacker_site(ATTACK.format(
        server=s.url, run=run["id"], csrf=html.escape(csrf), server_js=json.dumps(s.url), csrf_js=json.dumps(csrf),
        token_js=json.dumps(s.token)))
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("document.title === 'done'")
        results = json.loads(page.locator("body").get_attribute("data-results"))
        assert all(r in ("opaque", "blocked") for r in results), results  # nothing was read
        assert results[-3:] == ["blocked"] * 3  # no consent to the preflight, nor to reading

        # Plain HTML forms, as a page posts them to another origin (top-level navigations).
        for form in ("page-form", "api-form"):
            with page.expect_navigation() as nav:
                page.evaluate(f"document.getElementById('{form}').submit()")
            assert nav.value.status == 403 and "comes from another" in nav.value.text(), (form, nav.value.text()[:500])
            page.go_back()

        # DNS rebinding: the attacker's name pointing at this machine reaches the server, which refuses it.
        rebound = s.url.replace("127.0.0.1", "rebound.test")
        for path in ("/", f"/runs/{run['id']}", "/api/status"):
            response = page.goto(rebound + path)
            assert response.status == 421, (path, response.status)
        assert "Wrong address" in page.goto(rebound + "/").text()
    finally:
        evil.shutdown()
        ctx.close()
    assert snapshot(sql) == before
    assert c.get(f"/api/runs/{run['id']}").json()["status"] == "planned"
    assert sql("SELECT count(*) FROM whitelabel_models WHERE folder_name = 'Gone'")[0][0] == 1
