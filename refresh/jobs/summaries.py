"""Per-dataset summaries: what the status views show of a dataset without reading its outcome rows.

One entity per dataset in the state table: PartitionKey ``summary``, RowKey the dataset key
(:func:`refresh.core.storage.row_key`), JSON column ``summary``::

    {"v": 1, "last": entry, "last_success": entry | null, "recent": [entry, ...]}

``recent`` holds the dataset's latest :data:`RECENT` ended outcomes, newest first; an entry is a compact
copy of an outcome row (:data:`ENTRY_FIELDS`, texts cut to :data:`MAX_ENTRY_TEXT`). It is written once
per job end, by whoever records the end (the worker in refresh/jobs/endings.py, the scheduler's
skips), as an ETag-guarded read-modify-write of this one entity: 2 storage requests per job end (1
when the end was already folded in, e.g. a redelivered message). Folding is idempotent (by job id), so
a retried or duplicated end never shows twice. The views read every summary with one query (plus one
for the dataset states: pending, running, starts, freshness), whatever the number of datasets.

A separate entity rather than a column of the dataset's state entity: that entity is rewritten by
every commit detected for the dataset, and a summary column there would put the worker's end write in
ETag conflicts with detection; the separate entity costs the same two requests and conflicts with nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from refresh.core import storage as tables
from refresh.jobs.outcomes import END_STATES, Status

log = logging.getLogger(__name__)

PK_SUMMARY = "summary"
COLUMN = "summary"
FORMAT_VERSION = 1
RECENT = 20
"""Ended outcomes kept per dataset (the overview's timeline)."""
MAX_ENTRY_TEXT = 300
MAX_ENTRY_LIST = 5
MAX_CONFLICT_RETRIES = 10
ENTRY_FIELDS = ("job_id", "status", "trigger", "triggers", "requested_by", "queued_at", "started_at", "ended_at",
                "duration_seconds", "refresh_type", "error_code", "error_message", "detail")
_TEXT_FIELDS = ("error_message", "detail")
_LIST_FIELDS = ("triggers", "requested_by")


def entry_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The compact copy of an outcome row (public form, refresh/jobs/outcomes.py ``to_public``) kept in a summary."""
    out: dict[str, Any] = {}
    for name in ENTRY_FIELDS:
        value = row.get(name)
        if value is None or value == "":
            continue
        if name in _TEXT_FIELDS:
            text = str(value)
            value = text if len(text) <= MAX_ENTRY_TEXT else text[:MAX_ENTRY_TEXT - 1] + "…"
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
        self.recent = sorted([entry, *self.recent], key=_order, reverse=True)[:RECENT]
        if self.last is None or _order(entry) >= _order(self.last):
            self.last = entry
        if entry["status"] == Status.COMPLETED and (self.last_success is None
                                                    or _order(entry) >= _order(self.last_success)):
            self.last_success = entry
        return True


def note_end(table: Any, dataset: str, row: Mapping[str, Any] | None) -> bool:
    """Fold an ended outcome row into the dataset's summary entity, ETag-guarded (2 requests; 1 when it is
    already in). Returns whether it wrote. Never raises for storage trouble: the outcome row is the truth and
    is already written; a summary that misses one end is repaired by the next end only in its ``last``, so the
    failure is logged."""
    if not row or row.get("status") not in END_STATES:
        return False
    try:
        return _update(table, dataset, lambda summary: summary.fold(row))
    except Exception:
        log.exception("summary of dataset %s: could not record the end of job %s", dataset, row.get("job_id"))
        return False


def _update(table: Any, dataset: str, change: Callable[[DatasetSummary], bool]) -> bool:
    for _ in range(MAX_CONFLICT_RETRIES):
        entity = tables.get_entity(table, PK_SUMMARY, tables.row_key(dataset))
        summary = DatasetSummary.from_entity(entity)
        if not change(summary):
            return False
        data = {"PartitionKey": PK_SUMMARY, "RowKey": tables.row_key(dataset)}
        tables.put_json(data, COLUMN, summary.to_json())
        try:
            tables.write(table, data, entity.metadata["etag"] if entity is not None else None)
            return True
        except tables.Conflict:
            continue
    raise tables.Conflict(f"summary of dataset {dataset} kept changing")


def read_all(table: Any) -> dict[str, DatasetSummary]:
    """Every dataset's summary by dataset key: one query (pages of up to 1,000 entities)."""
    return {tables.from_row_key(e["RowKey"]): DatasetSummary.from_entity(e)
            for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": PK_SUMMARY})}


def backfill(table: Any, dataset: str, rows: list[dict[str, Any]]) -> DatasetSummary:
    """The summary of a dataset that has none yet (its outcomes were recorded before summaries existed, or it
    never ran), built from its latest outcome rows and created (never replacing one written meanwhile: the
    worker's fold is the truth). Returns what the views should show."""
    summary = DatasetSummary()
    for row in rows:
        summary.fold(row)
    data = {"PartitionKey": PK_SUMMARY, "RowKey": tables.row_key(dataset)}
    tables.put_json(data, COLUMN, summary.to_json())
    try:
        tables.write(table, data, None)
    except tables.Conflict:
        return DatasetSummary.from_entity(tables.get_entity(table, PK_SUMMARY, tables.row_key(dataset)))
    return summary


def read_one(table: Any, dataset: str) -> DatasetSummary:
    return DatasetSummary.from_entity(tables.get_entity(table, PK_SUMMARY, tables.row_key(dataset)))
