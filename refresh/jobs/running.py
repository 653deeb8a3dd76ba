"""The running job: the dataset's lease, stored as JSON in the state entity's ``running`` property.

:class:`RunningJob` is the typed record the worker passes around; :meth:`RunningJob.to_dict` and
:meth:`RunningJob.from_dict` are the only places its stored shape is written or read (the keys the
HTTP API shows, ``job_id``, ``claimed_at``, ``started_at``, ``refresh_id``, ``timeout_at``, ``job``
and ``enhanced``, keep their names).

What the record says about the POST (issue 9 items 1 and 6: adopt only a refresh that can be ours):

* ``post_at``: the send time of the POST in flight; cleared when its answer is recorded. Found set
  by a later message, it means the instance died (or timed out) without recording the answer.
* ``unsure_since``: the send time of the earliest POST of this job whose answer was never seen (a
  timeout, a dropped connection, a crash). Only then may a refresh in Power BI's history be taken
  as this job's own (``adopted``), and only one that started after that time, of this job's kind
  (``ViaApi``/``ViaEnhancedApi``) and not recorded by another job of this app.

The check chain (issue 9 item 5): ``check_seq`` numbers the live ``check`` message; its token
(``sent_at`` of the message) is ``<time>#<seq>``. The new token is saved *before* its message is
sent, so a saved token always has, or had, a message, and ``next_check_at`` says when it is due.

Bounds (issue 9 item 12): the job inside is capped when claimed (:func:`capped_job`), so the record
and the outcome row stay far below Table Storage's limits whatever was merged into the job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from refresh.core.clock import iso, parse_iso
from refresh.jobs.job_model import PendingJob
from refresh.jobs.outcomes import RowFields

MAX_MODEL_TABLES = 200   # more than this: refresh the whole model
MAX_LIST = 20            # triggers, requesters, reasons kept per job
MAX_TEXT = 500           # characters of one requester or reason
MAX_SOURCES = 500        # source tables per job beyond which the whole model is refreshed


@dataclass
class RunningJob:
    """The job holding a dataset's lease, from its claim until its outcome is recorded."""

    job_id: str
    claimed_at: str
    job: PendingJob
    enhanced: bool
    lease_until: str
    timeout_at: str
    workspace_id: str
    workspace_name: str
    dataset_id: str
    dataset_name: str
    daily_limit: int | None = None
    attempts: int = 0
    post_at: str | None = None
    unsure_since: str | None = None
    unsure_reason: str | None = None
    busy_tries: int = 0
    posted: dict[str, Any] | None = None  # enhanced POSTs: the body's ``type`` and ``objects`` tables (to match)
    unsure_posted: dict[str, Any] | None = None  # ``posted`` of the POST at ``unsure_since``
    refresh_id: str | None = None
    started_at: str | None = None
    estimate: float | None = None
    adopted: bool = False
    adopted_reason: str | None = None
    check_seq: int = 0
    next_check_at: str | None = None
    check_errors: int = 0
    token_errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of older records, kept as they were

    @property
    def check_token(self) -> str | None:
        """The ``sent_at`` of the live check message (None before the first check)."""
        if not self.check_seq or not self.next_check_at:
            return None
        return f"{self.next_check_at}#{self.check_seq}"

    def is_overdue(self, now: datetime, grace: float) -> bool:
        """The live check should have been handled ``grace`` seconds ago: its message is presumed lost."""
        if not self.next_check_at:
            return True
        return now >= parse_iso(self.next_check_at) + timedelta(seconds=grace)

    def unsure(self, since: str, reason: str) -> None:
        """Remember a POST whose answer was not seen (the earliest one counts)."""
        if self.unsure_since is None or parse_iso(since) < parse_iso(self.unsure_since):
            self.unsure_since, self.unsure_reason, self.unsure_posted = since, reason, self.posted

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("job", "extra")}
        data["job"] = self.job.to_dict()
        data["check_token"] = self.check_token
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningJob:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["job"] = PendingJob.from_dict(data["job"])
        extra = {k: v for k, v in data.items() if k not in known and k != "check_token"}
        if "check_seq" not in data and data.get("check_token"):  # a record written before check_seq
            values["check_seq"] = 1
        values.setdefault("attempts", 0)
        return cls(**values, extra=extra)


def parse_check_seq(token: str) -> int | None:
    """The sequence number of a check message's token ``<time>#<seq>`` (None for other tokens)."""
    _, sep, tail = token.rpartition("#")
    return int(tail) if sep and tail.isdigit() else None


def capped_job(job: PendingJob) -> PendingJob:
    """``job`` bounded for storage: too many model tables become the whole model; lists and texts are cut."""
    data = asdict(job)
    capped = PendingJob.from_dict(data)
    if len(capped.model_tables) > MAX_MODEL_TABLES:
        capped.whole_model, capped.model_tables = True, []
    if len(capped.sources) > MAX_SOURCES:
        capped.whole_model, capped.model_tables = True, []
    for name in ("triggers", "requested_by", "reasons"):
        setattr(capped, name, [str(v)[:MAX_TEXT] for v in getattr(capped, name)[:MAX_LIST]])
    return capped


def row_fields(running: RunningJob) -> RowFields:
    """The outcome-row fields that describe a running job (names, what it refreshes, why)."""
    job = running.job
    return {"workspace_id": running.workspace_id, "workspace_name": running.workspace_name,
            "dataset_id": running.dataset_id, "dataset_name": running.dataset_name,
            "refresh_type": "enhanced" if running.enhanced else "standard",
            "sources": sources_of(job), "model_tables": job.objects() or [], "triggers": job.triggers,
            "requested_by": job.requested_by, "reasons": job.reasons}


def sources_of(job: PendingJob) -> dict[str, Any]:
    return {t: {"first_version": s.first_version, "last_version": s.last_version, "commits": s.commits}
            for t, s in job.sources.items()}


def new_claim(job: PendingJob, now: datetime, *, enhanced: bool, timeout_minutes: int, names: dict[str, str],
              daily_limit: int | None, attempts: int) -> RunningJob:
    """The record written when a job takes the dataset's lease (the POST is about to be sent)."""
    return RunningJob(job_id=job.job_id, claimed_at=iso(now), job=capped_job(job), enhanced=enhanced,
                      lease_until=iso(now + timedelta(minutes=timeout_minutes + 15)),
                      timeout_at=iso(now + timedelta(minutes=timeout_minutes)), daily_limit=daily_limit,
                      attempts=attempts, **names)
