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
from refresh.core.records import CorruptRecord, check_fields
from refresh.jobs.job_model import PendingJob
from refresh.jobs.outcomes import RowFields

MAX_MODEL_TABLES = 200   # more than this: refresh the whole model
MAX_LIST = 20            # triggers, requesters, reasons kept per job
MAX_TEXT = 500           # characters of one requester or reason
MAX_SOURCES = 500        # source tables per job beyond which the whole model is refreshed


@dataclass(frozen=True)
class Posted:
    """What an enhanced POST asked for (its body's ``type`` and ``objects`` tables), to recognise its refresh
    in Power BI's history when its answer was never seen."""

    type: str | None = None
    tables: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "tables": list(self.tables)}

    @classmethod
    def from_dict(cls, data: Any) -> Posted | None:
        if not isinstance(data, dict):
            return None
        kind, tables = data.get("type"), data.get("tables")
        return cls(type=kind if isinstance(kind, str) else None,
                   tables=tuple(str(t) for t in tables) if isinstance(tables, list) else ())


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
    posted: Posted | None = None  # enhanced POSTs: what the last one asked for (to match)
    unsure_posted: Posted | None = None  # ``posted`` of the POST at ``unsure_since``
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
        data["posted"] = self.posted.to_dict() if self.posted else None
        data["unsure_posted"] = self.unsure_posted.to_dict() if self.unsure_posted else None
        data["check_token"] = self.check_token
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningJob:
        """The record from its stored form; :class:`~refresh.core.records.CorruptRecord` (naming the field) when a
        field is missing or of the wrong type, or a time cannot be read."""
        check_fields(cls, data, "running", skip=frozenset({"posted", "unsure_posted", "extra", "check_seq"}))
        for name in ("claimed_at", "lease_until", "timeout_at"):
            try:
                parse_iso(data[name])
            except ValueError:
                raise CorruptRecord("running", f"field {name!r} is {str(data[name])[:40]!r}, not a time") from None
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["job"] = PendingJob.from_dict(data["job"], "running.job")
        values["posted"] = Posted.from_dict(data.get("posted"))
        values["unsure_posted"] = Posted.from_dict(data.get("unsure_posted"))
        extra = {k: v for k, v in data.items() if k not in known and k != "check_token"}
        if "check_seq" not in data and data.get("check_token"):  # a record written before check_seq
            values["check_seq"] = 1
        values.setdefault("attempts", 0)
        return cls(**values, extra=extra)


@dataclass
class PostLog:
    """What a job's earlier POSTs left unresolved when it gave its claim back (the state entity's ``post_log``),
    so the next claim of the same job still knows an unanswered POST may have started a refresh."""

    job_id: str
    unsure_since: str | None = None
    unsure_reason: str | None = None
    busy_tries: int = 0
    unsure_posted: Posted | None = None

    @classmethod
    def of(cls, running: RunningJob) -> PostLog:
        return cls(job_id=running.job_id, unsure_since=running.unsure_since, unsure_reason=running.unsure_reason,
                   busy_tries=running.busy_tries, unsure_posted=running.unsure_posted)

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "unsure_since": self.unsure_since, "unsure_reason": self.unsure_reason,
                "busy_tries": self.busy_tries,
                "unsure_posted": self.unsure_posted.to_dict() if self.unsure_posted else None}

    @classmethod
    def from_dict(cls, data: Any) -> PostLog | None:
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
            return None
        since, reason = data.get("unsure_since"), data.get("unsure_reason")
        return cls(job_id=data["job_id"], unsure_since=since if isinstance(since, str) else None,
                   unsure_reason=reason if isinstance(reason, str) else None,
                   busy_tries=int(data.get("busy_tries") or 0),
                   unsure_posted=Posted.from_dict(data.get("unsure_posted")))

    def carry_into(self, claim: RunningJob) -> None:
        """A new claim of the same job starts from what its earlier POSTs left unresolved."""
        claim.unsure_since, claim.unsure_reason = self.unsure_since, self.unsure_reason
        claim.busy_tries, claim.unsure_posted = self.busy_tries, self.unsure_posted


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
    """The record written when a job takes the dataset's lease (the POST is about to be sent); ``names``:
    ``workspace_id``, ``workspace_name``, ``dataset_id``, ``dataset_name``."""
    return RunningJob(job_id=job.job_id, claimed_at=iso(now), job=capped_job(job), enhanced=enhanced,
                      lease_until=iso(now + timedelta(minutes=timeout_minutes + 15)),
                      timeout_at=iso(now + timedelta(minutes=timeout_minutes)), daily_limit=daily_limit,
                      attempts=attempts, workspace_id=names["workspace_id"], workspace_name=names["workspace_name"],
                      dataset_id=names["dataset_id"], dataset_name=names["dataset_name"])
