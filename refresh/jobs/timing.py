"""When the worker looks again: the first check of a refresh, the checks after it, busy waits, back-off.

Pure functions of the facts (no storage, no clock of their own), so the policy is tested directly.

Checks (issue 9 item 3). The estimate is the median of the dataset's recent refresh durations *as
Power BI reports them* (``startTime``→``endTime``), never the duration the app observed (that one
includes the app's own polling delay, and timing from it makes the report lag creep up from one
refresh to the next). With an estimate the first check lands :data:`END_MARGIN` seconds after the
expected end; without one it comes after :data:`FIRST_CHECK_NO_HISTORY` seconds. After that, or once
the estimate is passed, checks come every 10 % (25 % without an estimate) of the time elapsed,
between :data:`MIN_CHECK` and :data:`MAX_CHECK` seconds: a refresh is reported within one check
interval (plus the few seconds of the calls) of its end, and a long refresh costs few calls.

Busy (issue 9 item 2). "Another refresh is already executing" means waiting for that refresh, not a
flat minute: if the history shows one in progress, the job posts again just after it is expected to
end (its start plus this dataset's recent durations); if none is in progress (it just ended, or the
history lags), the job posts again after a few seconds, :data:`QUICK_BUSY_TRIES` times, then backs off.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from refresh.powerbi.models import RefreshState, RefreshStatus

END_MARGIN = 2.0
FIRST_CHECK_NO_HISTORY = 5.0
MIN_CHECK = 3.0
MAX_CHECK = 120.0
MAX_FIRST_CHECK = 3600.0
QUICK_BUSY_DELAY = 3.0
QUICK_BUSY_TRIES = 3
MAX_BACKOFF = 600.0
ESTIMATE_SAMPLES = 5


def estimate(durations: Iterable[float]) -> float | None:
    """The expected duration (s): median of the recent Power BI durations given, newest first."""
    recent = [d for d in durations if d is not None and d >= 0][:ESTIMATE_SAMPLES]
    return float(statistics.median(recent)) if recent else None


def durations_from_history(history: Iterable[RefreshStatus]) -> list[float]:
    """Power BI's own durations of the completed refreshes in a history answer, newest first."""
    found = []
    for entry in history:
        if entry.state is RefreshState.COMPLETED and entry.start_time and entry.end_time:
            found.append((entry.end_time - entry.start_time).total_seconds())
    return found


def first_check_delay(expected: float | None) -> float:
    """Seconds from the POST to the first check."""
    if expected is None:
        return FIRST_CHECK_NO_HISTORY
    return min(max(expected + END_MARGIN, MIN_CHECK), MAX_FIRST_CHECK)


def next_check_delay(elapsed: float, expected: float | None) -> float:
    """Seconds to the next check of a refresh still running ``elapsed`` seconds after its POST."""
    if expected is not None and elapsed < expected:
        return max(expected - elapsed + END_MARGIN, MIN_CHECK)
    share = 0.10 if expected is not None else 0.25
    floor = MIN_CHECK if expected is not None else FIRST_CHECK_NO_HISTORY
    return min(max(elapsed * share, floor), MAX_CHECK)


def backoff(attempt: int, rng: random.Random, base: float = 5.0, cap: float = MAX_BACKOFF) -> float:
    """Exponential back-off with jitter (0.5x-1.5x): about 10, 20, 40 ... seconds, at most ``cap``."""
    return float(min(base * (2 ** attempt), cap) * (0.5 + rng.random()))


@dataclass(frozen=True)
class BusyWait:
    """What to do after a busy answer: wait ``delay`` seconds; ``detail`` says for what."""

    delay: float
    detail: str
    refresh_id: str | None = None  # the refresh in progress waited for, if one was seen
    quick: bool = False            # a quick re-post (nothing seen in progress)


def busy_wait(history: Sequence[RefreshStatus] | None, now: datetime, tries: int, rng: random.Random,
              ours: dict[str, str] | None = None) -> BusyWait:
    """The wait after a busy answer, from the dataset's refresh history (None: it could not be read).

    ``tries`` counts the busy answers of this job with nothing seen in progress, this one included;
    ``ours`` maps the refresh ids this app started to their job ids (to say who started it).
    """
    running = [e for e in history or () if e.state is RefreshState.RUNNING and e.start_time is not None]
    if running:
        entry = max(running, key=lambda e: e.start_time)  # type: ignore[arg-type,return-value]
        started = entry.start_time
        assert started is not None
        by = f"job {ours[entry.request_id]} of this app" if ours and entry.request_id in ours else \
            f"another client ({entry.refresh_type or 'unknown kind'})"
        expected = estimate(durations_from_history(history or ()))
        what = f"waiting for refresh {entry.request_id} started {started:%H:%M:%S} by {by}"
        if expected is not None:
            end = started + timedelta(seconds=expected)
            delay = (end - now).total_seconds() + END_MARGIN
            if delay >= MIN_CHECK:
                return BusyWait(delay, f"{what}, expected to end ~{end:%H:%M:%S} (recent refreshes took "
                                       f"{expected:.0f} s); posting again then", entry.request_id)
            elapsed = (now - started).total_seconds()
            delay = next_check_delay(elapsed, expected)
            return BusyWait(delay, f"{what}, running longer than its usual {expected:.0f} s; looking again in "
                                   f"{delay:.0f} s", entry.request_id)
        elapsed = max((now - started).total_seconds(), 0.0)
        delay = next_check_delay(elapsed, None)
        return BusyWait(delay, f"{what} (no recent durations to expect its end from); looking again in "
                               f"{delay:.0f} s", entry.request_id)
    seen = "its history could not be read" if history is None else "its history shows none in progress"
    if tries <= QUICK_BUSY_TRIES:
        delay = QUICK_BUSY_DELAY * (0.7 + 0.6 * rng.random())
        return BusyWait(delay, f"Power BI answered that another refresh is already executing, but {seen}; "
                               f"posting again in {delay:.0f} s (quick try {tries} of {QUICK_BUSY_TRIES})",
                        quick=True)
    delay = backoff(tries - QUICK_BUSY_TRIES, rng, base=5.0, cap=300.0)
    return BusyWait(delay, f"Power BI answered that another refresh is already executing ({tries} times), "
                           f"but {seen}; posting again in {delay:.0f} s")
