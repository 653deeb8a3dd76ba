"""Per-dataset summaries: what the status views show of a dataset without reading its outcome rows.

A JSON column ``summary`` on the dataset's state entity (state table, PartitionKey ``dataset``, the entity that
already holds pending, running, starts, refreshed, freshness)::

    {"v": 1, "last": entry, "last_success": entry | null, "recent": [entry, ...]}

``recent`` holds the dataset's latest :data:`RECENT` ended outcomes, newest first; an entry is a compact
copy of an outcome row (``last``, ``last_success``: :data:`ENTRY_FIELDS`, texts cut to :data:`MAX_ENTRY_TEXT`;
``recent``: :data:`RECENT_FIELDS`, texts cut to :data:`MAX_RECENT_TEXT`), about 3 KB for a full summary.
It is written once per job end, by whoever records the end: the worker folds it into the write that releases
the dataset's lease (refresh/jobs/endings.py ``_fold_summary``: 0 extra storage requests); other ends (a job that
never held the lease, the scheduler's skips) use :func:`note_end`, an ETag-guarded read-modify-write of the
state entity (``DatasetStates.update``, which retries when detection or the worker changed the entity
meanwhile): 2 storage requests (1 when the end was already folded in, e.g. a redelivered message).
Folding is idempotent (by job id), so a retried or
duplicated end never shows twice. The views then read everything with ONE query (the dataset states),
whatever the number of datasets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refresh.core import storage as tables
from refresh.jobs.outcomes import END_STATES, Status

log = logging.getLogger(__name__)

COLUMN = "summary"
FORMAT_VERSION = 1
RECENT = 12
"""Ended outcomes kept per dataset (the overview's timeline)."""
MAX_ENTRY_TEXT = 300
MAX_RECENT_TEXT = 160
RECENT_FIELDS = ("job_id", "status", "queued_at", "started_at", "ended_at", "duration_seconds", "refresh_type",
                 "error_code", "error_message", "detail")
"""What an entry of ``recent`` keeps (a timeline bar); ``last`` and ``last_success`` keep all of ENTRY_FIELDS."""
MAX_ENTRY_LIST = 5
ENTRY_FIELDS = ("job_id", "status", "trigger", "triggers", "requested_by", "queued_at", "started_at", "ended_at",
                "duration_seconds", "refresh_type", "error_code", "error_message", "detail")
_TEXT_FIELDS = ("error_message", "detail")
_LIST_FIELDS = ("triggers", "requested_by")


def entry_of(row: Mapping[str, Any], names: tuple[str, ...] = ENTRY_FIELDS, limit: int = MAX_ENTRY_TEXT) -> (
        dict[str, Any]):
    """The compact copy of an outcome row (public form, refresh/jobs/outcomes.py ``to_public``) kept in a summary."""
    out: dict[str, Any] = {}
    for name in names:
        value = row.get(name)
        if value is None or value == "":
            continue
        if name in _TEXT_FIELDS:
            text = str(value)
            value = text if len(text) <= limit else text[:limit - 1] + "…"
        elif name in _LIST_FIELDS:
            value = list(value)[:MAX_ENTRY_LIST] if isinstance(value, list | tuple) else value
        out[name] = value
    return out


def _order(entry: Mapping[str, Any]) -> str:
    return str(entry.get("ended_at") or entry.get("started_at") or entry.get("queued_at") or "")


@dataclass
class DatasetSummary:
    """A dataset's summary (see the module docstring)."""

    last: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_entity(cls, entity: Any | None) -> DatasetSummary:
        data = tables.get_json(entity, COLUMN) if entity is not None else None
        if not isinstance(data, dict):
            return cls()
        recent = [e for e in data.get("recent") or [] if isinstance(e, dict)]
        return cls(last=data.get("last") or None, last_success=data.get("last_success") or None, recent=recent)

    def to_json(self) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "last": self.last, "last_success": self.last_success, "recent": self.recent}

    def fold(self, row: Mapping[str, Any]) -> bool:
        """Take in one ended outcome row; False when it is not ended or already in (nothing to write)."""
        if row.get("status") not in END_STATES or not row.get("job_id"):
            return False
        entry = entry_of(row)
        job_id = entry["job_id"]
        if any(e.get("job_id") == job_id for e in self.recent) or (self.last or {}).get("job_id") == job_id:
            return False
        bar = entry_of(row, RECENT_FIELDS, MAX_RECENT_TEXT)
        self.recent = sorted([bar, *self.recent], key=_order, reverse=True)[:RECENT]
        if self.last is None or _order(entry) >= _order(self.last):
            self.last = entry
        if entry["status"] == Status.COMPLETED and (self.last_success is None
                                                    or _order(entry) >= _order(self.last_success)):
            self.last_success = entry
        return True


def fold_into(data: dict[str, Any], row: Mapping[str, Any] | None) -> bool:
    """Fold an ended outcome row (public form) into the summary on ``data``, a state entity about to be written;
    False when there is nothing to change (not ended, or already in)."""
    summary = DatasetSummary.from_entity(data)
    if row is None or not summary.fold(row):
        return False
    tables.put_json(data, COLUMN, summary.to_json())
    return True


def note_end(states: Any, dataset: str, row: Mapping[str, Any] | None) -> bool:
    """Fold an ended outcome row into the summary on the dataset's state entity (``states``: a
    :class:`refresh.jobs.pending.DatasetStates`), ETag-guarded: 2 requests, 1 when it is already in. Returns whether
    it wrote. Never raises for storage trouble: the outcome row is the truth and is already written; the failure
    is logged and the next end of the dataset brings the summary up to date again."""
    if not row or row.get("status") not in END_STATES:
        return False
    wrote: list[bool] = [False]

    def fold(data: dict[str, Any]) -> bool:
        wrote[0] = fold_into(data, row)
        return wrote[0]

    try:
        states.update(dataset, fold)
    except Exception:
        log.exception("summary of dataset %s: could not record the end of job %s", dataset, row.get("job_id"))
        return False
    return wrote[0]


def has_summary(entity: Any | None) -> bool:
    return entity is not None and tables.value(entity, f"{COLUMN}_n") is not None  # put_json stores chunks


def backfill(states: Any, dataset: str, rows: list[dict[str, Any]]) -> DatasetSummary:
    """The summary of a dataset that has none yet (its outcomes were recorded before summaries existed, or it
    never ran), built from its latest outcome rows and stored on its state entity unless one was written
    meanwhile (the worker's fold wins). Returns what the views should show."""
    built = DatasetSummary()
    for row in rows:
        built.fold(row)
    shown: list[DatasetSummary] = [built]

    def put(data: dict[str, Any]) -> bool:
        if has_summary(data):
            shown[0] = DatasetSummary.from_entity(data)
            return False
        tables.put_json(data, COLUMN, built.to_json())
        return True

    try:
        states.update(dataset, put)
    except Exception:
        log.exception("summary of dataset %s: could not store the one built from its outcome rows", dataset)
    return shown[0]


def read_one(states: Any, dataset: str) -> DatasetSummary:
    """One dataset's summary (one read of its state entity)."""
    return DatasetSummary.from_entity(states.get(dataset))
