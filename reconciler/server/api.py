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
from .http import JSONResponse, int_param, path_id, read_json


def approver(request: Request) -> str:
    return request.state.user


async def status(request: Request):
    c = request.app.state.controller
    return JSONResponse(await run_in_threadpool(c.status))


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
    c = request.app.state.controller
    body = await read_json(request)
    if not isinstance(body, dict):
        raise HTTPException(400, 'the body must be a JSON object, like {"models": ["Alice"]}')
    models = body.get("models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m and "/" not in m and "\0" not in m
                                                   for m in models) or len(models) > 10_000:
            raise HTTPException(400, "models must be a list of model names (folder names, without '/')")
        models = models or None
    unknown = set(body) - {"models"}
    if unknown:
        raise HTTPException(400, f"unknown field {sorted(unknown)[0]!r}; the body may hold only 'models'")
    run_id = await run_in_threadpool(c.start_run, models, "manual", approver(request))
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
