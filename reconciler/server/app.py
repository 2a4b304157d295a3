"""The application object: routes, authentication, errors, and the controller's life.

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

from ..errors import DatabaseError, ReconcilerError
from ..runs import RunError
from . import api, hooks
from .auth import LOCAL_USER, Tokens
from .http import JSONResponse, error
from .metrics import Metrics

log = logging.getLogger("reconciler.server")

# Open without a token: liveness, readiness and metrics (for probes and Prometheus),
# and the webhook, which has a token of its own.
PUBLIC = ("/healthz", "/readyz", "/metrics", "/hooks/")


class TokenAuth:
    """Pure ASGI middleware: with API tokens, every path but the public ones needs
    ``Authorization: Bearer <token>``; the token's name becomes ``request.state.user``.
    Without tokens (loopback only) the user is ``local``."""

    def __init__(self, app, tokens: Tokens) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        user = LOCAL_USER
        if self.tokens.required and not path.startswith(PUBLIC):
            header = None
            for k, v in scope.get("headers") or ():
                if k == b"authorization":
                    header = v.decode("latin-1")
            user = self.tokens.who(header)
            if user is None:
                response = error(401, "a valid API token is required (Authorization: Bearer <token>)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="reconciler"'
                return await response(scope, receive, send)
        scope.setdefault("state", {})["user"] = user
        return await self.app(scope, receive, send)


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


def create_app(controller, tokens: Tokens, *, manage_controller: bool = True) -> Starlette:
    """The ASGI app over ``controller``; with ``manage_controller`` its lifespan starts
    and stops the controller."""
    m = Metrics()
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
    app.add_middleware(TokenAuth, tokens=tokens)
    return app
