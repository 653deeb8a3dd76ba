"""Refresh schedules: the ``run_schedules`` timer (every minute) enqueues each due scheduled refresh once.

A dataset with a ``schedule`` (NCRONTAB, six fields, UTC; validated when the config loads) gets a
*mark* entity in ``STATE_TABLE`` (PartitionKey ``schedule``, RowKey the dataset key) holding the last
due time handled (``last_due``) and the expression it belongs to. Each run, for each scheduled dataset:

* no mark yet, or the expression changed: the mark starts at *now*; nothing in the past is fired;
* otherwise the due times in ``(last_due, now]`` are split by ``SCHEDULE_MISSED_GRACE_SECONDS``:
  those less late than the grace are *on time* and fire **one** job (due times that fall together,
  e.g. after a late timer, coalesce into it, as commits do); older ones were *missed* and are never
  fired late: each of the latest :data:`MAX_RECORDED_MISSES` gets an outcome row with status
  ``Skipped`` saying it was missed and how many were missed in total;
* the mark is moved to the newest due time with an ETag-guarded write *before* anything is recorded,
  so with any number of instances firing in the same minute exactly one wins and records the job;
  the others see the conflict and do nothing. If recording then fails, the mark is moved back (still
  ETag-guarded) so the next run tries again.

A scheduled job goes through the same pending-job coalescing, queue, limits and outcome rows as a
commit-driven one (trigger ``schedule``, the whole model, due at once). With
``schedule_skip_if_unchanged`` the job is not created when nothing is new since the last completed
refresh: no pending job, and no source table version in ``covered`` newer than in ``refreshed``
(refresh/jobs/pending.py). The skip is recorded as an outcome row (status ``Skipped``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from refresh.core import ncrontab
from refresh.core import storage as tables
from refresh.core.clock import iso, parse_iso
from refresh.jobs import summaries
from refresh.jobs.outcomes import to_public
from refresh.jobs.pending import Change, readable_pending

log = logging.getLogger(__name__)

PK_SCHEDULE = "schedule"
MAX_RECORDED_MISSES = 10
"""At most this many missed due times get an outcome row per run (the latest ones)."""
MAX_COUNTED = 10_000
"""Due times are counted up to this many (a per-second schedule after a long outage)."""
UNCHANGED_DETAIL = "nothing changed since the last completed refresh"


@dataclass(frozen=True)
class ScheduleRun:
    """What one run did for one scheduled dataset."""

    dataset: str
    action: str            # started | idle | fired | joined | skipped-unchanged | missed | lost-race
    due_at: str | None = None
    job_id: str | None = None
    missed: int = 0
    coalesced: int = 0     # on-time due times folded into the one job (1 = just this one)


def run_schedules(app: Any, now: datetime | None = None) -> list[ScheduleRun]:
    """Handle every scheduled dataset of ``app.config`` at ``now`` (default: the app's clock).

    One dataset failing does not stop the others; the first error is raised at the end (the host
    logs the invocation as failed).
    """
    results: list[ScheduleRun] = []
    first_error: Exception | None = None
    for key, ds in app.config.datasets.items():
        if not ds.schedule:
            continue
        try:
            results.append(run_one(app, ds, now or app.clock.now()))
        except Exception as exc:
            log.exception("schedule of dataset %s could not be handled", key)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def run_one(app: Any, ds: Any, now: datetime) -> ScheduleRun:
    """Handle the schedule of one dataset (``ds``: a :class:`refresh.core.routing.DatasetConfig`)."""
    schedule = ncrontab.parse(ds.schedule)
    table = app.state_table
    rk = tables.row_key(ds.key)
    mark = tables.get_entity(table, PK_SCHEDULE, rk)
    if mark is None or mark.get("expression") != ds.schedule:
        return _start(table, ds, mark, now)

    last = parse_iso(mark["last_due"])
    latest = schedule.previous_at_or_before(now)
    if latest is None or latest <= last:
        return ScheduleRun(ds.key, "idle")

    grace = app.settings.schedule_missed_grace
    cutoff = now - timedelta(seconds=grace)           # a due time before this was missed
    miss_end = cutoff - timedelta(microseconds=1)
    missed_times = schedule.occurrences(last, miss_end, limit=MAX_COUNTED + 1) if last < miss_end else []
    on_time = latest if latest >= cutoff else None
    coalesced = 0
    if on_time is not None:
        coalesced = len(schedule.occurrences(max(last, miss_end), now, limit=MAX_COUNTED))

    claimed = dict(mark)
    claimed.update({"last_due": iso(latest), "handled_at": iso(now), "last_action": "claimed",
                    "last_job_id": ""})
    try:
        etag = tables.write(table, claimed, mark.metadata["etag"])
    except tables.Conflict:
        log.info("schedule of dataset %s: another instance handled this run", ds.key)
        return ScheduleRun(ds.key, "lost-race")

    try:
        if missed_times:
            _record_missed(app, ds, missed_times, now, grace)
        if on_time is None:
            result = ScheduleRun(ds.key, "missed", missed=_count(missed_times))
        else:
            result = _fire(app, ds, on_time, coalesced, now)
            result = ScheduleRun(result.dataset, result.action, result.due_at, result.job_id,
                                 missed=_count(missed_times), coalesced=coalesced)
    except Exception:
        _rollback(table, mark, claimed, etag, ds.key)
        raise

    done = dict(claimed)
    done.update({"last_action": result.action, "last_job_id": result.job_id or ""})
    try:
        tables.write(table, done, etag)
    except tables.Conflict:
        pass  # a later run already moved on; the job is recorded either way
    return result


def _start(table: Any, ds: Any, mark: Any | None, now: datetime) -> ScheduleRun:
    """First run for this dataset (or a changed expression): due times count from now on."""
    data = {"PartitionKey": PK_SCHEDULE, "RowKey": tables.row_key(ds.key), "expression": ds.schedule,
            "last_due": iso(now.replace(microsecond=0)), "handled_at": iso(now), "last_action": "started",
            "last_job_id": ""}
    try:
        tables.write(table, data, mark.metadata["etag"] if mark is not None else None)
    except tables.Conflict:
        return ScheduleRun(ds.key, "lost-race")
    log.info("schedule of dataset %s (%s) starts at %s", ds.key, ds.schedule, iso(now))
    return ScheduleRun(ds.key, "started")


def _rollback(table: Any, mark: Any, claimed: dict[str, Any], etag: str | None, key: str) -> None:
    back = dict(claimed)
    back.update({"last_due": mark["last_due"], "last_action": "rolled-back"})
    try:
        tables.write(table, back, etag)
    except Exception:
        log.exception("schedule of dataset %s: could not move the mark back after a failure", key)


def _count(times: list[datetime]) -> int:
    return min(len(times), MAX_COUNTED)


def _record_missed(app: Any, ds: Any, times: list[datetime], now: datetime, grace: int) -> None:
    total = len(times)
    total_text = f"more than {MAX_COUNTED}" if total > MAX_COUNTED else str(total)
    recorded = times[-MAX_RECORDED_MISSES:]
    note = f"; the latest {len(recorded)} are recorded" if total > len(recorded) else ""
    for due in recorded:
        detail = (f"missed: due at {iso(due)}, but the schedule timer did not run until {iso(now)} (more than "
                  f"SCHEDULE_MISSED_GRACE_SECONDS={grace} s late), so it was skipped rather than fired late; "
                  f"{total_text} due time(s) missed in total{note}")
        row = app.outcomes.create(ds.key, uuid.uuid4().hex, due, {
            "status": "Skipped", "trigger": "schedule", "triggers": ["schedule"], "requested_by": ["schedule"],
            "reasons": [f"schedule {ds.schedule}"], "scheduled_for": iso(due), "due_at": iso(due),
            "ended_at": iso(now), "detail": detail, "error_code": "Missed", "model_tables": [],
        })
        summaries.note_end(app.states, ds.key, to_public(row))
    log.warning("schedule of dataset %s: %s due time(s) missed (latest %s); not fired late",
                ds.key, total_text, iso(times[-1]))


def _fire(app: Any, ds: Any, due: datetime, coalesced: int, now: datetime) -> ScheduleRun:
    if ds.schedule_skip_if_unchanged and unchanged(app.states.get(ds.key)):
        job_id = uuid.uuid4().hex
        row = app.outcomes.create(ds.key, job_id, now, {
            "status": "Skipped", "trigger": "schedule", "triggers": ["schedule"], "requested_by": ["schedule"],
            "reasons": [f"schedule {ds.schedule}"], "scheduled_for": iso(due), "due_at": iso(due),
            "ended_at": iso(now), "detail": UNCHANGED_DETAIL, "model_tables": [],
        })
        summaries.note_end(app.states, ds.key, to_public(row))
        log.info("schedule of dataset %s due %s: skipped, %s", ds.key, iso(due), UNCHANGED_DETAIL)
        return ScheduleRun(ds.key, "skipped-unchanged", iso(due), job_id)
    reason = f"schedule {ds.schedule} due at {iso(due)}"
    if coalesced > 1:
        reason += f" ({coalesced - 1} earlier due time(s) coalesced)"
    recorded = app.states.record(ds.key, Change(
        trigger="schedule", debounce_seconds=0, max_delay_seconds=0, model_tables=None,
        requested_by="schedule", reason=reason, scheduled_for=iso(due)))
    action = "fired" if recorded.created else "joined"
    log.info("schedule of dataset %s due %s: %s job %s", ds.key, iso(due), action, recorded.job_id)
    return ScheduleRun(ds.key, action, iso(due), recorded.job_id)


def unchanged(entity: Any | None) -> bool:
    """Whether nothing is new since the dataset's last completed refresh (``schedule_skip_if_unchanged``)."""
    if entity is None or not tables.value(entity, "last_success_at"):
        return False  # never refreshed by this app: nothing is known, so refresh
    if readable_pending(entity) is not None:
        return False
    covered: dict[str, int] = tables.get_json(entity, "covered", {}) or {}
    refreshed: dict[str, int] = tables.get_json(entity, "refreshed", {}) or {}
    return all(version <= refreshed.get(table, -1) for table, version in covered.items())


def next_due(expression: str | None, now: datetime) -> datetime | None:
    """The next due time of ``expression`` after ``now`` (None without a schedule or occurrence)."""
    if not expression:
        return None
    try:
        return ncrontab.parse(expression).next_after(now)
    except ncrontab.CronError:
        return None
