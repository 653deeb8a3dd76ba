"""Freshness tracking on storage: the glue between refresh/monitoring/freshness.py (pure) and the dataset
state entities (refresh/jobs/pending.py), alert delivery (refresh/monitoring/alerts.py) and metrics
(refresh/monitoring/metrics.py).

Every change is an ETag-guarded read-modify-write of the dataset's state entity, so transitions
survive restarts and are decided once even with several instances; the alert events a transition
causes are written to the entity's outbox in that same write and handed to the queue afterwards
(:meth:`FreshnessTracker.flush`; the timer re-flushes an outbox left by a crash, and the alerts
table turns a duplicate into a no-op).

Storage requests:

* :meth:`record_commits`: 1 read + 1 write per dataset and detection batch (0 extra when folded into
  the write that records the job, with :func:`note_commits`);
* :meth:`record_outcome`: 1 read + 1 write per finished job (0 extra when folded into the worker's
  release write, with :meth:`FreshnessTracker.note_outcome`), plus per event 1 row insert and 1 queue
  message, and 1 read + 1 write to empty the outbox;
* :meth:`tick` (timer, every minute): 1 query for all dataset entities; writes only on a transition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, parse_iso
from refresh.jobs.pending import PK_DATASET
from refresh.monitoring.freshness import (
    AlertEvent,
    CommitTime,
    DatasetFacts,
    Freshness,
    FreshnessRecord,
    RefreshResult,
    commit_time,
    freshness_of,
    record_commits,
    take_outbox,
    transition,
)

log = logging.getLogger(__name__)


def note_commits(entity: dict[str, Any], table: str, commits: Sequence[CommitTime]) -> bool:
    """Add ``commits`` of ``table`` to the freshness record on ``entity`` (a dict about to be written)."""
    record = FreshnessRecord.from_entity(entity)
    if not record_commits(record, table, commits):
        return False
    record.to_entity(entity)
    return True


def commit_times(infos: Sequence[Any], detected_at: datetime,
                 last_modified: Callable[[int], datetime | None] | None = None) -> list[CommitTime]:
    """The commit time of each data-changing commit among ``infos`` (refresh.detection.deltalog.CommitInfo):
    its own timestamp, else the commit file's last-modified time (``last_modified(version)``), else
    ``detected_at``."""
    out = []
    for info in infos:
        if not info.data_change:
            continue
        modified = last_modified(info.version) if last_modified is not None and info.timestamp is None else None
        out.append(commit_time(info.version, info.timestamp, modified, detected_at))
    return out


def result_from_running(running: Mapping[str, Any], status: str, ended_at: datetime, *,
                        error_code: str | None = None, error_message: str | None = None) -> RefreshResult:
    """A :class:`RefreshResult` from the worker's ``running`` claim (refresh/jobs/worker.py) at a job's end."""
    job = running.get("job") or {}
    included = {t: int(s["last_version"]) for t, s in (job.get("sources") or {}).items()}
    started = running.get("started_at")
    return RefreshResult(job_id=running["job_id"], status=status, ended_at=ended_at,
                         started_at=parse_iso(started) if started else None, included=included,
                         whole_model=bool(job.get("whole_model")) or not job.get("model_tables"),
                         error_code=error_code, error_message=error_message,
                         workspace_name=running.get("workspace_name"), dataset_name=running.get("dataset_name"))


def result_from_row(row: Mapping[str, Any]) -> RefreshResult:
    """A :class:`RefreshResult` from a job's outcome row in an end state (refresh/jobs/outcomes.py), either as
    written (JSON columns as text) or as read with ``outcomes.to_public``."""
    def decoded(name: str, default: Any) -> Any:
        value = row.get(name)
        if isinstance(value, str):
            try:
                value = json.loads(value) if value else default
            except ValueError:
                value = default
        return default if value is None else value

    sources = decoded("sources", {}) or {}
    started, ended = row.get("started_at") or None, row.get("ended_at") or None
    return RefreshResult(
        job_id=str(row["job_id"]), status=str(row["status"]),
        ended_at=parse_iso(ended) if ended else parse_iso(str(row.get("queued_at"))),
        started_at=parse_iso(started) if started else None,
        included={t: int(s["last_version"]) for t, s in sources.items() if isinstance(s, Mapping)},
        whole_model=not decoded("model_tables", []),
        error_code=row.get("error_code") or None, error_message=row.get("error_message") or None,
        workspace_name=row.get("workspace_name") or None, dataset_name=row.get("dataset_name") or None)


def commit_to_start_seconds(entity: Any, sources: Mapping[str, Mapping[str, Any]], started_at: datetime) -> (
        float | None):
    """Seconds from the oldest commit of a job (``sources``: table -> first/last version) to its refresh
    start, from the freshness record on the dataset's ``entity``; None when no commit time is known."""
    record = FreshnessRecord.from_entity(entity)
    oldest: datetime | None = None
    for table, change in sources.items():
        entry = record.tables.get(table)
        if entry is None:
            continue
        for span in entry.unincluded:
            if span.first_version <= int(change["last_version"]) and span.last_version >= int(change["first_version"]):
                when = parse_iso(span.oldest)
                oldest = when if oldest is None or when < oldest else oldest
    return None if oldest is None else round((started_at - oldest).total_seconds(), 3)


@dataclass
class TickReport:
    """What one timer run did."""

    datasets: int = 0
    events: list[AlertEvent] = field(default_factory=list)
    writes: int = 0
    flushed: int = 0
    lags: dict[str, float] = field(default_factory=dict)


class FreshnessTracker:
    """Records commits and outcomes, evaluates breaches, and hands alert events to the alerter."""

    def __init__(self, states: Any, config: Any, clock: Clock, alerter: Any = None, metrics: Any = None) -> None:
        self.states = states        # refresh.jobs.pending.DatasetStates
        self.config = config        # refresh.core.routing.RoutingConfig
        self.clock = clock
        self.alerter = alerter      # refresh.monitoring.alerts.Alerter, or None (events stay in the outbox)
        self.metrics = metrics      # refresh.monitoring.metrics.Metrics, or None

    # config ----------------------------------------------------------------------------------------
    def slo_seconds(self, dataset: str) -> int | None:
        ds = self.config.datasets.get(dataset)
        minutes = getattr(ds, "freshness_slo_minutes", None) if ds is not None else None
        return minutes * 60 if minutes else None

    def facts(self, dataset: str) -> DatasetFacts:
        ds = self.config.datasets.get(dataset)
        return DatasetFacts(ds.workspace, ds.dataset) if ds is not None else DatasetFacts()

    # detection -------------------------------------------------------------------------------------
    def record_commits(self, dataset: str, table: str, commits: Sequence[CommitTime]) -> None:
        """Note data-changing commits of ``table`` that ``dataset`` has not refreshed yet."""
        if commits:
            self.states.update(dataset, lambda entity: note_commits(entity, table, commits))

    # worker ----------------------------------------------------------------------------------------
    def note_outcome(self, entity: dict[str, Any], dataset: str, result: RefreshResult,
                     now: datetime | None = None) -> list[AlertEvent]:
        """Apply a job's end to the record on ``entity`` (a dict about to be written); returns the events.

        Call :meth:`flush` after the write succeeded.
        """
        record = FreshnessRecord.from_entity(entity)
        events = transition(record, dataset=dataset, slo_seconds=self.slo_seconds(dataset),
                            now=now or self.clock.now(), outcome=result, facts=self.facts(dataset))
        record.to_entity(entity)
        return events

    def record_outcome(self, dataset: str, result: RefreshResult) -> list[AlertEvent]:
        """A job ended: update what the model contains and the alert state, then send the events."""
        events: list[AlertEvent] = []

        def mutate(entity: dict[str, Any]) -> bool:
            if result.job_id in FreshnessRecord.from_entity(entity).state.handled_jobs:
                events.clear()
                return False
            events[:] = self.note_outcome(entity, dataset, result)
            return True

        written = self.states.update(dataset, mutate)
        if self.metrics is not None and written is not None:
            view = freshness_of(FreshnessRecord.from_entity(written), self.slo_seconds(dataset), self.clock.now())
            self.metrics.set_lag(dataset, view.lag_seconds, view.breached)
        if events:
            self.flush(dataset, written)
        return events

    # timer -----------------------------------------------------------------------------------------
    def tick(self) -> TickReport:
        """Evaluate every configured dataset's breach state (run by a timer, every minute)."""
        report = TickReport()
        now = self.clock.now()
        entities = {tables.from_row_key(e["RowKey"]): e for e in self.states.table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": PK_DATASET})}
        for key in self.config.datasets:
            report.datasets += 1
            entity = entities.get(key)
            slo = self.slo_seconds(key)
            record = FreshnessRecord.from_entity(entity)
            view = freshness_of(record, slo, now)
            report.lags[key] = view.lag_seconds
            if self.metrics is not None:
                self.metrics.set_lag(key, view.lag_seconds, view.breached)
            if entity is None:
                continue
            probe = FreshnessRecord.from_json(record.to_json())
            if transition(probe, dataset=key, slo_seconds=slo, now=now, facts=self.facts(key)):
                events, entity = self._transition(key, entity, now)
                report.events += events
                report.writes += 1
            if record.state.outbox or probe.state.outbox:
                report.flushed += self.flush(key, entity)
        for key, entity in entities.items():  # unconfigured keys (ad-hoc, _rejected): only a left-over outbox
            if key not in self.config.datasets and FreshnessRecord.from_entity(entity).state.outbox:
                report.flushed += self.flush(key, entity)
        return report

    def _transition(self, key: str, entity: Any, now: datetime) -> tuple[list[AlertEvent], Any]:
        """Decide the transition on ``entity`` (as read) with its ETag; on a conflict decide again on
        what is stored now. Returns the events and the entity as written (None: not known)."""
        events: list[AlertEvent] = []

        def apply(data: dict[str, Any]) -> bool:
            record = FreshnessRecord.from_entity(data)
            events[:] = transition(record, dataset=key, slo_seconds=self.slo_seconds(key), now=now,
                                   facts=self.facts(key))
            if not events:
                return False
            record.to_entity(data)
            return True

        data = dict(entity)
        if apply(data):
            try:
                tables.write(self.states.table, data, entity.metadata["etag"])
                return events, data
            except tables.Conflict:
                pass  # someone else changed the entity: decide again on what is there now
        written = self.states.update(key, apply)
        return events, (written if events else None)

    # alerts ----------------------------------------------------------------------------------------
    def flush(self, dataset: str, entity: Any | None = None) -> int:
        """Hand the dataset's outbox to the alerter, then remove what it took. Returns how many.

        ``entity``: the state entity as just read or written (saves a read); None reads it."""
        if self.alerter is None:
            return 0
        record = FreshnessRecord.from_entity(entity if entity is not None else self.states.get(dataset))
        if not record.state.outbox:
            return 0
        events = [AlertEvent.from_json(e) for e in record.state.outbox]
        try:
            sent = self.alerter.enqueue(events)
        except Exception as exc:  # never fail the refresh that caused the event; the timer flushes again
            log.error("dataset %s: %s alert event(s) not queued yet (%s: %s); the timer retries", dataset,
                      len(events), type(exc).__name__, str(exc).split("\n")[0][:300])
            return 0

        def remove(entity: dict[str, Any]) -> bool:
            current = FreshnessRecord.from_entity(entity)
            if not take_outbox(current, sent):
                return False
            current.to_entity(entity)
            return True

        self.states.update(dataset, remove)
        return len(sent)

    # reading ---------------------------------------------------------------------------------------
    def view(self, dataset: str, entity: Any | None = None) -> Freshness:
        """The dataset's freshness now (``entity``: its state entity if already read)."""
        if entity is None:
            entity = self.states.get(dataset)
        return freshness_of(FreshnessRecord.from_entity(entity), self.slo_seconds(dataset), self.clock.now())
