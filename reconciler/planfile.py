"""The plan file: serialise, hash, sign, read and validate. No database.

``plan_id`` is the SHA-256 of the canonical body (the plan without ``plan_id`` and
``signature``, as ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()``), so anyone can recompute it. The file itself is the
same object pretty-printed with sorted keys, so ``git diff`` of two plans reads well.
Both are produced by streaming the changes, so a plan with a million changes is never
held twice in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Iterator

from .diff import ACTIONS, FIELDS, KIND_ORDER, KINDS, Change, summarize
from .errors import PlanFileError, SignatureError

FORMAT_VERSION = 1
SIGNING_KEY_ENV = "RECONCILER_SIGNING_KEY"
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

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        return summarize(self.changes)

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

    def to_dict(self) -> dict:
        d = {**self.envelope(), "changes": [c.to_dict() for c in self.changes]}
        if self.plan_id is not None:
            d["plan_id"] = self.plan_id
        if self.signature is not None:
            d["signature"] = self.signature
        return d

    def seal(self, signing_key: str | None = None) -> "Plan":
        """Compute ``plan_id`` (and the signature when a key is given)."""
        self.plan_id, mac = _hash_body(self, signing_key)
        self.signature = f"hmac-sha256:{mac}" if mac else None
        return self


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- hashing


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_chunks(plan: Plan) -> Iterator[bytes]:
    """The canonical body, in pieces (``changes`` is the first key in sorted order)."""
    yield b'{"changes":['
    batch: list[str] = []
    first = True
    for c in plan.changes:
        batch.append(_canonical(c.to_dict()))
        if len(batch) >= 2048:
            yield (("" if first else ",") + ",".join(batch)).encode("utf-8")
            first = False
            batch.clear()
    if batch:
        yield (("" if first else ",") + ",".join(batch)).encode("utf-8")
    rest = _canonical(plan.envelope())
    yield ("]" + ("," + rest[1:] if rest != "{}" else "}")).encode("utf-8")


def _hash_body(plan: Plan, signing_key: str | None) -> tuple[str, str | None]:
    digest = hashlib.sha256()
    mac = hmac.new(signing_key.encode("utf-8"), digestmod=hashlib.sha256) if signing_key else None
    try:
        for chunk in canonical_chunks(plan):
            digest.update(chunk)
            if mac:
                mac.update(chunk)
    except UnicodeEncodeError:
        raise PlanFileError("the plan holds text that is not valid Unicode (a lone surrogate)") from None
    return digest.hexdigest(), mac.hexdigest() if mac else None


def compute_plan_id(plan: Plan) -> str:
    return _hash_body(plan, None)[0]


def check_signature(plan: Plan, signing_key: str | None, required: bool) -> None:
    """Refuse a badly signed plan; with ``required``, refuse an unsigned one too."""
    if plan.signature is None:
        if required:
            raise SignatureError("the plan is not signed and a signature is required; make it with `reconciler plan --sign`")
        return
    if not signing_key:
        if required:
            raise SignatureError(f"cannot check the plan's signature: {SIGNING_KEY_ENV} is not set")
        return
    _, mac = _hash_body(plan, signing_key)
    if not hmac.compare_digest(plan.signature, f"hmac-sha256:{mac}"):
        raise SignatureError(f"the plan's signature does not match: it was signed with another key, or edited; check {SIGNING_KEY_ENV}")


# --------------------------------------------------------------------------- writing


def _pretty(obj, indent: str) -> str:
    # Newlines inside JSON strings are escaped, so every real newline is structural.
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).replace("\n", "\n" + indent)


def pretty_chunks(plan: Plan) -> Iterator[str]:
    """The file text: equal to ``json.dumps(plan.to_dict(), indent=2, sort_keys=True,
    ensure_ascii=False)`` plus a final newline, produced change by change."""
    top = plan.to_dict() if len(plan.changes) < 1000 else {**plan.envelope(), "changes": None}
    if top["changes"] is not None:
        yield json.dumps(top, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        return
    if plan.plan_id is not None:
        top["plan_id"] = plan.plan_id
    if plan.signature is not None:
        top["signature"] = plan.signature
    yield '{\n  "changes": [\n'
    batch: list[str] = []
    for i, c in enumerate(plan.changes):
        batch.append("    " + _pretty(c.to_dict(), "    "))
        if len(batch) >= 1024:
            yield ",\n".join(batch) + (",\n" if i + 1 < len(plan.changes) else "")
            batch.clear()
    if batch:
        yield ",\n".join(batch)
    yield "\n  ]"
    for k in sorted(k for k in top if k != "changes"):
        yield f",\n  {json.dumps(k)}: {_pretty(top[k], '  ')}"
    yield "\n}\n"


def write_plan(plan: Plan, path: str) -> str:
    """Write atomically: a temporary file in the same folder, fsync, rename.

    A failure at any point leaves no file (and an existing file untouched).
    """
    if plan.plan_id is None:
        plan.seal()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        if os.path.isdir(path):
            raise PlanFileError(f"{path} is a folder; give a file name with -o")
        fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise PlanFileError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in pretty_chunks(plan):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise PlanFileError(f"cannot write {path}: {e.strerror}") from None
        raise
    return path


# --------------------------------------------------------------------------- reading


@lru_cache(maxsize=1)
def plan_schema() -> dict:
    return json.loads(resources.files("reconciler.schemas").joinpath("plan.schema.json").read_text("utf-8"))


@lru_cache(maxsize=1)
def _envelope_validator():
    import jsonschema

    schema = dict(plan_schema())
    props = dict(schema["properties"])
    # Changes are checked one by one by check_change(), the same rules in plain Python:
    # jsonschema over a million changes would take minutes.
    props["changes"] = {"type": "array", "items": {"type": "object"}}
    schema["properties"] = props
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _where(path) -> str:
    parts = [str(p) for p in path]
    return "/".join(parts) if parts else "(top level)"


def read_plan_json(path: str) -> dict:
    """Read and parse a plan file; every failure is a one-line PlanFileError."""
    if os.path.isdir(path):
        raise PlanFileError(f"{path} is a folder, not a plan file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise PlanFileError(f"plan file {path} does not exist") from None
    except OSError as e:
        raise PlanFileError(f"cannot read plan file {path}: {e.strerror}") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanFileError(f"plan file {path} is larger than 4 GiB; it is not a plan")
    if not raw.strip():
        raise PlanFileError(f"plan file {path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanFileError(f"plan file {path} is not UTF-8 text (a binary file?)") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise PlanFileError(f"plan file {path} is nested too deeply to be a plan") from None
    except ValueError as e:
        raise PlanFileError(f"plan file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PlanFileError(f"plan file {path} is not a JSON object")
    return data


def validate_plan_data(data: dict, path: str = "plan") -> Plan:
    """Schema + per-change rules + plan_id. Returns the plan, or raises PlanFileError."""
    import jsonschema

    fv = data.get("format_version")
    if fv != FORMAT_VERSION:
        raise PlanFileError(
            f"{path} has format_version {fv!r}; this reconciler reads format_version {FORMAT_VERSION} (make a new plan)"
        )
    try:
        errors = sorted(_envelope_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    except RecursionError:
        raise PlanFileError(f"{path} is nested too deeply to be a plan") from None
    if errors:
        e = errors[0]
        raise PlanFileError(f"{path} does not match the plan schema at {_where(e.absolute_path)}: {_short(e.message)}")
    changes = []
    seen: set[tuple[str, str]] = set()
    last = None
    for i, c in enumerate(data["changes"]):
        problem = check_change(c)
        if problem:
            raise PlanFileError(f"{path} does not match the plan schema at changes/{i}: {problem}")
        problem = check_identity(c)
        if problem:
            raise PlanFileError(f"{path}: changes/{i} {problem}")
        ident = (c["kind"], c["key"])
        if ident in seen:
            raise PlanFileError(f"{path} has two changes for {c['kind']} {c['key']!r} (changes/{i})")
        seen.add(ident)
        change = Change.from_dict(c)
        if last is not None and change.sort_key < last:
            raise PlanFileError(f"{path} lists its changes out of order at changes/{i}; plans are ordered by kind, action, key")
        last = change.sort_key
        changes.append(change)
    plan = Plan(
        changes=changes,
        source=data["source"],
        target=data["target"],
        tool_version=data["tool_version"],
        created_at=data["created_at"],
        extra={k: data[k] for k in ("kind", "rolls_back", "limits") if k in data},
        plan_id=data["plan_id"],
        signature=data.get("signature"),
    )
    if plan.summary != data["summary"]:
        raise PlanFileError(f"{path}: the summary does not count the changes it lists (edited by hand?); make a new plan")
    if compute_plan_id(plan) != data["plan_id"]:
        raise PlanFileError(
            f"{path}: plan_id does not match the content; the plan was edited after it was made. Make a new plan"
        )
    return plan


def load_plan(path: str) -> Plan:
    """Read, validate and verify a plan file (no database needed)."""
    return validate_plan_data(read_plan_json(path), path)


def _short(message: str, limit: int = 160) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


# --------------------------------------------------------------------------- change rules

_NULLABLE_STR = (str, type(None))
_TYPES: dict[str, dict[str, tuple]] = {
    "model": {
        "folder_name": (str,),
        "thumbnail_url": _NULLABLE_STR,
        "icon_url": _NULLABLE_STR,
        "banner_url": _NULLABLE_STR,
        "post_count": (int, type(None)),
        "status": _NULLABLE_STR,
    },
    "post": {"model": (str,), "folder_name": (str,), "title": _NULLABLE_STR, "media_cdns": (dict, type(None))},
    "media": {
        "s3_key": (str,),
        "post": (str,),
        "url": (str,),
        "type": (str,),
        "size_bytes": (int, type(None)),
        "etag": _NULLABLE_STR,
    },
}
for _t in _TYPES.values():
    _t.update({"id": (int,), "created_at": _NULLABLE_STR})
_IDENT = {"model": ("folder_name",), "post": ("model", "folder_name"), "media": ("s3_key", "post")}
_UPDATABLE = {k: frozenset(FIELDS[k]) for k in KINDS}


def _check_fields(kind: str, image: dict, allowed) -> str | None:
    types = _TYPES[kind]
    for name, value in image.items():
        if name not in allowed:
            return f"{name!r} is not a field of a {kind} here"
        ok = types[name]
        if type(value) is bool or not isinstance(value, ok):
            return f"{name!r} has the wrong type"
        if name in ("folder_name", "model", "s3_key") and value == "":
            return f"{name!r} is empty"
        if name == "post" and len(value) < 3:
            return "'post' is too short"
        if name == "type" and value not in ("image", "video"):
            return "'type' is not one of 'image', 'video'"
        if name == "id" and value < 1:
            return "'id' is less than the minimum of 1"
    return None


def check_change(c) -> str | None:
    """The plan schema's rules for one change, in plain Python; None when valid.

    Equivalent to validating against ``#/$defs/change`` of ``plan.schema.json``
    (a property test holds the two together).
    """
    if not isinstance(c, dict):
        return "a change is not an object"
    if set(c) != {"action", "kind", "key", "before", "after"}:
        extra = set(c) - {"action", "kind", "key", "before", "after"}
        return f"unknown field {sorted(extra)[0]!r}" if extra else "a change lacks one of action, kind, key, before, after"
    action, kind, key, before, after = c["action"], c["kind"], c["key"], c["before"], c["after"]
    if action not in ACTIONS:
        return f"unknown action {action!r}"
    if kind not in KIND_ORDER:
        return f"unknown kind {kind!r}"
    if type(key) is not str or not key:
        return "'key' must be a non-empty string"
    for name, value in (("before", before), ("after", after)):
        if value is not None and type(value) is not dict:
            return f"{name!r} must be an object or null"
    if action == "create":
        if before is not None or after is None:
            return "a create has 'before' null and 'after' an object"
        images = [after]
    elif action == "delete":
        if after is not None or before is None:
            return "a delete has 'before' an object and 'after' null"
        images = [before]
    else:
        if before is None or after is None:
            return "an update has 'before' and 'after' objects"
        allowed = _UPDATABLE[kind]
        for image in (before, after):
            if not image:
                return "an update changes at least one field"
            problem = _check_fields(kind, image, allowed)
            if problem:
                return problem
        return None
    required = set(_IDENT[kind]) | set(FIELDS[kind])
    for image in images:
        missing = required - set(image)
        if missing:
            return f"{sorted(missing)[0]!r} is a required property"
        problem = _check_fields(kind, image, _TYPES[kind])
        if problem:
            return problem
    return None


def check_identity(c: dict) -> str | None:
    """A change's images must name the row its key names (beyond the schema)."""
    kind, key = c["kind"], c["key"]
    if kind == "post" and "/" not in key.strip("/"):
        return f"has post key {key!r}; a post key is MODEL/POST"
    if kind == "model" and "/" in key:
        return f"has model key {key!r}; a model key holds no '/'"
    for image in (c["before"], c["after"]):
        if not image or c["action"] == "update":
            continue
        if kind == "model" and image["folder_name"] != key:
            return f"names folder_name {image['folder_name']!r} under key {key!r}"
        if kind == "post" and (image["model"] + "/" + image["folder_name"] != key or "/" in image["model"]):
            return f"names model/folder_name that do not make its key {key!r}"
        if kind == "media" and image["s3_key"] != key:
            return f"names s3_key {image['s3_key']!r} under key {key!r}"
    if kind == "media":
        for image in (c["before"], c["after"]):
            if image and "post" in image and "/" not in image["post"]:
                return f"names post {image['post']!r}; a post is MODEL/POST"
    return None
