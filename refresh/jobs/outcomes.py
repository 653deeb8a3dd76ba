"""Outcome rows: one per refresh job in ``OUTCOMES_TABLE``, updated as the job moves, ETag-guarded.

PartitionKey is the dataset key; RowKey is ``<inverted creation time in ms, 13 digits>-<job id>`` so a
partition lists newest first and every job has its own row. An index entity in ``STATE_TABLE``
(PartitionKey ``job``, RowKey the job id) finds a row from the job id alone (``GET /api/refreshes/{id}``).

Statuses: ``Queued`` (waiting for its debounce), ``Waiting`` (busy dataset, 429, daily limit: see
``detail``), ``Running``, and the end states ``Completed``, ``Failed``, ``Cancelled``, ``TimedOut``,
``Disabled``, ``NotRefreshable``, ``Skipped`` and ``Rejected`` (a message that could not be parsed).
``adopted`` is true only when the job's own POST may have been accepted without its answer being seen
(a timeout, a dropped connection, a crash between the POST and recording it) and Power BI's history
then showed that refresh; ``adopted_reason`` says why. ``request_id`` always names the refresh the row
describes. ``powerbi_duration_seconds`` is Power BI's own startTime→endTime of a completed refresh.

Every value is kept within Table Storage's limits (64 KiB per property, 1 MiB per entity): long texts
are cut and long JSON lists shortened (with a note of how many were left out), so a row update can
never fail for its size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, TypedDict

from refresh.core import storage as tables
from refresh.core.clock import iso, parse_iso

log = logging.getLogger(__name__)

PK_JOB_INDEX = "job"


class Status(StrEnum):
    """The statuses of an outcome row (the one definition; compare and store them as plain strings)."""

    QUEUED = "Queued"
    WAITING = "Waiting"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"
    DISABLED = "Disabled"
    NOT_REFRESHABLE = "NotRefreshable"
    SKIPPED = "Skipped"
    REJECTED = "Rejected"

    @property
    def is_end(self) -> bool:
        return self in END_STATES


END_STATES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT, Status.DISABLED,
                        Status.NOT_REFRESHABLE, Status.SKIPPED, Status.REJECTED})
MAX_TEXT = 16_000          # characters of one text property (UTF-16 units stay far below 32 K)
MAX_JSON = 30_000          # characters of one JSON column
_MAX_MS = 10**13
COLUMNS = (
    "job_id", "dataset_key", "status", "detail", "trigger", "triggers", "requested_by", "reasons", "sources",
    "model_tables", "workspace_id", "workspace_name", "dataset_id", "dataset_name", "refresh_type",
    "request_id", "attempts", "queued_at", "due_at", "started_at", "ended_at", "duration_seconds",
    "error_code", "error_message", "messages", "adopted", "adopted_reason", "powerbi_duration_seconds",
)
JSON_COLUMNS = ("sources", "model_tables", "requested_by", "triggers", "reasons", "messages")


class RowFields(TypedDict, total=False):
    """The columns a writer may set on an outcome row, typed: what the worker passes to
    :meth:`Outcomes.create` and returns from an :meth:`Outcomes.update` change (JSON columns as Python
    values; None clears a column)."""

    status: str
    detail: str | None
    trigger: str
    triggers: list[str]
    requested_by: list[str]
    reasons: list[str]
    sources: dict[str, dict[str, int]]
    model_tables: list[str]
    workspace_id: str
    workspace_name: str
    dataset_id: str
    dataset_name: str
    refresh_type: str
    request_id: str | None
    attempts: int
    due_at: str | None
    started_at: str | None
    ended_at: str | None
    duration_seconds: float | None
    error_code: str | None
    error_message: str | None
    messages: list[str]
    adopted: bool
    adopted_reason: str | None
    powerbi_duration_seconds: float | None
    next_attempt_at: str | None   # a job waiting for a retry: when it is tried again
    message_id: str               # a rejected message: its queue id and (cut) body
    message_body: str


@dataclass
class OutcomeRow:
    """One outcome row, typed (read with :meth:`from_entity`, written with :meth:`to_entity`).

    ``extra`` keeps columns this version does not know (written by a newer one), so nothing is lost.
    """

    job_id: str
    dataset_key: str
    status: Status | str
    queued_at: str | None = None
    detail: str | None = None
    trigger: str | None = None
    triggers: list[str] = field(default_factory=list)
    requested_by: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    model_tables: list[str] = field(default_factory=list)
    workspace_id: str | None = None
    workspace_name: str | None = None
    dataset_id: str | None = None
    dataset_name: str | None = None
    refresh_type: str | None = None
    request_id: str | None = None
    attempts: int = 0
    due_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_seconds: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    messages: list[str] = field(default_factory=list)
    adopted: bool = False
    adopted_reason: str | None = None
    powerbi_duration_seconds: float | None = None
    next_attempt_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_end(self) -> bool:
        """Whether the row is in an end state (no later write changes it)."""
        return self.status in END_STATES

    @classmethod
    def from_entity(cls, entity: Any) -> OutcomeRow:
        """The row a stored entity holds (JSON columns decoded, empty values as defaults)."""
        public = to_public(entity)
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in public.items() if k in known and v is not None}
        status = values.get("status")
        if isinstance(status, str) and status in Status._value2member_map_:
            values["status"] = Status(status)
        extra = {k: v for k, v in public.items() if k not in known and k != "dataset" and v is not None}
        values.setdefault("job_id", "")
        values.setdefault("dataset_key", "")
        values.setdefault("status", "")
        return cls(**values, extra=extra)

    def to_entity(self) -> dict[str, Any]:
        """The row as stored: keys of the table, values within Table Storage's limits."""
        created = parse_iso(self.queued_at) if self.queued_at else None
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["status"] = str(self.status)
        row = {"PartitionKey": self.dataset_key,
               "RowKey": row_key_for(created, self.job_id) if created is not None else self.job_id}
        row.update(_flatten({**self.extra, **data}))
        return row


def row_key_for(created: datetime, job_id: str) -> str:
    ms = int(created.timestamp() * 1000)
    return f"{_MAX_MS - ms:013d}-{job_id}"


class Outcomes:
    """Create, update and read outcome rows."""

    def __init__(self, table: Any, index_table: Any) -> None:
        self.table = table
        self.index = index_table
        self._where: dict[str, tuple[str, str]] = {}  # job id -> (PartitionKey, RowKey); never changes

    def create(self, dataset: str, job_id: str, created: datetime, fields: RowFields) -> dict[str, Any]:
        """Create the row of a new job (idempotent: an existing row is returned unchanged).

        The index entity is written first and decides the row's key: whoever comes second (a creator
        that was slow, or the worker repairing a job whose creator died, see :meth:`ensure`) writes to
        the key already indexed, so a job never gets two rows.
        """
        rk = row_key_for(created, job_id)
        try:
            tables.write(self.index, {"PartitionKey": PK_JOB_INDEX, "RowKey": job_id, "dataset": dataset,
                                      "row": rk}, None)
            self._where[job_id] = (dataset, rk)
        except tables.Conflict:
            dataset, rk = self.locate(job_id) or (dataset, rk)
        row = {"PartitionKey": dataset, "RowKey": rk, "job_id": job_id, "dataset_key": dataset,
               "queued_at": iso(created), "attempts": 0}
        row.update(_flatten(dict(fields)))
        try:
            tables.write(self.table, row, None)
        except tables.Conflict:
            existing = tables.get_entity(self.table, dataset, rk)
            return dict(existing) if existing else row
        return row

    def ensure(self, dataset: str, job: Any) -> None:
        """The row of a job that exists in the dataset's state (``job``: a PendingJob): created as Queued if
        missing. Jobs are recorded in the state first and get their row right after; an instance that died
        in between (or has not got there yet) leaves a job without a row, and a refresh must never run, or
        a job end, without its row."""
        where = self.locate(job.job_id)
        if where is not None and tables.get_entity(self.table, *where) is not None:
            return
        log.warning("job %s of dataset %s had no outcome row (its creator stopped before writing it); "
                    "creating it", job.job_id, dataset)
        self.create(dataset, job.job_id, parse_iso(job.created_at), queued_fields(job))

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

    def get_row(self, job_id: str) -> OutcomeRow | None:
        """The job's row, typed (None: no row)."""
        where = self.locate(job_id)
        if where is None:
            return None
        entity = tables.get_entity(self.table, *where)
        return OutcomeRow.from_entity(entity) if entity else None

    def get(self, job_id: str) -> dict[str, Any] | None:
        where = self.locate(job_id)
        if where is None:
            return None
        entity = tables.get_entity(self.table, *where)
        return to_public(entity) if entity else None

    def update(self, dataset: str, job_id: str,
               change: Callable[[dict[str, Any]], RowFields | dict[str, Any] | None]) -> dict[str, Any] | None:
        """Read-modify-write the job's row, ETag-guarded; ``change`` returns the fields to set."""
        where = self.locate(job_id)
        if where is None:
            return None

        def apply(data: dict[str, Any]) -> bool:
            changed = change(dict(data))
            if changed:
                data.update(_flatten(dict(changed)))
            return bool(changed)

        entity = tables.update(self.table, *where, apply, what=f"outcome row of job {job_id}")
        return dict(entity) if entity is not None else None

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
        """Power BI's own durations (startTime→endTime, s) of the dataset's last completed refreshes,
        newest first (one request). The app-observed ``duration_seconds`` is not used: it includes the
        app's own polling delay, and timing the next check from it makes the lag creep up."""
        found = []
        pages = self.table.query_entities(
            "PartitionKey eq @pk and status eq 'Completed'", parameters={"pk": dataset},
            select=["powerbi_duration_seconds"], results_per_page=count,
        )
        for entity in pages:
            value = tables.value(entity, "powerbi_duration_seconds")
            if isinstance(value, int | float) and value >= 0:
                found.append(float(value))
            if len(found) >= count:
                break
        return found


def queued_fields(job: Any) -> RowFields:
    """Outcome-row fields of a job that was just created (``job``: a PendingJob)."""
    return {"status": str(Status.QUEUED), "trigger": job.trigger, "triggers": job.triggers,
            "requested_by": job.requested_by, "reasons": job.reasons, "model_tables": job.objects() or [],
            "due_at": job.due_at,
            "sources": {t: {"first_version": s.first_version, "last_version": s.last_version,
                            "commits": s.commits} for t, s in job.sources.items()}}


def _flatten(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in fields.items():
        if key in JSON_COLUMNS:
            out[key] = bounded_json(value)
        elif isinstance(value, datetime):
            out[key] = iso(value)
        elif value is None:
            out[key] = ""
        elif isinstance(value, str):
            out[key] = bounded_text(value)
        else:
            out[key] = value
    return out


def bounded_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters (with a note), so a property stays under 64 KiB."""
    if len(text) <= limit:
        return text
    return text[:limit - 40] + f" … [{len(text) - limit + 40} characters cut]"


def bounded_json(value: Any, limit: int = MAX_JSON) -> str:
    """``value`` as JSON of at most ``limit`` characters: long lists and dicts lose their tail (a last
    list item, or the key ``"…"``, says how many were left out); texts inside are cut."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return json.dumps(bounded_text(value, limit // 2))
    if isinstance(value, list | dict):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        keep = len(items)
        while keep > 0:
            keep //= 2
            part = items[:keep]
            if isinstance(value, dict):
                shrunk: Any = {str(k): _shrink(v) for k, v in part}
                shrunk["…"] = f"{len(items) - keep} more left out"
            else:
                shrunk = [_shrink(v) for v in part] + [f"… {len(items) - keep} more left out"]
            text = json.dumps(shrunk, separators=(",", ":"), sort_keys=True)
            if len(text) <= limit:
                return text
    return json.dumps(f"too large to store ({len(text)} characters of JSON)")


def _shrink(value: Any) -> Any:
    if isinstance(value, str):
        return bounded_text(value, 2000)
    if isinstance(value, dict):
        return {str(k): _shrink(v) for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        return [_shrink(v) for v in value[:50]]
    return value


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
