"""Pending refresh jobs: at most one per dataset, coalescing every change that arrives before it runs.

State lives in ``STATE_TABLE``, one entity per dataset (PartitionKey ``dataset``, RowKey the dataset
key), updated only with ETag guards:

* ``pending`` (JSON): the job waiting to run (see :class:`PendingJob`), or absent;
* ``enqueued``: whether the job's queue message was sent (a crash between recording and sending is
  repaired by the sweep, see :meth:`DatasetStates.repair_unsent`);
* ``running`` (JSON): the job holding the dataset's lease (refresh/jobs/worker.py; read here only through
  :func:`running_of`); ``running_joins`` (JSON): who joined it since (a manual or scheduled request
  that asks for nothing more than the running refresh joins it rather than making a follow-up);
* ``refreshed`` (JSON ``{table: version}``) and ``last_success_at``: what the last completed
  refreshes contained (for ``schedule_skip_if_unchanged``);
* ``starts`` (JSON list): when this app started refreshes in the last 24 h (daily limit);
* ``covered`` (JSON ``{table: version}``): the newest Delta version of each source table already
  put into a job of this dataset. It is written in the same ETag-guarded write as the job, so a
  re-run of detection after a crash never puts the same commit into a second job, even when the
  first job has already been taken by the worker.

What a job holds is capped (:func:`bound`, applied whenever a job is stored): too many model tables
widen it to the whole model; requesters and reasons beyond the caps are counted, not listed. So no
write of a job, its copy in ``running`` or its outcome row can exceed Table Storage's limits.

The queue message is sent once, when a job is created, delayed until the job is due
(``debounce_seconds`` after the latest change, but never later than ``max_delay_seconds`` after the
first). Later changes only update the entity; the worker re-checks ``due_at`` and re-queues the
remainder of the wait (refresh/jobs/worker.py). While the events of a burst are still arriving for
commits a pass already read ahead of them (detection working through a backlog of events), the
detector keeps a commit-only job from falling due with :meth:`DatasetStates.postpone`
(refresh/detection/detector.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso, parse_iso
from refresh.core.records import CorruptRecord
from refresh.jobs import messages
from refresh.jobs.job_model import (
    PendingJob,
    SourceChange,
    add_unique,
    bound,
)
from refresh.jobs.running import RunningJob
from refresh.monitoring.freshness import CommitTime, FreshnessRecord, record_commits

log = logging.getLogger(__name__)

PK_DATASET = "dataset"
MAX_CONFLICT_RETRIES = 20



@dataclass(frozen=True)
class Change:
    """One contribution to a dataset's pending job."""

    trigger: str
    debounce_seconds: int
    max_delay_seconds: int
    model_tables: frozenset[str] | None        # None = the whole model
    table: str | None = None                    # commit changes: the source table ...
    versions: tuple[int, ...] = ()              # ... and its data-changing versions
    requested_by: str | None = None
    reason: str | None = None
    refresh_type: str | None = None
    workspace: str | None = None
    dataset: str | None = None
    scheduled_for: str | None = None
    commit_times: tuple[CommitTime, ...] = ()   # commit changes: when each version was committed (freshness)


@dataclass(frozen=True)
class Recorded:
    """Result of :meth:`DatasetStates.record`."""

    job_id: str | None     # None when nothing new was recorded (all versions already covered)
    created: bool          # a new job (and a queue message) was created
    due_at: str | None = None
    earlier: bool = False  # joined a pending job and made it due earlier (a message for the new time was sent)
    joined: str | None = None  # "pending" or "running": the job this request joined (None when created)


def running_of(entity: Any | None) -> RunningJob | None:
    """The dataset's running job (the lease), read defensively: None when there is none or when the
    stored record cannot be read (then nothing joins it; the worker deals with the record itself)."""
    try:
        running = running_record(entity)
    except CorruptRecord:
        return None
    return running if running is not None and running.job_id else None


@dataclass
class RunningJoins:
    """Who joined the running job ``job_id`` since it was claimed (the ``running_joins`` property).

    Kept apart from ``running`` (which the worker rewrites from its own copy) so no join is lost.
    """

    job_id: str
    triggers: list[str] = field(default_factory=list)
    requested_by: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    omitted: int = 0

    def to_dict(self) -> dict[str, Any]:
        """As stored, within a job's caps (:func:`bound`)."""
        capped = bound({"triggers": self.triggers, "requested_by": self.requested_by, "reasons": self.reasons,
                        "omitted": self.omitted, "whole_model": True})
        return {"job_id": self.job_id, "triggers": capped["triggers"], "requested_by": capped["requested_by"],
                "reasons": capped["reasons"], "omitted": capped["omitted"]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningJoins:
        def texts(name: str) -> list[str]:
            value = data.get(name)
            return [str(v) for v in value] if isinstance(value, list) else []

        omitted = data.get("omitted")
        return cls(job_id=str(data["job_id"]), triggers=texts("triggers"), requested_by=texts("requested_by"),
                   reasons=texts("reasons"), omitted=omitted if isinstance(omitted, int) else 0)


def running_joins(entity: Any | None, job_id: str) -> RunningJoins:
    """Who joined the running job ``job_id`` (nobody when the stored joins are of another job or unreadable)."""
    try:
        data = tables.get_json(entity, "running_joins")
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("job_id") != job_id:
        return RunningJoins(job_id=job_id)
    return RunningJoins.from_dict(data)


def joined_running_job(entity: Any | None) -> PendingJob | None:
    """The running job with everyone who joined it since it was claimed (for its outcome row)."""
    running = running_of(entity)
    if running is None:
        return None
    job = PendingJob.from_dict(running.job.to_dict())
    joins = running_joins(entity, running.job_id)
    for name in ("triggers", "requested_by", "reasons"):
        add_unique(getattr(job, name), getattr(joins, name))
    job.omitted += joins.omitted
    return PendingJob.from_dict(job.to_dict())


class DatasetStates:
    """Reads and updates the per-dataset state entities."""

    def __init__(self, table: Any, queue: Any, clock: Clock,
                 on_created: Callable[[str, PendingJob], None] | None = None,
                 on_joined: Callable[[str, PendingJob], None] | None = None) -> None:
        self.table = table
        self.queue = queue
        self.clock = clock
        self.on_created = on_created  # e.g. create the job's outcome row (status Queued)
        self.on_joined = on_joined    # an explicit (manual, scheduled) request joined a pending job

    def get(self, dataset: str) -> Any | None:
        return tables.get_entity(self.table, PK_DATASET, tables.row_key(dataset))

    def pending(self, dataset: str) -> PendingJob | None:
        return pending_of(self.get(dataset))

    def record(self, dataset: str, change: Change) -> Recorded:
        """Merge ``change`` into the dataset's pending job (creating it if none), ETag-guarded.

        Idempotent for commit changes: versions already covered for that table are ignored.
        """
        for _ in range(MAX_CONFLICT_RETRIES):
            entity = self.get(dataset)
            now = self.clock.now()
            updated, result = _merge(entity, dataset, change, now)
            if updated is None:
                return result
            try:
                tables.write(self.table, updated, entity.metadata["etag"] if entity else None)
            except tables.Conflict:
                continue
            if result.created:
                created = pending_of(updated)
                assert created is not None and result.job_id is not None and result.due_at is not None
                if self.on_created is not None:
                    self.on_created(dataset, created)
                self._send(dataset, result.job_id, result.due_at)
            else:
                if result.joined == "running":
                    log.info("dataset %s: %s request joined running job %s (nothing changed since it started)",
                             dataset, change.trigger, result.job_id)
                if result.earlier:
                    # the message already queued is for the old due time; the worker drops whichever
                    # of the two arrives after the job has started
                    assert result.job_id is not None and result.due_at is not None
                    now = self.clock.now()
                    delay = (parse_iso(result.due_at) - now).total_seconds()
                    messages.send(self.queue, messages.JobMessage.new("job", dataset, result.job_id, now), delay)
                if change.trigger != "commit" and self.on_joined is not None:
                    joined = joined_running_job(updated) if result.joined == "running" else pending_of(updated)
                    if joined is not None:
                        self.on_joined(dataset, joined)
            return result
        raise tables.Conflict(f"dataset {dataset}: state kept changing under {MAX_CONFLICT_RETRIES} attempts")

    def _send(self, dataset: str, job_id: str, due_at: str) -> None:
        now = self.clock.now()
        delay = (parse_iso(due_at) - now).total_seconds()
        messages.send(self.queue, messages.JobMessage.new("job", dataset, job_id, now), delay)
        self._mark_sent(dataset, job_id)

    def _mark_sent(self, dataset: str, job_id: str) -> None:
        for _ in range(MAX_CONFLICT_RETRIES):
            entity = self.get(dataset)
            job = pending_of(entity)
            if entity is None or job is None or job.job_id != job_id or tables.value(entity, "enqueued"):
                return
            entity["enqueued"] = True
            try:
                tables.write(self.table, dict(entity), entity.metadata["etag"])
                return
            except tables.Conflict:
                continue

    UNSENT_FILTER = "(PartitionKey eq 'dataset' and enqueued eq false)"

    def repair_unsent(self, older_than_seconds: float = 60, candidates: Iterable[Any] | None = None) -> int:
        """Send the message of any pending job whose sender crashed before sending it.

        ``candidates``: entities already read with :data:`UNSENT_FILTER` (the sweep shares one query).
        """
        now = self.clock.now()
        repaired = 0
        if candidates is None:
            candidates = self.table.query_entities(self.UNSENT_FILTER)
        for entity in candidates:
            job = pending_of(entity)
            if job is None:
                continue
            if (now - parse_iso(job.created_at)).total_seconds() < older_than_seconds:
                continue
            dataset = tables.from_row_key(entity["RowKey"])
            log.warning("dataset %s: job %s had no queue message; sending it now", dataset, job.job_id)
            self._send(dataset, job.job_id, job.due_at)
            repaired += 1
        return repaired

    def postpone(self, dataset: str, job_id: str, due: datetime, max_delay_seconds: int) -> str | None:
        """Move the due time of the pending job ``job_id`` out to ``due`` (never beyond ``max_delay_seconds``
        after it was created, never earlier than it is), ETag-guarded. Only a job made of commit changes
        alone: an explicit request is never delayed. Returns the job's due time as stored, or None when
        that job is no longer pending (it started, or another job replaced it) or is not commit-only."""
        stored: list[str | None] = [None]

        def move(data: dict[str, Any]) -> bool:
            job = readable_pending(data)
            if job is None or job.job_id != job_id or job.triggers != ["commit"]:
                stored[0] = None
                return False
            target = min(due, parse_iso(job.created_at) + timedelta(seconds=max_delay_seconds))
            if target <= parse_iso(job.due_at):
                stored[0] = job.due_at
                return False
            job.due_at = stored[0] = iso(target)
            tables.put_json(data, "pending", job.to_dict())
            return True

        self.update(dataset, move)
        return stored[0]

    def update(self, dataset: str, mutate: Callable[[dict[str, Any]], bool]) -> Any | None:
        """Apply ``mutate`` to the entity (a dict) and write it ETag-guarded, retrying on conflicts
        (:func:`refresh.core.storage.update`; the entity is created if missing).

        ``mutate`` returns False to leave the entity unchanged. Returns the entity as written (or None).
        """
        return tables.update(self.table, PK_DATASET, tables.row_key(dataset), mutate, create=True,
                             attempts=MAX_CONFLICT_RETRIES, what=f"dataset {dataset}: state")


def _stored(entity: Any | None, column: str) -> Any:
    try:
        return tables.get_json(entity, column)
    except ValueError as exc:  # not JSON
        raise CorruptRecord(column, f"not JSON ({exc})") from None


def pending_of(entity: Any | None) -> PendingJob | None:
    """The dataset's pending job; :class:`CorruptRecord` when the stored record cannot be read."""
    data = _stored(entity, "pending")
    return PendingJob.from_dict(data) if data else None


def running_record(entity: Any | None) -> RunningJob | None:
    """The dataset's running job (the lease); :class:`CorruptRecord` when the stored record cannot be read."""
    data = _stored(entity, "running")
    return RunningJob.from_dict(data) if data else None


def readable_pending(entity: Any | None) -> PendingJob | None:
    """For the views: the pending job, or None when there is none or it cannot be read (logged)."""
    try:
        return pending_of(entity)
    except CorruptRecord as exc:
        log.error("dataset %s: %s", tables.from_row_key(str((entity or {}).get("RowKey", "?"))), exc)
        return None


QUARANTINE_SUFFIX = "_quarantined"


def quarantine(data: dict[str, Any], dataset: str) -> list[str]:
    """Set aside, in ``data`` (a state entity about to be written), every job record (``pending``, ``running``)
    that cannot be read: its stored text moves to ``<column>_quarantined`` (for a human to look at) and the
    column is emptied, so the dataset can refresh again. Returns what was set aside, one line each."""
    moved = []
    for column, read in (("pending", pending_of), ("running", running_record)):
        try:
            read(data)
        except CorruptRecord as exc:
            data[column + QUARANTINE_SUFFIX] = tables.raw_json(data, column)[:30_000]
            tables.put_json(data, column, None)
            moved.append(str(exc))
            log.error("dataset %s: %s; set aside as %s%s so the dataset can refresh again", dataset, exc, column,
                      QUARANTINE_SUFFIX)
    return moved


def _merge(entity: Any | None, dataset: str, change: Change, now: datetime) -> tuple[dict[str, Any] | None, Recorded]:
    covered: dict[str, int] = tables.get_json(entity, "covered", {}) or {}
    versions: tuple[int, ...] = ()
    if change.table is not None:
        seen = covered.get(change.table, -1)
        versions = tuple(sorted(v for v in change.versions if v > seen))
        if not versions:
            return None, Recorded(job_id=None, created=False)
        covered[change.table] = versions[-1]

    set_aside = False
    try:
        job = pending_of(entity)
    except CorruptRecord:  # set aside below, in this same write; the change makes a new job, nothing is lost
        job, set_aside = None, True
    if job is None and change.table is None and not set_aside:
        running = _joinable_running(entity, change, now)
        if running is not None:
            return _join_running(entity, running, change)
    created = job is None
    old_due = None if job is None else parse_iso(job.due_at)
    if job is None:
        job = PendingJob(job_id=uuid.uuid4().hex, trigger=change.trigger, created_at=iso(now),
                         last_change_at=iso(now), due_at=iso(now))
    job.last_change_at = iso(now)
    if change.trigger not in job.triggers:
        job.triggers.append(change.trigger)
    add_unique(job.requested_by, [change.requested_by] if change.requested_by else [])
    add_unique(job.reasons, [change.reason] if change.reason else [])
    if change.refresh_type:
        job.refresh_type = change.refresh_type
    for name in ("workspace", "dataset", "scheduled_for"):
        if getattr(change, name):
            setattr(job, name, getattr(change, name))
    if change.model_tables is None:
        job.whole_model = True
        job.model_tables = []
    elif not job.whole_model:
        job.model_tables = sorted(set(job.model_tables) | set(change.model_tables))
    if change.table is not None:
        src = job.sources.get(change.table)
        if src is None:
            job.sources[change.table] = SourceChange(versions[0], versions[-1], len(versions))
        else:
            src.first_version = min(src.first_version, versions[0])
            src.last_version = max(src.last_version, versions[-1])
            src.commits += len(versions)
    created_at = parse_iso(job.created_at)
    due = min(now + timedelta(seconds=change.debounce_seconds),
              created_at + timedelta(seconds=change.max_delay_seconds))
    if not created:
        # a later change never makes a job due earlier than an explicit request asked (manual = now)
        due = max(due, now) if change.trigger == "commit" else min(due, parse_iso(job.due_at))
    new_due = max(due, created_at)
    job.due_at = iso(new_due)

    data = dict(entity) if entity else {"PartitionKey": PK_DATASET, "RowKey": tables.row_key(dataset)}
    if set_aside:
        quarantine(data, dataset)
    tables.put_json(data, "pending", job.to_dict())
    tables.put_json(data, "covered", covered)
    if change.table is not None and change.commit_times:
        _note_commit_times(data, change.table, [c for c in change.commit_times if c.version in set(versions)])
    if created:
        data["enqueued"] = False
    return data, Recorded(job_id=job.job_id, created=created, due_at=job.due_at,
                          earlier=old_due is not None and new_due < old_due, joined=None if created else "pending")


def _note_commit_times(data: dict[str, Any], table: str, commits: list[CommitTime]) -> None:
    """The commits' times in the dataset's freshness record, in the same write as the job (no extra request)."""
    record = FreshnessRecord.from_entity(data)
    if commits and record_commits(record, table, commits):
        record.to_entity(data)


def _joinable_running(entity: Any | None, change: Change, now: datetime) -> RunningJob | None:
    """The running job an explicit (manual, scheduled) request can join instead of making a follow-up.

    Only when it would refresh nothing more: no pending job (any change recorded since the running job
    was claimed, a commit of a source table included, made one), the lease is alive, the running job
    covers the model tables asked for, and the refresh type is the same.
    """
    if change.trigger == "commit":
        return None
    running = running_of(entity)
    if running is None:
        return None
    if parse_iso(running.lease_until) <= now:
        return None  # an instance was lost: the worker abandons this job; a new one is needed
    job = running.job
    if (change.refresh_type or None) != (job.refresh_type or None):
        return None
    covered_tables = job.objects()
    if covered_tables is not None:  # the running job refreshes only some model tables
        if change.model_tables is None or not set(change.model_tables) <= set(covered_tables):
            return None
    return running


def _join_running(entity: Any, running: RunningJob, change: Change) -> tuple[dict[str, Any], Recorded]:
    joins = running_joins(entity, running.job_id)
    add_unique(joins.triggers, [change.trigger])
    add_unique(joins.requested_by, [change.requested_by] if change.requested_by else [])
    add_unique(joins.reasons, [change.reason] if change.reason else [])
    data = dict(entity)
    tables.put_json(data, "running_joins", joins.to_dict())
    return data, Recorded(job_id=running.job_id, created=False, due_at=running.job.due_at, joined="running")
