"""How a job ends or steps back, and the outcome row's writes (part of the worker, see refresh/jobs/worker.py).

Order of writes, so a crash between any two is repaired by the message that is redelivered: the
outcome row first, then the lease is released, then the follow-up job is woken. A second pass over
an ended job changes nothing and logs nothing (one row, one structured log line per job).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso, parse_iso
from refresh.jobs import messages, summaries
from refresh.jobs.job_model import PendingJob
from refresh.jobs.outcomes import END_STATES, Outcomes, Status, duration_seconds, to_public
from refresh.jobs.pending import DatasetStates, pending_of, running_record
from refresh.jobs.running import MAX_LIST, PostLog, RunningJob, capped_job, row_fields, sources_of
from refresh.powerbi import errors as pbi_errors

log = logging.getLogger("refresh.jobs.worker")
outcome_log = logging.getLogger("refresh.outcome")


class Endings:
    """Endings of a job: outcome rows, lease release, back to pending. Mixed into the Worker."""

    states: DatasetStates
    outcomes: Outcomes
    queue: Any
    clock: Clock
    freshness: Any = None   # refresh.monitoring.freshness_tracker.FreshnessTracker (wired by refresh/core/context.py)
    metrics: Any = None     # refresh.monitoring.metrics.Metrics

    def _finish(self, dataset_key: str, running: RunningJob, status_word: Status, now: datetime, *,
                status: Any = None, error_code: str | None = None, error_message: str | None = None,
                follow_up: bool = True) -> str:
        """Record the outcome row first, then release the lease: a crash in between leaves the lease, and the
        redelivered check finds the end again and releases it. ``follow_up``: send the message of a job that
        waits for this one (False when the caller is handling that job's message)."""
        fields: dict[str, Any] = {}
        if status is not None:
            error_code = error_code or status.error_code
            error_message = error_message or status.error_message
            if status.messages:
                fields["messages"] = list(status.messages)[:50]
            if status.end_time and status.start_time and status_word == Status.COMPLETED:
                fields["powerbi_duration_seconds"] = round((status.end_time - status.start_time).total_seconds(), 3)
        row = self._finish_row(dataset_key, running.job_id, status_word, now, error_code=error_code,
                               error_message=error_message, started_at=running.started_at,
                               request_id=running.refresh_id, adopted=running.adopted,
                               adopted_reason=running.adopted_reason, freshness_later=True, **row_fields(running),
                               **fields)
        noted: list[Any] = []  # the freshness events of this end, decided in the release write (no extra request)

        def release(data: dict[str, Any]) -> bool:
            current = _running_of(data)
            if not current or current.job_id != running.job_id:
                return False
            tables.put_json(data, "running", None)
            noted[:] = [self._note_in(data, dataset_key, row)]
            _fold_summary(data, dataset_key, row)  # the status views' summary, in this same write
            if status_word == Status.COMPLETED:
                # what the model now contains: per source table, the newest version refreshed
                refreshed = tables.get_json(data, "refreshed", {}) or {}
                for table, change in running.job.sources.items():
                    refreshed[table] = max(refreshed.get(table, -1), change.last_version)
                tables.put_json(data, "refreshed", refreshed)
                data["last_success_at"] = iso(now)
            return True

        entity = self.states.update(dataset_key, release)
        if noted and noted[0] is not None:
            self._noted(dataset_key, entity, noted[0])
        elif row is not None and row.get("status") in END_STATES:
            self._note_freshness(dataset_key, row)  # the lease was not ours any more: writes of their own
            self._note_summary(dataset_key, row)
        waiting = pending_of(entity) if entity and follow_up else None
        if waiting is not None:
            self._requeue("job", dataset_key, waiting.job_id,
                          max(0.0, (parse_iso(waiting.due_at) - now).total_seconds()))
        return status_word.lower()

    def _finish_row(self, dataset_key: str, job_id: str, status_word: Status, now: datetime, *,
                    freshness_later: bool = False, **fields: Any) -> dict[str, Any] | None:
        """Write the outcome row's end (once) and note the end for freshness, unless ``freshness_later``
        (the caller folds it into its own write of the dataset's state). Returns the row as stored."""
        changed: list[bool] = []

        def change(row: dict[str, Any]) -> dict[str, Any] | None:
            changed[:] = [row.get("status") not in END_STATES]
            if not changed[0]:
                return None  # already ended (e.g. recorded before a crash): one row, one log line
            started = fields.get("started_at") or row.get("started_at") or None
            out = {"status": str(status_word), "ended_at": iso(now), "detail": None,
                   "duration_seconds": duration_seconds(started, now)}
            out.update({k: v for k, v in fields.items() if v is not None})
            return _keep_joiners(row, out)

        row = self.outcomes.update(dataset_key, job_id, change)
        if row is not None and changed and changed[0]:
            _log_outcome(to_public(row))
            if self.metrics is not None:
                self.metrics.record_outcome(dataset_key, str(status_word), to_public(row).get("duration_seconds"))
        if not freshness_later:  # else the caller folds freshness and the summary into its own write
            if row is not None and row.get("status") in END_STATES:
                # also on a second pass: a crash between the row and this write is repaired by the redelivery
                self._note_freshness(dataset_key, row)
            self._note_summary(dataset_key, row)
        return row

    def _note_in(self, data: dict[str, Any], dataset_key: str, row: dict[str, Any] | None) -> Any:
        """Apply the job's end (its outcome ``row``) to the freshness record on ``data``, a state entity about to
        be written; returns the events (None: nothing noted, e.g. no tracker or the row is not ended)."""
        if self.freshness is None or row is None or row.get("status") not in END_STATES:
            return None
        from refresh.monitoring.freshness import FreshnessRecord
        from refresh.monitoring.freshness_tracker import result_from_row

        try:
            result = result_from_row(to_public(row))
            if result.job_id in FreshnessRecord.from_entity(data).state.handled_jobs:
                return []
            return self.freshness.note_outcome(data, dataset_key, result)
        except Exception as exc:  # never fail the job's end; the state is written without it
            log.error("dataset %s: job %s's end not recorded for freshness (%s: %s)", dataset_key,
                      row.get("job_id"), type(exc).__name__, str(exc).split("\n")[0][:300])
            return None

    def _noted(self, dataset_key: str, entity: Any, events: list[Any]) -> None:
        """After the write that noted a job's end: the lag gauge, and the events handed to the alerter."""
        try:
            if self.freshness.metrics is not None and entity is not None:
                view = self.freshness.view(dataset_key, entity)
                self.freshness.metrics.set_lag(dataset_key, view.lag_seconds, view.breached)
            if events:
                self.freshness.flush(dataset_key, entity)
        except Exception as exc:  # the timer flushes the outbox again
            log.error("dataset %s: freshness events not handed over yet (%s)", dataset_key, type(exc).__name__)

    def _note_freshness(self, dataset_key: str, row: dict[str, Any]) -> None:
        """The job's end in the dataset's freshness record and alert state (never fails the job)."""
        if self.freshness is None:
            return
        from refresh.monitoring.freshness_tracker import result_from_row

        try:
            self.freshness.record_outcome(dataset_key, result_from_row(to_public(row)))
        except Exception as exc:
            log.error("dataset %s: job %s's end not recorded for freshness (%s: %s)", dataset_key,
                      row.get("job_id"), type(exc).__name__, str(exc).split("\n")[0][:300])

    def _note_summary(self, dataset_key: str, row: dict[str, Any] | None) -> None:
        """The dataset's summary for the status views (refresh/jobs/summaries.py): one ETag-guarded write of the
        dataset's state entity per job end, after the outcome row (a crash in between: the redelivered end folds
        it; 2 requests, 1 when already folded)."""
        if row is not None:
            summaries.note_end(self.states, dataset_key, to_public(row))

    def _start_failed(self, dataset_key: str, job: PendingJob, running: RunningJob | None,
                      exc: pbi_errors.PowerBIError) -> str:
        now = self.clock.now()
        status = Status.NOT_REFRESHABLE if isinstance(exc, pbi_errors.NotRefreshableError) else Status.FAILED
        self._finish_row(dataset_key, job.job_id, status, now, error_code=exc.code or type(exc).__name__,
                         error_message=_describe(exc), request_id=exc.request_id, sources=sources_of(job),
                         model_tables=job.objects() or [], triggers=job.triggers)
        if running is not None:
            def release(data: dict[str, Any]) -> bool:
                current = _running_of(data)
                if current and current.job_id == job.job_id:
                    tables.put_json(data, "running", None)
                    return True
                return False

            self.states.update(dataset_key, release)
        else:
            self._drop_pending(dataset_key, job.job_id)
        return status.lower()

    def _back_to_pending(self, dataset_key: str, running: RunningJob, delay: float, detail: str,
                         exc: pbi_errors.PowerBIError) -> str:
        """Give the claim back: the job waits (merged with anything pending) and is tried again later."""
        now = self.clock.now()
        job = running.job
        merged_away: list[PendingJob] = []

        def unclaim(data: dict[str, Any]) -> bool:
            current = _running_of(data)
            if not current or current.job_id != job.job_id:
                raise _Lost()
            newer = pending_of(data)
            if newer is not None:
                _absorb(job, newer)
                merged_away.append(newer)
            job.due_at = iso(now + timedelta(seconds=delay))
            tables.put_json(data, "running", None)
            tables.put_json(data, "pending", capped_job(job).to_dict())
            tables.put_json(data, "post_log", PostLog.of(running).to_dict())
            data["enqueued"] = True
            return True

        self.states.update(dataset_key, unclaim)
        for other in merged_away:
            self.outcomes.ensure(dataset_key, other)  # its creator may not have written its row yet
            self._finish_row(dataset_key, other.job_id, Status.SKIPPED, now, detail=f"merged into job {job.job_id}",
                             error_message=f"merged into job {job.job_id}")
        self._set_row(dataset_key, job.job_id, status=Status.WAITING, detail=detail, request_id=exc.request_id,
                      next_attempt_at=job.due_at)
        log.info("job %s of dataset %s waits %.0f s: %s", job.job_id, dataset_key, delay, detail)
        self._requeue("job", dataset_key, job.job_id, delay)
        return "waiting"

    def _drop_pending(self, dataset_key: str, job_id: str) -> None:
        def drop(data: dict[str, Any]) -> bool:
            job = pending_of(data)
            if job and job.job_id == job_id:
                tables.put_json(data, "pending", None)
                return True
            return False

        self.states.update(dataset_key, drop)

    def _requeue(self, type_: str, dataset_key: str, job_id: str, delay: float, attempt: int = 0) -> None:
        msg = messages.JobMessage.new(type_, dataset_key, job_id, self.clock.now(), attempt=attempt)
        messages.send(self.queue, msg, delay)

    def _set_row(self, dataset_key: str, job_id: str, **fields: Any) -> None:
        def change(row: dict[str, Any]) -> dict[str, Any] | None:
            if row.get("status") in END_STATES:
                return None
            return _keep_joiners(row, {k: (str(v) if isinstance(v, Status) else v) for k, v in fields.items()})

        self.outcomes.update(dataset_key, job_id, change)


JOINER_FIELDS = ("triggers", "requested_by", "reasons")
"""Row lists that requests joining a running job add to (refresh/jobs/pending.py): the worker's own copy of the
job never replaces them, it adds to them."""


def _fold_summary(data: dict[str, Any], dataset_key: str, row: dict[str, Any] | None) -> None:
    """Fold the job's end into the dataset's summary on ``data``, a state entity about to be written (never fails
    the job's end: the outcome row is the truth, and the next end brings the summary up to date)."""
    try:
        summaries.fold_into(data, to_public(row) if row is not None else None)
    except Exception as exc:
        log.error("summary of dataset %s: could not fold the end of job %s (%s)", dataset_key,
                  (row or {}).get("job_id"), type(exc).__name__)


def _keep_joiners(row: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    public = to_public(row)
    for name in JOINER_FIELDS:
        new, old = out.get(name), public.get(name)
        if isinstance(new, list) and isinstance(old, list):
            out[name] = [*old, *(item for item in new if item not in old)][:MAX_LIST]
    return out


class _Lost(Exception):
    """The state changed under us so that this message no longer applies."""


_running_of = running_record  # the dataset's running job; CorruptRecord when it cannot be read


def _absorb(job: PendingJob, newer: PendingJob) -> None:
    for table, change in newer.sources.items():
        mine = job.sources.get(table)
        if mine is None:
            job.sources[table] = change
        else:
            mine.first_version = min(mine.first_version, change.first_version)
            mine.last_version = max(mine.last_version, change.last_version)
            mine.commits += change.commits
    if newer.whole_model:
        job.whole_model, job.model_tables = True, []
    elif not job.whole_model:
        job.model_tables = sorted(set(job.model_tables) | set(newer.model_tables))
    for name in ("triggers", "requested_by", "reasons"):
        target = getattr(job, name)
        for item in getattr(newer, name):
            if item not in target:
                target.append(item)
    job.last_change_at = max(job.last_change_at, newer.last_change_at)


def _describe(exc: pbi_errors.PowerBIError) -> str:
    parts = [type(exc).__name__]
    if exc.status is not None:
        parts.append(f"HTTP {exc.status}")
    if exc.code:
        parts.append(exc.code)
    return f"{' '.join(parts)}: {exc.message}"


def _log_outcome(row: dict[str, Any]) -> None:
    facts = {k: row.get(k) for k in (
        "dataset_key", "job_id", "status", "triggers", "requested_by", "sources", "model_tables",
        "workspace_name", "dataset_name", "refresh_type", "request_id", "adopted", "adopted_reason", "attempts",
        "queued_at", "started_at", "ended_at", "duration_seconds", "powerbi_duration_seconds", "error_code",
        "error_message")}
    outcome_log.info(
        "refresh outcome: dataset=%s job=%s status=%s duration=%ss request_id=%s adopted=%s error=%s",
        facts["dataset_key"], facts["job_id"], facts["status"], facts["duration_seconds"], facts["request_id"] or "-",
        bool(facts["adopted"]), (facts["error_message"] or "-")[:500], extra={"refresh_outcome": facts},
    )

def _recent(starts: list[str], now: datetime) -> list[str]:
    day_ago = now - timedelta(hours=24)
    return sorted(s for s in starts if parse_iso(s) > day_ago)
