"""``POST /hooks/s3``: S3 event notifications (AWS records, MinIO's webhook body).

The body is capped at 1 MiB and parsed strictly; a malformed one gets 400 and
changes nothing. Accepted events are stored in the database (any replica takes them;
the leader turns them into runs), so the answer is quick and the loop is not
disturbed. ``HEAD /hooks/s3`` answers 200 without a token: MinIO checks liveness so.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..controller.events import EventBodyError, parse_body
from .http import JSONResponse, error, read_body


async def s3_hook(request: Request):
    if request.method == "HEAD":
        return Response(status_code=200)
    if not request.app.state.tokens.webhook_ok(request.headers.get("authorization")):
        return error(401, "a valid webhook token is required (Authorization: Bearer <RECONCILER_WEBHOOK_TOKEN>)")
    body = await read_body(request)
    try:
        events = parse_body(body)
    except EventBodyError as e:
        return error(400, str(e))
    counts = await run_in_threadpool(request.app.state.controller.ingest, events, "webhook")
    return JSONResponse(counts)


routes = [Route("/hooks/s3", s3_hook, methods=["POST", "HEAD"])]
