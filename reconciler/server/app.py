"""The application object: routes, the request guard, authentication, errors, and the
controller's life.

``create_app(controller, tokens)`` returns a Starlette app; its lifespan starts the
controller (leader election, loop, SQS) and stops it on shutdown — uvicorn first
lets requests in progress (an apply) finish, then the controller finishes or rolls
back its own work.

Starlette rather than FastAPI: the API is a dozen small JSON routes whose
validation is a few lines each, the pages to come are server-rendered templates, and
Starlette is FastAPI's own core without pydantic's model layer and its startup cost.
"""

from __future__ import annotations

import contextlib
import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import secret_values
from ..controller.options import policy_rows
from ..controller.runs import RunError
from ..errors import DatabaseError, ReconcilerError
from ..store.db import redact_url, scrub
from . import api, hooks, pages
from .auth import API_TOKENS_ENV, METRICS_TOKEN_ENV, WEBHOOK_TOKEN_ENV, Tokens
from .guard import Guard, Site
from .http import JSONResponse, error
from .metrics import Metrics
from .sessions import Sessions, Store

log = logging.getLogger("reconciler.server")

# Open without an API token: liveness and readiness (for probes), and the webhook, which
# has a token of its own. /metrics takes the metrics token unless serve.public_metrics.
PUBLIC = ("/healthz", "/readyz", "/hooks/")


class TokenAuth:
    """Pure ASGI middleware: every path but the public ones needs ``Authorization:
    Bearer <token>`` (configured, or minted for a loopback-only server); the token's
    name becomes ``request.state.user``. The dashboard's pages check their session
    cookie (or a bearer header) themselves: see :mod:`.pages`."""

    def __init__(self, app, tokens: Tokens, public_metrics: bool) -> None:
        self.app, self.tokens, self.public_metrics = app, tokens, public_metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if pages.is_page(path) or path.startswith(PUBLIC):
            return await self.app(scope, receive, send)
        header = None
        for k, v in scope.get("headers") or ():
            if k == b"authorization":
                header = v.decode("latin-1")
        if path == "/metrics":
            if self.public_metrics or self.tokens.metrics_ok(header):
                return await self.app(scope, receive, send)
            response = error(401, f"a metrics token is required (Authorization: Bearer <{METRICS_TOKEN_ENV}> "
                                  "or an API token)")
        else:
            user = self.tokens.who(header)
            if user is not None:
                scope.setdefault("state", {})["user"] = user
                return await self.app(scope, receive, send)
            response = error(401, "a valid API token is required (Authorization: Bearer <token>)")
        response.headers["WWW-Authenticate"] = 'Bearer realm="reconciler"'
        return await response(scope, receive, send)


async def healthz(request: Request):
    return JSONResponse({"status": "ok"})


async def readyz(request: Request):
    problem = await run_in_threadpool(request.app.state.controller.runs.ready)
    if problem:
        return error(503, problem)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request):
    app = request.app
    with contextlib.suppress(ReconcilerError):  # the database away: counters still serve
        app.state.metrics.refresh(await run_in_threadpool(app.state.controller.status))
    app.state.metrics.leader_changed(app.state.controller.leader)
    return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _http_error(request: Request, exc: HTTPException):
    return error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "error")


async def _run_error(request: Request, exc: RunError):
    return error(exc.status, str(exc))


async def _reconciler_error(request: Request, exc: ReconcilerError):
    if isinstance(exc, DatabaseError):
        return error(503, str(exc))
    return error(409, str(exc))


async def _unexpected(request: Request, exc: Exception):
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return error(500, "internal error; see the server's log")


def effective_config(controller, tokens: Tokens) -> list[tuple[str, str, str]]:
    """The configuration the server runs with, as (section, key, value) rows for the
    settings page. Secrets are never shown: tokens by name only, keys as set or not,
    URLs without passwords; every value is scrubbed of every secret besides."""
    s, o = controller.settings, controller.options
    hidden = "set (hidden)"

    def url(v):
        return redact_url(v) if v else "–"

    rows = [
        ("source", "url", s.source or "–"),
        ("source", "endpoint_url", url(s.endpoint_url)),
        ("source", "region", s.region or "–"),
        ("source", "addressing_style", s.addressing_style or "–"),
        ("source", "max_workers", str(s.max_workers)),
        ("source", "inventory", url(getattr(s, "inventory", None))),
        ("source", "max_inventory_age", f"{s.max_inventory_age:g} s" if getattr(s, "max_inventory_age", None) else "–"),
        ("source", "credentials", "boto3's credential chain (never shown)"),
        ("database", "database", controller.display or "–"),
        ("", "cdn_base_url", url(s.cdn_base_url)),
        ("", "catalogue", s.catalogue.name),
        ("safety", "allow_empty_source", str(s.allow_empty_source).lower()),
        ("safety", "max_delete", "–" if s.max_delete is None else str(s.max_delete)),
        ("safety", "max_delete_percent", "–" if s.max_delete_percent is None else f"{s.max_delete_percent:g}"),
        ("safety", "require_signature", str(s.require_signature).lower()),
        ("apply", "lock_timeout", f"{s.lock_timeout:g} s"),
        ("apply", "RECONCILER_SIGNING_KEY", hidden if s.signing_key else "not set"),
        ("plan", "detect_moves", str(s.detect_moves).lower()),
        ("", "plans_dir", s.plans_dir),
        ("serve", "listen", o.listen),
        ("serve", "interval", f"{o.interval:g} s"),
        ("serve", "auto_apply", o.auto_apply),
        ("serve", "debounce", f"{o.debounce:g} s"),
        ("serve", "sqs_queue_url", url(o.sqs_queue_url)),
        ("serve", "leader_retry", f"{o.leader_retry:g} s"),
        ("serve", "allowed_hosts", ", ".join(o.allowed_hosts) or "–"),
        ("serve", "public_url", o.public_url or "–"),
        ("serve", "trusted_proxies", ", ".join(o.trusted_proxies) or "none: forwarded headers are ignored"),
        ("serve", "public_metrics", str(o.public_metrics).lower()),
        ("serve", API_TOKENS_ENV, "not set: loopback only, a token made for this process (local)" if tokens.minted
         else ", ".join(f"{n} (hidden)" for n, _ in tokens.api)),
        ("serve", WEBHOOK_TOKEN_ENV, hidden if tokens.webhook else "not set"),
        ("serve", METRICS_TOKEN_ENV, hidden if tokens.metrics else "not set"),
        ("serve", "replica", controller.name),
        *policy_rows(o),
    ]
    secrets = sorted({x for x in (*tokens.secrets, *secret_values()) if x},
                     key=len, reverse=True)
    return [(a, b, scrub(str(c), *secrets)) for a, b, c in rows]


def create_app(controller, tokens: Tokens, *, manage_controller: bool = True) -> Starlette:
    """The ASGI app over ``controller``; with ``manage_controller`` its lifespan starts
    and stops the controller. ``tokens`` must hold an API token (see
    :meth:`.auth.Tokens.minted_for_local`)."""
    if not tokens.api:
        raise ValueError("create_app needs an API token; see Tokens.minted_for_local")
    m = Metrics(controller.settings.catalogue.kinds)
    controller.observer = m
    controller.runs.observer = m

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if manage_controller:
            controller.start()
        try:
            yield
        finally:
            if manage_controller:
                await run_in_threadpool(controller.stop)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *api.routes,
        *hooks.routes,
        *pages.routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            RunError: _run_error,
            ReconcilerError: _reconciler_error,
            Exception: _unexpected,
        },
    )
    app.state.controller = controller
    app.state.tokens = tokens
    app.state.metrics = m
    app.state.sessions = Sessions(tokens, Store(controller.runs))
    app.state.effective_config = lambda: effective_config(controller, tokens)
    o = controller.options
    app.add_middleware(TokenAuth, tokens=tokens, public_metrics=o.public_metrics)
    # The outermost check: a request for another host, or from another site, goes no further.
    app.add_middleware(Guard, site=Site.of(o.host_port[0], o.allowed_hosts, o.public_url),
                       is_page=pages.is_page, page_error=pages.error_page)
    return app
