"""When a rule may fire: days of the week and hours of the day in a named time zone.

    schedule = { days = ["mon-fri"], hours = ["08:00-12:00", "13:30-17:30"], outside = true }

`outside = true` inverts it (fire only outside those hours: after-hours call-backs). Hours are
half-open (`08:00-12:00` includes 08:00, excludes 12:00); a range may cross midnight
(`22:00-06:00`). The time zone defaults to Asia/Ho_Chi_Minh.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["Schedule", "DEFAULT_TIMEZONE"]

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")


def _days(spec: list[str]) -> frozenset[int]:
    out: set[int] = set()
    for item in spec:
        item = item.strip().lower()
        if "-" in item:
            first, last = item.split("-", 1)
            if first not in DAYS or last not in DAYS:
                raise ValueError(f"{item!r}: days are {', '.join(DAYS)}")
            i, j = DAYS.index(first), DAYS.index(last)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif item in DAYS:
            out.add(DAYS.index(item))
        else:
            raise ValueError(f"{item!r}: days are {', '.join(DAYS)} (or ranges like mon-fri)")
    return frozenset(out)


def _hours(spec: str) -> tuple[time, time]:
    match = _HOURS.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"{spec!r}: hours look like 08:00-17:30")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
        raise ValueError(f"{spec!r}: not a time of day")
    end = time(23, 59, 59, 999999) if (h2, m2) == (24, 0) else time(h2, m2)
    return time(h1, m1), end


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[str] = list(DAYS)
    hours: list[str] = ["00:00-24:00"]
    timezone: str = DEFAULT_TIMEZONE
    #: Fire only outside the days and hours above.
    outside: bool = False

    @field_validator("days")
    @classmethod
    def _check_days(cls, value: list[str]) -> list[str]:
        _days(value)
        return value

    @field_validator("hours")
    @classmethod
    def _check_hours(cls, value: list[str]) -> list[str]:
        for spec in value:
            _hours(spec)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Ho_Chi_Minh)") from None
        return value

    def allows(self, when: datetime) -> bool:
        """Whether a rule with this schedule may fire at `when` (an aware datetime)."""
        local = when.astimezone(ZoneInfo(self.timezone))
        inside = local.weekday() in _days(self.days) and any(
            _within(local.time(), *_hours(spec)) for spec in self.hours
        )
        return inside != self.outside


def _within(now: time, start: time, end: time) -> bool:
    if start <= end:
        return start <= now < end or (end == time(23, 59, 59, 999999) and now >= start)
    return now >= start or now < end  # crosses midnight
