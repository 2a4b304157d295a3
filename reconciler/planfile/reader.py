"""Reading a plan file: its envelope checked by the JSON Schema, its changes read as a
stream of lines (or, for any other JSON layout, whole)."""

from __future__ import annotations

import json
import mmap
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import IO, Iterator, Protocol

import orjson

from ..catalogue import Catalogue
from ..errors import PlanFileError
from .plan import FORMAT_VERSION, MAX_PLAN_BYTES
from .rules import plan_rules

# --------------------------------------------------------------------------- reading


@lru_cache(maxsize=1)
def _envelope_schema() -> dict:
    return json.loads(resources.files("reconciler.schemas").joinpath("plan.schema.json").read_text("utf-8"))


def plan_schema(catalogue: Catalogue | None = None) -> dict:
    """The JSON Schema of a plan file under ``catalogue`` (default: creators): the
    envelope, and each kind's changes as the catalogue derives them."""
    from ..catalogue import load_catalogue

    rules = plan_rules(catalogue or load_catalogue())
    envelope = _envelope_schema()  # cached, and the envelope every plan is checked against: not changed here
    return {**envelope, "$defs": rules.schema_defs(),
            "properties": {**envelope["properties"], "summary": rules.summary_schema()}}


@lru_cache(maxsize=1)
def _envelope_validator():
    import jsonschema

    schema = dict(_envelope_schema())
    props = dict(schema["properties"])
    # Changes are checked one by one by PlanRules.check(), the same rules in plain Python
    # (a test holds the two together): jsonschema over a million changes takes minutes.
    props.pop("changes")
    schema["properties"] = props
    schema["required"] = [r for r in schema["required"] if r != "changes"]
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _where(path) -> str:
    parts = [str(p) for p in path]
    return "/".join(parts) if parts else "(top level)"


def short(message: str, limit: int = 160) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def loads(text: str, path: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise PlanFileError(f"plan file {path} is nested too deeply to be a plan") from None
    except ValueError as e:
        raise PlanFileError(f"plan file {path} is not valid JSON: {short(str(e))}") from None


def fast_loads(text: str, path: str):
    """``loads`` by orjson (several times faster), falling back to ``json`` for anything
    orjson refuses (lone surrogates, huge numbers, NaN, deep nesting), so that what is
    accepted and every error message stay ``json``'s. Where the two parse the same text
    differently (orjson reads integers beyond 64 bits as floats), the change fails a
    check, and the checks then re-read its line with ``json`` (see _verify_changes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return loads(text, path)


def _open(path: str, binary: bool = False) -> IO:
    if os.path.isdir(path):
        raise PlanFileError(f"{path} is a folder, not a plan file")
    try:
        st = os.stat(path)
        # A device (/dev/zero would be read into memory without end) or a pipe (it
        # would block, and it is read twice) is not a plan file.
        if not stat.S_ISREG(st.st_mode):
            raise PlanFileError(f"{path} is not a regular file (a device, pipe or socket?); give the path of a plan file")
        size = st.st_size
        f = open(path, "rb") if binary else open(path, "r", encoding="utf-8", newline="\n")
    except FileNotFoundError:
        raise PlanFileError(f"plan file {path} does not exist") from None
    except OSError as e:
        raise PlanFileError(f"cannot read plan file {path}: {e.strerror}") from None
    if size > MAX_PLAN_BYTES:
        f.close()
        raise PlanFileError(f"plan file {path} is larger than 4 GiB; it is not a plan")
    return f


def _decode_errors(path: str):
    return PlanFileError(f"plan file {path} is not UTF-8 text (a binary file?)")


_OPENING = b'{\n  "changes": [\n'
_OPENING_EMPTY = b'{\n  "changes": [],\n'
_CLOSING = b"\n  ],\n"


@dataclass
class Layout:
    """Where a one-change-per-line file keeps its changes: the byte offsets of the
    first change line and of the line ``  ],`` after the last (equal when there are
    none), and the file's top (everything but ``changes``)."""

    top: dict
    start: int
    end: int
    from_end: bool = False  # the end found from the file's end (see line_layout)


def line_layout(path: str) -> Layout | None:
    """The file's layout when it opens as this tool writes it (``{``, then
    ``"changes": [`` on a line of its own); else None. The end of the changes is the
    line ``  ],`` after them; it is looked for from the end of the file (the envelope
    after it is short), and from the start when what follows the last such line is not
    the rest of a plan (a change line holds no line break, so the first such line
    closes the list). Whether every line between is one change is checked as the lines
    are read (:func:`line_chunks`), which also refuses a range that ran past the list
    (its closing line is no change)."""
    with _open(path, binary=True) as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[: len(_OPENING)] == _OPENING:
                start = len(_OPENING)
                end = m.rfind(_CLOSING, start - 1)
                if end >= 0:
                    layout = _top_after(m[end + len(_CLOSING) - 1 :], path, start, end + 1, quiet=True)
                    if layout is not None:
                        layout.from_end = True
                        return layout
                end = m.find(_CLOSING, start - 1)
                if end < 0:
                    return None
                end += 1
                rest = m[end + len(_CLOSING) - 1 :]
            elif m[: len(_OPENING_EMPTY)] == _OPENING_EMPTY:
                start = end = len(_OPENING_EMPTY)
                rest = m[start:]
            else:
                return None
    return _top_after(rest, path, start, end)


def _top_after(rest: bytes, path: str, start: int, end: int, quiet: bool = False) -> Layout | None:
    """The layout whose changes end at ``end``, with ``rest`` the file after them;
    ``quiet``: None rather than an error when ``rest`` is not the end of a plan."""
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError:
        if quiet:
            return None
        raise _decode_errors(path) from None
    try:
        top = loads("{\n" + text, path)
    except PlanFileError:
        if quiet:
            return None
        raise
    if not isinstance(top, dict) or "changes" in top:
        return None
    return Layout(top, start, end)


class NotLines(Exception):
    """The file opens as this tool writes it, but its changes are not one per line:
    it is read as a whole instead."""


_CHUNK = 4 << 20


def line_chunks(path: str, layout: Layout) -> Iterator[bytes]:
    """The change lines of a one-per-line file, a few MB of whole lines at a time."""
    with _open(path, binary=True) as f:
        f.seek(layout.start)
        left = layout.end - layout.start
        carry = b""
        while left > 0:
            block = f.read(min(_CHUNK, left))
            if not block:
                raise PlanFileError(f"plan file {path} changed while it was being read")
            left -= len(block)
            if carry:
                block = carry + block
                carry = b""
            if left > 0:
                cut = block.rfind(b"\n") + 1
                carry, block = block[cut:], block[:cut]
                if not block:
                    continue
            yield block


def chunk_lines(block: bytes, final: bool, path: str) -> tuple[str, list[str], bytes]:
    """A chunk as text and as lines (the file's last line given the comma the others
    end with), and the canonical changes they hold joined by commas, as bytes: each line
    less its indent, line break, and the comma after the file's last change. Whether
    each line ends its change is checked as the lines are (by the fast path's patterns,
    or line by line)."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise _decode_errors(path) from None
    if final:
        text = text[:-1] + ",\n"
    lines = text.split("\n")
    lines.pop()  # the chunk ends with a line break
    body = block[4:-1].replace(b"\n    {", b"{")
    if not block.startswith(b"    {") or len(block) - 5 - len(body) != 5 * (len(lines) - 1):
        raise NotLines()  # a line that does not open a change: not this layout after all
    if not final and body.endswith(b","):
        body = body[:-1]
    return text, lines, body


def read_whole(path: str) -> dict:
    with _open(path) as f:
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise _decode_errors(path) from None
    if not text.strip():
        raise PlanFileError(f"plan file {path} is empty")
    data = loads(text, path)
    if not isinstance(data, dict):
        raise PlanFileError(f"plan file {path} is not a JSON object")
    return data


def check_top(top: dict, path: str) -> None:
    if "format_version" not in top:
        raise PlanFileError(f"{path} is not a reconciler plan file (it has no format_version)")
    fv = top.get("format_version")
    if fv != FORMAT_VERSION:
        raise PlanFileError(
            f"{path} has format_version {short(repr(fv), 40)}; this reconciler reads format_version {FORMAT_VERSION}"
            " (make a new plan)"
        )
    try:
        errors = sorted(_envelope_validator().iter_errors(top), key=lambda e: list(map(str, e.absolute_path)))
    except RecursionError:
        raise PlanFileError(f"{path} is nested too deeply to be a plan") from None
    if errors:
        e = errors[0]
        raise PlanFileError(f"{path} does not match the plan schema at {_where(e.absolute_path)}: {short(e.message)}")


class ChangeSink(Protocol):
    """Receives the verified changes in batches (apply stages them for the database).

    A sink may also take runs of lines of the common shapes without their being parsed
    into dicts: if it has ``add_rows(kind, rows)``, that receives, in plan order with
    the batches, a list of tuples for a run of lines of one of the shapes of
    the catalogue's ``PlanRules.fast_shapes``, each tuple the JSON text of the line's
    values (a string with its quotes, a number, or ``null``) in the order
    ``PlanRules.fast_columns`` names them.
    """

    def add_batch(self, changes: list[dict]) -> None: ...

    def reset(self) -> None: ...
