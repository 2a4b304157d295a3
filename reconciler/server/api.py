"""The JSON API (docs/design.md, "Controller mode"). Every handler gathers its data through
the library (:class:`reconciler.controller.loop.Controller`, :class:`reconciler.controller.runs.Runs`);
blocking calls run in the thread pool."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..controller.runs import STATUSES
from .http import JSONResponse, int_param, path_id, read_json, top_key_param, top_keys_param


def approver(request: Request) -> str:
    return request.state.user


async def status(request: Request):
    """The drift summary; with ``?by=top`` also a page of the top keys' status cards
    (``q``: a substring, ``drift=1``: only keys with changes not applied, ``offset``,
    ``limit``)."""
    c = request.app.state.controller
    by = request.query_params.get("by")
    if by not in (None, "", "top"):
        raise HTTPException(400, "by must be top (a status card per top key) or left out")
    if by != "top":
        return JSONResponse(await run_in_threadpool(c.status))
    q = request.query_params.get("q", "")[:200]
    only = request.query_params.get("drift") == "1"
    offset = int_param(request, "offset", 0, high=10**9)
    limit = int_param(request, "limit", 100, low=1, high=1000)

    def gather():
        st = c.status()
        tops, count = c.runs.tops_page(q, only, offset, limit)
        return st, tops, count

    st, tops, count = await run_in_threadpool(gather)
    st.update(entity=c.settings.catalogue.top.name, tops=[t.to_dict() for t in tops], total_tops=count,
              offset=offset, limit=limit)
    return JSONResponse(st)


async def top_status(request: Request):
    """One top key's status card: ``GET /api/status/{key}`` (a key of several columns
    holds "/": the path takes it whole)."""
    c = request.app.state.controller
    key = top_key_param(c.settings.catalogue, request.path_params["key"])
    st = await run_in_threadpool(c.runs.top_status, key)
    return JSONResponse({"entity": c.settings.catalogue.top.name, **st.to_dict()})


async def list_runs(request: Request):
    c = request.app.state.controller
    wanted = request.query_params.get("status") or None
    if wanted and any(s not in STATUSES for s in wanted.split(",") if s):
        raise HTTPException(400, f"status must be one of {', '.join(STATUSES)} (comma-separated)")
    limit = int_param(request, "limit", 50, low=1, high=1000)
    offset = int_param(request, "offset", 0, high=10**9)
    runs = await run_in_threadpool(c.runs.list_runs, wanted, limit, offset)
    return JSONResponse({"runs": runs})


async def start_run(request: Request):
    """A run now: ``{}`` (every key), ``{"scope": [keys]}``, or ``{"models": [names]}``
    (the creators' spelling of the same)."""
    c = request.app.state.controller
    body = await read_json(request)
    if not isinstance(body, dict):
        raise HTTPException(400, 'the body must be a JSON object, like {"scope": ["Alice"]}')
    unknown = set(body) - {"scope", "models"}
    if unknown:
        raise HTTPException(400, f"unknown field {sorted(unknown)[0]!r}; the body may hold only 'scope' (or 'models')")
    if len(body) > 1:
        raise HTTPException(400, "give 'scope' or 'models', not both (they are the same)")
    name, scope = next(iter(body.items()), ("scope", None))
    if scope is not None:
        scope = top_keys_param(c.settings.catalogue, scope, name) or None
    run_id = await run_in_threadpool(c.start_run, scope, "manual", approver(request))
    return JSONResponse({"id": run_id, "status": "planning"}, status_code=202,
                        headers={"Location": f"/api/runs/{run_id}"})


async def get_run(request: Request):
    c = request.app.state.controller
    run_id = path_id(request)
    run = await run_in_threadpool(c.runs.get_run, run_id)
    offset = int_param(request, "offset", 0, high=10**9)
    limit = int_param(request, "limit", 100, low=1, high=10_000)
    if run["change_count"]:
        changes, count = await run_in_threadpool(c.runs.run_changes, run_id, offset, limit)
        run.update(changes=changes, offset=offset, limit=limit, total_changes=count)
    else:
        run.update(changes=[], offset=offset, limit=limit, total_changes=0)
    run.update(await run_in_threadpool(c.approvals.describe, run))
    run["notifications"] = await run_in_threadpool(c.notifier.deliveries, None, run_id, 50)
    return JSONResponse(run)


async def get_plan(request: Request):
    c = request.app.state.controller
    run_id = path_id(request)
    data = await run_in_threadpool(c.runs.plan_file, run_id)
    return Response(data, media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="run-{run_id}.json"'})


async def apply_run(request: Request):
    """Approve; 200 with the run applied when the approval policy is met and the change
    window open (or ``{"override": "why"}`` given), else 202: recorded, waiting."""
    c = request.app.state.controller
    run_id = path_id(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"override"} or not isinstance(body.get("override", ""), str):
        raise HTTPException(400, 'the body may hold only {"override": "why it must be applied inside a closed '
                                 'change window"}')
    result = await run_in_threadpool(c.approvals.approve, run_id, approver(request), body.get("override"))
    return JSONResponse(result, status_code=200 if result["applied"] else 202)


async def discard_run(request: Request):
    c = request.app.state.controller
    run = await run_in_threadpool(c.runs.discard, path_id(request), approver(request))
    return JSONResponse(run)


async def history(request: Request):
    c = request.app.state.controller
    limit = int_param(request, "limit", 20, low=1, high=10_000)
    return JSONResponse(await run_in_threadpool(c.runs.history, limit))


async def rollback(request: Request):
    c = request.app.state.controller
    run = await run_in_threadpool(c.runs.rollback, path_id(request), approver(request))
    return JSONResponse(run, status_code=201, headers={"Location": f"/api/runs/{run['id']}"})


# --------------------------------------------------------------------------- notifications


async def list_deliveries(request: Request):
    """Notifications queued, newest first, with their attempts and last error."""
    c = request.app.state.controller
    wanted = request.query_params.get("status") or None
    if wanted and wanted not in ("pending", "delivered", "failed"):
        raise HTTPException(400, "status must be one of pending, delivered, failed")
    limit = int_param(request, "limit", 50, low=1, high=1000)
    return JSONResponse({"deliveries": await run_in_threadpool(c.notifier.deliveries, wanted, None, limit)})


routes = [
    Route("/api/status", status, methods=["GET"]),
    Route("/api/status/{key:path}", top_status, methods=["GET"]),
    Route("/api/runs", list_runs, methods=["GET"]),
    Route("/api/runs", start_run, methods=["POST"]),
    Route("/api/runs/{id}", get_run, methods=["GET"]),
    Route("/api/runs/{id}/plan", get_plan, methods=["GET"]),
    Route("/api/runs/{id}/apply", apply_run, methods=["POST"]),
    Route("/api/runs/{id}/discard", discard_run, methods=["POST"]),
    Route("/api/history", history, methods=["GET"]),
    Route("/api/applies/{id}/rollback", rollback, methods=["POST"]),
    Route("/api/deliveries", list_deliveries, methods=["GET"]),
]
