"""NCRONTAB parsing and due-time arithmetic (refresh/core/ncrontab.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from refresh.core.ncrontab import CronError, Schedule, parse


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# -- parsing -------------------------------------------------------------------------------------


def test_fields_star_number_list_range_step():
    s = parse("*/15 0,30 9-17 1-31/10 */3 *")
    assert s.seconds == {0, 15, 30, 45}
    assert s.minutes == {0, 30}
    assert s.hours == set(range(9, 18))
    assert s.days == {1, 11, 21, 31}
    assert s.months == {1, 4, 7, 10}
    assert s.days_of_week == set(range(7))
    assert s.expression == "*/15 0,30 9-17 1-31/10 */3 *"
    assert str(s) == s.expression


def test_value_with_step_runs_to_the_field_maximum():
    assert parse("5/20 * * * * *").seconds == {5, 25, 45}
    assert parse("0 0 3/8 * * *").hours == {3, 11, 19}


def test_range_with_step_and_mixed_list():
    assert parse("0 10-40/10,55 * * * *").minutes == {10, 20, 30, 40, 55}


def test_month_and_day_names_case_insensitive():
    s = parse("0 0 0 * jan,Mar-MAY,sept MON-fri")
    assert s.months == {1, 3, 4, 5, 9}
    assert s.days_of_week == {1, 2, 3, 4, 5}
    assert parse("0 0 0 * DECEMBER sunday").months == {12}
    assert parse("0 0 0 * * SUN,SAT").days_of_week == {0, 6}
    assert parse("0 0 0 * * TUE/2").days_of_week == {2, 4, 6}


def test_extra_whitespace_between_fields_is_allowed():
    assert parse("  0  */5 * * * *  ").minutes == set(range(0, 60, 5))


@pytest.mark.parametrize(("expression", "message"), [
    ("0 */5 * * *", "NCRONTAB needs 6 fields: {second} {minute} {hour} {day} {month} {day-of-week}; got 5 "
                    "(a 5-field cron expression lacks {second}: prepend '0 ')"),
    ("0 0 0 * * * *", "NCRONTAB needs 6 fields: {second} {minute} {hour} {day} {month} {day-of-week}; got 7"),
    ("", "NCRONTAB needs 6 fields: {second} {minute} {hour} {day} {month} {day-of-week}; got 0"),
    ("60 * * * * *", "second field item '60': 60 is out of range 0-59"),
    ("0 60 * * * *", "minute field item '60': 60 is out of range 0-59"),
    ("0 0 24 * * *", "hour field item '24': 24 is out of range 0-23"),
    ("0 0 0 0 * *", "day field item '0': 0 is out of range 1-31"),
    ("0 0 0 32 * *", "day field item '32': 32 is out of range 1-31"),
    ("0 0 0 * 13 *", "month field item '13': 13 is out of range 1-12"),
    ("0 0 0 * * 7", "day-of-week field item '7': 7 is out of range 0-6 (0 = Sunday; 7 is not accepted)"),
    ("0 0 0 * * 1-7", "day-of-week field item '1-7': 7 is out of range 0-6 (0 = Sunday; 7 is not accepted)"),
    ("0 */0 * * * *", "minute field item '*/0': step 0 is outside 1-59"),
    ("0 */60 * * * *", "minute field item '*/60': step 60 is outside 1-59"),
    ("0 */x * * * *", "minute field item '*/x': step 'x' is not a whole number"),
    ("0 */ * * * *", "minute field item '*/': step '' is not a whole number"),
    ("0 5-1 * * * *", "minute field item '5-1': range is reversed (5 > 1)"),
    ("0 0 0 * * FRI-MON", "day-of-week field item 'FRI-MON': range is reversed (5 > 1)"),
    ("0 1,,2 * * * *", "minute field '1,,2': empty list item"),
    ("0 1, * * * *", "minute field '1,': empty list item"),
    ("0 5- * * * *", "minute field item '5-': a value is missing"),
    ("0 -5 * * * *", "minute field item '-5': a value is missing"),
    ("0 0 0 ? * MON", "day field item '?': '?' is not supported; use '*'"),
    ("0 0 0 L * *", "day field item 'L': 'L' is not a number 1-31"),
    ("0 0 0 * FOO *", "month field item 'FOO': 'FOO' is not a number 1-12 or a name JAN-DEC"),
    ("0 0 0 * * MO", "day-of-week field item 'MO': 'MO' is not a number 0-6 or a name SUN-SAT"),
    ("0 0 MON * * *", "hour field item 'MON': 'MON' is not a number 0-23"),
    ("0 0 0 30 2 *", "schedule never fires: day 30 does not occur in month 2"),
    ("0 0 0 31 4,6,9,11 *", "schedule never fires: day 31 does not occur in month 4,6,9,11"),
])
def test_invalid_expressions_name_the_problem(expression, message):
    with pytest.raises(CronError) as info:
        parse(expression)
    assert str(info.value) == message


def test_non_string_expression_is_rejected():
    with pytest.raises(CronError, match="must be a string, got int"):
        parse(5)  # type: ignore[arg-type]


def test_cron_error_is_a_value_error():
    assert issubclass(CronError, ValueError)


def test_feb_29_and_day_31_are_possible():
    assert parse("0 0 0 29 2 *").days == {29}
    assert parse("0 0 0 30,31 2,3 *").months == {2, 3}  # March has both


# -- next_after ---------------------------------------------------------------------------------


def test_every_five_minutes():
    s = parse("0 */5 * * * *")
    assert s.next_after(at(2024, 1, 1, 10, 2, 30)) == at(2024, 1, 1, 10, 5)
    assert s.next_after(at(2024, 1, 1, 10, 5)) == at(2024, 1, 1, 10, 10)  # strictly after
    assert s.next_after(at(2024, 1, 1, 10, 4, 59, 999999)) == at(2024, 1, 1, 10, 5)


def test_boundaries_minute_hour_day_month_year():
    every_second = parse("* * * * * *")
    assert every_second.next_after(at(2024, 1, 1, 0, 0, 59)) == at(2024, 1, 1, 0, 1)
    assert every_second.next_after(at(2024, 1, 1, 0, 59, 59)) == at(2024, 1, 1, 1)
    assert every_second.next_after(at(2024, 1, 31, 23, 59, 59)) == at(2024, 2, 1)
    assert every_second.next_after(at(2024, 12, 31, 23, 59, 59)) == at(2025, 1, 1)
    hourly = parse("0 0 * * * *")
    assert hourly.next_after(at(2023, 12, 31, 23, 0)) == at(2024, 1, 1, 0, 0)
    nightly = parse("0 0 2 * * *")
    assert nightly.next_after(at(2024, 2, 28, 2, 0)) == at(2024, 2, 29, 2, 0)
    assert nightly.next_after(at(2023, 2, 28, 2, 0)) == at(2023, 3, 1, 2, 0)


def test_weekday_mornings():
    s = parse("0 30 6 * * MON-FRI")
    friday = at(2024, 3, 1, 6, 30)  # 2024-03-01 is a Friday
    assert friday.weekday() == 4
    assert s.next_after(friday - timedelta(seconds=1)) == friday
    assert s.next_after(friday) == at(2024, 3, 4, 6, 30)  # Monday
    assert s.next_after(at(2024, 3, 4, 6, 29, 59)) == at(2024, 3, 4, 6, 30)
    assert s.next_after(at(2024, 3, 4, 7, 0)) == at(2024, 3, 5, 6, 30)


def test_leap_day_schedule():
    s = parse("0 0 0 29 2 *")
    assert s.next_after(at(2024, 1, 1)) == at(2024, 2, 29)
    assert s.next_after(at(2024, 2, 29)) == at(2028, 2, 29)
    assert s.next_after(at(2097, 3, 1)) == at(2104, 2, 29)  # 2100 is not a leap year


def test_leap_day_on_a_given_weekday_is_decades_away():
    s = parse("0 0 0 29 2 MON")
    assert s.next_after(at(2016, 3, 1)) == at(2044, 2, 29)


def test_last_day_style_schedule_skips_short_months():
    s = parse("0 0 12 31 * *")
    assert s.occurrences(at(2024, 1, 1), at(2024, 12, 31, 23)) == [
        at(2024, m, 31, 12) for m in (1, 3, 5, 7, 8, 10, 12)
    ]
    s30 = parse("0 0 0 30 * *")
    assert s30.next_after(at(2024, 1, 30)) == at(2024, 3, 30)  # February has no 30th


def test_day_of_month_and_day_of_week_must_both_match():
    friday_13th = parse("0 0 0 13 * FRI")
    assert friday_13th.occurrences(at(2024, 1, 1), at(2024, 12, 31)) == [at(2024, 9, 13), at(2024, 12, 13)]
    assert not friday_13th.matches(at(2024, 1, 13))  # a Saturday
    assert not friday_13th.matches(at(2024, 1, 5))  # a Friday, not the 13th
    assert friday_13th.matches(at(2024, 9, 13))


def test_sunday_is_zero():
    s = parse("0 0 0 * * 0")
    assert s.next_after(at(2024, 3, 1)) == at(2024, 3, 3)
    assert at(2024, 3, 3).strftime("%A") == "Sunday"


def test_input_in_another_timezone_is_converted_and_result_is_utc():
    plus2 = timezone(timedelta(hours=2))
    s = parse("0 0 * * * *")
    result = s.next_after(datetime(2024, 1, 1, 10, 30, tzinfo=plus2))  # 08:30 UTC
    assert result == at(2024, 1, 1, 9)
    assert result.tzinfo is UTC


def test_naive_datetime_is_rejected():
    with pytest.raises(ValueError, match="must be timezone-aware"):
        parse("* * * * * *").next_after(datetime(2024, 1, 1))


def test_impossible_schedule_raises_instead_of_hanging():
    feb_30 = Schedule("0 0 0 30 2 *", frozenset({0}), frozenset({0}), frozenset({0}), frozenset({30}),
                      frozenset({2}), frozenset(range(7)))
    with pytest.raises(CronError, match="has no occurrence after 2024-01-01T00:00:00"):
        feb_30.next_after(at(2024, 1, 1))
    assert feb_30.occurrences(at(2024, 1, 1), at(2030, 1, 1)) == []
    assert feb_30.previous_at_or_before(at(2024, 1, 1)) is None


def test_no_occurrence_before_year_10000():
    with pytest.raises(CronError, match="has no occurrence"):
        parse("0 0 0 1 1 *").next_after(at(9999, 6, 1))


def test_schedule_rejects_out_of_range_sets():
    with pytest.raises(CronError, match=r"minute values \[60\] are outside 0-59"):
        Schedule("x", frozenset({0}), frozenset({60}), frozenset({0}), frozenset({1}), frozenset({1}),
                 frozenset({0}))
    with pytest.raises(CronError, match="hour field allows no value"):
        Schedule("x", frozenset({0}), frozenset({0}), frozenset(), frozenset({1}), frozenset({1}),
                 frozenset({0}))


def test_next_after_finds_a_sparse_schedules_next_occurrence_years_ahead():
    sparse = parse("0 0 0 29 2 MON")  # speed: benchmarks/bench_routing.py
    assert sparse.next_after(at(2016, 3, 1)) == at(2044, 2, 29)  # the next 29 February that is a Monday


# -- matches, occurrences, previous ---------------------------------------------------------------


def test_matches_requires_a_whole_second_the_schedule_allows():
    s = parse("0 30 6 * * MON-FRI")
    assert s.matches(at(2024, 3, 4, 6, 30))
    assert not s.matches(at(2024, 3, 4, 6, 30, 0, 1))
    assert not s.matches(at(2024, 3, 4, 6, 31))
    assert not s.matches(at(2024, 3, 3, 6, 30))  # Sunday


def test_occurrences_are_after_start_up_to_and_including_end():
    s = parse("0 */5 * * * *")
    got = s.occurrences(at(2024, 1, 1, 10, 0), at(2024, 1, 1, 10, 20))
    assert got == [at(2024, 1, 1, 10, m) for m in (5, 10, 15, 20)]


def test_occurrences_respect_the_limit():
    s = parse("* * * * * *")
    assert len(s.occurrences(at(2024, 1, 1), at(2024, 1, 2), limit=10)) == 10
    assert s.occurrences(at(2024, 1, 1), at(2024, 1, 2), limit=0) == []
    assert s.occurrences(at(2024, 1, 2), at(2024, 1, 1)) == []
    with pytest.raises(ValueError, match="limit must be >= 0"):
        s.occurrences(at(2024, 1, 1), at(2024, 1, 2), limit=-1)


def test_occurrences_across_new_year():
    s = parse("0 0 0 1 * *")
    expected = [at(2023, 12, 1), at(2024, 1, 1), at(2024, 2, 1)]
    assert s.occurrences(at(2023, 11, 15), at(2024, 2, 1)) == expected


def test_previous_at_or_before():
    s = parse("0 30 6 * * MON-FRI")
    monday = at(2024, 3, 4, 6, 30)
    assert s.previous_at_or_before(monday) == monday  # at
    assert s.previous_at_or_before(monday + timedelta(microseconds=5)) == monday
    assert s.previous_at_or_before(monday - timedelta(seconds=1)) == at(2024, 3, 1, 6, 30)  # Friday
    assert s.previous_at_or_before(at(2024, 3, 5, 23, 59, 59)) == at(2024, 3, 5, 6, 30)


def test_previous_across_year_and_leap_day():
    assert parse("0 */5 * * * *").previous_at_or_before(at(2024, 1, 1, 0, 4, 59)) == at(2024, 1, 1)
    assert parse("59 59 23 31 12 *").previous_at_or_before(at(2024, 6, 1)) == at(2023, 12, 31, 23, 59, 59)
    leap = parse("0 0 0 29 2 *")
    assert leap.previous_at_or_before(at(2104, 1, 1)) == at(2096, 2, 29)
    assert leap.previous_at_or_before(at(2024, 2, 29)) == at(2024, 2, 29)


def test_previous_before_year_one_is_none():
    assert parse("0 0 0 2 1 *").previous_at_or_before(at(1, 1, 1, 12)) is None


def brute_force(s: Schedule, after: datetime, count: int, days: int = 20000) -> list[datetime]:
    """The first ``count`` occurrences after ``after``, by checking every day and every time of day."""
    found: list[datetime] = []
    day = after.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(days):
        weekday = (day.weekday() + 1) % 7
        if day.month in s.months and day.day in s.days and weekday in s.days_of_week:
            for h in sorted(s.hours):
                for m in sorted(s.minutes):
                    for sec in sorted(s.seconds):
                        t = day.replace(hour=h, minute=m, second=sec)
                        if t > after:
                            found.append(t)
                            if len(found) == count:
                                return found
        day += timedelta(days=1)
    return found


@pytest.mark.parametrize("expression", [
    "0 */5 * * * *", "0 30 6 * * MON-FRI", "0 0 0 29 2 *", "*/7 13 */5 31 * *", "0 0 0 13 * FRI",
    "15,45 0-10/3 22-23 * JAN,JUL SAT,SUN", "0 0 0 1-7 * MON",
])
def test_next_and_previous_agree_with_brute_force(expression):
    s = parse(expression)
    start = at(2023, 12, 30, 22, 0, 15)
    expected = brute_force(s, start, 12)
    assert len(expected) == 12
    assert s.occurrences(start, at(2100, 1, 1), limit=12) == expected
    assert s.next_after(start) == expected[0]
    for previous, occurrence in pairwise(expected):
        assert s.next_after(previous) == occurrence
        assert s.previous_at_or_before(occurrence) == occurrence
        assert s.previous_at_or_before(occurrence - timedelta(microseconds=1)) == previous
        assert s.matches(occurrence)
