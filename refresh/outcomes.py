"""Outcome rows: one per refresh job in ``OUTCOMES_TABLE``, updated as the job moves, ETag-guarded.

PartitionKey is the dataset key; RowKey is ``<inverted creation time in ms, 13 digits>-<job id>`` so a
partition lists newest first and every job has its own row. An index entity in ``STATE_TABLE``
(PartitionKey ``job``, RowKey the job id) finds a row from the job id alone (``GET /api/refreshes/{id}``).

Statuses: ``Queued`` (waiting for its debounce), ``Waiting`` (busy dataset, 429, daily limit: see
``detail``), ``Running``, and the end states ``Completed``, ``Failed``, ``Cancelled``, ``TimedOut``,
``Disabled``, ``NotRefreshable``, ``Skipped`` and ``Rejected`` (a message that could not be parsed).
``adopted`` is true when a redelivered message found the refresh its earlier POST had started.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import tables
from .clock import iso, parse_iso

log = logging.getLogger(__name__)

PK_JOB_INDEX = "job"
END_STATES = frozenset({"Completed", "Failed", "Cancelled", "TimedOut", "Disabled", "NotRefreshable",
                        "Skipped", "Rejected"})
_MAX_MS = 10**13
COLUMNS = (
    "job_id", "dataset_key", "status", "detail", "trigger", "triggers", "requested_by", "reasons", "sources",
    "model_tables", "workspace_id", "workspace_name", "dataset_id", "dataset_name", "refresh_type",
    "request_id", "attempts", "queued_at", "due_at", "started_at", "ended_at", "duration_seconds",
    "error_code", "error_message", "messages", "adopted",
)
JSON_COLUMNS = ("sources", "model_tables", "requested_by", "triggers", "reasons", "messages")


def row_key_for(created: datetime, job_id: str) -> str:
    ms = int(created.timestamp() * 1000)
    return f"{_MAX_MS - ms:013d}-{job_id}"


class Outcomes:
    """Create, update and read outcome rows."""

    def __init__(self, table: Any, index_table: Any) -> None:
        self.table = table
        self.index = index_table
        self._where: dict[str, tuple[str, str]] = {}  # job id -> (PartitionKey, RowKey); never changes

    def create(self, dataset: str, job_id: str, created: datetime, fields: dict[str, Any]) -> dict[str, Any]:
        """Create the row of a new job (idempotent: an existing row is returned unchanged)."""
        rk = row_key_for(created, job_id)
        row = {"PartitionKey": dataset, "RowKey": rk, "job_id": job_id, "dataset_key": dataset,
               "queued_at": iso(created), "attempts": 0}
        row.update(_flatten(fields))
        try:
            tables.write(self.index, {"PartitionKey": PK_JOB_INDEX, "RowKey": job_id, "dataset": dataset,
                                      "row": rk}, None)
            self._where[job_id] = (dataset, rk)
        except tables.Conflict:
            pass
        try:
            tables.write(self.table, row, None)
        except tables.Conflict:
            existing = tables.get_entity(self.table, dataset, rk)
            return dict(existing) if existing else row
        return row

    def locate(self, job_id: str) -> tuple[str, str] | None:
        where = self._where.get(job_id)
        if where is None:
            entity = tables.get_entity(self.index, PK_JOB_INDEX, job_id)
            if entity is None:
                return None
            where = (entity["dataset"], entity["row"])
            if len(self._where) > 10_000:
                self._where.clear()
            self._where[job_id] = where
        return where

    def get(self, job_id: str) -> dict[str, Any] | None:
        where = self.locate(job_id)
        if where is None:
            return None
        entity = tables.get_entity(self.table, *where)
        return to_public(entity) if entity else None

    def update(self, dataset: str, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> (
            dict[str, Any] | None):
        """Read-modify-write the job's row, ETag-guarded; ``change`` returns the fields to set."""
        where = self.locate(job_id)
        if where is None:
            return None
        for _ in range(20):
            entity = tables.get_entity(self.table, *where)
            if entity is None:
                return None
            fields = change(dict(entity))
            if not fields:
                return dict(entity)
            data = dict(entity)
            data.update(_flatten(fields))
            try:
                tables.write(self.table, data, entity.metadata["etag"])
                return data
            except tables.Conflict:
                continue
        raise tables.Conflict(f"outcome row of job {job_id} kept changing")

    def history(self, dataset: str, top: int = 20) -> list[dict[str, Any]]:
        rows = []
        pages = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": dataset},
                                          results_per_page=min(top, 1000))
        for entity in pages:
            rows.append(to_public(entity))
            if len(rows) >= top:
                break
        return rows

    def recent_durations(self, dataset: str, count: int = 5) -> list[float]:
        """Durations (s) of the dataset's last completed refreshes, newest first (one request)."""
        found = []
        pages = self.table.query_entities(
            "PartitionKey eq @pk and status eq 'Completed'", parameters={"pk": dataset},
            select=["duration_seconds"], results_per_page=count,
        )
        for entity in pages:
            value = tables.value(entity, "duration_seconds")
            if isinstance(value, int | float) and value >= 0:
                found.append(float(value))
            if len(found) >= count:
                break
        return found


def _flatten(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in fields.items():
        if key in JSON_COLUMNS:
            out[key] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        elif isinstance(value, datetime):
            out[key] = iso(value)
        elif value is None:
            out[key] = ""
        elif isinstance(value, str) and len(value) > 30_000:
            out[key] = value[:30_000]
        else:
            out[key] = value
    return out


def to_public(entity: Any) -> dict[str, Any]:
    """A row as plain JSON-able data (JSON columns decoded, empty strings as None)."""
    out: dict[str, Any] = {}
    for key, raw in dict(entity).items():
        if key in ("PartitionKey", "RowKey") or key.startswith("odata"):
            continue
        value = getattr(raw, "value", raw)
        if key in JSON_COLUMNS and isinstance(value, str) and value:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if value == "":
            value = None
        if isinstance(value, datetime):
            value = iso(value)
        out[key] = value
    for column in COLUMNS:
        out.setdefault(column, None)
    out.setdefault("dataset", out.get("dataset_key"))
    return out


def duration_seconds(started: str | None, ended: datetime) -> float | None:
    if not started:
        return None
    return round((ended - parse_iso(started)).total_seconds(), 3)
