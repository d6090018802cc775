"""When the poller says more than "finished" or "failed": stuck and started sessions, and
plans whose notifications are muted on SNS for planned tests and maintenance."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"(?P<start_day>[a-z]{3})\s+(?P<start>\d{1,2}:\d{2})\s*-\s*"
    r"(?P<end_day>[a-z]{3})\s+(?P<end>\d{1,2}:\d{2})"
)
MINUTES_A_WEEK = 7 * 24 * 60


@dataclass(frozen=True, slots=True)
class WeeklyWindow:
    """A stretch of the week, `start` to `end` in minutes from Monday 00:00 (local time);
    `end` before `start` wraps over the week's end."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> WeeklyWindow:
        """Read `Sat 22:00-Sun 06:00`; raise ValueError saying what is wrong."""
        match = _WINDOW.fullmatch(text.strip().lower())
        if match is None:
            raise ValueError(f"{text!r} is not like 'Sat 22:00-Sun 06:00'")
        start = _minute_of_week(match["start_day"], match["start"])
        end = _minute_of_week(match["end_day"], match["end"])
        if start == end:
            raise ValueError(f"{text!r} starts where it ends")
        return cls(start, end)

    def contains(self, moment: datetime, zone: tzinfo) -> bool:
        """Whether `moment` falls in the window, read in `zone`."""
        local = moment.astimezone(zone)
        minute = local.weekday() * 24 * 60 + local.hour * 60 + local.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def _minute_of_week(day: str, clock: str) -> int:
    if day not in DAYS:
        raise ValueError(f"{day!r} is not a day (Mon to Sun)")
    hours, minutes = (int(part) for part in clock.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{clock!r} is not a time of day")
    return DAYS.index(day) * 24 * 60 + hours * 60 + minutes


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """What is worth telling besides a session's end, and how."""

    time_zone: tzinfo = UTC
    stuck_after: timedelta = timedelta(hours=4)
    stuck_without_progress: timedelta = timedelta(hours=2)
    notify_started: bool = False
    muted_plans: frozenset[str] = field(default_factory=frozenset)
    mute_windows: tuple[WeeklyWindow, ...] = ()
    plan_refresh: timedelta = timedelta(minutes=15)

    def muted(self, plan_name: str, now: datetime) -> bool:
        """Whether SNS stays quiet for this plan now (EventBridge still gets the event)."""
        if plan_name.strip().lower() in self.muted_plans:
            return True
        return any(window.contains(now, self.time_zone) for window in self.mute_windows)

    def stuck_reason(
        self, creation_time: datetime, progress_since: datetime | None, now: datetime
    ) -> tuple[Literal["running-too-long", "no-progress"], timedelta] | None:
        """Why a running session counts as stuck now, with the threshold passed, or None."""
        if now - creation_time >= self.stuck_after:
            return "running-too-long", self.stuck_after
        if progress_since is not None and now - progress_since >= self.stuck_without_progress:
            return "no-progress", self.stuck_without_progress
        return None
