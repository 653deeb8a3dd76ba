"""Following a running refresh: the ``check`` message chain (part of the worker, see refresh/jobs/worker.py).

``check_seq`` numbers the live check; its token is saved before its message is sent. A copy whose
token is not the live one is dropped, except the live token's direct predecessor (and the job message
before the first check), which waits until the live check is overdue by :data:`CHECK_GRACE` and then
takes over: its instance may have died between saving the token and sending the message. A redelivered
copy (dequeue count > 1: the delivery before it did not finish) sends the live check at once. Advancing
the chain is guarded by the token read, so of two copies handled at once only one goes on.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import iso, parse_iso
from refresh.jobs import messages, timing
from refresh.jobs.endings import Endings, _describe, _Lost, _running_of
from refresh.jobs.outcomes import Status
from refresh.jobs.running import RunningJob, parse_check_seq
from refresh.powerbi import errors as pbi_errors
from refresh.powerbi.models import RefreshState

log = logging.getLogger("refresh.jobs.worker")

MAX_CHECK_ERRORS = 10
THROTTLE_DELAY = 60.0
CHECK_GRACE = 60.0             # a check this late is presumed lost
_STATE_TO_STATUS = {
    RefreshState.COMPLETED: Status.COMPLETED,
    RefreshState.FAILED: Status.FAILED,
    RefreshState.CANCELLED: Status.CANCELLED,
    RefreshState.TIMED_OUT: Status.TIMED_OUT,
    RefreshState.DISABLED: Status.DISABLED,
}


class Checks(Endings):
    """The check chain of a running refresh. Mixed into the Worker."""

    powerbi: Any
    rng: random.Random
    max_retry_after: float

    def _on_check(self, msg: messages.JobMessage) -> str:
        running = _running_of(self.states.get(msg.dataset))
        if not running or running.job_id != msg.job_id or not running.refresh_id:
            log.info("check of job %s (dataset %s): the job no longer runs; dropped", msg.job_id, msg.dataset)
            return "stale"
        now = self.clock.now()
        if msg.sent_at != running.check_token:
            if not running.is_overdue(now, CHECK_GRACE):
                if parse_check_seq(msg.sent_at) == running.check_seq - 1:
                    if self._redelivered():
                        return self._resend_live_check(msg, running, now)
                    self._watch(msg, running, now)  # its successor may never have been sent: watch it
                log.info("check of job %s (dataset %s): not the live check (%s); dropped", msg.job_id,
                         msg.dataset, running.check_token)
                return "stale"
            log.warning("check of job %s (dataset %s): the live check is overdue since %s; taking over",
                        msg.job_id, msg.dataset, running.next_check_at)
        try:
            status = self._read_refresh(running)
        except pbi_errors.ThrottledError as exc:
            return self._next_check(msg.dataset, running, self._throttle_delay(exc))
        except (pbi_errors.TokenError, pbi_errors.TransportError) as exc:
            if not exc.before_request:  # a GET that got no answer: counted like any transient error
                return self._check_failed(msg.dataset, running, exc, now)
            # no token (the identity endpoint is down): the refresh runs on; never end the job for it
            running.token_errors += 1
            if now >= parse_iso(running.timeout_at):
                return self._timed_out(msg.dataset, running, now)
            log.warning("check of job %s: no Power BI token (%s); checking again later", running.job_id, exc)
            return self._next_check(msg.dataset, running, timing.backoff(min(running.token_errors, 6), self.rng,
                                                                         cap=300.0))
        except pbi_errors.PowerBIError as exc:
            return self._check_failed(msg.dataset, running, exc, now)
        running.check_errors = running.token_errors = 0
        if status is not None and status.state != RefreshState.RUNNING:
            return self._finish(msg.dataset, running, _STATE_TO_STATUS[status.state], now, status=status)
        if now >= parse_iso(running.timeout_at):
            return self._timed_out(msg.dataset, running, now)
        elapsed = (now - parse_iso(running.started_at or running.claimed_at)).total_seconds()
        return self._next_check(msg.dataset, running, timing.next_check_delay(elapsed, running.estimate))

    def _throttle_delay(self, exc: pbi_errors.PowerBIError) -> float:
        """How long to wait after a 429: its Retry-After (else a minute), at least 1 s, at most the cap."""
        return min(max(exc.retry_after or THROTTLE_DELAY, 1.0), self.max_retry_after)

    def _read_refresh(self, running: RunningJob) -> Any:
        """The job's refresh as Power BI reports it now (None: not in the history)."""
        ws, ds, rid = running.workspace_id, running.dataset_id, running.refresh_id
        assert rid is not None
        if running.enhanced:
            return self.powerbi.get_refresh(ws, ds, rid)
        return self.powerbi.find_refresh(ws, ds, rid, top=10)

    def _end_unfollowed(self, dataset_key: str, running: RunningJob, now: datetime, *, error_code: str,
                        why: str, resume: bool, follow_up: bool = True) -> str:
        """The job's message chain broke (its message was given up, or its lease expired): ask Power BI once
        and record the truth. Its refresh ended: that end. Still running: past the job's timeout, TimedOut as
        the check chain would have recorded; else, with ``resume``, followed again by a new live check. What
        cannot be known is said: Failed with ``error_code``, and the error message says what is unknown."""
        rid = running.refresh_id
        if rid:
            try:
                status = self._read_refresh(running)
            except pbi_errors.PowerBIError as exc:
                note = (f"; refresh {rid} could not be read ({_describe(exc)}): whether it completed is unknown, "
                        "see the dataset's refresh history in Power BI")
            else:
                if status is not None and status.state != RefreshState.RUNNING:
                    return self._finish(dataset_key, running, _STATE_TO_STATUS[status.state], now, status=status,
                                        follow_up=follow_up)
                if status is not None and now >= parse_iso(running.timeout_at):
                    return self._timed_out(dataset_key, running, now, follow_up=follow_up)
                if status is not None and resume:
                    log.warning("job %s of dataset %s: %s; its refresh %s still runs, so it is followed again",
                                running.job_id, dataset_key, why, rid)
                    return self._next_check(dataset_key, running, timing.backoff(1, self.rng))
                note = (f"; refresh {rid} was still running: its end is unknown, see the dataset's refresh "
                        "history in Power BI" if status is not None else
                        f"; refresh {rid} is not in Power BI's refresh history: its end is unknown")
        elif running.unsure_since or running.post_at:
            note = (f"; the POST sent at {running.unsure_since or running.post_at} got no answer: whether it started "
                    "a refresh is unknown, see the dataset's refresh history in Power BI")
        else:
            note = "; no refresh had been started"
        return self._finish(dataset_key, running, Status.FAILED, now, error_code=error_code, error_message=why + note,
                            follow_up=follow_up)

    def _check_failed(self, dataset_key: str, running: RunningJob, exc: pbi_errors.PowerBIError,
                      now: datetime) -> str:
        running.check_errors += 1
        if exc.is_retryable and running.check_errors < MAX_CHECK_ERRORS:
            return self._next_check(dataset_key, running, timing.backoff(running.check_errors, self.rng))
        return self._finish(dataset_key, running, Status.FAILED, now, error_code=exc.code or type(exc).__name__,
                            error_message=f"lost track of the refresh: {_describe(exc)}")

    def _next_check(self, dataset_key: str, running: RunningJob, delay: float) -> str:
        """Advance the check chain: save the next token (only if the chain is still where we read it),
        then send its message."""
        now = self.clock.now()
        expected = running.check_token
        running.check_seq += 1
        running.next_check_at = iso(now + timedelta(seconds=delay))

        def save(data: dict[str, Any]) -> bool:
            current = _running_of(data)
            if not current or current.job_id != running.job_id or current.check_token != expected:
                raise _Lost()  # another copy advanced the chain first
            tables.put_json(data, "running", running.to_dict())
            return True

        self.states.update(dataset_key, save)
        self._send_check_message(dataset_key, running, delay)
        return "running"

    def _timed_out(self, dataset_key: str, running: RunningJob, now: datetime, *, follow_up: bool = True) -> str:
        minutes = round((parse_iso(running.timeout_at) - parse_iso(running.claimed_at)).total_seconds() / 60)
        if running.enhanced:
            try:
                self.powerbi.cancel_refresh(running.workspace_id, running.dataset_id, running.refresh_id)
                message = f"refresh exceeded timeout_minutes={minutes}; cancelled"
            except pbi_errors.PowerBIError as exc:
                message = f"refresh exceeded timeout_minutes={minutes}; cancelling failed: {_describe(exc)}"
        else:
            message = (f"refresh exceeded timeout_minutes={minutes}; a standard refresh cannot be cancelled, "
                       "Power BI may still be running it")
        return self._finish(dataset_key, running, Status.TIMED_OUT, now, error_code="TimedOut", error_message=message,
                            follow_up=follow_up)

    def _redelivered(self) -> bool:
        """The message being handled was delivered before and that delivery did not finish (its instance
        died, or it failed): whatever it was to send after its last write may never have been sent."""
        return getattr(getattr(self, "_delivery", None), "count", 1) > 1

    def _resend_live_check(self, msg: messages.JobMessage, running: RunningJob, now: datetime) -> str:
        """The delivery that saved the live check's token stopped before sending it, perhaps: send it (at its
        time). A second copy of the live check is harmless (advancing the chain is guarded by the token)."""
        assert running.next_check_at is not None
        delay = max(0.0, (parse_iso(running.next_check_at) - now).total_seconds())
        log.info("%s message of job %s (dataset %s) redelivered: its handler stopped after saving the live check "
                 "%s; sending that check (in %.0f s)", msg.type, running.job_id, msg.dataset, running.check_token,
                 delay)
        self._send_check_message(msg.dataset, running, delay)
        return "resumed-check"

    def _watch(self, msg: messages.JobMessage, running: RunningJob, now: datetime) -> None:
        """Re-queue this message to arrive when the live check would be overdue (it then takes over)."""
        assert running.next_check_at is not None
        delay = (parse_iso(running.next_check_at) - now).total_seconds() + CHECK_GRACE + 1
        messages.send(self.queue, msg, max(delay, 1.0))

    def _send_check_message(self, dataset_key: str, running: RunningJob, delay: float) -> None:
        token = running.check_token
        assert token is not None
        message = messages.JobMessage(type="check", dataset=dataset_key, job_id=running.job_id, sent_at=token)
        messages.send(self.queue, message, delay)
