"""Cron arithmetic for schedules: five fields (minute hour day month weekday), six with
seconds last (`*/10 * * * * 30`), or @hourly/@daily/..., in the schedule's IANA timezone."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import croniter

MAX_CATCH_UP = 1000  # due times run one by one at most; beyond, they are folded into one run


def check_cron(cron) -> str | None:
    """Why `cron` is not usable, or None."""
    if not isinstance(cron, str) or not cron.strip():
        return "must be a cron expression (5 fields, or 6 with seconds last)"
    text = cron.strip()
    if not text.startswith("@") and len(text.split()) not in (5, 6):
        return f"must have 5 fields (minute hour day month weekday) or 6 (seconds last), not {len(text.split())}"
    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression"
    return None


def check_timezone(name) -> str | None:
    if not isinstance(name, str) or not name:
        return "must be an IANA timezone name such as 'UTC' or 'Europe/Berlin'"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone {name[:60]!r}"
    return None


def next_after(cron: str, timezone: str, after: float) -> float:
    """The first due time strictly after the timestamp `after`."""
    start = dt.datetime.fromtimestamp(after, zoneinfo.ZoneInfo(timezone))
    return croniter(cron.strip(), start).get_next(float)


def plan_runs(schedule: dict, now: float, caught_up: bool) -> tuple[list[tuple[float, int]], float]:
    """Which runs a due schedule makes at `now`: [(due time, missed runs folded in), ...] and
    the schedule's next `next_run` (> now)."""
    cron, timezone = schedule["cron"], schedule["timezone"]
    due = [schedule["next_run"]]
    following = next_after(cron, timezone, due[-1])
    while following <= now and len(due) < MAX_CATCH_UP:
        due.append(following)
        following = next_after(cron, timezone, following)
    folded = 0
    if following <= now:  # more than MAX_CATCH_UP due times: stop counting, jump to now
        folded = 1
        following = next_after(cron, timezone, now)
    if caught_up and not folded:
        return [(t, 0) for t in due], following
    return [(due[-1], len(due) - 1 + folded)], following
