"""Small helpers shared by the API, the hooks and the pages."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..catalogue import Catalogue
from ..controller.events import MAX_BODY


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return (json.dumps(content, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode("utf-8")


def error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, optional: bool = True):
    body = await read_body(request)
    if not body.strip():
        if optional:
            return {}
        raise HTTPException(400, "the body must be JSON")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(400, "the body is not JSON") from None


def int_param(request: Request, name: str, default: int, *, low: int = 0, high: int = 10_000) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}")
    return value


def path_id(request: Request, name: str = "id") -> int:
    raw = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise HTTPException(404, f"there is no such {name.replace('_', ' ')}")
    return int(raw)


def top_keys_param(catalogue: Catalogue, keys, what: str) -> list[str]:
    """``keys`` as top-entity keys (models, products), or a 400 that says what one is: a
    text without NUL, and without "/" when the key is one folder."""
    top = catalogue.top
    one_folder = len(top.key_columns) == 1
    if not isinstance(keys, list) or len(keys) > 10_000 or not all(
            isinstance(k, str) and k and len(k) <= 1024 and "\0" not in k and not (one_folder and "/" in k)
            for k in keys):
        raise HTTPException(400, f"{what} must be a list of {top.name} keys"
                                 + (" (folder names, without '/')" if one_folder else ""))
    return keys
