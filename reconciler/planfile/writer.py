"""Writing a plan file: one change per line, to a temporary file renamed into place
(never a partial plan file)."""

from __future__ import annotations

import errno
import itertools
import json
import os
import uuid
from typing import Callable

from ..errors import PlanFileError
from .digest import BodyHasher, encoded_batches
from .plan import Plan

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
            for text, count in encoded_batches(plan.changes):
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
