"""The commands as library functions: ``init``, ``make_plan``, ``plan``, ``apply``,
``history``, ``rollback``. The CLI is a thin layer over these; they are usable from
Python with a :class:`~reconciler.config.Settings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import psycopg2

from .catalogue.keys import require_scope_segment, scope_segment
from .config import Settings, check_url
from .engine.diff import summarize
from .engine.frames import SKIPPED_EXAMPLES, Listing, classify_listing
from .engine.plan import Current, Result, plan_changes
from .engine.safety import check_delete_limits, check_empty_source, check_url_rewrites, url_rewrites
from .engine.shards import Shard
from .engine.spill import Spill
from .errors import ConfigError, ReconcilerError
from .objects import ObjectInfo
from .planfile import Plan, verify_plan, write_plan
from .sources import Source, open_source
from .store import audit
from .store.current import RangeCopies, database_identity, read_known, top_keys
from .store.db import Database, open_database, redact_url
from .store.execute import ApplyResult, PlanFileCopy, apply_file
from .store.install import InstallReport
from .store.migrations import check_schema, migrate
from .version import __version__

if TYPE_CHECKING:
    from .sources.inventory import Report  # pyarrow and friends only when an inventory is read

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def init(settings: Settings) -> tuple[list[str], InstallReport]:
    """Create or upgrade the schema and install the catalogue (idempotent): return the
    migrations applied and what was done to the catalogue's tables."""
    with _database(settings, create=True) as db:
        return migrate(db, settings.catalogue)


@contextlib.contextmanager
def _database(settings: Settings, *, create: bool = False) -> Iterator[Database]:
    """The catalogue database, named in plans and messages as the user knows it:
    ``settings.database_display`` when set (``serve`` reaches the embedded default by
    its socket URL, and its plans still name it as the command line's do)."""
    with open_database(settings.database, settings.state_dir, create=create) as db:
        if settings.database_display:
            db.display = settings.database_display
        yield db


def make_plan(
    settings: Settings,
    *,
    scope: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    objects: Iterable[ObjectInfo] | None = None,
    root: str = "",
    shard: Shard | None = None,
    sign: bool = False,
    seal: bool = True,
    progress: Progress = _quiet,
    batch_rows: int | None = None,
    require_known: bool = True,
) -> Plan:
    """Compute a plan. Planning never writes: not to the bucket, not to the database.

    ``scope`` limits the plan to those keys of the catalogue's top entity (``--scope``:
    a model of creators, a product of product-images): it lists only their folders,
    reads and digests only their rows, and can change nothing outside them. ``models``
    is the creators' spelling of it (``--model``), and its messages name ``--model``.
    A key that is neither in the source nor in the database is refused as a typo,
    unless ``require_known`` is false (an event's run: its keys came from the bucket,
    and one whose objects came and went is nothing to do).

    ``objects`` replaces the configured source with any iterable of ``ObjectInfo``
    (whose keys start with ``root``). Raises SafetyError when a guard refuses.

    ``batch_rows`` (default: ``settings.batch_rows``) is how many objects are planned
    at a time, a batch of whole top rows (see :mod:`reconciler.engine.plan`).

    ``shard`` (see :mod:`reconciler.engine.shards`) scopes the plan like ``scope`` does,
    to the shard's top keys found in the source or in the database (read in the plan's
    own snapshot); the plan records them in ``target.scope`` and the shard in
    ``target.shard``.
    """
    keys, flag = _scope_of(scope, models)
    if shard is not None and keys:
        raise ConfigError(f"--shard and {flag} cannot be combined: a shard already chooses its "
                          f"{settings.catalogue.top.plural.lower()}")
    if shard is not None or keys:
        require_scope_segment(settings.catalogue)
    if sign and not settings.signing_key:
        raise ConfigError("--sign needs the signing key in RECONCILER_SIGNING_KEY")
    listing = _listing(settings, objects, root, shard if shard is not None else keys, progress)
    # Settings read from flags, environment and file were checked; these may be a caller's own.
    cdn_base_url = check_url(settings.cdn_base_url or default_cdn_base_url(settings, listing.source), "cdn_base_url",
                             schemes=("https", "http", "file"))
    hint = f"check {flag}" if require_known else None
    planned = _plan_in_snapshot(settings, listing, keys, shard, cdn_base_url, batch_rows or settings.batch_rows,
                                hint, progress)
    if shard is not None:
        # A shard's scope: its top rows in the database (their rows were read and digested;
        # one only in the source has no rows, so the digest is the same) and in the source.
        keys = sorted(set(planned.in_shard) | set(planned.classified.counts))
    _check_guards(settings, planned, keys, shard, cdn_base_url)
    plan = _plan_file(settings, listing, planned, keys, shard)
    # write_plan seals as it streams the changes, so plan() skips this pass.
    return plan.seal(settings.signing_key if sign else None) if seal else plan


def _scope_of(scope: Sequence[str] | None, models: Sequence[str] | None) -> tuple[list[str] | None, str]:
    """The scope's top keys, sorted (None: the whole catalogue), and the flag that
    spells it, for messages."""
    if scope is not None and models is not None:
        raise TypeError("make_plan takes scope= or its creators' spelling models=, not both")
    keys = models if scope is None else scope
    return (sorted(set(keys)) if keys else None), ("--scope" if models is None else "--model")


@dataclass
class _Listing:
    """Where the objects come from, and the objects (a lazy iterable, read once)."""

    source: Source | None
    url: str | None
    root: str
    objects: Iterable[ObjectInfo]
    inventory: Report | None = None  # the S3 Inventory report read instead of a listing


def _listing(settings: Settings, objects, root: str, scope, progress: Progress) -> _Listing:
    if objects is not None:
        return _Listing(None, settings.source, root, objects)
    source = _open_source(settings, None if progress is _quiet else progress)
    inventory = None
    if settings.inventory:
        progress("reading the inventory manifest")
        inventory = source.report  # checked (bucket, age) before anything else is read
    return _Listing(source, source.url, source.root, source.list(scope, _under(settings.catalogue)), inventory)


@dataclass
class _Planned:
    """What one snapshot of the database and one reading of the listing gave."""

    classified: Listing
    result: Result
    state_digest: str
    database_id: str
    display: str
    in_shard: list[str]  # a shard's top keys in the database


def _plan_in_snapshot(settings: Settings, listing: _Listing, scope, shard: Shard | None, cdn_base_url: str,
                      batch_rows: int, hint: str | None, progress: Progress) -> _Planned:
    """Classify the listing and plan it against one snapshot of the database: its digest
    and current rows are read on a second connection (in the same snapshot) while the
    listing is read; the platform's rows for lookups are read here. With a ``hint``, a
    top key of the scope found nowhere is refused (the hint says what to check)."""
    catalogue = settings.catalogue
    spill = Spill(batch_rows)
    in_shard: list[str] = []

    def shard_scope(conn) -> list[str]:
        in_shard[:] = _top_keys_in_shard(conn, catalogue, shard)
        return in_shard

    with _database(settings) as db:
        check_schema(db, catalogue)
        try:
            copies = RangeCopies(catalogue, batch_rows, spill.path)
            digest_scope = shard_scope if shard is not None else scope
            with db.transaction() as conn, db.snapshot_digest(conn, catalogue, digest_scope, also=copies.run) as reads, \
                    _gc_paused(), _stopping(copies):
                progress("listing the source")
                objects = _counting(listing.objects, progress) if progress is not _quiet else listing.objects
                classified = classify_listing(objects, catalogue, root=listing.root,
                                              scope=shard if shard is not None else scope, spill=spill)
                progress(f"listed {classified.object_count} objects; reading the database")
                rows_scope = in_shard if shard is not None else scope
                known = read_known(conn, catalogue, rows_scope)
                in_database = _top_keys_in(conn, catalogue, rows_scope)
                state_digest = reads.result().digest
                current = Current(ranges=copies.ranges(), counts=copies.counts, known=known)
                result = plan_changes(classified, current, catalogue, cdn_base_url=cdn_base_url, root=listing.root,
                                      moves=settings.detect_moves, batch_rows=batch_rows, spill=spill)
                database_id = database_identity(conn)
            # A typo'd --scope lists nothing and changes nothing: a drift check would read
            # that as "in sync", so it is an error, not a note.
            if shard is None and scope and hint:
                _refuse_unknown(db, catalogue, listing.source, scope, known=set(classified.counts) | in_database,
                                hint=hint)
        except psycopg2.Error as e:
            spill.close()
            raise db.error(e, "cannot read the current state") from None
        except BaseException:
            spill.close()
            raise
        return _Planned(classified, result, state_digest, database_id, db.display, in_shard)


def _check_guards(settings: Settings, planned: _Planned, scope, shard: Shard | None, cdn_base_url: str) -> None:
    """The guards a plan must pass (:mod:`reconciler.engine.safety`): an empty source,
    too many deletes, too many URLs rewritten."""
    catalogue = settings.catalogue
    result = planned.result
    current_rows = sum(result.current_counts.values())
    # A shard whose top rows all left the bucket is not an empty source when other shards'
    # are there: only a source with nothing at all is refused.
    recognised = len(planned.classified.counts) or int(shard is not None and shard.saw_others)
    check_empty_source(recognised, current_rows, scope, settings.allow_empty_source, catalogue.top.name)
    deletes = sum(counts["delete"] for counts in summarize(result.changes).values())
    check_delete_limits(deletes, current_rows, settings.limits)
    rewrites, holding = url_rewrites(result.changes, catalogue)
    check_url_rewrites(rewrites, sum(result.current_counts[k] for k in holding), settings.limits, base=cdn_base_url,
                       what="/".join(holding))


def _plan_file(settings: Settings, listing: _Listing, planned: _Planned, scope, shard: Shard | None) -> Plan:
    """The plan as its file records it: the changes, where they came from, what they are for."""
    catalogue = settings.catalogue
    classified, result = planned.classified, planned.result
    extra = {}
    if settings.max_delete is not None or settings.max_delete_percent is not None:
        extra["limits"] = settings.limits.to_dict()
    if result.held:
        # Rows whose objects are under a platform row that is missing: left as they are.
        extra["held"] = {kind: {"count": len(keys), "examples": keys[:SKIPPED_EXAMPLES]}
                         for kind, keys in sorted(result.held.items())}
    source = {
        "url": listing.url,
        "object_count": classified.object_count,
        "skipped": dict(sorted(classified.skipped.items())),
        "skipped_examples": dict(sorted(classified.skipped_examples.items())),
    }
    if listing.inventory is not None:
        source["inventory"] = listing.inventory.to_dict()
    target = {
        "database": planned.display,
        "database_id": planned.database_id,
        "catalogue": catalogue.describe(),
        "scope": scope,
        "state_digest": planned.state_digest,
        "current_counts": result.current_counts,
    }
    if shard is not None:
        target["shard"] = str(shard)
    return Plan(changes=result.changes, source=source, target=target, tool_version=__version__, extra=extra,
                kinds=catalogue.kinds, descriptor=catalogue, tops=classified.tallies())


def _top_keys_in(conn, catalogue, scope) -> set[str]:
    """The top rows' keys in the database, in scope (read in ``conn``'s snapshot)."""
    return set(top_keys(conn, catalogue, scope))


def _top_keys_in_shard(conn, catalogue, shard: Shard) -> list[str]:
    """The database's top keys that fall in ``shard`` (read in ``conn``'s snapshot)."""
    return sorted(name for name in top_keys(conn, catalogue) if name in shard)


def _under(catalogue) -> str:
    """The literal folders before the top entity's (``products/``; "" for creators)."""
    segment = scope_segment(catalogue)
    return "".join(p + "/" for p in segment.prefix) if segment is not None else ""


def check_scope(settings: Settings, keys: Sequence[str], hint: str = "check --scope") -> None:
    """Refuse top keys (models of creators, products of product-images) that are
    neither in the source nor in the database, or a catalogue that cannot be scoped,
    before anything is planned (``reconciler serve`` checks the keys a person gives
    so). Looks each key up (:func:`find_top_keys`); ``plan --scope`` makes the same
    check on its own listing."""
    require_scope_segment(settings.catalogue)
    source = _open_source(dataclasses.replace(settings, inventory=None))
    with open_database(settings.database, settings.state_dir) as db:
        known = find_top_keys(db, settings.catalogue, source, keys)
        _refuse_unknown(db, settings.catalogue, source, keys, known=known, hint=hint)


def _refuse_unknown(db, catalogue, source: Source | None, keys: Sequence[str], *, known: set[str], hint: str) -> None:
    """Raise a ConfigError naming the ``keys`` not ``known``, in the words of the top
    entity. One that is there in another Unicode normal form (a folder written in NFC,
    a name typed in NFD: they look the same) is said to be, with both spellings escaped."""
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    variants = {k: [v for v in dict.fromkeys(unicodedata.normalize(f, k) for f in ("NFC", "NFD")) if v != k]
                for k in unknown}
    there = find_top_keys(db, catalogue, source, sorted({v for vs in variants.values() for v in vs}))
    listed = ", ".join(repr(k) for k in unknown)
    top = catalogue.top
    what = f"{top.name} {listed} is" if len(unknown) == 1 else f"{top.plural.lower()} {listed} are"
    message = f"{what} neither in the source nor in the database: {hint}"
    forms = [f"{ascii(k)} is {_form(k)}, {ascii(v)} ({_form(v)}) is there"
             for k in unknown for v in variants[k] if v in there]
    if forms:
        message += f" (in another Unicode normal form: {'; '.join(forms)})"
    raise ConfigError(message)


def _form(name: str) -> str:
    return next((f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, name)), "in mixed forms")


def find_top_keys(db, catalogue, source: Source | None, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` are top rows in the database, or folders of the top entity in
    the source holding an object (the first page of each folder's listing, no more; an
    inventory source's bucket is asked directly, not its report)."""
    if not keys:
        return set()
    try:
        with db.transaction() as conn:
            found = set(top_keys(conn, catalogue, list(keys)))
    except psycopg2.Error as e:
        raise db.error(e, "cannot read the top rows") from None
    live = getattr(source, "s3", source)  # an InventorySource lists through its S3Source
    under = _under(catalogue)
    for key in keys:
        if key not in found and live is not None and "/" not in key:  # a folder's name holds no "/"
            objects = live.list([key], under)
            if next(iter(objects), None) is not None:
                found.add(key)
            objects.close()
    return found


def _open_source(settings: Settings, progress: Progress | None = None) -> Source:
    if not settings.source:
        raise ConfigError("no source: pass --source, set RECONCILER_SOURCE or source.url in the config")
    return open_source(
        settings.source,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        addressing_style=settings.addressing_style,
        max_workers=settings.max_workers,
        progress=progress,
        inventory=settings.inventory,
        max_inventory_age=settings.max_inventory_age,
    )


def default_cdn_base_url(settings: Settings, source: Source | None = None) -> str:
    """The base of media URLs when no ``cdn_base_url`` is set: the source's own public
    URL (an S3 bucket's URL at its endpoint, ``file://`` and a folder's absolute path).
    The same settings give the same base, so plans stay reproducible. Makes no request."""
    if source is None:
        if not settings.source:
            raise ConfigError(
                "no CDN base URL: pass --cdn-base-url, set RECONCILER_CDN_BASE_URL or cdn_base_url in the config"
            )
        source = _open_source(settings)
    return source.public_url


@contextlib.contextmanager
def _stopping(copies: RangeCopies) -> Iterator[None]:
    """Stop the second connection's copies when planning fails before using them."""
    try:
        yield
    except BaseException:
        copies.stop()
        raise


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


SCOPE_IN_NAME = 60  # bytes of a plan file's name that tell its scope (of the 255 a name may have)


def default_file_name(kind: str, p: Plan) -> str:
    """``KIND-<UTC time>-<short plan id>[-<scope>].json``: the name of a plan file
    written without ``-o`` (``kind`` is ``plan`` or ``rollback-<apply id>``). The time
    is the plan's ``created_at``; the plan id tells two plans of the same second apart,
    and :func:`write_plan` adds ``-2`` … rather than replace a file. The scope's top
    keys are written as any file system takes them: each run of other characters than
    letters, digits, ``.``, ``-`` and ``_`` (a ``/`` of a key of several columns among
    them) as ``_``, no leading dot, in at most 60 bytes of UTF-8."""
    stamp = p.created_at.replace("-", "").replace(":", "")
    scope = ""
    if p.target.get("shard"):
        scope = "-shard-" + p.target["shard"].replace("/", "-of-")
    elif p.scope:
        names = "+".join(re.sub(r"[^\w.-]+", "_", k).lstrip(".") or "_" for k in p.scope)
        scope = "-" + names.encode("utf-8")[:SCOPE_IN_NAME].decode("utf-8", "ignore")
    return f"{kind}-{stamp}-{p.plan_id[:12]}{scope}.json"


def plan(settings: Settings, output: str | None = None, **kwargs) -> tuple[Plan, str]:
    """Compute a plan and write it atomically to ``output``; return it and the path.

    Without ``output`` the file goes to ``settings.plans_dir`` (``plans/``), named by
    :func:`default_file_name`, and never replaces an existing file.
    """
    p = make_plan(settings, seal=False, **kwargs)
    key = settings.signing_key if kwargs.get("sign") else None
    if output:
        return p, write_plan(p, output, key)
    return p, write_plan(p, settings.plans_dir, key, name=functools.partial(default_file_name, "plan"))


def apply(
    settings: Settings, path: str, *, require_signature: bool = False, progress: Progress = _quiet,
    actor: str | None = None, override_reason: str | None = None,
) -> ApplyResult:
    """Verify the plan file (schema, plan_id, signature), then apply it in one
    transaction (see :mod:`reconciler.store.execute`). ``actor`` names who approved it (the
    audit log's ``os_user``); ``override_reason`` why it was applied inside a closed
    change window (``reconciler serve``), kept in the audit log too."""
    progress("verifying the plan file")
    copy = PlanFileCopy(path)  # the audit keeps the file itself, compressed
    verify = functools.partial(
        verify_plan,
        path,
        settings.catalogue,
        keep_changes=False,
        signing_key=settings.signing_key,
        require_signature=require_signature or settings.require_signature,
    )
    try:
        with contextlib.ExitStack() as stack:
            # The database is opened first (here, not in a thread: the embedded server
            # starts in this one), so that the changes stream into it as they are verified.
            try:
                db = stack.enter_context(_database(settings))
                check_schema(db, settings.catalogue)
            except ReconcilerError:
                verify(sink=None)  # a plan that fails verification is refused as such first
                raise
            return apply_file(
                db, settings.catalogue, lambda sink: verify(sink=sink), lock_timeout=settings.lock_timeout, limits=settings.limits,
                progress=progress, actor=actor, plan_file=copy, override_reason=override_reason,
            )
    finally:
        copy.close()


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """A URL to open the catalogue database with (``psql URL``), valid inside the block.

    The embedded default is started for the block and stopped after it; its URL is the
    real one (a Unix socket in ``state_dir/pgdata``, no password). A configured
    database is not touched: its URL is given without its password.
    """
    if settings.database:
        yield redact_url(settings.database)
        return
    with open_database(None, settings.state_dir) as db:
        yield db.url


def history(settings: Settings, limit: int | None = 20) -> list[audit.HistoryEntry]:
    """The newest ``limit`` applies, newest first; ``None`` (the CLI's ``--limit 0``): all."""
    with _database(settings) as db:
        check_schema(db, settings.catalogue)
        return audit.history(db, limit)


def rollback(settings: Settings, apply_id: int, output: str | None = None) -> Plan:
    """Write the inverse plan of an apply to ``output``; it is applied like any plan.

    Without ``output``, see :func:`write_rollback` (which also returns the path).
    """
    return write_rollback(settings, apply_id, output)[0]


def write_rollback(settings: Settings, apply_id: int, output: str | None = None) -> tuple[Plan, str]:
    """The inverse plan of an apply, written to ``output`` or, without one, to
    ``settings.plans_dir`` as ``rollback-<apply id>-<UTC time>-<short plan id>.json``
    (never replacing a file); return it and the path."""
    with _database(settings) as db:
        check_schema(db, settings.catalogue)
        p = audit.rollback_plan(db, settings.catalogue, apply_id)
    if output:
        return p, write_plan(p, output, settings.signing_key)
    name = functools.partial(default_file_name, f"rollback-{apply_id}")
    return p, write_plan(p, settings.plans_dir, settings.signing_key, name=name)


# --------------------------------------------------------------------------- authoring help


@dataclass
class Explanation:
    """What one key means under the catalogue (``reconciler explain``)."""

    key: str
    rel: str | None  # the key below the source root; None: outside it
    rule: object | None = None  # the rule that took it
    captures: dict = field(default_factory=dict)
    reason: str | None = None  # why it is skipped; None: it makes rows
    rows: dict = field(default_factory=dict)  # entity → plan key, top first
    facet: str | None = None
    values: dict = field(default_factory=dict)  # the row's template columns, for this object


def explain(settings: Settings, keys: Sequence[str], root: str | None = None) -> list[Explanation]:
    """The rule that takes each key, its captures, and the rows and facets it makes —
    or why it is skipped — as ``git check-ignore -v`` explains ignore rules. Keys are
    full keys (below the source's root) or keys relative to that root. Reads nothing."""
    from .catalogue import plan_keys, read_key
    from .catalogue.keys import attributes

    catalogue = settings.catalogue
    if root is None:
        root = source_root(settings.source)
    base = settings.cdn_base_url or (default_cdn_base_url(settings) if settings.source else "https://cdn.invalid")
    out = []
    for key in keys:
        rel = key[len(root):] if root and key.startswith(root) else key
        full = key if root and key.startswith(root) else root + key
        reading = read_key(catalogue, rel)
        x = Explanation(full, rel, reading.rule, dict(reading.captures), reading.reason)
        if reading.recognised and "\x00" in full:
            x.reason = "invalid_key"
        if x.reason is None:
            rule = reading.rule
            values = {**reading.captures, **attributes(catalogue, full, rel, cdn_base_url=base)}
            x.rows = plan_keys(catalogue, rule.entity, values)
            x.facet = rule.facet
            if rule.action == "row":
                e = catalogue.entity(rule.entity)
                x.values = {c.name: c.value.template.render(values) for c in e.columns if c.value.template is not None}
        out.append(x)
    return out


def source_root(source: str | None) -> str:
    """The prefix of a source's keys below which the catalogue's rules read (``media/``
    of ``s3://bucket/media``); "" for a folder or a bucket's root."""
    if not source or not source.startswith("s3://"):
        return ""
    prefix = source[5:].partition("/")[2]
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"
