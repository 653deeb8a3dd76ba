"""The refresh job state machine behind ``run_refresh_job``. It never sleeps: time passes in the queue.

A dataset's state entity (refresh/jobs/pending.py) holds at most one ``pending`` job and at most one
``running`` job (:class:`refresh.jobs.running.RunningJob`). The running job is the dataset's lease:
ETag-guarded, with an expiry, so any number of instances start at most one refresh per dataset and a
crashed instance cannot block it forever.

``job`` message (the pending job may be due)
    stale id -> dropped; not yet due (debounce) -> re-queued for the rest of the wait; another job
    running -> re-queued (the pending job keeps coalescing, it becomes the follow-up refresh);
    daily limit used up -> re-queued until the next free slot; else claim (pending -> running),
    resolve names, POST the refresh, record its id, send the first ``check`` message.
``check`` message (follow a running refresh)
    enhanced refreshes: ``GET refreshes/{id}``; standard: ``GET refreshes?$top=N`` matched on the
    request id ("not in the history yet" is normal for a while). Running -> another check later, or
    past ``timeout_minutes`` -> cancel (enhanced) and record TimedOut. End state -> outcome row, then
    release the lease, then wake the follow-up job if one is pending.

Timing (first check, later checks, busy waits, back-off): refresh/jobs/timing.py. Which refresh may be
adopted as the job's own: refresh/jobs/recovery.py.

At-least-once delivery: any copy of any message, in any order, after a crash at any point, leaves
exactly one live follow-up. Each write is made before the message that depends on it is sent, and
each message re-checks the state: a check whose token is not the live one is dropped, except the
direct predecessor of the live token (or the job message before the first check), which waits until
the live check is overdue by :data:`CHECK_GRACE` and then takes over (its instance may have died
between saving the token and sending the message); a redelivered one (its handler did not finish) sends the
live check at once. Expected duplicates are logged at INFO.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso, parse_iso
from refresh.core.records import CorruptRecord
from refresh.jobs import messages, timing
from refresh.jobs.checks import CHECK_GRACE, Checks
from refresh.jobs.endings import _describe, _Lost, _recent, _running_of
from refresh.jobs.job_model import PendingJob
from refresh.jobs.outcomes import END_STATES, Outcomes, Status
from refresh.jobs.pending import QUARANTINE_SUFFIX, DatasetStates, pending_of, quarantine
from refresh.jobs.recovery import find_own_refresh, remember
from refresh.jobs.running import Posted, PostLog, RunningJob, new_claim, row_fields
from refresh.powerbi import errors as pbi_errors
from refresh.powerbi.models import RefreshState
from refresh.powerbi.refresh_body import build_refresh_body

log = logging.getLogger(__name__)

MAX_TRANSIENT_ATTEMPTS = 5
MAX_TOKEN_ATTEMPTS = 8         # the identity endpoint gets longer (10 s ... 10 min apart)
SHARED_DAILY_LIMIT = 8
HISTORY_TOP = 60
POST_GRACE = 90.0              # a POST in flight this long without a recorded answer is presumed dead
                               # (two POSTs, one token retry, at the default 30 s timeout, plus margin)


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


class Worker(Checks):
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
        # the detector's catch_up (wired by refresh/core/context.py): a debounced job's tables, once more
        self.catch_up: Callable[[list[str]], int] | None = None
        self._delivery = threading.local()  # the message being handled on this thread: its dequeue count

    # entry points -------------------------------------------------------------------------------
    def handle(self, body: str | bytes, *, dequeue_count: int = 1, max_dequeue_count: int = 5,
               message_id: str | None = None) -> str:
        """Process one message; returns a short word saying what happened (for logs and tests)."""
        try:
            msg = messages.decode(body)
        except messages.BadMessage as exc:
            self._reject(str(exc), body, message_id)
            return "rejected"
        self._delivery.count = dequeue_count
        try:
            if msg.type == "job":
                return self._on_job(msg)
            return self._on_check(msg)
        except _Lost:
            log.info("%s message of job %s (dataset %s): the state changed meanwhile; dropped",
                     msg.type, msg.job_id, msg.dataset)
            return "stale"
        except CorruptRecord as exc:
            if not self._set_aside(msg, exc):
                raise
            return "set-aside"
        except Exception as exc:
            if dequeue_count >= max_dequeue_count:
                self.give_up(msg, f"gave up after {dequeue_count} deliveries: {type(exc).__name__}: {exc}")
            raise

    def give_up(self, msg: messages.JobMessage, reason: str) -> None:
        """A message of the job failed on its last delivery, or landed in the poison queue. A job that holds
        the lease is ended with the truth Power BI reports about its refresh (and one whose refresh still runs
        is followed again: see ``Checks._end_unfollowed``); a job that started nothing is recorded Failed
        (``GaveUp``) and the dataset is freed."""
        try:
            self._give_up(msg, reason)
        except CorruptRecord as exc:
            if not self._set_aside(msg, exc, handle_again=False):
                raise
            self._finish_row(msg.dataset, msg.job_id, Status.FAILED, self.clock.now(), error_code="GaveUp",
                             error_message=f"{reason}; {exc}")  # when the record was not its own

    def _give_up(self, msg: messages.JobMessage, reason: str) -> None:
        now = self.clock.now()
        row = self.outcomes.get(msg.job_id)
        if row is not None and row.get("status") in END_STATES:
            return
        entity = self.states.get(msg.dataset)
        if row is None:  # a job of the state whose creator stopped before writing its row
            job = _job_of(entity, msg.job_id)
            if job is not None:
                self.outcomes.ensure(msg.dataset, job)
        running = _running_of(entity)
        if running is not None and running.job_id == msg.job_id:
            self._end_unfollowed(msg.dataset, running, now, error_code="GaveUp", why=reason, resume=True)
            return
        self._finish_row(msg.dataset, msg.job_id, Status.FAILED, now, error_code="GaveUp",
                         error_message=f"{reason}; no refresh had been started")

        def release(entity: dict[str, Any]) -> bool:
            running = _running_of(entity)
            if running and running.job_id == msg.job_id:
                tables.put_json(entity, "running", None)
                return True
            job = pending_of(entity)
            if job and job.job_id == msg.job_id:
                tables.put_json(entity, "pending", None)
                return True
            return False

        self.states.update(msg.dataset, release)

    def _lake_moved_on(self, dataset_key: str, job: PendingJob) -> bool:
        """A debounced job made of commits only, falling due: did its tables (those in the job, then the
        dataset's other explicitly named ones; a glob's other tables are left to their events and the sweep)
        commit again meanwhile (events late, detection behind)? Those commits go into this job first
        (``catch_up``, the detector's pass), which moves its due time a debounce on, never past its max delay:
        one refresh for a burst, not one mid-burst and another after it. Never holds a refresh back when the
        lake cannot be read."""
        ds = self.config.datasets.get(dataset_key)
        if self.catch_up is None or ds is None or ds.debounce_seconds <= 0 or job.triggers != ["commit"]:
            return False
        tables = [*sorted(job.sources), *(s.table for s in ds.sources if not s.is_glob and s.table not in job.sources)]
        try:
            found = self.catch_up(tables)
        except Exception as exc:  # the check is a courtesy: the refresh goes ahead
            log.warning("job %s of dataset %s: its tables could not be checked for newer commits (%s: %s)",
                        job.job_id, dataset_key, type(exc).__name__, str(exc).split("\n")[0][:200])
            return False
        if found:
            log.info("job %s of dataset %s: %s newer commit(s) of its tables found as it fell due; they join it",
                     job.job_id, dataset_key, found)
        return found > 0

    def _set_aside(self, msg: messages.JobMessage, exc: CorruptRecord, *, handle_again: bool = True) -> bool:
        """A job record of the dataset cannot be read: set it aside (refresh/jobs/pending.py ``quarantine``), end
        the message's job if the record was its own (Failed, ``CorruptState``: whether a refresh ran is unknown)
        and handle the message again against the repaired state. False when nothing could be set aside."""
        now = self.clock.now()
        moved: list[str] = []
        raw: list[str] = []

        def move(data: dict[str, Any]) -> bool:
            raw[:] = [tables.raw_json(data, "running") + tables.raw_json(data, "pending")]
            moved[:] = quarantine(data, msg.dataset)
            return bool(moved)

        self.states.update(msg.dataset, move)
        if not moved:
            return False
        row = self.outcomes.get(msg.job_id)
        if row is not None and row.get("status") not in END_STATES and raw and msg.job_id in raw[0]:
            self._finish_row(msg.dataset, msg.job_id, Status.FAILED, now, error_code="CorruptState",
                             error_message=f"{'; '.join(moved)}; the record was set aside (state entity column "
                                           f"*{QUARANTINE_SUFFIX}) so the dataset can refresh again; whether a "
                                           "refresh of this job ran is unknown: see the dataset's refresh history "
                                           "in Power BI")
        if handle_again:
            messages.send(self.queue, msg, 0)
        return True

    # job: start a refresh -----------------------------------------------------------------------
    def _on_job(self, msg: messages.JobMessage) -> str:
        entity = self.states.get(msg.dataset)
        running = _running_of(entity)
        if running and running.job_id == msg.job_id:
            return self._resume(msg, running)
        job = pending_of(entity)
        if job is None or job.job_id != msg.job_id:
            set_aside = str((entity or {}).get("pending" + QUARANTINE_SUFFIX) or "")
            if msg.job_id in set_aside:  # detection set its unreadable record aside: say what became of it
                self._finish_row(msg.dataset, msg.job_id, Status.FAILED, self.clock.now(), error_code="CorruptState",
                                 error_message=f"the job's stored record could not be read and was set aside (state "
                                               f"entity column pending{QUARANTINE_SUFFIX}); the changes it held went "
                                               "into a new job; this job never ran")
                return "set-aside"
            log.info("job %s of dataset %s: stale message (job no longer pending); dropped",
                     msg.job_id, msg.dataset)
            return "stale"
        now = self.clock.now()
        due = parse_iso(job.due_at)
        if due <= now and self._lake_moved_on(msg.dataset, job):
            job = pending_of(self.states.get(msg.dataset))
            if job is None or job.job_id != msg.job_id:
                return "stale"
            due = parse_iso(job.due_at)
        if due > now:
            self._requeue("job", msg.dataset, job.job_id, (due - now).total_seconds(), attempt=msg.attempt)
            return "debounce"
        self.outcomes.ensure(msg.dataset, job)  # its creator may have stopped before writing its row
        if running:
            if parse_iso(running.lease_until) > now:
                delay = self._lease_wait(running, now)
                self._set_row(msg.dataset, job.job_id, status=Status.QUEUED,
                              detail=f"waiting for job {running.job_id} of this dataset to finish")
                self._requeue("job", msg.dataset, job.job_id, delay)
                return "waiting-for-lease"
            self._end_unfollowed(msg.dataset, running, now, error_code="LeaseExpired", resume=False, follow_up=False,
                                 why="the job's lease expired before its end was seen (instance lost?)")

        try:
            target = self._target(msg.dataset, job)
            workspace = self.powerbi.get_workspace(target.workspace)
            dataset = self.powerbi.get_dataset(workspace.id, target.dataset)
        except pbi_errors.PowerBIError as exc:
            if _may_retry(exc, msg.attempt + 1):
                return self._retry_job(msg.dataset, job.job_id, msg.attempt + 1, exc)
            return self._start_failed(msg.dataset, job, None, exc)
        names = {"workspace_id": workspace.id, "workspace_name": workspace.name,
                 "dataset_id": dataset.id, "dataset_name": dataset.name}
        if not dataset.is_refreshable:
            self._finish_row(msg.dataset, job.job_id, Status.NOT_REFRESHABLE, now, **names,
                             error_code="NotRefreshable",
                             error_message=f"dataset {dataset.name!r} is not refreshable (isRefreshable is "
                                           "false: DirectQuery or live connection?)")
            self._drop_pending(msg.dataset, job.job_id)
            return "not-refreshable"
        dedicated = workspace.is_on_dedicated_capacity if target.dedicated_capacity is None \
            else target.dedicated_capacity
        limit = target.daily_limit if target.daily_limit is not None else (None if dedicated else SHARED_DAILY_LIMIT)
        if limit is not None:
            starts = _recent(tables.get_json(entity, "starts", []) or [], now)
            if len(starts) >= limit:
                next_slot = parse_iso(starts[0]) + timedelta(hours=24)
                self._set_row(msg.dataset, job.job_id, status=Status.WAITING, **names,
                              detail=f"daily limit of {limit} refreshes in 24 h reached; next slot at "
                                     f"{iso(next_slot)}")
                self._requeue("job", msg.dataset, job.job_id, (next_slot - now).total_seconds() + 1)
                return "daily-limit"

        claim = new_claim(job, now, enhanced=bool(dedicated), timeout_minutes=target.timeout_minutes, names=names,
                          daily_limit=limit, attempts=msg.attempt)
        post_log = PostLog.from_dict(tables.get_json(entity, "post_log"))
        if post_log is not None and post_log.job_id == job.job_id:  # what earlier POSTs of this job left unresolved
            post_log.carry_into(claim)

        def take(data: dict[str, Any]) -> bool:
            current = pending_of(data)
            if current is None or current.job_id != job.job_id or tables.get_json(data, "running"):
                raise _Lost()
            tables.put_json(data, "pending", None)
            tables.put_json(data, "running", claim.to_dict())
            return True

        self.states.update(msg.dataset, take)
        return self._post(msg.dataset, claim, target)

    def _resume(self, msg: messages.JobMessage, running: RunningJob) -> str:
        """A job message for the job already holding the lease: a retry, a redelivery after a crash, or a
        duplicate copy of the message."""
        now = self.clock.now()
        if running.refresh_id:
            if running.is_overdue(now, CHECK_GRACE):  # the check chain's message is presumed lost
                log.warning("job %s of dataset %s: its check is overdue since %s; checking again now",
                            running.job_id, msg.dataset, running.next_check_at)
                self._send_check_message(msg.dataset, running, 0)
                return "resumed-check"
            if running.check_seq <= 1:  # the first check's message may never have been sent
                if self._redelivered():
                    return self._resend_live_check(msg, running, now)
                self._watch(msg, running, now)
            log.info("job %s of dataset %s: duplicate job message; refresh %s is followed by its checks",
                     running.job_id, msg.dataset, running.refresh_id)
            return "duplicate"
        if running.post_at:
            elapsed = (now - parse_iso(running.post_at)).total_seconds()
            # Redelivered (dequeue count > 1): the delivery that sent the POST failed or its instance died, so
            # nobody waits for that answer any more. A first delivery is another copy of the message: the
            # instance that sent the POST may still be waiting for its answer.
            if not self._redelivered() and elapsed < POST_GRACE:
                log.info("job %s of dataset %s: duplicate job message while its POST (sent %s) may be in flight; "
                         "looking again in %.0f s", running.job_id, msg.dataset, running.post_at, POST_GRACE - elapsed)
                messages.send(self.queue, msg, POST_GRACE - elapsed + 1)
                return "post-in-flight"
            stale = running.post_at
            running.unsure(stale, f"the POST sent at {stale} got no recorded answer (the instance sending it "
                                  "stopped)")
            running.post_at = None
            self._save_running(msg.dataset, running, post_at_was=stale)
        target = self._target(msg.dataset, running.job)
        return self._post(msg.dataset, running, target)

    def _post(self, dataset_key: str, running: RunningJob, target: Target) -> str:
        settled = self._adopt_own(dataset_key, running)
        if settled is not None:
            return settled
        job = running.job
        objects = job.objects()
        if running.enhanced:
            options = dict(target.enhanced_options)
            if job.refresh_type:
                options["type"] = job.refresh_type
            body = build_refresh_body(enhanced=True, options=options, objects=objects)
            running.posted = Posted(type=body.get("type"), tables=tuple(o["table"] for o in body.get("objects", [])))
        else:
            body = build_refresh_body(enhanced=False, options=None, objects=None,
                                      notify_option=target.notify_option)
        running.post_at = iso(self.clock.now())
        self._save_running(dataset_key, running, post_at_was=None)  # what is being sent, before it is sent
        try:
            refresh_id = self.powerbi.start_refresh(running.workspace_id, running.dataset_id, body)
        except pbi_errors.PowerBIError as exc:
            return self._post_failed(dataset_key, running, exc)
        return self._started(dataset_key, running, refresh_id)

    def _post_failed(self, dataset_key: str, running: RunningJob, exc: pbi_errors.PowerBIError) -> str:
        sent_at, running.post_at = running.post_at, None
        if isinstance(exc, pbi_errors.TransportError) and not exc.before_request and sent_at:
            running.unsure(sent_at, f"the POST sent at {sent_at} got no answer ({_describe(exc)})")
        if isinstance(exc, (pbi_errors.RefreshBusyError, pbi_errors.ThrottledError)) and self.metrics is not None:
            kind = "busy" if isinstance(exc, pbi_errors.RefreshBusyError) else "429"
            self.metrics.record_throttled(dataset_key, kind)
        if isinstance(exc, pbi_errors.RefreshBusyError):
            settled = self._adopt_own(dataset_key, running)  # busy: perhaps with the refresh our unanswered POST
            return settled if settled is not None else self._busy(dataset_key, running, exc)  # started
        if isinstance(exc, pbi_errors.ThrottledError):
            delay = self._throttle_delay(exc)
            return self._back_to_pending(dataset_key, running, delay,
                                         f"Power BI throttled the request (429); retrying in {delay:.0f} s", exc)
        if isinstance(exc, pbi_errors.DailyLimitError):
            delay = self._next_free_slot(running)
            return self._back_to_pending(dataset_key, running, delay,
                                         "Power BI's daily refresh limit is reached; waiting for the next "
                                         f"free slot in {delay:.0f} s", exc)
        if _may_retry(exc, running.attempts + 1):
            running.attempts += 1
            self._save_running(dataset_key, running)
            return self._retry_job(dataset_key, running.job_id, running.attempts, exc)
        settled = self._adopt_own(dataset_key, running)  # an earlier POST without an answer may have started it
        return settled if settled is not None else self._start_failed(dataset_key, running.job, running, exc)

    def _busy(self, dataset_key: str, running: RunningJob, exc: pbi_errors.PowerBIError) -> str:
        """Another refresh is executing: wait for it (its expected end), or re-post soon if none shows."""
        try:
            history = self.powerbi.get_refresh_history(running.workspace_id, running.dataset_id, top=10)
        except pbi_errors.PowerBIError:
            history = None
        ours = {o["id"]: o.get("job_id", "?") for o in self._ours(dataset_key)}
        seen_running = any(e.state is RefreshState.RUNNING for e in history or ())
        running.busy_tries = running.busy_tries if seen_running else running.busy_tries + 1
        wait = timing.busy_wait(history, self.clock.now(), running.busy_tries, self.rng, ours)
        return self._back_to_pending(dataset_key, running, wait.delay, wait.detail, exc)

    def _started(self, dataset_key: str, running: RunningJob, refresh_id: str,
                 adopted_reason: str | None = None) -> str:
        now = self.clock.now()
        running.refresh_id = refresh_id
        running.started_at = running.started_at or iso(now)
        running.post_at = None
        running.adopted, running.adopted_reason = adopted_reason is not None, adopted_reason
        running.estimate = timing.estimate(self.outcomes.recent_durations(dataset_key))
        delay = timing.first_check_delay(running.estimate)
        running.check_seq += 1
        running.next_check_at = iso(now + timedelta(seconds=delay))

        lag: list[float | None] = [None]

        def save(data: dict[str, Any]) -> bool:
            current = _running_of(data)
            if not current or current.job_id != running.job_id or current.refresh_id is not None:
                raise _Lost()  # another copy of the message recorded the refresh (and sent its check) first
            lag[0] = _commit_to_start(data, running, now) if adopted_reason is None else None
            tables.put_json(data, "running", running.to_dict())
            tables.put_json(data, "starts", [*_recent(tables.get_json(data, "starts", []) or [], now), iso(now)])
            tables.put_json(data, "ours", remember(tables.get_json(data, "ours", []) or [], refresh_id,
                                                   running.job_id, iso(now)))
            return True

        self.states.update(dataset_key, save)  # saved before its check message is sent
        if lag[0] is not None and self.metrics is not None:
            self.metrics.record_commit_to_start(dataset_key, lag[0])
        self._send_check_message(dataset_key, running, delay)
        self._set_row(dataset_key, running.job_id, status=Status.RUNNING, started_at=running.started_at,
                      request_id=refresh_id, attempts=running.attempts + 1, adopted=running.adopted,
                      adopted_reason=adopted_reason, detail=None, **row_fields(running))
        if adopted_reason:
            log.warning("refresh adopted: dataset=%s job=%s refresh_id=%s reason=%s", dataset_key, running.job_id,
                        refresh_id, adopted_reason)
        else:
            log.info("refresh started: dataset=%s job=%s refresh_id=%s type=%s tables=%s first_check=%.0fs",
                     dataset_key, running.job_id, refresh_id, "enhanced" if running.enhanced else "standard",
                     ",".join(running.job.objects() or ["<whole model>"]), delay)
        return "adopted" if adopted_reason else "started"

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

    def _ours(self, dataset_key: str) -> list[dict[str, str]]:
        return tables.get_json(self.states.get(dataset_key), "ours", []) or []

    def _adopt_own(self, dataset_key: str, running: RunningJob) -> str | None:
        """With a POST of this job whose answer was never seen: adopt the refresh it started if the history
        shows it; if the history cannot be read, look again later (posting now could start a second refresh
        that no row describes). None: no such POST, or none of its refreshes in the history; go on."""
        if not running.unsure_since:
            return None
        try:
            found = find_own_refresh(self.powerbi, running, {o["id"] for o in self._ours(dataset_key)})
        except pbi_errors.PowerBIError as exc:
            return self._history_unreadable(dataset_key, running, exc)
        if found is None:
            return None
        return self._started(dataset_key, running, found.refresh.request_id, adopted_reason=found.reason)

    def _history_unreadable(self, dataset_key: str, running: RunningJob, exc: pbi_errors.PowerBIError) -> str:
        why = (f"the POST sent at {running.unsure_since} got no answer and Power BI's refresh history, which "
               f"would show whether it started a refresh, could not be read ({_describe(exc)})")
        log.info("job %s of dataset %s: %s; not posting again before it can be read", running.job_id, dataset_key,
                 why)
        if isinstance(exc, pbi_errors.ThrottledError):
            delay = self._throttle_delay(exc)
            return self._back_to_pending(dataset_key, running, delay, f"{why}; looking again in {delay:.0f} s", exc)
        if _may_retry(exc, running.attempts + 1):
            running.attempts += 1
            self._save_running(dataset_key, running)
            return self._retry_job(dataset_key, running.job_id, running.attempts, exc)
        return self._start_failed(dataset_key, running.job, running, pbi_errors.PowerBIError(
            f"{why}; whether that refresh ran is unknown: see Power BI's refresh history", code="HistoryUnreadable",
            status=exc.status,
            request_id=exc.request_id))

    def _retry_job(self, dataset_key: str, job_id: str, attempt: int, exc: pbi_errors.PowerBIError) -> str:
        delay = timing.backoff(attempt, self.rng)
        self._set_row(dataset_key, job_id, status=Status.WAITING, attempts=attempt, request_id=exc.request_id,
                      detail=f"Power BI call failed ({_describe(exc)}); retry {attempt} in {delay:.0f} s")
        log.info("job %s of dataset %s: %s; retry %s in %.0f s", job_id, dataset_key, _describe(exc), attempt, delay)
        self._requeue("job", dataset_key, job_id, delay, attempt=attempt)
        return "retry"

    def _next_free_slot(self, running: RunningJob) -> float:
        now = self.clock.now()
        try:
            history = self.powerbi.get_refresh_history(running.workspace_id, running.dataset_id, top=HISTORY_TOP)
        except pbi_errors.PowerBIError:
            return 3600.0
        day_ago = now - timedelta(hours=24)
        starts = sorted(e.start_time for e in history if e.start_time and e.start_time > day_ago)
        limit = running.daily_limit or SHARED_DAILY_LIMIT
        if len(starts) >= limit:
            return max(60.0, float((starts[-limit] + timedelta(hours=24) - now).total_seconds()) + 1)
        return 900.0

    @staticmethod
    def _lease_wait(running: RunningJob, now: datetime) -> float:
        if running.next_check_at:  # look again just after the running job's next check
            return min(max((parse_iso(running.next_check_at) - now).total_seconds() + 5.0, 10.0), 600.0)
        return 30.0

    def _save_running(self, dataset_key: str, running: RunningJob, *, post_at_was: str | bool | None = False) -> (
            None):
        """Write the record. ``post_at_was`` (a value or None): only if the stored ``post_at`` is still that and
        no refresh is recorded, so of several copies of a message only one goes on to POST."""
        def save(data: dict[str, Any]) -> bool:
            current = _running_of(data)
            if not current or current.job_id != running.job_id:
                raise _Lost()
            if post_at_was is not False and (current.post_at != post_at_was or current.refresh_id is not None):
                raise _Lost()  # another copy of this message is sending the POST (or has): one POST only
            tables.put_json(data, "running", running.to_dict())
            return True

        self.states.update(dataset_key, save)

    def _reject(self, reason: str, body: str | bytes, message_id: str | None) -> None:
        now = self.clock.now()
        job_id = uuid.uuid4().hex
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        self.outcomes.create("_rejected", job_id, now, {
            "status": str(Status.REJECTED), "trigger": "queue", "ended_at": iso(now), "error_code": "BadMessage",
            "error_message": reason, "message_id": message_id or "", "message_body": text[:2000],
        })
        log.error("rejected queue message %s: %s", message_id, reason)


def _commit_to_start(entity: dict[str, Any], running: RunningJob, now: datetime) -> float | None:
    """Oldest commit of the job to this start, from the freshness record on the entity (no extra read)."""
    from refresh.monitoring.freshness_tracker import commit_to_start_seconds

    sources = {t: {"first_version": s.first_version, "last_version": s.last_version}
               for t, s in running.job.sources.items()}
    try:
        return commit_to_start_seconds(entity, sources, now) if sources else None
    except (ValueError, TypeError, KeyError):
        return None


def _job_of(entity: Any, job_id: str) -> PendingJob | None:
    """The job ``job_id`` as the dataset's state holds it (running or pending), or None."""
    running = _running_of(entity)
    if running is not None and running.job_id == job_id:
        return running.job
    pending = pending_of(entity)
    return pending if pending is not None and pending.job_id == job_id else None


def _may_retry(exc: pbi_errors.PowerBIError, attempt: int) -> bool:
    budget = MAX_TOKEN_ATTEMPTS if exc.before_request else MAX_TRANSIENT_ATTEMPTS
    return exc.is_retryable and attempt < budget

