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


def _is_key(catalogue: Catalogue, key) -> bool:
    """A top-entity key (a model, a product) can be: a text without NUL, and without "/"
    when the key is one folder."""
    one_folder = len(catalogue.top.key_columns) == 1
    return isinstance(key, str) and 0 < len(key) <= 1024 and "\0" not in key and not (one_folder and "/" in key)


def _folders(catalogue: Catalogue, plural: bool) -> str:
    if len(catalogue.top.key_columns) != 1:
        return ""
    return " (folder names, without '/')" if plural else " (a folder name, without '/')"


def top_keys_param(catalogue: Catalogue, keys, what: str) -> list[str]:
    """``keys`` (a JSON body's list) as top-entity keys, or a 400 that says what one is."""
    if not isinstance(keys, list) or len(keys) > 10_000 or not all(_is_key(catalogue, k) for k in keys):
        raise HTTPException(400, f"{what} must be a list of {catalogue.top.name} keys{_folders(catalogue, True)}")
    return keys


def top_key_param(catalogue: Catalogue, key: str) -> str:
    """One top-entity key (a path's, a form's), or a 400 that says what one is."""
    if not _is_key(catalogue, key):
        raise HTTPException(400, f"{key[:100]!r} is not a {catalogue.top.name} key{_folders(catalogue, False)}")
    return key
