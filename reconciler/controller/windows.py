"""Change windows (``serve.windows``): when the controller may apply.

A window opens at each time its cron expression names, in its time zone, and stays
open for its duration (elapsed time: a 64-hour freeze is 64 hours across a change of
daylight saving time). Argo CD's sync windows are the model:

- a ``deny`` window that is open closes the gate, whatever else is open;
- when ``allow`` windows are configured, the gate is open only inside one of them;
- with no window configured the gate is always open.

A closed gate stops applies, never plans: runs still plan and notify, approvals are
still recorded, and an approved run waits for the gate to open (the leader applies it
then). A person may apply inside a closed gate with an override and a reason, which is
recorded in the run and the audit (see :mod:`.approvals`).

Cron expressions are read by cronsim (Debian cron's semantics, its daylight-saving
quirks included), never by a parser of ours. Pure: the time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ..config import parse_duration
from ..errors import ConfigError

KINDS = ("allow", "deny")
# A window whose occurrences overlap or touch stays open across them; following them is
# bounded (a few milliseconds) so that "* * * * *" for two minutes, never closing, does
# not loop for long: its end is then known only as "at least".
_MAX_CHAINED = 1_000


@dataclass(frozen=True)
class Window:
    kind: str  # allow | deny
    schedule: str  # a five-field cron expression
    duration: float  # seconds
    timezone: str = "UTC"
    name: str = ""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def label(self) -> str:
        return self.name or f"{self.kind} {self.schedule}"

    def describe(self) -> str:
        """``At 18:00 on Friday (Europe/Berlin), for 64h``: what the schedule means."""
        said = CronSim(self.schedule, datetime.now(self.zone)).explain()
        return f"{said} ({self.timezone}), for {_hours(self.duration)}"

    def occurrence(self, now: datetime) -> tuple[datetime, datetime, bool] | None:
        """The open span ``[start, end)`` that holds ``now`` (occurrences that overlap
        or touch make one span) and whether its end is only a lower bound, or None
        when the window is closed at ``now``."""
        span = timedelta(seconds=self.duration)
        fires = CronSim(self.schedule, (now - span).astimezone(self.zone))
        start = next(fires).astimezone(timezone.utc)
        if start > now:
            return None
        end = start + span
        for _ in range(_MAX_CHAINED):
            later = next(fires).astimezone(timezone.utc)
            if later > end:
                return start, end, False
            end = max(end, later + span)
        return start, end, True

    def next_start(self, now: datetime) -> datetime:
        return next(CronSim(self.schedule, now.astimezone(self.zone))).astimezone(timezone.utc)


@dataclass(frozen=True)
class Open:
    """A window open now, and until when."""

    window: Window
    start: datetime
    end: datetime
    at_least: bool = False  # the window goes on past ``end``, as far as was looked


@dataclass(frozen=True)
class Gate:
    """Whether applies may run at ``now``, and why (in words for a page or a message)."""

    open: bool
    reason: str
    now: datetime
    until: datetime | None = None  # when a closed gate opens again, as far as is known
    active: tuple[Open, ...] = ()

    def to_dict(self) -> dict:
        return {"open": self.open, "reason": self.reason, "until": _iso(self.until),
                "active": [{"name": o.window.label, "kind": o.window.kind, "start": _iso(o.start),
                            "end": _iso(o.end)} for o in self.active]}


def gate(windows: tuple[Window, ...], now: datetime) -> Gate:
    """The gate at ``now`` (an aware datetime) under ``windows``."""
    now = now.astimezone(timezone.utc)
    active = tuple(Open(w, *span) for w in windows if (span := w.occurrence(now)) is not None)
    denying = [o for o in active if o.window.kind == "deny"]
    if denying:
        last = max(denying, key=lambda o: o.end)
        until = ("at least " if last.at_least else "") + _human(last.end, last.window)
        return Gate(False, f"inside the deny window {last.window.label!r} until {until}", now, last.end, active)
    allows = [w for w in windows if w.kind == "allow"]
    if allows and not any(o.window.kind == "allow" for o in active):
        first = min(allows, key=lambda w: w.next_start(now))
        opens = first.next_start(now)
        return Gate(False, f"outside every allow window; {first.label!r} opens {_human(opens, first)}",
                    now, opens, active)
    if active:
        return Gate(True, "inside the allow window " + ", ".join(repr(o.window.label) for o in active), now,
                    active=active)
    return Gate(True, "no change window is configured" if not windows else "no deny window is open", now)


def parse_windows(items: list[dict] | None, where: str = "serve.windows") -> tuple[Window, ...]:
    """The windows of the config file, each checked now: a malformed schedule, an
    unknown time zone or a duration that is not one is a ConfigError naming it."""
    out = []
    for i, item in enumerate(items or ()):
        name = item.get("name") or ""
        said = f"{where}[{i}]" + (f" ({name})" if name else "")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{said}: kind must be allow or deny, not {kind!r}")
        schedule = str(item.get("schedule") or "").strip()
        try:
            CronSim(schedule, datetime.now(timezone.utc))
        except CronSimError as e:
            raise ConfigError(f"{said}: schedule {schedule!r} is not a cron expression ({e}); write five fields "
                              "like '0 18 * * FRI' (minute hour day-of-month month day-of-week)") from None
        zone = item.get("timezone") or "UTC"
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{said}: time zone {zone!r} is unknown; write an IANA name like Europe/Berlin") from None
        if item.get("duration") is None:
            raise ConfigError(f"{said}: a duration is needed, like 2h or 64h")
        duration = parse_duration(item["duration"], f"{said}: duration")
        out.append(Window(kind, schedule, duration, zone, name))
    return tuple(out)


def _hours(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _human(at: datetime, window: Window) -> str:
    """A moment in the window's own time zone, as its schedule reads: ``Mon 2026-03-09 06:00 CET``."""
    return at.astimezone(window.zone).strftime("%a %Y-%m-%d %H:%M %Z")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
