"""Safety guards shared by plan and apply. Pure: no I/O.

The worst outcome of a sync tool is a wrong listing that wipes the catalogue. These
checks refuse a plan before it is written, and again before it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SafetyError


@dataclass(frozen=True)
class Limits:
    max_delete: int | None = None
    max_delete_percent: float | None = None

    def to_dict(self) -> dict:
        return {"max_delete": self.max_delete, "max_delete_percent": self.max_delete_percent}


def check_empty_source(recognised: int, current_rows: int, scope: list[str] | None, allow: bool) -> None:
    """Refuse a listing with nothing recognised against a database with rows in scope."""
    if recognised == 0 and current_rows > 0 and not allow:
        where = "the source" if scope is None else f"the source under model(s) {', '.join(scope)}"
        raise SafetyError(
            f"{where} holds no recognised object, but the database holds {current_rows} row(s) in scope: "
            "refusing to plan their deletion. Check the source URL, prefix and --model; "
            "pass --allow-empty-source if the bucket really is empty"
        )


def check_delete_limits(deletes: int, current_rows: int, limits: Limits, when: str = "plan") -> None:
    """Refuse to delete more rows than the limits allow (counted over all kinds).

    ``when`` is "plan" at plan time; anything else (apply's "plan being applied")
    means the limits came from the config file alone, since ``apply`` takes no
    delete-limit flags: the message then names the config keys, not the flags.
    """
    if when == "plan":
        count_knob, percent_knob = "--max-delete or safety.max_delete", "--max-delete-percent or safety.max_delete_percent"
    else:
        count_knob, percent_knob = (
            f"safety.{k} in the config file given with --config or RECONCILER_CONFIG"
            for k in ("max_delete", "max_delete_percent")
        )
    if limits.max_delete is not None and deletes > limits.max_delete:
        raise SafetyError(
            f"the {when} deletes {deletes} row(s), more than max-delete {limits.max_delete} "
            f"({count_knob}); "
            "check the source, or raise the limit if the deletion is intended"
        )
    if limits.max_delete_percent is not None and current_rows > 0:
        percent = 100.0 * deletes / current_rows
        if percent > limits.max_delete_percent:
            raise SafetyError(
                f"the {when} deletes {deletes} of {current_rows} row(s) in scope ({percent:.1f}%), more than "
                f"max-delete-percent {limits.max_delete_percent:g} ({percent_knob}); "
                "check the source, or raise the limit "
                "if the deletion is intended"
            )
