"""Safety guards shared by plan and apply. Pure: no I/O.

The worst outcomes of a sync tool are a wrong listing that wipes the catalogue and a
wrong setting that rewrites every URL in it. These checks refuse a plan before it is
written, and again before it is applied.

Two of them are on by default, because the failures they catch look like ordinary
plans: a listing that silently missed objects (a bug in a listing reader, a truncated
page) plans the deletion of whatever it missed, and no empty-source guard fires while
anything was listed; a wrong ``cdn_base_url`` plans an update of every media row. A
plan that deletes more than :data:`DEFAULT_PERCENT` of the rows in scope, or rewrites
the URLs of more than that share of the media rows in scope, is refused unless a limit
is set (``100`` turns a guard off). A default guard leaves alone a scope of fewer than
:data:`GUARDED_FROM` rows: such a plan is read whole by its reviewer, and deleting 2 of
a trial catalogue's 3 rows is not a sign of a broken listing. A limit that is set
applies at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import SafetyError
from .diff import Change, ChangeList, Lines

DEFAULT_PERCENT = 50.0
GUARDED_FROM = 20  # rows in scope (rows holding URLs, for URL rewrites) from which a default guard applies


@dataclass(frozen=True)
class Limits:
    """Limits set by flags or the config; a percentage left None is the default guard."""

    max_delete: int | None = None
    max_delete_percent: float | None = None
    max_url_rewrite_percent: float | None = None

    def to_dict(self) -> dict:
        """The delete limits, as a plan records those it was made with (``limits``)."""
        return {"max_delete": self.max_delete, "max_delete_percent": self.max_delete_percent}


@dataclass(frozen=True)
class _Share:
    """A percentage limit in force: set, or the default for a scope large enough."""

    percent: float
    default: bool


def _share_limit(limit: float | None, rows: int, defaults: bool) -> _Share | None:
    if limit is not None:
        return _Share(limit, default=False)
    if defaults and rows >= GUARDED_FROM:
        return _Share(DEFAULT_PERCENT, default=True)
    return None


def _over_share(limit: float | None, count: int, rows: int, defaults: bool) -> tuple[_Share, float] | None:
    """The limit in force and the share ``count`` is of ``rows``, in percent, when it
    is more than the limit allows; None when it is within it (or no limit applies)."""
    share = _share_limit(limit, rows, defaults)
    if share is None or rows == 0:
        return None
    percent = 100.0 * count / rows
    return None if percent <= share.percent else (share, percent)


def _knob(when: str, flag: str, key: str) -> str:
    """Where a limit is changed: the flag or the config at plan time; only the config
    file at apply time (``apply`` takes no limit flags)."""
    if when == "plan":
        return f"{flag} or safety.{key}"
    return f"safety.{key} in the config file given with --config or RECONCILER_CONFIG"


def check_empty_source(recognised: int, current_rows: int, scope: list[str] | None, allow: bool,
                       top: str = "model") -> None:
    """Refuse a listing with nothing recognised against a database with rows in scope
    (``top``: the catalogue's top entity, which a scope names)."""
    if recognised == 0 and current_rows > 0 and not allow:
        where = "the source" if scope is None else f"the source under {top}(s) {', '.join(scope)}"
        raise SafetyError(
            f"{where} holds no recognised object, but the database holds {current_rows} row(s) in scope: "
            f"refusing to plan their deletion. Check the source URL{' and prefix' if scope is None else ', prefix and scope'}; "
            "pass --allow-empty-source if the bucket really is empty"
        )


def check_delete_limits(
    deletes: int, current_rows: int, limits: Limits, when: str = "plan", *, defaults: bool = True
) -> None:
    """Refuse to delete more rows than the limits allow (counted over all kinds).

    ``when`` is "plan" at plan time; anything else (apply's "plan being applied")
    means the limits came from the config file alone, since ``apply`` takes no
    delete-limit flags: the message then names the config keys, not the flags.
    ``defaults=False`` (a rollback plan, made from the audit log rather than a
    listing) leaves out the default guard; limits that are set still apply.
    """
    if limits.max_delete is not None and deletes > limits.max_delete:
        raise SafetyError(
            f"the {when} deletes {deletes} row(s), more than max-delete {limits.max_delete} "
            f"({_knob(when, '--max-delete', 'max_delete')}); "
            "check the source, or raise the limit if the deletion is intended"
        )
    over = _over_share(limits.max_delete_percent, deletes, current_rows, defaults)
    if over is None:
        return
    share, percent = over
    knob = _knob(when, "--max-delete-percent", "max_delete_percent")
    said = f"the {when} deletes {deletes} of {current_rows} row(s) in scope ({percent:.1f}%), more than "
    if share.default:
        raise SafetyError(
            f"{said}the default max-delete-percent {share.percent:g}: a listing that missed objects plans "
            f"exactly this. Check the source; if the deletion is intended, set the limit to 100 ({knob})"
        )
    raise SafetyError(
        f"{said}max-delete-percent {share.percent:g} ({knob}); "
        "check the source, or raise the limit if the deletion is intended"
    )


def check_url_rewrites(
    rewrites: int, rows: int, limits: Limits, when: str = "plan", *, base: str | None = None,
    defaults: bool = True, what: str = "media",
) -> None:
    """Refuse a plan that gives more than the allowed share of the rows in scope that
    hold URLs (``rows``; ``what`` names them: media, for creators) a new URL under the same key
    (:func:`url_rewrites`): what a changed ``cdn_base_url`` does. ``base`` (at plan
    time) is the base the new URLs start with."""
    over = _over_share(limits.max_url_rewrite_percent, rewrites, rows, defaults)
    if over is None:
        return
    share, percent = over
    limit = f"the default max-url-rewrite-percent {share.percent:g}" if share.default else (
        f"max-url-rewrite-percent {share.percent:g}"
    )
    new = f" to {base.rstrip('/')}/<key>" if base else ""
    raise SafetyError(
        f"the {when} rewrites the URL of {rewrites} of {rows} {what} row(s) in scope{new} ({percent:.1f}%), "
        f"more than {limit}. Check cdn_base_url (--cdn-base-url, RECONCILER_CDN_BASE_URL); if the new URLs "
        f"are intended, set the limit to 100 ({_knob(when, '--max-url-rewrite-percent', 'max_url_rewrite_percent')})"
    )


def url_columns(catalogue) -> dict[str, list[str]]:
    """The columns that hold an object's URL (template ``{url}``), by owned entity: what
    a changed ``cdn_base_url`` rewrites."""
    out = {}
    for e in catalogue.owned:
        cols = [c.name for c in e.columns if c.value.template is not None and c.value.template.single == "url"]
        if cols:
            out[e.name] = cols
    return out


def url_rewrites(changes: Iterable[Change], catalogue) -> tuple[int, list[str]]:
    """How many rows the changes give a new URL under the same key (updates; a move's
    new URL comes with its new key), and the kinds whose rows hold URLs. Creates, and
    updates kept as lines (an entity's JSON columns), are not looked at: no object is
    made for each of them."""
    columns = url_columns(catalogue)
    segments = changes.segments if isinstance(changes, ChangeList) else [changes]
    count = 0
    for segment in segments:
        if isinstance(segment, Lines) and (segment.kind not in columns or segment.action != "update"):
            continue
        count += sum(1 for c in segment if c.action == "update" and c.kind in columns
                     and any(col in c.after for col in columns[c.kind]))
    return count, list(columns)
