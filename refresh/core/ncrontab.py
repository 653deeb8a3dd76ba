"""NCRONTAB schedules, read the way Azure Functions timer triggers read them.

An expression has six space-separated fields, evaluated in UTC::

    {second} {minute} {hour} {day} {month} {day-of-week}

Each field is ``*`` or a comma-separated list of items; an item is a value, a range ``a-b``, or
either of those (or ``*``) with a step: ``*/n``, ``a-b/n``, ``a/n`` (= ``a-max/n``). Months accept
names and day-of-week accepts day names, case-insensitively: a name is any prefix of at least three
letters of the English name (``JAN``, ``Sept``, ``MON``, ``monday``).

Semantics follow NCrontab (https://github.com/atifaziz/NCrontab), the library the Functions host
uses, as read from its ``CrontabSchedule.TryGetNextOccurrence`` and ``CrontabFieldImpl``:

* A restricted day-of-month **and** a restricted day-of-week must *both* match (AND). NCrontab
  picks the next day allowed by the day field and then requires ``_daysOfWeek.Contains(...)``;
  it does not use Vixie cron's OR rule. ``0 0 0 13 * FRI`` fires only on Friday the 13th.
* Day-of-week is 0-6 with 0 = Sunday. NCrontab declares the field as 0..6 and rejects 7, so we
  reject 7 too (rather than accepting it as Sunday like some crons).
* Days that a month lacks are skipped: ``0 0 0 31 * *`` fires only in 31-day months.

Deliberate differences, all stricter (an expression we accept means the same to NCrontab):

* A reversed range (``5-1``, ``FRI-MON``) is rejected; NCrontab silently swaps its ends.
* A step of 0, or larger than the field's span (``*/60`` in minutes, which could only ever mean
  ``0``), is rejected; NCrontab accepts both.
* A schedule that can never fire (``0 0 0 30 2 *``) is rejected by :func:`parse`.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

FIELD_NAMES = ("second", "minute", "hour", "day", "month", "day-of-week")
"""The six fields, in order."""

SEARCH_YEARS = 400
"""How far :meth:`Schedule.next_after` and :meth:`Schedule.previous_at_or_before` search. The
Gregorian calendar repeats every 400 years, so a schedule with no occurrence in that span has none
at all. (Five years would not do: ``0 0 0 29 2 MON`` fires in 2016 and next in 2044.)"""

_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MAX_DAY_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years
_NUMBER = re.compile(r"[0-9]+")
_NAME = re.compile(r"[A-Za-z]+")


class CronError(ValueError):
    """An NCRONTAB expression is invalid, or a schedule has no occurrence to find."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()

    def value(self, text: str, item: str) -> int:
        """One value of this field: a number in range or (month, day-of-week) a name."""
        where = f"{self.name} field item {item!r}"
        if text == "":
            raise CronError(f"{where}: a value is missing")
        if _NUMBER.fullmatch(text):
            number = int(text)
            if not self.low <= number <= self.high:
                hint = " (0 = Sunday; 7 is not accepted)" if self.name == "day-of-week" else ""
                raise CronError(f"{where}: {number} is out of range {self.low}-{self.high}{hint}")
            return number
        if "?" in text:
            raise CronError(f"{where}: '?' is not supported; use '*'")
        if self.names and _NAME.fullmatch(text) and len(text) >= 3:
            lowered = text.lower()
            for index, name in enumerate(self.names):
                if name.startswith(lowered):
                    return self.low + index
        if self.names:
            examples = f"{self.names[0][:3].upper()}-{self.names[-1][:3].upper()}"
            raise CronError(f"{where}: {text!r} is not a number {self.low}-{self.high} or a name {examples}")
        raise CronError(f"{where}: {text!r} is not a number {self.low}-{self.high}")

    def parse(self, text: str) -> frozenset[int]:
        """The set of values ``text`` allows."""
        values: set[int] = set()
        for item in text.split(","):
            if item == "":
                raise CronError(f"{self.name} field {text!r}: empty list item")
            values.update(self._item(item))
        return frozenset(values)

    def _item(self, item: str) -> range:
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise CronError(f"{self.name} field item {item!r}: step {step_text!r} is not a whole number")
            step = int(step_text)
            span = self.high - self.low
            if not 1 <= step <= span:
                raise CronError(f"{self.name} field item {item!r}: step {step} is outside 1-{span}")
        if base == "*":
            low, high = self.low, self.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = self.value(first, item), self.value(last, item)
            if low > high:
                raise CronError(f"{self.name} field item {item!r}: range is reversed ({low} > {high})")
        else:
            low = self.value(base, item)
            high = self.high if slash else low
        return range(low, high + 1, step)


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day-of-week", 0, 6, _DAY_NAMES),
)


def _utc(dt: datetime, what: str = "dt") -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC); got naive {dt.isoformat()}")
    return dt.astimezone(UTC)


def _first_at_least(values: tuple[int, ...], low: int) -> int | None:
    i = bisect_left(values, low)
    return values[i] if i < len(values) else None


def _last_at_most(values: tuple[int, ...], high: int) -> int | None:
    i = bisect_right(values, high)
    return values[i - 1] if i else None


def _cron_weekday(dt: datetime) -> int:
    return (dt.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0


def _month_start(year: int, month: int) -> datetime:
    if month > 12:
        year, month = year + 1, 1
    return datetime(year, month, 1, tzinfo=UTC)


def _month_end(year: int, month: int) -> datetime:
    return datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True)
class Schedule:
    """A parsed NCRONTAB schedule: the expression and the values each field allows."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    _sorted: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sets = (self.seconds, self.minutes, self.hours, self.days, self.months, self.days_of_week)
        for spec, values in zip(_FIELDS, sets, strict=True):
            if not values:
                raise CronError(f"{spec.name} field allows no value")
            bad = sorted(v for v in values if not spec.low <= v <= spec.high)
            if bad:
                raise CronError(f"{spec.name} values {bad} are outside {spec.low}-{spec.high}")
        object.__setattr__(self, "_sorted", tuple(tuple(sorted(v)) for v in sets))

    def __str__(self) -> str:
        return self.expression

    def matches(self, dt: datetime) -> bool:
        """Whether ``dt`` (timezone-aware) is exactly an occurrence: a whole second the schedule allows."""
        t = _utc(dt)
        return (t.microsecond == 0 and t.second in self.seconds and t.minute in self.minutes
                and t.hour in self.hours and self._day_allowed(t))

    def next_after(self, dt: datetime) -> datetime:
        """The first occurrence strictly after ``dt`` (timezone-aware), in UTC.

        Raises :class:`CronError` when there is none within :data:`SEARCH_YEARS` years (a schedule
        that never fires) or before the end of year 9999.
        """
        start = _utc(dt)
        try:
            horizon = start.replace(year=start.year + SEARCH_YEARS, month=12, day=31, hour=23, minute=59,
                                    second=59, microsecond=0)
        except ValueError:
            horizon = datetime.max.replace(microsecond=0, tzinfo=UTC)
        found = self._forward(start.replace(microsecond=0), horizon)
        if found is None:
            raise CronError(f"schedule {self.expression!r} has no occurrence after {start.isoformat()} "
                            f"(searched {SEARCH_YEARS} years)")
        return found

    def occurrences(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Occurrences ``t`` with ``start < t <= end``, earliest first, at most ``limit`` of them."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        t, stop = _utc(start, "start").replace(microsecond=0), _utc(end, "end")
        found: list[datetime] = []
        while len(found) < limit:
            nxt = self._forward(t, stop)
            if nxt is None:
                break
            found.append(nxt)
            t = nxt
        return found

    def previous_at_or_before(self, dt: datetime) -> datetime | None:
        """The last occurrence at or before ``dt`` (timezone-aware), in UTC; None if there is none
        within :data:`SEARCH_YEARS` years (or before year 1)."""
        t = _utc(dt).replace(microsecond=0)
        floor_year = t.year - SEARCH_YEARS
        seconds, minutes, hours, days, months = self._sorted[:5]
        try:
            while t.year >= floor_year:
                if t.month not in self.months:
                    month = _last_at_most(months, t.month)
                    t = _month_end(t.year, month) if month else _month_end(t.year - 1, months[-1])
                elif not self._day_allowed(t):
                    day = _last_at_most(days, t.day - 1)
                    t = (t.replace(day=day, hour=23, minute=59, second=59) if day
                         else t.replace(day=1, hour=0, minute=0, second=0) - timedelta(seconds=1))
                elif t.hour not in self.hours:
                    hour = _last_at_most(hours, t.hour)
                    t = (t.replace(hour=hour, minute=59, second=59) if hour is not None
                         else t.replace(hour=0, minute=0, second=0) - timedelta(seconds=1))
                elif t.minute not in self.minutes:
                    minute = _last_at_most(minutes, t.minute)
                    t = (t.replace(minute=minute, second=59) if minute is not None
                         else t.replace(minute=0, second=0) - timedelta(seconds=1))
                elif t.second not in self.seconds:
                    second = _last_at_most(seconds, t.second)
                    t = (t.replace(second=second) if second is not None
                         else t.replace(second=0) - timedelta(seconds=1))
                else:
                    return t
        except (OverflowError, ValueError):  # ran past year 1
            return None
        return None

    def _day_allowed(self, t: datetime) -> bool:
        return t.month in self.months and t.day in self.days and _cron_weekday(t) in self.days_of_week

    def _forward(self, after: datetime, horizon: datetime) -> datetime | None:
        """First occurrence in (after, horizon], or None. ``after`` has no microseconds."""
        seconds, minutes, hours, days, months = self._sorted[:5]
        try:
            t = after + timedelta(seconds=1)
            while t <= horizon:
                if t.month not in self.months:
                    month = _first_at_least(months, t.month)
                    t = _month_start(t.year, month) if month else _month_start(t.year + 1, months[0])
                elif not self._day_allowed(t):
                    day = _first_at_least(days, t.day + 1)
                    if day is None or day > calendar.monthrange(t.year, t.month)[1]:
                        t = _month_start(t.year, t.month + 1)
                    else:
                        t = t.replace(day=day, hour=0, minute=0, second=0)
                elif t.hour not in self.hours:
                    hour = _first_at_least(hours, t.hour)
                    t = (t.replace(hour=hour, minute=0, second=0) if hour is not None
                         else t.replace(hour=0, minute=0, second=0) + timedelta(days=1))
                elif t.minute not in self.minutes:
                    minute = _first_at_least(minutes, t.minute)
                    t = (t.replace(minute=minute, second=0) if minute is not None
                         else t.replace(minute=0, second=0) + timedelta(hours=1))
                elif t.second not in self.seconds:
                    second = _first_at_least(seconds, t.second)
                    t = (t.replace(second=second) if second is not None
                         else t.replace(second=0) + timedelta(minutes=1))
                else:
                    return t
        except (OverflowError, ValueError):  # ran past year 9999
            return None
        return None


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression; raises :class:`CronError` naming what is wrong."""
    if not isinstance(expression, str):
        raise CronError(f"NCRONTAB expression must be a string, got {type(expression).__name__}")
    parts = expression.split()
    if len(parts) != 6:
        hint = " (a 5-field cron expression lacks {second}: prepend '0 ')" if len(parts) == 5 else ""
        raise CronError("NCRONTAB needs 6 fields: {second} {minute} {hour} {day} {month} {day-of-week}; "
                        f"got {len(parts)}{hint}")
    sets = [spec.parse(part) for spec, part in zip(_FIELDS, parts, strict=True)]
    days, months = sets[3], sets[4]
    if not any(day <= _MAX_DAY_IN_MONTH[month - 1] for month in months for day in days):
        raise CronError(f"schedule never fires: day {_listing(days)} does not occur in "
                        f"month {_listing(months)}")
    return Schedule(expression, *sets)


def _listing(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values))
