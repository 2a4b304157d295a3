"""Change windows (reconciler/controller/windows.py): the gate at a given time, pure,
with the clock as an argument (docs/design.md, "Approvals, change windows and
notifications")."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from reconciler.controller.windows import Window, gate, parse_windows
from reconciler.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
FREEZE = Window("deny", "0 18 * * FRI", 64 * 3600, "Europe/Berlin", "weekend freeze")
OFFICE = Window("allow", "0 9 * * MON-FRI", 8 * 3600, "Europe/Berlin", "office hours")


def berlin(*args) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def test_a_deny_window_closes_the_gate_from_its_start_for_its_duration():
    assert gate((FREEZE,), berlin(2026, 3, 6, 17, 59)).open  # a Friday
    closed = gate((FREEZE,), berlin(2026, 3, 6, 18, 0))
    assert not closed.open
    assert closed.reason == "inside the deny window 'weekend freeze' until Mon 2026-03-09 10:00 CET"
    assert closed.until == berlin(2026, 3, 9, 10, 0)
    assert not gate((FREEZE,), berlin(2026, 3, 9, 9, 59, 59)).open
    assert gate((FREEZE,), berlin(2026, 3, 9, 10, 0)).open


def test_a_duration_is_elapsed_time_across_a_change_of_daylight_saving_time():
    # Clocks go forward on Sunday 2026-03-29: 64 hours from Friday 18:00 CET end at 11:00 CEST.
    closed = gate((FREEZE,), berlin(2026, 3, 30, 10, 30))
    assert not closed.open and closed.reason.endswith("until Mon 2026-03-30 11:00 CEST")
    assert gate((FREEZE,), berlin(2026, 3, 30, 11, 0)).open


def test_allow_windows_open_the_gate_only_inside_them_and_deny_wins():
    saturday = berlin(2026, 3, 7, 12, 0)
    closed = gate((OFFICE,), saturday)
    assert not closed.open
    assert closed.reason == "outside every allow window; 'office hours' opens Mon 2026-03-09 09:00 CET"
    assert closed.until == berlin(2026, 3, 9, 9, 0)
    tuesday = berlin(2026, 3, 10, 11, 0)
    assert gate((OFFICE,), tuesday).open and gate((OFFICE,), tuesday).reason == "inside the allow window 'office hours'"
    assert not gate((OFFICE,), berlin(2026, 3, 10, 17, 0)).open  # 09:00 + 8 h
    friday_evening = Window("allow", "0 9 * * FRI", 12 * 3600, "Europe/Berlin", "long friday")
    assert not gate((friday_evening, FREEZE), berlin(2026, 3, 6, 19, 0)).open


def test_no_window_and_a_standing_freeze():
    now = datetime(2026, 3, 6, 12, 0, tzinfo=timezone.utc)
    assert gate((), now).open and gate((), now).reason == "no change window is configured"
    always = Window("deny", "* * * * *", 120, name="release freeze")
    closed = gate((always,), now)
    assert not closed.open and "until at least" in closed.reason


SCHEDULES = ["0 18 * * FRI", "*/20 * * * *", "30 2 * * *", "0 9 * * MON-FRI", "15 */6 * * *"]


@given(schedule=st.sampled_from(SCHEDULES), minutes=st.integers(1, 3 * 24 * 60),
       offset=st.integers(0, 14 * 24 * 60 * 60), zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
def test_a_deny_window_is_closed_exactly_when_an_occurrence_holds_the_time(schedule, minutes, offset, zone):
    """The gate's answer against the occurrences counted from a week before: closed at
    ``now`` if and only if some start ``s`` has ``s <= now < s + duration``."""
    from cronsim import CronSim

    window = Window("deny", schedule, minutes * 60, zone)
    anchor = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = anchor + timedelta(days=7, seconds=offset)
    inside = False
    for start in CronSim(schedule, anchor.astimezone(ZoneInfo(zone))):
        start = start.astimezone(timezone.utc)
        if start > now:
            break
        inside = inside or now < start + timedelta(minutes=minutes)
    assert gate((window,), now).open is not inside


@pytest.mark.parametrize("item, message", [
    ({"kind": "deny", "schedule": "0 18 * * FRYDAY", "duration": "1h"},
     "serve.windows[0]: schedule '0 18 * * FRYDAY' is not a cron expression (Bad day-of-week); write five fields "
     "like '0 18 * * FRI' (minute hour day-of-month month day-of-week)"),
    ({"kind": "deny", "schedule": "0 18 * *", "duration": "1h", "name": "freeze"},
     "serve.windows[0] (freeze): schedule '0 18 * *' is not a cron expression (Wrong number of fields); write five "
     "fields like '0 18 * * FRI' (minute hour day-of-month month day-of-week)"),
    ({"kind": "deny", "schedule": "0 18 * * FRI", "duration": "1h", "timezone": "Mars/Olympus"},
     "serve.windows[0]: time zone 'Mars/Olympus' is unknown; write an IANA name like Europe/Berlin"),
    ({"kind": "deny", "schedule": "0 18 * * FRI", "duration": "a while"},
     "serve.windows[0]: duration 'a while' is not a duration such as 48h, 2d or 90m"),
    ({"kind": "maybe", "schedule": "0 18 * * FRI", "duration": "1h"},
     "serve.windows[0]: kind must be allow or deny, not 'maybe'"),
])
def test_malformed_windows_are_refused_with_what_to_write(item, message):
    with pytest.raises(ConfigError) as e:
        parse_windows([item])
    assert str(e.value) == message


def test_windows_read_from_the_config_shape():
    [w] = parse_windows([{"kind": "deny", "schedule": "0 18 * * FRI", "duration": "64h",
                          "timezone": "Europe/Berlin", "name": "weekend freeze"}])
    assert w == FREEZE
    assert w.describe() == "At 18:00 on Friday (Europe/Berlin), for 64h"
