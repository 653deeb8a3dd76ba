"""The pending job's model: what a refresh job holds (:class:`PendingJob`, :class:`SourceChange`) and
its bounds, shared by the pending-job store (refresh/jobs/pending.py), the running job
(refresh/jobs/running.py) and the outcome rows.

What a job holds is capped (:func:`bound`, applied whenever a job is stored): too many model tables
widen it to the whole model; requesters and reasons beyond the caps are counted, not listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from refresh.core.records import check_fields

# What one job may hold. A job is stored twice in its dataset's entity (``pending``, then ``running``)
# and its lists once more in single properties of its outcome row. Table Storage holds at most 1 MB
# per entity and 64 KB per property, strings counted in UTF-16; what is stored is JSON with non-ASCII
# escaped (``\\uXXXX``, 12 characters for an emoji), so budgets count characters of that text.
MAX_JOB_MODEL_TABLES = 100
MAX_JOB_REQUESTERS = 20
MAX_JOB_REASONS = 20
MAX_JOB_TRIGGERS = 10
MAX_REASON_LENGTH = 500
MAX_REQUESTER_LENGTH = 256
MODEL_TABLES_BUDGET = 16_000   # stored characters (32 KB in UTF-16); over it the job widens to the whole model
REASONS_BUDGET = 12_000
REQUESTERS_BUDGET = 6_000
OMITTED_NOTE = "(+{n} more requester(s) or reason(s) not listed: a job lists at most what fits its caps)"


@dataclass
class SourceChange:
    """What one source table contributed to a job."""

    first_version: int
    last_version: int
    commits: int


@dataclass
class PendingJob:
    """A refresh waiting to run for one dataset."""

    job_id: str
    trigger: str                      # first trigger: commit | schedule | manual
    created_at: str
    last_change_at: str
    due_at: str
    whole_model: bool = False
    model_tables: list[str] = field(default_factory=list)
    sources: dict[str, SourceChange] = field(default_factory=dict)
    triggers: list[str] = field(default_factory=list)
    requested_by: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    refresh_type: str | None = None   # manual override of the enhanced refresh type
    workspace: str | None = None      # for ad-hoc (unconfigured) datasets
    dataset: str | None = None
    scheduled_for: str | None = None
    omitted: int = 0                  # requesters/reasons not listed because of the caps

    def to_dict(self) -> dict[str, Any]:
        """The job as stored, within the caps (:func:`bound`), whoever built or merged it."""
        return bound(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], column: str = "pending") -> PendingJob:
        """The job from its stored form; :class:`~refresh.core.records.CorruptRecord` (naming the field) when a
        field is missing or of the wrong type (``column``: where it is stored, for the message)."""
        check_fields(cls, data, column)
        data = dict(data)
        for table, change in data.get("sources", {}).items():
            check_fields(SourceChange, change, f"{column}.sources[{table!r}]")
        data["sources"] = {t: SourceChange(**s) for t, s in data.get("sources", {}).items()}
        return cls(**data)

    def objects(self) -> list[str] | None:
        """Model tables to refresh, or None for the whole model."""
        return None if self.whole_model or not self.model_tables else list(self.model_tables)


def add_unique(target: list[str], items: Iterable[str]) -> None:
    """Append each of ``items`` not yet in ``target``, in order."""
    for item in items:
        if item not in target:
            target.append(item)


def _stored_length(value: Any) -> int:
    """Characters of ``value`` as JSON with non-ASCII escaped (what put_json and outcome rows store)."""
    return len(json.dumps(value))


def _keep(items: Iterable[Any], max_items: int, budget: int, max_length: int) -> tuple[list[str], int]:
    """The first items (each cut to ``max_length``) that fit ``max_items`` and ``budget``; and how many not."""
    kept: list[str] = []
    used, dropped = 2, 0
    for item in items:
        text = str(item)[:max_length]
        size = _stored_length(text) + 1
        if len(kept) >= max_items or used + size > budget or text in kept:
            dropped += text not in kept
            continue
        kept.append(text)
        used += size
    return kept, dropped


def bound(data: dict[str, Any]) -> dict[str, Any]:
    """Cap a job's lists in place (a stored job dict) so that storing it can never fail.

    Model tables over :data:`MAX_JOB_MODEL_TABLES` or :data:`MODEL_TABLES_BUDGET` widen the job to the
    whole model (a superset of what was asked). Requesters and reasons keep the first ones that fit;
    how many were left out is counted in ``omitted`` and said in the last reason.
    """
    tables_ = data.get("model_tables") or []
    if data.get("whole_model") or len(tables_) > MAX_JOB_MODEL_TABLES \
            or _stored_length(tables_) > MODEL_TABLES_BUDGET:
        data["whole_model"], data["model_tables"] = True, []
    data["triggers"] = list(dict.fromkeys(data.get("triggers") or []))[:MAX_JOB_TRIGGERS]
    omitted = int(data.get("omitted") or 0)
    data["requested_by"], dropped = _keep(data.get("requested_by") or [], MAX_JOB_REQUESTERS,
                                          REQUESTERS_BUDGET, MAX_REQUESTER_LENGTH)
    omitted += dropped
    note_prefix = OMITTED_NOTE.split("{n}")[0]
    reasons = [r for r in data.get("reasons") or [] if not str(r).startswith(note_prefix)]
    note_room = _stored_length(OMITTED_NOTE.format(n=10**9)) + 1
    data["reasons"], dropped = _keep(reasons, MAX_JOB_REASONS, REASONS_BUDGET - note_room, MAX_REASON_LENGTH)
    omitted += dropped
    if omitted:
        data["reasons"].append(OMITTED_NOTE.format(n=omitted))
    data["omitted"] = omitted
    return data
