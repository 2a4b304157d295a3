"""The plan file: serialise, hash, sign, read and validate. No database.

``plan_id`` is the SHA-256 of the canonical body (the plan without ``plan_id`` and
``signature``, as ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()``), so anyone can recompute it.

The file is that object with sorted keys, the envelope pretty-printed and **one change
per line** (each in its canonical form)::

    {
      "changes": [
        {"action":"create","after":{...},"before":null,"key":"Alice","kind":"model"},
        ...
      ],
      "created_at": "2026-11-21T10:00:00Z",
      ...
    }

so that ``git diff`` of two plans shows exactly the changes that differ, and a plan with
a million changes is written, hashed and verified as a stream of lines: it is never
held in memory as a million dicts. Any other JSON layout of the same object (say,
reformatted by ``jq``) is read too, and has the same ``plan_id``.
"""

from __future__ import annotations

import bisect
import errno
import functools
import hashlib
import hmac
import itertools
import json
import mmap
import os
import stat
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from itertools import repeat
from typing import IO, Callable, Iterator, Protocol

import orjson

from .canonical import canonical, canonical_checked
from .catalogue import Catalogue
from .catalogue.planrules import PlanRules, plan_rules
from .diff import ACTION_ORDER, ACTIONS, Change, ChangeList, Lines, summarize
from .config import SIGNING_KEY_ENV, default_catalogue
from .errors import PlanFileError, SignatureError, WrongCatalogueError

FORMAT_VERSION = 1
MAX_PLAN_BYTES = 4 * 1024**3

@dataclass
class Plan:
    """A plan: what to change, against which state, made from which listing."""

    changes: list[Change]
    source: dict
    target: dict
    tool_version: str
    created_at: str = field(default_factory=lambda: utc_now())
    extra: dict = field(default_factory=dict)  # optional fields: kind, rolls_back, limits
    plan_id: str | None = None
    signature: str | None = None
    summary_override: dict | None = field(default=None, repr=False)  # set when changes are streamed
    notes: list[str] = field(default_factory=list, repr=False)  # for the person running plan; not in the file
    kinds: tuple[str, ...] | None = field(default=None, repr=False)  # the catalogue's, for the summary's lines
    descriptor: Catalogue | None = field(default=None, repr=False)  # the catalogue read or made under

    def __post_init__(self) -> None:
        if self.kinds is None and self.catalogue is None:
            # A plan naming no catalogue is read as a creators plan, whose summary has
            # a line for every creators kind: written so, it reads back.
            self.kinds = default_catalogue().kinds

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        if self.summary_override is not None:
            return self.summary_override
        return summarize(self.changes, self.kinds)

    @property
    def catalogue(self) -> dict | None:
        """The catalogue the plan was made under (``name``, ``fingerprint``); None for a
        plan made before catalogues (a creators plan)."""
        return self.target.get("catalogue")

    @property
    def scope(self) -> list[str] | None:
        return self.target.get("scope")

    def envelope(self) -> dict:
        """Every body field except ``changes``."""
        body = {
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "tool_version": self.tool_version,
            "source": self.source,
            "target": self.target,
            "summary": self.summary,
            **self.extra,
        }
        assert all(k > "changes" for k in body), "changes must sort first in the body"
        return body

    def top(self) -> dict:
        """The envelope plus plan_id and signature: the file without ``changes``."""
        top = self.envelope()
        if self.plan_id is not None:
            top["plan_id"] = self.plan_id
        if self.signature is not None:
            top["signature"] = self.signature
        return top

    def to_dict(self) -> dict:
        return {**self.top(), "changes": [c.to_dict() for c in self.changes]}

    def seal(self, signing_key: str | None = None) -> "Plan":
        """Compute ``plan_id`` (and the signature when a key is given)."""
        self.plan_id, mac = _hash_body(self, signing_key)
        self.signature = f"hmac-sha256:{mac}" if mac else None
        return self


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- hashing


class BodyHasher:
    """SHA-256 (and HMAC) of the canonical body, fed the canonical changes in batches."""

    def __init__(self, signing_key: str | None = None) -> None:
        self.sha = hashlib.sha256(b'{"changes":[')
        self.mac = hmac.new(signing_key.encode("utf-8"), b'{"changes":[', hashlib.sha256) if signing_key else None
        self._first = True

    def joined(self, text: str, count: int) -> None:
        """``count`` canonical changes, joined by commas."""
        if count:
            self._update(("" if self._first else ",") + text)
            self._first = False

    def joined_bytes(self, data: bytes, count: int) -> None:
        """:meth:`joined` of UTF-8 text that is bytes already (read from a file)."""
        if count:
            data = data if self._first else b"," + data
            self._first = False
            self.sha.update(data)
            if self.mac:
                self.mac.update(data)

    def _update(self, text: str) -> None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise PlanFileError("the plan holds text that is not valid Unicode (a lone surrogate)") from None
        self.sha.update(data)
        if self.mac:
            self.mac.update(data)

    def finish(self, envelope: dict) -> tuple[str, str | None]:
        rest = canonical(envelope)
        self._update("]" + ("," + rest[1:] if rest != "{}" else "}"))
        return self.sha.hexdigest(), self.mac.hexdigest() if self.mac else None


BATCH = 4096
LINES_BATCH = 16_384  # creates already canonical: joined a frame slice at a time (~6 MB)


def _encoded_batches(changes: list[Change]) -> Iterator[tuple[str, int]]:
    """The canonical changes, one C encoder call per batch, joined by commas.

    Between two changes the text reads '},{"action":', which no change holds inside
    (a '"' in a string is escaped): the file splits a batch into lines there.
    """
    if isinstance(changes, ChangeList):  # creates already canonical, in columns
        for segment in changes.segments:
            if isinstance(segment, Lines):
                yield from segment.batches(LINES_BATCH)
            else:
                yield from _encoded_batches(segment)
        return
    for i in range(0, len(changes), BATCH):
        batch = [c.to_dict() for c in changes[i : i + BATCH]]
        yield canonical(batch)[1:-1], len(batch)


def _hash_body(plan: Plan, signing_key: str | None) -> tuple[str, str | None]:
    h = BodyHasher(signing_key)
    for text, count in _encoded_batches(plan.changes):
        h.joined(text, count)
    return h.finish(plan.envelope())


def _signature_problem(signature: str | None, mac: str | None, signing_key: str | None, required: bool) -> str | None:
    if signature is None:
        if required:
            return "the plan is not signed and a signature is required; make it with `reconciler plan --sign`"
        return None
    if not signing_key:
        return f"cannot check the plan's signature: {SIGNING_KEY_ENV} is not set" if required else None
    if mac is None or not hmac.compare_digest(signature, f"hmac-sha256:{mac}"):
        return f"the plan's signature does not match: it was signed with another key, or edited; check {SIGNING_KEY_ENV}"
    return None


# --------------------------------------------------------------------------- writing


_LINE_BREAK = '},\n    {"action":'


def _new_temporary_file(folder: str) -> tuple[int, str]:
    """A new, uniquely named file in ``folder``, open for writing. Created with mode
    0666, which the kernel masks with the umask, as for any file a tool writes: a plan
    holds no secret and is shared (``mkstemp`` would make it private, 0600), and reading
    the umask would mean setting it, process-wide, under the server's other threads."""
    path = os.path.join(folder, f".plan-{uuid.uuid4().hex}.tmp")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), path


def write_plan(
    plan: Plan, path: str, signing_key: str | None = None, *, name: Callable[[Plan], str] | None = None
) -> str:
    """Seal the plan (plan_id, and signature with a key) and write it atomically;
    return the path written.

    The changes are encoded once, for the hash and the file alike: ``changes`` first,
    one canonical change per line, then the rest of the plan object pretty-printed
    (indent 2, sorted keys). The file is written to a temporary file in the same folder,
    synced and renamed: a failure at any point leaves no file (and an existing file
    untouched).

    With ``name``, ``path`` is the folder and the file is named ``name(plan)`` once
    the plan is sealed (so the name can hold its plan_id). Such a file never replaces
    another: if the name is taken, ``-2``, ``-3`` … go before its extension.
    """
    folder = os.path.abspath(path) if name else os.path.dirname(os.path.abspath(path))
    if name is None and os.path.isdir(path):
        raise PlanFileError(f"{path} is a folder; give a file name with -o")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _new_temporary_file(folder)
    except OSError as e:
        raise PlanFileError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # "changes" is the first key and plan_id is in the envelope after it, so the
            # changes stream to the file as they are hashed, and the envelope follows.
            h = BodyHasher(signing_key)
            first = True
            for text, count in _encoded_batches(plan.changes):
                h.joined(text, count)
                f.write(('{\n  "changes": [\n    ' if first else ",\n    ") + text.replace('},{"action":', _LINE_BREAK))
                first = False
            old_id = plan.plan_id
            plan.plan_id, mac = h.finish(plan.envelope())
            if mac:
                plan.signature = f"hmac-sha256:{mac}"
            elif plan.plan_id != old_id:  # a signature made earlier holds only for the same body
                plan.signature = None
            rest = json.dumps(plan.top(), indent=2, sort_keys=True, ensure_ascii=False)
            f.write(('{\n  "changes": [],\n' if first else "\n  ],\n") + rest[2:] + "\n")
            f.flush()
            os.fsync(f.fileno())
        if name is None:
            os.replace(tmp, path)
        else:
            path = _move_to_new_file(tmp, os.path.join(path, name(plan)))
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise PlanFileError(f"cannot write {path}: {e.strerror}") from None
        raise
    return path


def _move_to_new_file(tmp: str, path: str) -> str:
    """Give ``tmp`` the name ``path`` (or ``path`` with ``-2``, ``-3`` … added), never
    replacing a file: a hard link fails when the name exists, where a rename would not."""
    stem, ext = os.path.splitext(path)
    for n in itertools.count(1):
        candidate = path if n == 1 else f"{stem}-{n}{ext}"
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:  # no hard links here: claim the name, then rename over the claim
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            os.replace(tmp, candidate)
            return candidate
        os.unlink(tmp)
        return candidate
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- reading


@lru_cache(maxsize=1)
def _envelope_schema() -> dict:
    return json.loads(resources.files("reconciler.schemas").joinpath("plan.schema.json").read_text("utf-8"))


def plan_schema(catalogue: Catalogue | None = None) -> dict:
    """The JSON Schema of a plan file under ``catalogue`` (default: creators): the
    envelope, and each kind's changes as the catalogue derives them."""
    from .catalogue import load_catalogue

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


def _short(message: str, limit: int = 160) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _loads(text: str, path: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise PlanFileError(f"plan file {path} is nested too deeply to be a plan") from None
    except ValueError as e:
        raise PlanFileError(f"plan file {path} is not valid JSON: {_short(str(e))}") from None


def _fast_loads(text: str, path: str):
    """``_loads`` by orjson (several times faster), falling back to ``json`` for anything
    orjson refuses (lone surrogates, huge numbers, NaN, deep nesting), so that what is
    accepted and every error message stay ``json``'s. Where the two parse the same text
    differently (orjson reads integers beyond 64 bits as floats), the change fails a
    check, and the checks then re-read its line with ``json`` (see _verify_changes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _loads(text, path)


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
class _Layout:
    """Where a one-change-per-line file keeps its changes: the byte offsets of the
    first change line and of the line ``  ],`` after the last (equal when there are
    none), and the file's top (everything but ``changes``)."""

    top: dict
    start: int
    end: int
    from_end: bool = False  # the end found from the file's end (see _line_layout)


def _line_layout(path: str) -> _Layout | None:
    """The file's layout when it opens as this tool writes it (``{``, then
    ``"changes": [`` on a line of its own); else None. The end of the changes is the
    line ``  ],`` after them; it is looked for from the end of the file (the envelope
    after it is short), and from the start when what follows the last such line is not
    the rest of a plan (a change line holds no line break, so the first such line
    closes the list). Whether every line between is one change is checked as the lines
    are read (:func:`_line_chunks`), which also refuses a range that ran past the list
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


def _top_after(rest: bytes, path: str, start: int, end: int, quiet: bool = False) -> _Layout | None:
    """The layout whose changes end at ``end``, with ``rest`` the file after them;
    ``quiet``: None rather than an error when ``rest`` is not the end of a plan."""
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError:
        if quiet:
            return None
        raise _decode_errors(path) from None
    try:
        top = _loads("{\n" + text, path)
    except PlanFileError:
        if quiet:
            return None
        raise
    if not isinstance(top, dict) or "changes" in top:
        return None
    return _Layout(top, start, end)


class _NotLines(Exception):
    """The file opens as this tool writes it, but its changes are not one per line:
    it is read as a whole instead."""


_CHUNK = 4 << 20


def _line_chunks(path: str, layout: _Layout) -> Iterator[bytes]:
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


def _chunk_lines(block: bytes, final: bool, path: str) -> tuple[str, list[str], bytes]:
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
        raise _NotLines()  # a line that does not open a change: not this layout after all
    if not final and body.endswith(b","):
        body = body[:-1]
    return text, lines, body


def _read_whole(path: str) -> dict:
    with _open(path) as f:
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise _decode_errors(path) from None
    if not text.strip():
        raise PlanFileError(f"plan file {path} is empty")
    data = _loads(text, path)
    if not isinstance(data, dict):
        raise PlanFileError(f"plan file {path} is not a JSON object")
    return data


def _check_top(top: dict, path: str) -> None:
    if "format_version" not in top:
        raise PlanFileError(f"{path} is not a reconciler plan file (it has no format_version)")
    fv = top.get("format_version")
    if fv != FORMAT_VERSION:
        raise PlanFileError(
            f"{path} has format_version {_short(repr(fv), 40)}; this reconciler reads format_version {FORMAT_VERSION}"
            " (make a new plan)"
        )
    try:
        errors = sorted(_envelope_validator().iter_errors(top), key=lambda e: list(map(str, e.absolute_path)))
    except RecursionError:
        raise PlanFileError(f"{path} is nested too deeply to be a plan") from None
    if errors:
        e = errors[0]
        raise PlanFileError(f"{path} does not match the plan schema at {_where(e.absolute_path)}: {_short(e.message)}")


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


# --------------------------------------------------------------------------- the fast path
#
# Most lines of a large plan are creates and deletes of one kind in the canonical form
# this tool writes. A run of lines of such a shape is checked by one regular expression
# in one C call (see reconciler.catalogue.planrules, which derives them from the
# catalogue), instead of each line being parsed into a dict and checked field by field:
# the expression admits only lines that the general checks accept. It admits no escape
# sequence and no control character in strings, so the JSON text of a string is its
# value in quotes (and also its CSV text); integers are short enough to be in range; the
# order of the fields is the canonical one. Anything else (an escape, an id or
# created_at in an image, a line out of order, a duplicate) makes the run's match fall
# short, and the run is checked by the general path, which gives the verdict and the
# error message. A property test holds the two paths together.


def _shape(rules: PlanRules, line: str) -> tuple[int, int]:
    """(kind, action) order of a line as this tool writes it; only a guide to where a
    run of one shape ends (each line of a run is matched in full)."""
    end = line.find('"', 15)
    at = line.rfind(',"kind":"')
    none = (len(rules.kinds), len(ACTIONS))
    if end < 0 or at < 0:
        return none
    kind = line[at + 9 : line.find('"', at + 9)]
    action = line[15:end]
    if kind not in rules.kind_order or action not in ACTION_ORDER:
        return none
    return rules.kind_order[kind], ACTION_ORDER[action]


class _Mismatch(Exception):
    pass


def verify_plan(
    path: str,
    catalogue: Catalogue | None = None,
    *,
    keep_changes: bool = True,
    sink: ChangeSink | None = None,
    signing_key: str | None = None,
    require_signature: bool = False,
    _whole: bool = False,
) -> Plan:
    """Read and check a plan file, without a database, streaming its changes.

    ``catalogue`` is the one configured (default: creators): a plan made under another
    spec is refused (:class:`WrongCatalogueError`), and a plan made before catalogues is
    read as a creators plan.

    Checks: the JSON Schema (envelope by jsonschema, each change by the catalogue's
    :class:`~reconciler.catalogue.planrules.PlanRules`), keys consistent with images, values the database can hold,
    order, no duplicates, the summary, ``plan_id`` (refusing a plan edited after it
    was made) and the signature. With ``keep_changes=False`` the changes are not held
    in memory; a ``sink`` receives them batch by batch as they pass the checks (it must
    discard them if this raises).

    A file in this tool's one-change-per-line layout is hashed from its lines as they
    are (they are the canonical text itself), and runs of lines of the common shapes
    are checked without parsing them (see ``PlanRules.fast_shapes``); only when that does
    not give ``plan_id`` (a re-formatted file, say) are the changes re-encoded and
    hashed again.
    """
    layout = None if _whole else _line_layout(path)
    data = None
    if layout is not None:
        top = layout.top
    else:
        data = _read_whole(path)
        top = _whole_top(data, path)
    _check_top(top, path)
    if catalogue is None:
        from .catalogue import load_catalogue

        catalogue = load_catalogue()
    check_catalogue(top["target"], catalogue, path)
    rules = plan_rules(catalogue)
    plan = Plan(
        changes=[],
        source=top["source"],
        target=top["target"],
        tool_version=top["tool_version"],
        created_at=top["created_at"],
        extra={k: top[k] for k in ("kind", "rolls_back", "limits", "held") if k in top},
        plan_id=top["plan_id"],
        signature=top.get("signature"),
        kinds=rules.kinds,
        descriptor=catalogue,
    )

    def run(raw: bool) -> str | None:
        plan.changes = []
        if sink is not None:
            sink.reset()
        v = _Verifier(plan, rules, path, sink, keep_changes, signing_key, fast=raw)
        if data is not None:
            v.whole(data["changes"])
        else:
            v.lines(layout, raw)
        return v.finish(top, raw)

    try:
        mac = run(layout is not None)
    except _NotLines:
        from_end = layout.from_end
        layout, data = None, _read_whole(path)
        if _whole_top(data, path) != top:
            if from_end:  # the list ended earlier than its last closing line: read it whole
                return verify_plan(path, catalogue, keep_changes=keep_changes, sink=sink, signing_key=signing_key,
                                   require_signature=require_signature, _whole=True)
            raise PlanFileError(f"plan file {path} changed while it was being read") from None
        mac = run(False)
    except _Mismatch:
        mac = run(False)
    problem = _signature_problem(plan.signature, mac, signing_key, require_signature)
    if problem:
        raise SignatureError(problem)
    if keep_changes and plan.summary_override == summarize(plan.changes, rules.kinds):
        plan.summary_override = None
    return plan


def check_catalogue(target: dict, catalogue: Catalogue, path: str) -> None:
    """Refuse a plan made under another catalogue spec than ``catalogue``. A plan that
    names none was made before catalogues existed: a creators plan (whose rows,
    digest and changes are what the creators catalogue makes)."""
    named = target.get("catalogue")
    if named is None:
        if catalogue.name != "creators":
            raise WrongCatalogueError(
                f"{path} was made before catalogues, for the creators catalogue, and catalogue {catalogue.name} "
                "is configured; make a new plan"
            )
        return
    if not isinstance(named, dict) or named.get("name") != catalogue.name:
        raise WrongCatalogueError(
            f"{path} was made under catalogue {_short(repr(named.get('name') if isinstance(named, dict) else named), 60)}"
            f", and catalogue {catalogue.name} is configured; apply it where that catalogue is configured, or make a "
            "new plan"
        )
    if named.get("fingerprint") != catalogue.fingerprint:
        have = str(named.get("fingerprint"))[:12]
        raise WrongCatalogueError(
            f"{path} was made under another version of catalogue {catalogue.name} (fingerprint {have}, now "
            f"{catalogue.fingerprint[:12]}): its rules or columns changed since; make a new plan"
        )


def _whole_top(data: dict, path: str) -> dict:
    top = {k: v for k, v in data.items() if k != "changes"}
    if "changes" not in data:
        _check_top(top, path)
        raise PlanFileError(f"{path} does not match the plan schema at (top level): 'changes' is a required property")
    if not isinstance(data["changes"], list):
        _check_top(top, path)
        raise PlanFileError(f"{path} does not match the plan schema at changes: it is not of type 'array'")
    return top


class _Verifier:
    """The checks of the changes, fed in plan order: parsed changes (:meth:`changes`)
    or lines of the file (:meth:`lines`), which take the fast path where they can."""

    def __init__(self, plan: Plan, rules: PlanRules, path: str, sink, keep_changes: bool, signing_key: str | None,
                 fast: bool) -> None:
        self.plan, self.rules, self.path, self.sink, self.keep_changes = plan, rules, path, sink, keep_changes
        self.hasher = BodyHasher(signing_key if plan.signature else None)
        self.summary = {k: {a: 0 for a in ACTIONS} for k in rules.kinds}
        # Same-action duplicates break the strict order; across actions a set of key
        # hashes finds them in a fraction of the memory of the keys themselves.
        self.seen: set[int] = set()
        self.last: tuple | None = None
        self.count = 0  # changes checked so far
        # The fast path hands the sink rows, not dicts: with changes kept, or a sink
        # that takes only dicts, every change is parsed.
        self.fast = fast and not keep_changes and (sink is None or hasattr(sink, "add_rows"))

    # ---- input

    def whole(self, changes: list) -> None:
        for i in range(0, len(changes), BATCH):
            objs = changes[i : i + BATCH]
            self.changes(objs, None)
            self.hasher.joined(canonical_checked(objs)[1:-1], len(objs))

    def lines(self, layout: _Layout, raw: bool) -> None:
        """The file's change lines; hashed as they are with ``raw``, else re-encoded."""
        chunks = _line_chunks(self.path, layout)
        chunk = next(chunks, None)
        while chunk is not None:
            following = next(chunks, None)
            text, lines, body = _chunk_lines(chunk, following is None, self.path)
            i, n, pos = 0, len(lines), 0
            while i < n:
                j = min(n, i + BATCH)
                shape = _shape(self.rules, lines[i])
                if self.fast:
                    # The run of lines of this shape (the file is ordered by kind and action).
                    j = bisect.bisect_right(lines, shape, i, j, key=functools.partial(_shape, self.rules))
                run = lines[i:j]
                end = pos + sum(map(len, run)) + len(run)  # where the run's text ends in the chunk's
                if not (raw and self._fast(shape, run, text, pos, end)):
                    self._slow(run, raw)
                i, pos = j, end
            if raw:
                self.hasher.joined_bytes(body, n)
            chunk = following

    def _slow(self, lines: list[str], raw: bool) -> None:
        for k, line in enumerate(lines):
            if not line.startswith("    {"):
                raise _NotLines()
            if not line.endswith("},"):
                raise PlanFileError(f"plan file {self.path} is not valid JSON (change {self.count + k} is not one complete line)")
        bodies = [line[4:-1] for line in lines]
        objs = _fast_loads("[" + ",".join(bodies) + "]", self.path)
        if len(objs) != len(bodies):  # a line holding two changes
            raise PlanFileError(f"plan file {self.path} is not valid JSON (a line holds more than one change)")
        self.changes(objs, bodies)
        if not raw:
            # One C call encodes the batch: "[a,b,…]" is exactly the canonical changes, joined.
            self.hasher.joined(canonical_checked(objs)[1:-1], len(objs))

    def _fast(self, shape: tuple[int, int], lines: list[str], text: str, pos: int, end: int) -> bool:
        """Check a run of lines of one shape (``text[pos:end]``) by its pattern; False
        (and nothing recorded) when any line needs the general path."""
        rules = self.rules
        if shape[0] == len(rules.kinds) or not self.fast:
            return False
        kind, action = rules.kinds[shape[0]], ACTIONS[shape[1]]
        pattern = rules.fast_shapes.get((kind, action))
        if pattern is None:
            return False
        rows = pattern.findall(text, pos, end)
        n = len(rows)
        if n != len(lines):
            return False
        at = rules.fast_key[kind]
        keys = [row[at][1:-1] for row in rows]
        if self.last is not None and (*shape, keys[0]) <= self.last:
            return False
        if not all(map(str.__lt__, keys, keys[1:])):
            return False
        new = set(map(hash, zip(repeat(kind), keys)))
        if len(new) != n or not self.seen.isdisjoint(new):
            return False
        self.seen |= new
        self.last = (*shape, keys[-1])
        self.count += n
        self.summary[kind][action] += n
        if self.sink is not None:
            self.sink.add_rows(kind, rows)
        return True

    def changes(self, objs: list, raws: list[str] | None) -> None:
        """Parsed changes (with their lines as written, or None): every rule, one by one."""
        path, seen, summary = self.path, self.seen, self.summary
        check, kind_order = self.rules.check, self.rules.kind_order
        last = self.last
        i = first = self.count
        for c in objs:
            problem = check(c)
            if problem and raws is not None:
                # Parsed by orjson: judge the line as json reads it (the same but for
                # integers beyond 64 bits), for json's verdict and message.
                c = objs[i - first] = _loads(raws[i - first], path)
                problem = check(c)
            if problem:
                raise PlanFileError(f"{path} does not match the plan schema at changes/{i}: {problem}")
            kind, action, ckey = c["kind"], c["action"], c["key"]
            ident = hash((kind, ckey))
            if ident in seen:
                raise PlanFileError(f"{path} has two changes for {kind} {ckey!r:.200} (changes/{i})")
            seen.add(ident)
            if action == "move":
                # The old key is taken too: no other change may touch it.
                ident = hash((kind, c["from"]))
                if ident in seen:
                    raise PlanFileError(f"{path} has two changes for {kind} {c['from']!r:.200} (changes/{i})")
                seen.add(ident)
            order = (kind_order[kind], ACTION_ORDER[action], ckey)
            if last is not None and order <= last:
                if order == last:
                    raise PlanFileError(f"{path} has two changes for {kind} {ckey!r:.200} (changes/{i})")
                raise PlanFileError(
                    f"{path} lists its changes out of order at changes/{i}; plans are ordered by kind, action, key"
                )
            last = order
            summary[kind][action] += 1
            if self.keep_changes:
                self.plan.changes.append(Change.from_dict(c))
            i += 1
        self.last, self.count = last, i
        if self.sink is not None:
            self.sink.add_batch(objs)

    # ---- end

    def finish(self, top: dict, raw: bool) -> str | None:
        path, plan = self.path, self.plan
        # Plans made before moves existed have no "move" counts: read as 0.
        if self.summary != {k: {"move": 0, **v} for k, v in top["summary"].items()}:
            raise PlanFileError(f"{path}: the summary does not count the changes it lists (edited by hand?); make a new plan")
        plan.summary_override = top["summary"]
        plan_id, mac = self.hasher.finish(plan.envelope())
        if plan_id != plan.plan_id:
            if raw:
                raise _Mismatch()
            raise PlanFileError(f"{path}: plan_id does not match the content; the plan was edited after it was made. Make a new plan")
        return mac


def load_plan(path: str, catalogue: Catalogue | None = None) -> Plan:
    """Read, validate and verify a plan file (no database needed); keeps the changes.
    ``catalogue``: the one configured (default: creators)."""
    return verify_plan(path, catalogue)


# --------------------------------------------------------------------------- change rules


def _rules(catalogue: Catalogue | None) -> PlanRules:
    from .catalogue import load_catalogue

    return plan_rules(catalogue or load_catalogue())


def check_change(c, catalogue: Catalogue | None = None) -> str | None:
    """The plan schema's rules for one change (see :class:`PlanRules`); None when valid."""
    return _rules(catalogue).check_change(c)


def check_identity(c: dict, catalogue: Catalogue | None = None) -> str | None:
    """A change's images must name the row its key names (beyond the schema)."""
    return _rules(catalogue).check_identity(c)


def check_values(c: dict, catalogue: Catalogue | None = None) -> str | None:
    """Values the database would refuse (beyond the schema)."""
    return _rules(catalogue).check_values(c)
