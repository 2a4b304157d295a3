"""The web dashboard: server-rendered pages over the library (:mod:`reconciler.controller.runs`,
:mod:`reconciler.render`), Jinja2 templates in ``templates/``, one stylesheet in
``static/``. Usable without JavaScript; ``static/app.js`` only polls a run in progress.

Every view gathers its data through the library in the thread pool and renders a
template; no SQL here or in the templates. Every form posts, then redirects
(Post/Redirect/Get). Authentication: a login form takes an API token and sets a signed
session cookie (:mod:`.sessions`); the token minted for a loopback-only server also
logs in from the link ``serve`` prints (``/login?token=…``); a bearer header works too
(then no CSRF token is needed: nothing ambient is sent). Every form carries a CSRF
token; a POST without the right one is refused with 403. Errors are pages in the
dashboard's words, never a command to type.
"""

from __future__ import annotations

import calendar
import functools
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import render
from ..catalogue import Catalogue
from ..controller.runs import STATUSES, BadRequest, RunConflict, RunError, RunNotFound, total
from ..engine.diff import ACTIONS
from ..errors import DatabaseError, ReconcilerError
from ..version import __version__
from . import charts
from .http import int_param, path_id, read_body, top_key_param
from .sessions import COOKIE, MAX_AGE

# Paths the dashboard answers; TokenAuth leaves them to the session checks here.
PAGE_PATHS = ("/", "/login", "/logout", "/runs", "/history", "/settings", "/notifications", "/static/")
PER_PAGE = 50  # top rows (models, products) on the overview, runs in the list
CHANGES_PER_PAGE = 100
IN_PROGRESS = ("planning", "applying")

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("reconciler.server", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def is_page(path: str) -> bool:
    return path == "/" or any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in PAGE_PATHS[1:])


# --------------------------------------------------------------------------- formatting


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def ago(iso: str | None, now: float | None = None) -> str:
    if not iso:
        return "never"
    d = (now or time.time()) - _epoch(iso)
    future, d = d < 0, abs(d)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if d >= size:
            n = int(d // size)
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            break
    else:
        return "just now" if d < 10 else ("in a few seconds" if future else "seconds ago")
    return f"in {text}" if future else f"{text} ago"


def time_tag(iso: str | None) -> Markup:
    """``<time>`` showing the time relative to now, the exact UTC time on hover."""
    if not iso:
        return Markup('<span class="muted">never</span>')
    exact = iso.replace("T", " ").replace("Z", " UTC")
    return Markup('<time datetime="{0}" title="{1}">{2}</time>').format(iso, exact, ago(iso))


def number(n: Any) -> str:
    return "–" if n is None else f"{n:,}" if isinstance(n, int) else str(n)


def seconds(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


_templates.filters.update(ago=time_tag, num=number, secs=seconds, total=total)
_templates.globals.update(ACTIONS=ACTIONS, SYMBOL=render.SYMBOL, version=__version__)


# --------------------------------------------------------------------------- plumbing


def _render(template: str, status: int = 200, *, user: str | None, csrf: str, path: str, **ctx) -> HTMLResponse:
    ctx.setdefault("title", "")
    ctx.setdefault("KINDS", ())
    ctx.setdefault("ENTITY", {})
    body = _templates.get_template(template).render(user=user, csrf=csrf, path=path, **ctx)
    response = HTMLResponse(body, status_code=status)
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def _html(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
    """A page in the catalogue's words: ``KINDS`` are the entities the tool writes, in
    plan order; ``ENTITY`` every entity of ``CATALOGUE`` by name (its ``label`` and
    ``plural`` from the spec name it on the page); ``TOP`` the top entity (a model, a
    product)."""
    page = request.state.page
    catalogue = request.app.state.controller.settings.catalogue
    return _render(template, status, user=page["user"], csrf=page["csrf"], path=request.url.path,
                   CATALOGUE=catalogue, KINDS=catalogue.kinds, ENTITY={e.name: e for e in catalogue.entities},
                   TOP=catalogue.top, **ctx)


# Error pages say what happened in the dashboard's words (the message says why).
_ERROR_TITLES = {
    400: "That request is not valid", 403: "Refused", 404: "Not found", 409: "Not possible now",
    413: "Too large", 415: "Refused", 421: "Wrong address", 503: "The database cannot be reached",
}


def _error(request: Request, status: int, message: str) -> HTMLResponse:
    return _html(request, "error.html", status, title=_ERROR_TITLES.get(status, "Something went wrong"),
                 message=message)


def error_page(status: int, message: str) -> HTMLResponse:
    """An error page for a request refused before any session was looked at."""
    return _render("error.html", status, user=None, csrf="", path="",
                   title=_ERROR_TITLES.get(status, "Something went wrong"), message=message)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a path on this site (no ``//host``): the login form is not an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def _read_form(request: Request) -> dict[str, str]:
    body = await read_body(request, limit=64 * 1024)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is not valid") from None
    return {k: v[-1] for k, v in parsed.items()}


SECURITY_HEADERS = {
    # No inline script or style anywhere: the charts are SVG with classes, not style attributes.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _secure(request: Request) -> bool:
    """Whether browsers reach the dashboard over HTTPS: ``serve.public_url`` says so;
    else the request's scheme (a trusted proxy's ``X-Forwarded-Proto`` included)."""
    public = request.app.state.controller.options.public_url
    return (public or request.url.scheme).startswith("https")


def page(public: bool = False):
    """A dashboard view: the session (a new one when there is none, or when it was
    logged out), who is logged in, the CSRF check of a POST, errors as HTML pages, the
    security headers."""

    def wrap(handler):
        @functools.wraps(handler)
        async def view(request: Request) -> Response:
            app = request.app
            sessions, tokens = app.state.sessions, app.state.tokens
            session = sessions.load(request.cookies.get(COOKIE))
            fresh = session is None
            if fresh:
                session = sessions.new(None)
            request.state.page = {"session": session, "user": None, "csrf": sessions.csrf(session)}
            request.state.user = None
            request.state.new_session = None
            try:
                if session.user is not None and not await run_in_threadpool(sessions.store.alive, session):
                    session, fresh = sessions.new(None), True  # logged out, on this replica or another
                    request.state.page.update(session=session, csrf=sessions.csrf(session))
                user, by_bearer = session.user, False
                if user is None and request.headers.get("authorization"):
                    user = tokens.who(request.headers.get("authorization"))
                    by_bearer = user is not None
                request.state.page["user"] = request.state.user = user
                if user is None and not public:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    response: Response = _redirect("/login?" + urlencode({"next": target}))
                elif request.method == "POST":
                    form = await _read_form(request)
                    if not by_bearer and (fresh or not sessions.csrf_ok(session, form.get("csrf"))):
                        response = _error(request, 403, "This form has expired or did not come from this dashboard "
                                                        "(its CSRF token is missing or wrong). Go back, reload the "
                                                        "page and try again.")
                    else:
                        request.state.form = form
                        response = await handler(request)
                else:
                    request.state.form = {}
                    response = await handler(request)
            except RunError as e:
                response = _error(request, e.status, str(e))
            except DatabaseError as e:
                response = _error(request, 503, str(e))
            except ReconcilerError as e:
                response = _error(request, 409, str(e))
            except HTTPException as e:
                response = _error(request, e.status_code, str(e.detail))
            if fresh or request.state.new_session:
                response.set_cookie(COOKIE, sessions.dump(request.state.new_session or session), max_age=MAX_AGE,
                                    path="/", httponly=True, samesite="strict", secure=_secure(request))
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)
            return response

        return view

    return wrap


def _page_no(request: Request) -> int:
    return int_param(request, "page", 1, low=1, high=10**6)


def _pages(page_no: int, count: int, per: int) -> dict:
    last = max(1, -(-count // per))
    return {"page": min(page_no, last), "last": last, "count": count, "per": per}


# --------------------------------------------------------------------------- data


def _charts(timeline: list[dict]) -> dict[str, Markup]:
    checks = [r for r in timeline if r["trigger"] != "rollback" and r["status"] not in ("errored", "refused")]
    drift = charts.Series("changes found", [(r["at"], r["change_count"], f"run {r['id']}, {r['at']}")
                                            for r in checks])
    applied = charts.Series("changes applied", [(r["finished_at"] or r["at"], r["change_count"],
                                                 f"run {r['id']}, {r['finished_at'] or r['at']}")
                                                for r in timeline if r["status"] == "applied"])
    plan_s = charts.Series("plan", [(r["at"], r["plan_seconds"], f"run {r['id']}") for r in timeline
                                    if r["plan_seconds"] is not None and r["trigger"] != "rollback"])
    apply_s = charts.Series("apply", [(r["finished_at"] or r["at"], r["apply_seconds"], f"run {r['id']}")
                                      for r in timeline if r["apply_seconds"] is not None])
    return {
        "drift": charts.chart("Drift found per check", [drift]),
        "applied": charts.chart("Changes applied per apply", [applied]),
        "durations": charts.chart("Plan and apply durations", [plan_s, apply_s], unit="s", dots=True),
    }


def _last_apply(runs) -> dict | None:
    last = runs.history(1)
    if not last:
        return None
    entry = last[0]
    made = runs.apply_runs([entry["apply_id"]])[entry["apply_id"]]
    entry.update(made, who=made["decided_by"] or entry["applied_by"])
    return entry


# --------------------------------------------------------------------------- views


def by_action(summary: dict) -> dict[str, int]:
    """A summary's counts (kind → action → n) summed per action."""
    return {a: sum(v.get(a, 0) for v in summary.values()) for a in ACTIONS}


def counted_kinds(catalogue: Catalogue) -> tuple[str, ...]:
    """The kinds the top rows' table counts: those the tool writes below the top."""
    return tuple(k for k in catalogue.kinds if k != catalogue.top.name)


@page()
async def overview(request: Request):
    c = request.app.state.controller
    q = request.query_params.get("q", "").strip()[:200]
    only = request.query_params.get("drift") == "1"
    page_no = _page_no(request)

    def gather():
        st = c.status()
        tops, count = c.runs.tops_page(q, only, (page_no - 1) * PER_PAGE, PER_PAGE)
        pending = c.runs.get_run(st["pending_run"]) if st["pending_run"] else None
        return st, tops, count, pending, _last_apply(c.runs), c.runs.timeline(30)

    st, tops, count, pending, last, timeline = await run_in_threadpool(gather)
    return _html(request, "overview.html", title="Overview", st=st, tops=tops, q=q, only=only,
                 counted=counted_kinds(c.settings.catalogue), to=by_action(st["drift"]),
                 pages=_pages(page_no, count, PER_PAGE), pending=pending, last=last, charts=_charts(timeline))


@page()
async def plan_now(request: Request):
    c = request.app.state.controller
    key = request.state.form.get("scope", "").strip()
    scope = [top_key_param(c.settings.catalogue, key)] if key else None
    run_id = await run_in_threadpool(c.start_run, scope, "manual", request.state.user)
    return _redirect(f"/runs/{run_id}")


@page()
async def runs_list(request: Request):
    c = request.app.state.controller
    wanted = request.query_params.get("status", "")
    if wanted and wanted not in STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(STATUSES)}")
    page_no = _page_no(request)
    rows = await run_in_threadpool(c.runs.list_runs, wanted or None, PER_PAGE + 1, (page_no - 1) * PER_PAGE)
    more = len(rows) > PER_PAGE
    return _html(request, "runs.html", title="Runs", runs=rows[:PER_PAGE], wanted=wanted, statuses=STATUSES,
                 page_no=page_no, more=more)


def _run_changes(app, run_id: int, action: str) -> list[tuple[str, Any]]:
    """The run's changes as (top key, change), grouped by top key — the groups with
    deletions first, then by key — deletions first in each."""
    runs = app.state.controller.runs

    def make():
        groups = render.changes_by_model(runs.load_plan(run_id))
        order = sorted(groups, key=lambda top: (not any(ch.action == "delete" for ch in groups[top]), top))
        return [(top, ch) for top in order for ch in sorted(groups[top], key=lambda ch: ch.action != "delete")]
    flat = runs.derived.get(("run changes", run_id), make)
    return [x for x in flat if x[1].action == action] if action else flat


@page()
async def run_page(request: Request):
    app = request.app
    c = app.state.controller
    catalogue = c.settings.catalogue
    run_id = path_id(request)
    action = request.query_params.get("action", "")
    if action and action not in ACTIONS:
        action = ""
    page_no = _page_no(request)

    def gather():
        run = c.runs.get_run(run_id)
        groups, count = [], 0
        if run["plan_id"] and run["change_count"]:
            flat = _run_changes(app, run_id, action)
            count = len(flat)
            start = (min(page_no, max(1, -(-count // CHANGES_PER_PAGE))) - 1) * CHANGES_PER_PAGE
            for top, ch in flat[start:start + CHANGES_PER_PAGE]:
                if not groups or groups[-1]["top"] != top:
                    groups.append({"top": top, "changes": []})
                groups[-1]["changes"].append({
                    "action": ch.action, "kind": ch.kind,
                    "head": render.change_head(ch).split(" ", 2)[2],  # "kind key" (the pill says the action)
                    "lines": [line.strip() for line in render.change_lines(ch, width=None, catalogue=catalogue)],
                })
        estimate = None
        if run["status"] == "planning":
            previous = c.runs.list_runs("planned,no_changes,applied,discarded,superseded,stale", limit=1)
            estimate = previous[0]["object_count"] if previous and not run["scope"] else None
        gate = c.approvals.describe(run, request.state.user)
        return run, groups, count, estimate, gate, c.notifier.deliveries(run_id=run_id, limit=20)

    run, groups, count, estimate, gate, deliveries = await run_in_threadpool(gather)
    notice = {"conflict": "The run could not be applied; see its state and error below.",
              "approved": "Your approval is recorded. The run is applied once its approvals are complete and the "
                          "change window is open."}.get(request.query_params.get("notice", ""))
    return _html(request, "run.html", title=f"Run {run_id}", run=run, groups=groups, action=action,
                 pages=_pages(page_no, count, CHANGES_PER_PAGE), estimate=estimate, notice=notice,
                 deletion_note=render.deletion_note(run["summary"], catalogue.kinds, catalogue) if run["summary"] else None,
                 deletes={k: (run["summary"] or {}).get(k, {}).get("delete", 0) for k in catalogue.kinds},
                 action_counts=by_action(run["summary"] or {}),
                 in_progress=run["status"] in IN_PROGRESS, g=gate, deliveries=deliveries)


@page()
async def run_progress(request: Request):
    """The run's state and counts, for ``app.js`` polling a run in progress."""
    run = await run_in_threadpool(request.app.state.controller.runs.get_run, path_id(request))
    return JSONResponse({k: run[k] for k in ("id", "status", "phase", "progress", "change_count")})


@page()
async def run_plan(request: Request):
    run_id = path_id(request)
    data = await run_in_threadpool(request.app.state.controller.runs.plan_file, run_id)
    return Response(data, media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="run-{run_id}.json"'})


@page()
async def run_apply(request: Request):
    """Approve: applied when the approval policy is met and the change window open (or
    overridden, with a reason); else the approval is recorded and the run waits."""
    c = request.app.state.controller
    run_id = path_id(request)
    form = request.state.form
    override = form.get("reason", "") if form.get("override") else None
    try:
        result = await run_in_threadpool(c.approvals.approve, run_id, request.state.user, override)
    except (RunNotFound, BadRequest):
        raise
    except ReconcilerError:  # stale, over a limit, the lock busy: the run page says why
        return _redirect(f"/runs/{run_id}?notice=conflict")
    return _redirect(f"/runs/{run_id}" + ("" if result["applied"] else "?notice=approved"))


@page()
async def run_discard(request: Request):
    c = request.app.state.controller
    run_id = path_id(request)
    try:
        await run_in_threadpool(c.runs.discard, run_id, request.state.user)
    except RunNotFound:
        raise
    except RunError:
        pass  # no longer planned: the page shows what it is now
    return _redirect(f"/runs/{run_id}")


@page()
async def history(request: Request):
    c = request.app.state.controller

    def gather():
        entries = c.runs.history(100)
        made = c.runs.apply_runs([e["apply_id"] for e in entries])
        for e in entries:
            e.update(made[e["apply_id"]])
            e["who"] = e["decided_by"] or e["applied_by"]
        return entries, c.runs.timeline(30)

    entries, timeline = await run_in_threadpool(gather)
    return _html(request, "history.html", title="History", entries=entries, charts=_charts(timeline))


@page()
async def apply_page(request: Request):
    c = request.app.state.controller
    apply_id = path_id(request)
    page_no = _page_no(request)

    def gather():
        entry = c.runs.get_apply(apply_id)
        made = c.runs.apply_runs([apply_id])[apply_id]
        entry.update(made, who=made["decided_by"] or entry["applied_by"])
        changes, count = c.runs.apply_changes(apply_id, (page_no - 1) * CHANGES_PER_PAGE, CHANGES_PER_PAGE)
        return entry, changes, count

    entry, changes, count = await run_in_threadpool(gather)
    return _html(request, "apply.html", title=f"Apply {apply_id}", e=entry, changes=changes,
                 pages=_pages(page_no, count, CHANGES_PER_PAGE))


@page()
async def rollback(request: Request):
    c = request.app.state.controller
    apply_id = path_id(request)
    try:
        run = await run_in_threadpool(c.runs.rollback, apply_id, request.state.user)
    except RunConflict as e:  # rolled back already, or its rows changed since
        why = str(e)
        return _error(request, 409, f"{why[:1].upper()}{why[1:]}. Apply {apply_id}'s page in the History shows "
                                    "what became of it.")
    return _redirect(f"/runs/{run['id']}")


@page()
async def settings_page(request: Request):
    return _html(request, "settings.html", title="Settings", rows=request.app.state.effective_config())


@page(public=True)
async def login(request: Request):
    sessions, tokens = request.app.state.sessions, request.app.state.tokens
    if request.method == "POST":
        target = _safe_next(request.state.form.get("next"))
        given = request.state.form.get("token", "")
    else:
        target = _safe_next(request.query_params.get("next"))
        # Only the token minted for this process logs in from a link (the one ``serve``
        # prints): a configured token lives long and does not belong in a browser's history.
        given = request.query_params.get("token", "") if tokens.minted else ""
        if not given:
            return _html(request, "login.html", title="Log in", next=target, failed=False, minted=tokens.minted)
    name = sessions.login(given)
    if name is None:
        return _html(request, "login.html", 401, title="Log in", next=target, failed=True, minted=tokens.minted)
    session = sessions.new(name)  # a new sid: no session fixation
    await run_in_threadpool(sessions.store.add, session)
    request.state.new_session = session
    return _redirect(target)


@page()
async def logout(request: Request):
    sessions = request.app.state.sessions
    await run_in_threadpool(sessions.store.end, request.state.page["session"])
    request.state.new_session = sessions.new(None)
    return _redirect("/login")


# --------------------------------------------------------------------------- approvals, windows, notifications


@page()
async def notifications_page(request: Request):
    """The approval policy, the change windows (open or not, now) and the deliveries
    of notifications with their last error (reconciler/controller/approvals.py, notify.py)."""
    c = request.app.state.controller
    wanted = request.query_params.get("status", "")
    if wanted and wanted not in ("pending", "delivered", "failed"):
        raise HTTPException(400, "status must be one of pending, delivered, failed")
    o, catalogue = c.options, c.settings.catalogue
    deliveries = await run_in_threadpool(c.notifier.deliveries, wanted or None, None, 100)
    window = c.approvals.gate()
    return _html(request, "notifications.html", title="Notifications", window=window.to_dict(),
                 active={a.window.label for a in window.active}, policy=o.approvals, auto_apply=o.auto_apply,
                 top_label=catalogue.entity(catalogue.kinds[0]).label.lower(), windows=o.windows,
                 destinations=o.notify, deliveries=deliveries, wanted=wanted)


def _static() -> StaticFiles:
    return StaticFiles(directory=str(resources.files("reconciler.server").joinpath("static")))


routes = [
    Route("/", overview, methods=["GET"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/runs", runs_list, methods=["GET"]),
    Route("/runs", plan_now, methods=["POST"]),
    Route("/runs/{id}", run_page, methods=["GET"]),
    Route("/runs/{id}/progress", run_progress, methods=["GET"]),
    Route("/runs/{id}/plan", run_plan, methods=["GET"]),
    Route("/runs/{id}/apply", run_apply, methods=["POST"]),
    Route("/runs/{id}/discard", run_discard, methods=["POST"]),
    Route("/history", history, methods=["GET"]),
    Route("/history/{id}", apply_page, methods=["GET"]),
    Route("/history/{id}/rollback", rollback, methods=["POST"]),
    Route("/settings", settings_page, methods=["GET"]),
    Route("/notifications", notifications_page, methods=["GET"]),
    Mount("/static", app=_static(), name="static"),
]
