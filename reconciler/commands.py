"""The commands as library functions: ``init``, ``make_plan``, ``plan``, ``apply``,
``history``, ``rollback``. The CLI is a thin layer over these; they are usable from
Python with a :class:`~reconciler.config.Settings`.
"""

from __future__ import annotations

import contextlib
import gc
import os
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Sequence

import psycopg2

from . import audit
from .apply import ApplyResult, Stage, apply_plan
from .config import Settings
from .current import read_state
from .db import check_schema, migrate, open_database
from .desired import build_desired
from .diff import diff
from .errors import ConfigError
from .layout import ObjectInfo
from .planfile import Plan, verify_plan, write_plan
from .safety import check_delete_limits, check_empty_source
from .sources import open_source
from .version import __version__

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def init(settings: Settings) -> list[str]:
    """Create or upgrade the schema (idempotent); return the migrations applied."""
    with open_database(settings.database, settings.state_dir) as db:
        return migrate(db)


def make_plan(
    settings: Settings,
    *,
    models: Sequence[str] | None = None,
    objects: Iterable[ObjectInfo] | None = None,
    root: str = "",
    sign: bool = False,
    seal: bool = True,
    progress: Progress = _quiet,
) -> Plan:
    """Compute a plan. Planning never writes: not to the bucket, not to the database.

    ``objects`` replaces the configured source with any iterable of ``ObjectInfo``
    (whose keys start with ``root``). Raises SafetyError when a guard refuses.
    """
    if not settings.cdn_base_url:
        raise ConfigError("no CDN base URL: pass --cdn-base-url, set RECONCILER_CDN_BASE_URL or cdn_base_url in the config")
    scope = sorted(set(models)) if models else None
    if objects is None:
        if not settings.source:
            raise ConfigError("no source: pass --source, set RECONCILER_SOURCE or source.url in the config")
        source = open_source(
            settings.source,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            addressing_style=settings.addressing_style,
            max_workers=settings.max_workers,
        )
        source_url, root, objects = source.url, source.root, source.list(scope)
    else:
        source_url = settings.source
    if sign and not settings.signing_key:
        raise ConfigError("--sign needs the signing key in RECONCILER_SIGNING_KEY")
    with open_database(settings.database, settings.state_dir) as db:
        check_schema(db)
        try:
            with db.transaction() as conn, db.snapshot_digest(conn, scope) as digest, _gc_paused():
                # The server computes the digest of this snapshot on its own core while
                # the listing is read; the rows are then read from the same snapshot.
                progress("listing the source")
                if progress is not _quiet:
                    objects = _counting(objects, progress)
                desired = build_desired(
                    objects, cdn_base_url=settings.cdn_base_url, root=root, layout=settings.layout, models=scope
                )
                progress(f"listed {desired.object_count} objects; reading the database")
                state = read_state(conn, scope)
                in_database: set[str] = set()
                state.models = ((in_database.add(k), (k, r))[1] for k, r in state.models)
                result = diff(desired, state)
                state_digest = digest.result().digest
        except psycopg2.Error as e:
            raise db.error(e, "cannot read the current state") from None
        display = db.display
    current_rows = sum(result.current_counts.values())
    check_empty_source(len(desired.models), current_rows, scope, settings.allow_empty_source)
    deletes = sum(1 for c in result.changes if c.action == "delete")
    check_delete_limits(deletes, current_rows, settings.limits)
    extra = {}
    if settings.max_delete is not None or settings.max_delete_percent is not None:
        extra["limits"] = settings.limits.to_dict()
    plan = Plan(
        changes=result.changes,
        source={
            "url": source_url,
            "object_count": desired.object_count,
            "skipped": dict(sorted(desired.skipped.items())),
            "skipped_examples": {k: v for k, v in sorted(desired.skipped_examples.items())},
        },
        target={
            "database": display,
            "scope": scope,
            "state_digest": state_digest,
            "current_counts": result.current_counts,
        },
        tool_version=__version__,
        extra=extra,
    )
    # write_plan seals as it streams the changes, so plan() skips this pass.
    for name in scope or ():
        if name not in desired.models and name not in in_database:
            plan.notes.append(f"model {name!r} is neither in the source nor in the database: check --model")
    return plan.seal(settings.signing_key if sign else None) if seal else plan


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million rows are built.

    They hold no reference cycles, but every few hundred allocations the collector
    would walk the ever-growing heap again: about a fifth of the time at a million
    objects. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _counting(objects: Iterable[ObjectInfo], progress: Progress, every: int = 100_000) -> Iterable[ObjectInfo]:
    n = 0
    for o in objects:
        n += 1
        if n % every == 0:
            progress(f"listed {n} objects")
        yield o


def default_plan_path(settings: Settings) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join(settings.plans_dir, f"plan-{stamp}.json")


def plan(settings: Settings, output: str | None = None, **kwargs) -> tuple[Plan, str]:
    """Compute a plan and write it atomically to ``output`` (default: ``plans/``)."""
    p = make_plan(settings, seal=False, **kwargs)
    path = write_plan(p, output or default_plan_path(settings), settings.signing_key if kwargs.get("sign") else None)
    return p, path


def apply(
    settings: Settings, path: str, *, require_signature: bool = False, progress: Progress = _quiet, actor: str | None = None
) -> ApplyResult:
    """Verify the plan file (schema, plan_id, signature), then apply it in one
    transaction (see :mod:`reconciler.apply`). ``actor`` names who approved it (the
    audit log's ``os_user``)."""
    progress("verifying the plan file")
    stage = Stage()
    try:
        p = verify_plan(
            path,
            keep_changes=False,
            sink=stage,
            signing_key=settings.signing_key,
            require_signature=require_signature or settings.require_signature,
        )
        with open_database(settings.database, settings.state_dir) as db:
            check_schema(db)
            return apply_plan(db, p, stage, lock_timeout=settings.lock_timeout, limits=settings.limits, progress=progress, actor=actor)
    finally:
        stage.close()


def history(settings: Settings, limit: int | None = 20) -> list[audit.HistoryEntry]:
    with open_database(settings.database, settings.state_dir) as db:
        check_schema(db)
        return audit.history(db, limit)


def rollback(settings: Settings, apply_id: int, output: str) -> Plan:
    """Write the inverse plan of an apply to ``output``; it is applied like any plan."""
    with open_database(settings.database, settings.state_dir) as db:
        check_schema(db)
        p = audit.rollback_plan(db, apply_id)
    write_plan(p, output, settings.signing_key)
    return p
