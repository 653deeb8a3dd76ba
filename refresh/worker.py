"""The refresh job state machine behind ``run_refresh_job``. It never sleeps: time passes in the queue.

A dataset's state entity (refresh/pending.py) holds at most one ``pending`` job and at most one
``running`` job. The running job is the dataset's lease: ETag-guarded, with an expiry, so any number
of instances start at most one refresh per dataset and a crashed instance cannot block it forever.

``job`` message (the pending job may be due)
    stale id -> dropped; not yet due (debounce) -> re-queued for the rest of the wait; another job
    running -> re-queued (the pending job keeps coalescing, it becomes the follow-up refresh);
    daily limit used up -> re-queued until the next free slot; else claim (pending -> running),
    resolve names, POST the refresh, record its id, send the first ``check`` message.
``check`` message (follow a running refresh)
    enhanced refreshes: ``GET refreshes/{id}``; standard: ``GET refreshes?$top=N`` matched on the
    request id ("not in the history yet" is normal for a while). Running -> another check later, or
    past ``timeout_minutes`` -> cancel (enhanced) and record TimedOut. End state -> outcome row,
    release the lease, wake the follow-up job if one is pending.

Busy ("another refresh is already executing"), 429 and the daily limit put the job back to pending
(merged with whatever arrived meanwhile) with a delay; 5xx and transport errors are retried a few
times with exponential back-off and jitter. A redelivered message never starts a second refresh:
before the POST the claim records ``post_at``; a redelivery that finds ``post_at`` without a refresh
id looks for that refresh in Power BI's history before posting again.
"""

from __future__ import annotations

import logging
import random
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import messages, tables
from .clock import Clock, iso, parse_iso
from .outcomes import END_STATES, Outcomes, duration_seconds
from .pending import DatasetStates, PendingJob, pending_of
from .powerbi import errors as pbi_errors
from .powerbi.client import build_refresh_body
from .powerbi.models import RefreshState

log = logging.getLogger(__name__)
outcome_log = logging.getLogger("refresh.outcome")

MAX_TRANSIENT_ATTEMPTS = 5
MAX_CHECK_ERRORS = 10
BUSY_DELAY = 60.0
MAX_BACKOFF = 600.0
DEFAULT_FIRST_CHECK = 15.0
SHARED_DAILY_LIMIT = 8
HISTORY_TOP = 60
_STATE_TO_STATUS = {
    RefreshState.COMPLETED: "Completed",
    RefreshState.FAILED: "Failed",
    RefreshState.CANCELLED: "Cancelled",
    RefreshState.TIMED_OUT: "TimedOut",
    RefreshState.DISABLED: "Disabled",
}


@dataclass(frozen=True)
class Target:
    """What a job refreshes and how: from the routing config, or from an ad-hoc manual request."""

    key: str
    workspace: str
    dataset: str
    enhanced_options: dict[str, Any] = field(default_factory=dict)
    notify_option: str = "NoNotification"
    dedicated_capacity: bool | None = None
    daily_limit: int | None = None
    timeout_minutes: int = 120


class Worker:
    """Handles one queue message at a time; safe to run on any number of instances."""

    def __init__(self, *, config: Any, states: DatasetStates, outcomes: Outcomes, queue: Any, powerbi: Any,
                 clock: Clock, max_retry_after: float = 3600, rng: random.Random | None = None) -> None:
        self.config = config
        self.states = states
        self.outcomes = outcomes
        self.queue = queue
        self.powerbi = powerbi
        self.clock = clock
        self.max_retry_after = max_retry_after
        self.rng = rng or random.Random()

    # entry points -------------------------------------------------------------------------------
    def handle(self, body: str | bytes, *, dequeue_count: int = 1, max_dequeue_count: int = 5,
               message_id: str | None = None) -> str:
        """Process one message; returns a short word saying what happened (for logs and tests)."""
        try:
            msg = messages.decode(body)
        except messages.BadMessage as exc:
            self._reject(str(exc), body, message_id)
            return "rejected"
        try:
            if msg.type == "job":
                return self._on_job(msg)
            return self._on_check(msg)
        except Exception as exc:
            if dequeue_count >= max_dequeue_count:
                self.give_up(msg, f"gave up after {dequeue_count} deliveries: {type(exc).__name__}: {exc}")
            raise

    def give_up(self, msg: messages.JobMessage, reason: str) -> None:
        """Record the job as failed and free the dataset (last delivery, or the poison queue)."""
        now = self.clock.now()
        row = self.outcomes.get(msg.job_id)
        if row is not None and row.get("status") in END_STATES:
            return

        def release(entity: dict) -> bool:
            running = tables.get_json(entity, "running")
            if running and running.get("job_id") == msg.job_id:
                tables.put_json(entity, "running", None)
                return True
            job = pending_of(entity)
            if job and job.job_id == msg.job_id:
                tables.put_json(entity, "pending", None)
                return True
            return False

        self.states.update(msg.dataset, release)
        self._finish_row(msg.dataset, msg.job_id, "Failed", now, error_code="GaveUp", error_message=reason)

    # job: start a refresh -----------------------------------------------------------------------
    def _on_job(self, msg: messages.JobMessage) -> str:
        entity = self.states.get(msg.dataset)
        running = tables.get_json(entity, "running")
        if running and running.get("job_id") == msg.job_id:
            return self._resume(msg, running)
        job = pending_of(entity)
        if job is None or job.job_id != msg.job_id:
            log.info("job %s of dataset %s: stale message (job no longer pending); dropped",
                     msg.job_id, msg.dataset)
            return "stale"
        now = self.clock.now()
        due = parse_iso(job.due_at)
        if due > now:
            self._requeue("job", msg.dataset, job.job_id, (due - now).total_seconds())
            return "debounce"
        if running:
            if parse_iso(running["lease_until"]) > now:
                delay = self._busy_delay(running, now)
                self._set_row(msg.dataset, job.job_id, status="Queued",
                              detail=f"waiting for job {running['job_id']} of this dataset to finish")
                self._requeue("job", msg.dataset, job.job_id, delay)
                return "waiting-for-lease"
            self._abandon(msg.dataset, running, now)

        try:
            target = self._target(msg.dataset, job)
            workspace = self.powerbi.get_workspace(target.workspace)
            dataset = self.powerbi.get_dataset(workspace.id, target.dataset)
        except pbi_errors.PowerBIError as exc:
            return self._start_failed(msg.dataset, job, None, exc)
        names = {"workspace_id": workspace.id, "workspace_name": workspace.name,
                 "dataset_id": dataset.id, "dataset_name": dataset.name}
        if not dataset.is_refreshable:
            self._drop_pending(msg.dataset, job.job_id)
            self._finish_row(msg.dataset, job.job_id, "NotRefreshable", now, **names,
                             error_code="NotRefreshable",
                             error_message=f"dataset {dataset.name!r} is not refreshable (isRefreshable is "
                                           "false: DirectQuery or live connection?)")
            return "not-refreshable"
        dedicated = workspace.is_on_dedicated_capacity if target.dedicated_capacity is None \
            else target.dedicated_capacity
        limit = target.daily_limit if target.daily_limit is not None else (None if dedicated else SHARED_DAILY_LIMIT)
        if limit is not None:
            starts = _recent(tables.get_json(entity, "starts", []) or [], now)
            if len(starts) >= limit:
                next_slot = parse_iso(starts[0]) + timedelta(hours=24)
                self._set_row(msg.dataset, job.job_id, status="Waiting", **names,
                              detail=f"daily limit of {limit} refreshes in 24 h reached; next slot at "
                                     f"{iso(next_slot)}")
                self._requeue("job", msg.dataset, job.job_id, (next_slot - now).total_seconds() + 1)
                return "daily-limit"

        claim = {"job_id": job.job_id, "claimed_at": iso(now), "job": job.to_dict(), "enhanced": bool(dedicated),
                 "lease_until": iso(now + timedelta(minutes=target.timeout_minutes + 15)),
                 "timeout_at": iso(now + timedelta(minutes=target.timeout_minutes)),
                 "post_at": None, "refresh_id": None, "check_token": None, "check_errors": 0,
                 "attempts": msg.attempt, "daily_limit": limit, **names}

        def take(data: dict) -> bool:
            current = pending_of(data)
            if current is None or current.job_id != job.job_id or tables.get_json(data, "running"):
                raise _Lost()
            tables.put_json(data, "pending", None)
            tables.put_json(data, "running", claim)
            return True

        try:
            self.states.update(msg.dataset, take)
        except _Lost:
            return "stale"
        return self._post(msg.dataset, claim, target)

    def _resume(self, msg: messages.JobMessage, running: dict) -> str:
        """A job message for the job already holding the lease: a redelivery after a crash or a retry."""
        if running.get("refresh_id"):
            self._send_check(msg.dataset, running, 0)
            return "resumed-check"
        target = self._target(msg.dataset, PendingJob.from_dict(running["job"]))
        if running.get("post_at"):
            found = self._find_posted(running)
            if found is not None:
                return self._started(msg.dataset, running, found, adopted=True)
        return self._post(msg.dataset, running, target)

    def _post(self, dataset_key: str, running: dict, target: Target) -> str:
        job = PendingJob.from_dict(running["job"])
        now = self.clock.now()
        running["post_at"] = iso(now)
        self._save_running(dataset_key, running)
        objects = job.objects()
        if running["enhanced"]:
            options = dict(target.enhanced_options)
            if job.refresh_type:
                options["type"] = job.refresh_type
            body = build_refresh_body(enhanced=True, options=options, objects=objects)
        else:
            body = build_refresh_body(enhanced=False, options=None, objects=None,
                                      notify_option=target.notify_option)
        try:
            refresh_id = self.powerbi.start_refresh(running["workspace_id"], running["dataset_id"], body)
        except pbi_errors.RefreshBusyError as exc:
            found = self._find_posted(running)
            if found is not None:  # our own earlier POST is the one executing
                return self._started(dataset_key, running, found, adopted=True)
            return self._back_to_pending(dataset_key, running, self._busy_backoff(),
                                         "another refresh of this dataset is already executing in Power BI",
                                         exc)
        except pbi_errors.ThrottledError as exc:
            delay = min(max(exc.retry_after or BUSY_DELAY, 1.0), self.max_retry_after)
            return self._back_to_pending(dataset_key, running, delay,
                                         f"Power BI throttled the request (429); retrying in {delay:.0f} s", exc)
        except pbi_errors.DailyLimitError as exc:
            delay = self._next_free_slot(running)
            return self._back_to_pending(dataset_key, running, delay,
                                         "Power BI's daily refresh limit is reached; waiting for the next "
                                         f"free slot in {delay:.0f} s", exc)
        except pbi_errors.PowerBIError as exc:
            if exc.is_retryable and running.get("attempts", 0) + 1 < MAX_TRANSIENT_ATTEMPTS:
                running["attempts"] = running.get("attempts", 0) + 1
                self._save_running(dataset_key, running)
                delay = self._backoff(running["attempts"])
                self._set_row(dataset_key, job.job_id, status="Waiting", attempts=running["attempts"],
                              detail=f"Power BI call failed ({_describe(exc)}); retry {running['attempts']} "
                                     f"in {delay:.0f} s", request_id=exc.request_id)
                self._requeue("job", dataset_key, job.job_id, delay, attempt=running["attempts"])
                return "retry"
            return self._start_failed(dataset_key, job, running, exc)
        return self._started(dataset_key, running, refresh_id)

    def _started(self, dataset_key: str, running: dict, refresh_id: str, adopted: bool = False) -> str:
        now = self.clock.now()
        running["refresh_id"] = refresh_id
        running["started_at"] = running.get("started_at") or iso(now)
        durations = self.outcomes.recent_durations(dataset_key)
        running["estimate"] = statistics.median(durations) if durations else None
        # land the first check just after the expected end, so one check usually suffices
        delay = min(max(running["estimate"] * 1.05 + 2.0, 5.0), 900.0) if running["estimate"] \
            else DEFAULT_FIRST_CHECK
        self._send_check(dataset_key, running, delay, add_start=now)
        job = PendingJob.from_dict(running["job"])
        self._set_row(dataset_key, job.job_id, status="Running", started_at=running["started_at"],
                      request_id=refresh_id, refresh_type="enhanced" if running["enhanced"] else "standard",
                      workspace_id=running["workspace_id"], workspace_name=running["workspace_name"],
                      dataset_id=running["dataset_id"], dataset_name=running["dataset_name"],
                      sources=_sources(job), model_tables=job.objects() or [], triggers=job.triggers,
                      requested_by=job.requested_by, reasons=job.reasons,
                      attempts=running.get("attempts", 0) + 1, adopted=adopted)
        log.info("refresh started: dataset=%s job=%s refresh_id=%s type=%s tables=%s", dataset_key, job.job_id,
                 refresh_id, "enhanced" if running["enhanced"] else "standard",
                 ",".join(job.objects() or ["<whole model>"]))
        return "adopted" if adopted else "started"

    # check: follow a refresh --------------------------------------------------------------------
    def _on_check(self, msg: messages.JobMessage) -> str:
        entity = self.states.get(msg.dataset)
        running = tables.get_json(entity, "running")
        if not running or running.get("job_id") != msg.job_id or not running.get("refresh_id"):
            return "stale"
        if running.get("check_token") and msg.sent_at != running["check_token"]:
            return "stale"  # an older duplicate of the check chain
        now = self.clock.now()
        ws, ds, rid = running["workspace_id"], running["dataset_id"], running["refresh_id"]
        try:
            if running["enhanced"]:
                status = self.powerbi.get_refresh(ws, ds, rid)
            else:
                status = self.powerbi.find_refresh(ws, ds, rid, top=10)
        except pbi_errors.ThrottledError as exc:
            self._send_check(msg.dataset, running, min(max(exc.retry_after or BUSY_DELAY, 1.0), self.max_retry_after))
            return "check-throttled"
        except pbi_errors.PowerBIError as exc:
            running["check_errors"] = running.get("check_errors", 0) + 1
            if exc.is_retryable and running["check_errors"] < MAX_CHECK_ERRORS:
                self._send_check(msg.dataset, running, self._backoff(running["check_errors"]))
                return "check-retry"
            return self._finish(msg.dataset, running, "Failed", now, error_code=exc.code or type(exc).__name__,
                                error_message=f"lost track of the refresh: {_describe(exc)}")
        running["check_errors"] = 0
        if status is not None and status.state != RefreshState.RUNNING:
            return self._finish(msg.dataset, running, _STATE_TO_STATUS[status.state], now, status=status)
        if now >= parse_iso(running["timeout_at"]):
            return self._timed_out(msg.dataset, running, now)
        self._send_check(msg.dataset, running, self._next_check_delay(running, now, status is None))
        return "running"

    def _timed_out(self, dataset_key: str, running: dict, now: datetime) -> str:
        minutes = round((parse_iso(running["timeout_at"]) - parse_iso(running["claimed_at"])).total_seconds() / 60)
        if running["enhanced"]:
            try:
                self.powerbi.cancel_refresh(running["workspace_id"], running["dataset_id"], running["refresh_id"])
                message = f"refresh exceeded timeout_minutes={minutes}; cancelled"
            except pbi_errors.PowerBIError as exc:
                message = f"refresh exceeded timeout_minutes={minutes}; cancelling failed: {_describe(exc)}"
        else:
            message = (f"refresh exceeded timeout_minutes={minutes}; a standard refresh cannot be cancelled, "
                       "Power BI may still be running it")
        return self._finish(dataset_key, running, "TimedOut", now, error_code="TimedOut", error_message=message)

    # endings ------------------------------------------------------------------------------------
    def _finish(self, dataset_key: str, running: dict, status_word: str, now: datetime, *, status: Any = None,
                error_code: str | None = None, error_message: str | None = None) -> str:
        fields: dict[str, Any] = {}
        if status is not None:
            error_code = error_code or status.error_code
            error_message = error_message or status.error_message
            if status.messages:
                fields["messages"] = list(status.messages)
            if status.end_time and status.start_time and status_word == "Completed":
                fields["powerbi_duration_seconds"] = round((status.end_time - status.start_time).total_seconds(), 3)

        def release(data: dict) -> bool:
            current = tables.get_json(data, "running")
            if not current or current.get("job_id") != running["job_id"]:
                return False
            tables.put_json(data, "running", None)
            if status_word == "Completed":
                # what the model now contains: per source table, the newest version refreshed
                refreshed = tables.get_json(data, "refreshed", {}) or {}
                for table, change in running["job"].get("sources", {}).items():
                    refreshed[table] = max(refreshed.get(table, -1), change["last_version"])
                tables.put_json(data, "refreshed", refreshed)
                data["last_success_at"] = iso(now)
            return True

        entity = self.states.update(dataset_key, release)
        self._finish_row(dataset_key, running["job_id"], status_word, now, error_code=error_code,
                         error_message=error_message, started_at=running.get("started_at"), **fields)
        follow_up = pending_of(entity) if entity else None
        if follow_up is not None:
            self._requeue("job", dataset_key, follow_up.job_id,
                          max(0.0, (parse_iso(follow_up.due_at) - now).total_seconds()))
        return status_word.lower()

    def _finish_row(self, dataset_key: str, job_id: str, status_word: str, now: datetime, **fields: Any) -> None:
        def change(row: dict) -> dict | None:
            if row.get("status") in END_STATES:
                return None
            started = fields.get("started_at") or row.get("started_at") or None
            out = {"status": status_word, "ended_at": iso(now), "detail": None,
                   "duration_seconds": duration_seconds(started, now)}
            out.update({k: v for k, v in fields.items() if v is not None})
            return out

        row = self.outcomes.update(dataset_key, job_id, change)
        if row is not None:
            _log_outcome(row)

    def _start_failed(self, dataset_key: str, job: PendingJob, running: dict | None,
                      exc: pbi_errors.PowerBIError) -> str:
        now = self.clock.now()
        status = "NotRefreshable" if isinstance(exc, pbi_errors.NotRefreshableError) else "Failed"
        if running is not None:
            def release(data: dict) -> bool:
                current = tables.get_json(data, "running")
                if current and current.get("job_id") == job.job_id:
                    tables.put_json(data, "running", None)
                    return True
                return False

            self.states.update(dataset_key, release)
        else:
            self._drop_pending(dataset_key, job.job_id)
        self._finish_row(dataset_key, job.job_id, status, now, error_code=exc.code or type(exc).__name__,
                         error_message=_describe(exc), request_id=exc.request_id, sources=_sources(job),
                         model_tables=job.objects() or [], triggers=job.triggers)
        return status.lower()

    def _back_to_pending(self, dataset_key: str, running: dict, delay: float, detail: str,
                         exc: pbi_errors.PowerBIError) -> str:
        """Give the claim back: the job waits (merged with anything pending) and is tried again later."""
        now = self.clock.now()
        job = PendingJob.from_dict(running["job"])
        merged_away: list[str] = []

        def unclaim(data: dict) -> bool:
            current = tables.get_json(data, "running")
            if not current or current.get("job_id") != job.job_id:
                raise _Lost()
            newer = pending_of(data)
            if newer is not None:
                _absorb(job, newer)
                merged_away.append(newer.job_id)
            job.due_at = iso(now + timedelta(seconds=delay))
            tables.put_json(data, "running", None)
            tables.put_json(data, "pending", job.to_dict())
            data["enqueued"] = True
            return True

        try:
            self.states.update(dataset_key, unclaim)
        except _Lost:
            return "stale"
        for other in merged_away:
            self._finish_row(dataset_key, other, "Skipped", now, detail=f"merged into job {job.job_id}",
                             error_message=f"merged into job {job.job_id}")
        self._set_row(dataset_key, job.job_id, status="Waiting", detail=detail, request_id=exc.request_id,
                      next_attempt_at=job.due_at)
        log.info("job %s of dataset %s waits %.0f s: %s", job.job_id, dataset_key, delay, detail)
        self._requeue("job", dataset_key, job.job_id, delay)
        return "waiting"

    def _abandon(self, dataset_key: str, running: dict, now: datetime) -> None:
        def clear(data: dict) -> bool:
            current = tables.get_json(data, "running")
            if current and current.get("job_id") == running["job_id"]:
                tables.put_json(data, "running", None)
                return True
            return False

        self.states.update(dataset_key, clear)
        self._finish_row(dataset_key, running["job_id"], "Failed", now, error_code="LeaseExpired",
                         error_message="the job's lease expired before its end was seen (instance lost?)")

    def _drop_pending(self, dataset_key: str, job_id: str) -> None:
        def drop(data: dict) -> bool:
            job = pending_of(data)
            if job and job.job_id == job_id:
                tables.put_json(data, "pending", None)
                return True
            return False

        self.states.update(dataset_key, drop)

    # helpers ------------------------------------------------------------------------------------
    def _target(self, dataset_key: str, job: PendingJob) -> Target:
        cfg = self.config.datasets.get(dataset_key)
        if cfg is None:
            if not job.workspace or not job.dataset:
                raise pbi_errors.NameResolutionError(f"dataset key {dataset_key!r} is not in the routing config")
            return Target(key=dataset_key, workspace=job.workspace, dataset=job.dataset)
        return Target(key=dataset_key, workspace=cfg.workspace, dataset=cfg.dataset,
                      enhanced_options=cfg.refresh.enhanced_options(), notify_option=cfg.refresh.notify_option,
                      dedicated_capacity=cfg.dedicated_capacity, daily_limit=cfg.daily_limit,
                      timeout_minutes=cfg.timeout_minutes)

    def _find_posted(self, running: dict) -> str | None:
        """The refresh our earlier POST started, if Power BI has one (redelivery after a crash)."""
        post_at = parse_iso(running["post_at"]) - timedelta(seconds=120)
        try:
            history = self.powerbi.get_refresh_history(running["workspace_id"], running["dataset_id"], top=10)
        except pbi_errors.PowerBIError:
            return None
        for entry in history:
            via_api = (entry.refresh_type or "").lower() in ("viaapi", "viaenhancedapi")
            if via_api and entry.start_time is not None and entry.start_time >= post_at and entry.request_id:
                return entry.request_id
        return None

    def _next_free_slot(self, running: dict) -> float:
        now = self.clock.now()
        try:
            history = self.powerbi.get_refresh_history(running["workspace_id"], running["dataset_id"],
                                                       top=HISTORY_TOP)
        except pbi_errors.PowerBIError:
            return 3600.0
        day_ago = now - timedelta(hours=24)
        starts = sorted(e.start_time for e in history if e.start_time and e.start_time > day_ago)
        limit = running.get("daily_limit") or SHARED_DAILY_LIMIT
        if len(starts) >= limit:
            return max(60.0, (starts[-limit] + timedelta(hours=24) - now).total_seconds() + 1)
        return 900.0

    def _busy_delay(self, running: dict, now: datetime) -> float:
        estimate = running.get("estimate")
        started = running.get("started_at")
        if estimate and started:
            remaining = estimate - (now - parse_iso(started)).total_seconds()
            return min(max(remaining + 5.0, 10.0), 600.0)
        return 30.0

    def _busy_backoff(self) -> float:
        """Wait after "another refresh is already executing": a minute, jittered so instances spread."""
        return BUSY_DELAY * (0.8 + 0.4 * self.rng.random())

    def _backoff(self, attempt: int) -> float:
        return min(5.0 * (2 ** attempt), MAX_BACKOFF) * (0.5 + self.rng.random())

    def _next_check_delay(self, running: dict, now: datetime, not_in_history: bool) -> float:
        elapsed = (now - parse_iso(running["started_at"])).total_seconds()
        if not_in_history:
            return 10.0
        estimate = running.get("estimate")
        if estimate and elapsed < estimate:
            return min(max(estimate - elapsed + 2.0, 5.0), 300.0)
        return min(max(elapsed * 0.25, 10.0), 300.0)

    def _send_check(self, dataset_key: str, running: dict, delay: float, add_start: datetime | None = None) -> None:
        now = self.clock.now()
        token = f"{iso(now)}#{uuid.uuid4().hex[:8]}"
        message = messages.JobMessage(type="check", dataset=dataset_key, job_id=running["job_id"], sent_at=token)
        messages.send(self.queue, message, delay)
        running["check_token"] = token
        running["next_check_at"] = iso(now + timedelta(seconds=delay))
        self._save_running(dataset_key, running, add_start=add_start)

    def _save_running(self, dataset_key: str, running: dict, add_start: datetime | None = None) -> None:
        def save(data: dict) -> bool:
            current = tables.get_json(data, "running")
            if not current or current.get("job_id") != running["job_id"]:
                raise _Lost()
            tables.put_json(data, "running", running)
            if add_start is not None:
                starts = _recent(tables.get_json(data, "starts", []) or [], add_start)
                starts.append(iso(add_start))
                tables.put_json(data, "starts", starts)
            return True

        self.states.update(dataset_key, save)

    def _requeue(self, type_: str, dataset_key: str, job_id: str, delay: float, attempt: int = 0) -> None:
        msg = messages.JobMessage.new(type_, dataset_key, job_id, self.clock.now(), attempt=attempt)
        messages.send(self.queue, msg, delay)

    def _set_row(self, dataset_key: str, job_id: str, **fields: Any) -> None:
        def change(row: dict) -> dict | None:
            if row.get("status") in END_STATES:
                return None
            return {k: v for k, v in fields.items()}

        self.outcomes.update(dataset_key, job_id, change)

    def _reject(self, reason: str, body: str | bytes, message_id: str | None) -> None:
        now = self.clock.now()
        job_id = uuid.uuid4().hex
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        self.outcomes.create("_rejected", job_id, now, {
            "status": "Rejected", "trigger": "queue", "ended_at": iso(now), "error_code": "BadMessage",
            "error_message": reason, "message_id": message_id or "", "message_body": text[:2000],
        })
        log.error("rejected queue message %s: %s", message_id, reason)


class _Lost(Exception):
    """The state changed under us so that this message no longer applies."""


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


def _recent(starts: list[str], now: datetime) -> list[str]:
    day_ago = now - timedelta(hours=24)
    return sorted(s for s in starts if parse_iso(s) > day_ago)


def _sources(job: PendingJob) -> dict[str, Any]:
    return {t: {"first_version": s.first_version, "last_version": s.last_version, "commits": s.commits}
            for t, s in job.sources.items()}


def _describe(exc: pbi_errors.PowerBIError) -> str:
    parts = [type(exc).__name__]
    if exc.status is not None:
        parts.append(f"HTTP {exc.status}")
    if exc.code:
        parts.append(exc.code)
    return f"{' '.join(parts)}: {exc.message}"


def _log_outcome(row: dict) -> None:
    facts = {k: row.get(k) for k in (
        "dataset_key", "job_id", "status", "triggers", "requested_by", "sources", "model_tables",
        "workspace_name", "dataset_name", "refresh_type", "request_id", "attempts", "queued_at", "started_at",
        "ended_at", "duration_seconds", "error_code", "error_message")}
    outcome_log.info(
        "refresh outcome: dataset=%s job=%s status=%s duration=%ss request_id=%s error=%s",
        facts["dataset_key"], facts["job_id"], facts["status"], facts["duration_seconds"], facts["request_id"] or "-",
        (facts["error_message"] or "-")[:500], extra={"refresh_outcome": facts},
    )
