"""The web dashboard, against the real server (a subprocess), a real PostgreSQL and a
folder bucket: every page for every run state, buttons only where the transition is
allowed, login, CSRF, no secret in any page, templates shipped as package data."""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

import pytest

from reconciler.controller.runs import STATUSES

from .conftest import CREATORS, folder_bucket
from .serving import OLD, ROOT, image_row, serve, shop_bucket, shop_database_url  # noqa: F401 — fixtures

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

pytestmark = pytest.mark.slow

TOKEN = "alice-token-0123456789abcdef"
HOOK = "hook-token-0123456789abcdef00"
AWS_SECRET = "aws-secret-key-never-shown-0123"
SIGNING = "signing-key-never-shown-012345"
ENV = {"RECONCILER_API_TOKENS": f"alice:{TOKEN}", "RECONCILER_WEBHOOK_TOKEN": HOOK,
       "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "RECONCILER_SIGNING_KEY": SIGNING}
SECRETS = (TOKEN, HOOK, AWS_SECRET, SIGNING)
KEYS = ("Alice/cover.jpg", "Alice/Beach/1.jpg", "Alice/Beach/2.mp4", "Bob/Hike/a.jpg", "Bob/profile/icon.png")
BUTTONS = ("Approve and apply", "Discard")


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def seed_gone(sql) -> None:
    """Rows the bucket does not hold: the plan deletes them."""
    sql("INSERT INTO whitelabel_models (folder_name) VALUES ('Gone')")
    sql("INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title, media_cdns) "
        "SELECT id, 'Old', 'Old', '{\"images\": [], \"videos\": []}' FROM whitelabel_models WHERE folder_name = 'Gone'")


def first_planned(s) -> dict:
    s.wait_for(lambda: s.runs(), what="the first scheduled run")
    return s.wait_run(s.runs()[-1]["id"])


def test_every_page_every_state_loopback(serve, tmp_path, sql):
    """Without configured tokens: the link with the token the server made logs in;
    every page renders; buttons only where allowed; the forms work
    (Post/Redirect/Get) and need their CSRF token."""
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client(token=None)
    run = first_planned(s)
    assert run["status"] == "planned"

    assert c.get("/").headers["location"] == "/login?next=%2F"
    login = c.get("/login", params={"token": s.token, "next": "/runs"})
    assert login.status_code == 303 and login.headers["location"] == "/runs"
    home = c.get("/")
    assert home.status_code == 200, s.output()
    assert "Out of sync" in home.text and "Plan now" in home.text
    assert "Signed in as <strong>local</strong>" in home.text
    assert "reconciler_session" in login.headers["set-cookie"]
    assert "HttpOnly" in login.headers["set-cookie"] and "samesite=strict" in login.headers["set-cookie"].lower()
    assert "default-src 'none'" in home.headers["content-security-policy"]
    for name in ("Alice", "Bob", "Gone"):
        assert f"Plan model {name}" in home.text
    assert 'class="chart"' in home.text and "<time datetime=" in home.text
    # search and paging of the model table, in SQL
    found = c.get("/", params={"q": "ali"}).text
    assert "Plan model Alice" in found and "Plan model Bob" not in found
    assert "Plan model Bob" not in c.get("/", params={"q": "a%_"}).text

    page = c.get(f"/runs/{run['id']}")
    assert page.status_code == 200 and "This plan deletes 2 row(s): 1 model, 1 post." in page.text
    assert page.text.index("This plan deletes") < page.text.index("Changes")
    assert all(b in page.text for b in BUTTONS) and "download the plan file" in page.text
    assert "media_cdns" in page.text or "image(s)" in page.text
    assert "- delete model Gone" not in page.text and "<code>model Gone</code>" in page.text
    only = c.get(f"/runs/{run['id']}", params={"action": "delete"}).text
    assert "model Gone" in only and "pill-create" not in only
    assert c.get(f"/runs/{run['id']}/plan").json()["plan_id"] == run["plan_id"]

    # CSRF: a form without its token, or with another's, is refused
    token = csrf_of(page.text)
    assert c.post(f"/runs/{run['id']}/apply").status_code == 403
    assert c.post(f"/runs/{run['id']}/apply", data={"csrf": token + "x"}).status_code == 403
    import httpx

    stranger = httpx.post(f"{s.url}/runs/{run['id']}/apply", data={"csrf": token})  # no session cookie
    assert stranger.status_code == 303 and stranger.headers["location"].startswith("/login")
    assert s.runs()[0]["status"] == "planned"

    # Approve: Post/Redirect/Get to the run's page, which shows the result
    r = c.post(f"/runs/{run['id']}/apply", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run['id']}"
    applied = c.get(r.headers["location"]).text
    assert "applied" in applied and "Approve and apply" not in applied and "by <strong>local</strong>" in applied
    assert "In sync" in c.get("/").text

    # History, one apply, roll back → the rollback run's page
    hist = c.get("/history").text
    assert "Roll back apply 1" in hist and f"run {run['id']}" in hist and "local" in hist
    one = c.get("/history/1")
    assert one.status_code == 200 and "Gone" in one.text and "delete" in one.text
    created = sum(v["create"] for v in run["summary"].values())
    assert created and f"{created} row(s) created: their images are in the plan file" in one.text
    r = c.post("/history/1/rollback", data={"csrf": token})
    assert r.status_code == 303
    back = c.get(r.headers["location"]).text
    assert "rollback" in back and "Approve and apply" in back and "This plan deletes" in back
    assert "Roll back apply 1" not in c.get("/history").text  # one rollback at a time

    # Plan now and Plan this model land on the new run's page
    r = c.post("/runs", data={"csrf": token, "scope": "Alice"})
    assert r.status_code == 303 and r.headers["location"].startswith("/runs/")
    scoped = s.wait_run(int(r.headers["location"].rsplit("/", 1)[1]))
    assert scoped["scope"] == ["Alice"]

    # Every state renders; the buttons appear only for a planned run
    plan_file = sql("SELECT plan_file FROM reconciler_runs WHERE id = %s", (run["id"],))[0][0]
    ids = {}
    for status in STATUSES:
        has_plan = status not in ("planning", "refused", "errored")
        ids[status] = sql(
            "INSERT INTO reconciler_runs (status, trigger, created_at, planned_at, phase, progress, plan_id, summary, "
            "change_count, current_rows, object_count, plan_file, error, owner) VALUES (%s, 'manual', now(), "
            "now(), %s, %s, %s, %s, %s, 2, 5, %s, %s, %s) RETURNING id",
            (status, "listed 3 object(s)" if status == "planning" else "done",
             '{"objects_listed": 3}', run["plan_id"] if has_plan else None,
             __import__("json").dumps(run["summary"]) if has_plan else None, run["change_count"] if has_plan else 0,
             plan_file if has_plan else None, "a reason" if status in ("refused", "errored", "stale") else None,
             None))[0][0]
    for status, run_id in ids.items():
        p = c.get(f"/runs/{run_id}")
        assert p.status_code == 200, (status, p.text)
        assert f"state-{status}" in p.text
        for b in BUTTONS:
            assert (b in p.text) == (status == "planned"), (status, b)
        assert ("download the plan file" in p.text) == (status not in ("planning", "refused", "errored"))
        if status == "planning":
            assert 'http-equiv="refresh"' in p.text and "<progress" in p.text and "listed 3 object(s)" in p.text
    for status in STATUSES:
        listing = c.get("/runs", params={"status": status})
        assert listing.status_code == 200 and f'href="/runs/{ids[status]}"' in listing.text
    assert c.get("/runs", params={"status": "bogus"}).status_code == 400
    assert c.get("/runs/999999").status_code == 404 and c.get("/history/999").status_code == 404
    settings = c.get("/settings").text
    assert "Catalogue <code>creators</code>" in settings and CREATORS.fingerprint in settings
    for e in CREATORS.entities:
        assert f"<code>{e.table}</code>" in settings and f"{e.label} · {e.plural}" in settings
    assert "<code>{model}/{post}/**/{file:image|video}</code>" in settings
    assert c.get("/static/style.css").status_code == 200


def test_login_csrf_and_no_secrets(serve, tmp_path, sql):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS), env=ENV, token=TOKEN)
    first_planned(s)
    c = s.client(token=None)

    r = c.get("/runs?status=planned")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fruns%3Fstatus%3Dplanned"
    login = c.get("/login")
    assert login.status_code == 200 and 'type="password"' in login.text and "Runs</a>" not in login.text
    assert c.post("/login", data={"token": TOKEN}).status_code == 403  # no CSRF token
    bad = c.post("/login", data={"token": TOKEN[:-1] + "X", "csrf": csrf_of(login.text)})
    assert bad.status_code == 401 and "not valid" in bad.text
    ok = c.post("/login", data={"token": TOKEN, "csrf": csrf_of(login.text), "next": "//evil.example/x"})
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Secure" not in cookie  # plain HTTP
    assert TOKEN not in cookie
    home = c.get("/")
    assert home.status_code == 200 and "Signed in as <strong>alice</strong>" in home.text

    # every form needs the CSRF token of this session
    assert c.post("/runs").status_code == 403
    assert c.post("/runs", data={"csrf": "forged"}).status_code == 403
    r = c.post("/runs", data={"csrf": csrf_of(home.text)})
    assert r.status_code == 303
    run = s.wait_run(int(r.headers["location"].rsplit("/", 1)[1]))
    r = c.post(f"/runs/{run['id']}/discard", data={"csrf": csrf_of(home.text)})
    assert r.status_code == 303 and s.wait_run(run["id"])["decided_by"] == "alice"

    # the session does not open the API; a bearer header opens the pages
    assert c.get("/api/status").status_code == 401
    assert s.client().get("/runs").status_code == 200

    # a forged or tampered cookie is no session
    forged = s.client(token=None)
    forged.cookies.set("reconciler_session", c.cookies["reconciler_session"][:-2] + "xx")
    assert forged.get("/").status_code == 303

    # no secret in any page
    pages = ["/", "/runs", f"/runs/{run['id']}", "/history", "/settings", "/login"]
    text = "".join(c.get(p).text for p in pages)
    for secret in SECRETS:
        assert secret not in text
    settings = c.get("/settings").text
    assert "alice (hidden)" in settings and "set (hidden)" in settings

    # logout ends the session
    r = c.post("/logout", data={"csrf": csrf_of(home.text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/").status_code == 303


def test_an_apply_rolled_back_on_the_command_line_offers_no_roll_back(serve, tmp_path, sql, cli, database_url):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client()
    run = first_planned(s)
    apply_id = c.post(f"/api/runs/{run['id']}/apply").json()["apply_id"]
    assert cli("rollback", apply_id, "-o", "rb.json", "--database", database_url).code == 0
    assert cli("apply", "rb.json", "--database", database_url).code == 0

    history = c.get("/history").text
    assert f"Roll back apply {apply_id}" not in history
    assert f'rolled back by <a href="/history/{apply_id + 1}">apply {apply_id + 1}</a>' in history
    assert f"Roll back apply {apply_id + 1}" in history  # the rollback itself can be undone
    page = c.get(f"/history/{apply_id}").text
    assert "rolled back by" in page and f"Roll back apply {apply_id}" not in page
    # A stale form (the page was open before): a page in the dashboard's words, no command to type.
    r = c.post(f"/history/{apply_id}/rollback", data={"csrf": csrf_of(history)})
    assert r.status_code == 409 and "Not possible now" in r.text
    assert f"Apply {apply_id} was rolled back already, by apply {apply_id + 1}." in r.text
    assert "reconciler history" not in r.text and "`" not in r.text and "Error 409" not in r.text
    api = c.post(f"/api/applies/{apply_id}/rollback")
    assert api.status_code == 409 and api.json()["error"] == f"apply {apply_id} was rolled back already, by apply {apply_id + 1}"
    assert c.post("/api/applies/999/rollback").json()["error"] == "there is no apply 999"


def test_the_overview_says_where_its_numbers_come_from(serve, tmp_path, sql):
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client()
    run = first_planned(s)
    home = c.get("/").text
    assert f"Review run {run['id']}" in home and f"Found by <a href=\"/runs/{run['id']}\">run {run['id']}</a>" in home
    assert "No plan waits for review" not in home
    assert c.post(f"/api/runs/{run['id']}/discard").status_code == 200
    home = c.get("/").text
    n = run["change_count"]
    assert f"Out of sync: {n} changes not applied" in home and "pending change" not in home.lower()
    assert "state-discarded" in home and "by local" in home and "No plan waits for review" in home
    assert "Review run" not in home
    st = c.get("/api/status").json()
    assert st["pending_run"] is None and st["drift_runs"] == [
        {"id": run["id"], "status": "discarded", "decided_by": "local", "decided_at": st["drift_runs"][0]["decided_at"]}]
    # A check refused by a guard: not in sync, and the overview says which run and why to look.
    sql("INSERT INTO reconciler_runs (status, trigger, owner, error) VALUES ('refused', 'manual', 1, 'a guard')")
    refused = s.runs()[0]["id"]
    home = c.get("/").text
    assert f"run {refused}</a>, was refused by a safety guard" in home
    assert c.get("/api/status").json()["refused_run"] == refused


def test_page_errors_speak_the_dashboards_words(serve, tmp_path, sql):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client()
    first_planned(s)
    home = c.get("/").text
    r = c.post("/runs", data={"csrf": csrf_of(home), "scope": "Nobody"})
    assert r.status_code == 400 and "That request is not valid" in r.text
    assert "model &#39;Nobody&#39; is neither in the source nor in the database: check the model keys" in r.text
    assert "--model" not in r.text
    r = c.get("/runs", params={"page": "abc"})
    assert r.status_code == 400 and "page must be a whole number" in r.text
    assert c.get("/", params={"page": "0"}).status_code == 400
    assert c.get("/runs/1", params={"page": "99999"}).status_code == 200  # past the end: the last page


def test_templates_and_static_are_package_data():
    """A plain ``pip install .`` ships every template and the stylesheet."""
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    globs = cfg["tool"]["setuptools"]["package-data"]["reconciler.server"]
    assert "jinja2" in " ".join(cfg["project"]["dependencies"])
    here = ROOT / "reconciler" / "server"
    files = [p.relative_to(here).as_posix() for d in ("templates", "static") for p in (here / d).iterdir()]
    assert "static/style.css" in files and "templates/base.html" in files
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f


def test_charts_are_svg_without_inline_style():
    from reconciler.server import charts

    svg = charts.chart("t", [charts.Series("a", [("2026-01-01T00:00:00Z", 3, "x<y")])], now=1767312000)
    assert svg.startswith("<svg") and "style=" not in svg and "x&lt;y" in svg and "<rect" in svg
    empty = charts.chart("t", [charts.Series("a")], dots=True)
    assert "nothing in the last 30 days" in empty


def test_the_dashboard_speaks_the_catalogues_words(serve, shop_database_url, tmp_path):
    """product-images on the shop's tables: the top table lists products (the platform's,
    one it lacks too), its counts are images; a run groups its changes by product, the
    products with deletions first; the settings show whose rows are whose."""
    image_row(shop_database_url, OLD)
    s = serve(shop_bucket(tmp_path / "bucket"), database=shop_database_url, catalogue="product-images")
    c = s.client()
    run = first_planned(s)
    home = c.get("/").text
    assert '<h2 id="tops-h">Products</h2>' in home and "Search products" in home
    assert '<th scope="col" class="num" title="image">Images</th>' in home
    for key in ("p42", "p7", "p99"):
        assert f'aria-label="Plan product {key}">Plan this product</button>' in home
    assert "p99 <span class=\"muted\">(not in the database)</span>" in home
    assert "model" not in home.lower()
    assert "1 <span class=\"muted\">(unknown_parent)</span>" in home and "catalogue <a href=\"/settings#catalogue\">product-images</a>" in home

    page = c.get(f"/runs/{run['id']}").text
    assert "This plan deletes 1 row(s): 1 image." in page and "all products" in page
    groups = re.findall(r'<h3><span class="muted">Product</span> (\S+)</h3>', page)
    assert groups == ["p7", "p42"]  # the product with a deletion first, then by key
    assert page.index("delete</span> <code>image " + OLD) < page.index("create</span> <code>image products/p7/")

    settings = c.get("/settings").text
    assert "the platform&#39;s, looked up" in settings and "written by the tool" in settings
    assert "<code>product_variants</code>" in settings and "<code>variant</code> by <code>variant_id</code>" in settings
    r = c.post("/runs", data={"csrf": csrf_of(home), "scope": "p42/500g"})
    assert r.status_code == 400 and "&#39;p42/500g&#39; is not a product key (a folder name, without &#39;/&#39;)" in r.text
