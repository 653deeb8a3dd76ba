"""Which refresh in Power BI's history can be this job's own (issue 9 items 1 and 6).

A job adopts a refresh from the history only when its own POST may have been accepted without the
answer being seen: the POST timed out, its connection dropped, or the instance died between sending
it and recording the answer (``RunningJob.unsure_since``). A POST answered "busy", 429, 5xx, or never
sent because no token could be had, was not accepted: nothing is adopted, the job posts again.

Even then only a refresh that can be ours qualifies: it started at or after that POST was sent (less
:data:`CLOCK_SKEW`), it is of the kind our POST starts (``ViaEnhancedApi`` for an enhanced body,
``ViaApi`` for a standard one; a ``Scheduled`` or portal refresh never qualifies), and no other job of
this app recorded it (the dataset state's ``ours`` list). For an enhanced refresh its execution details
must also match what the POST asked for (processing ``type`` and ``objects`` tables), which another
client's enhanced refresh rarely does. The earliest such refresh is the one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from refresh.core.clock import parse_iso
from refresh.jobs.running import Posted, RunningJob
from refresh.powerbi.models import RefreshStatus

CLOCK_SKEW = 5.0       # seconds Power BI's clock may be behind ours
HISTORY_TOP = 10
MAX_OURS = 30          # refresh ids remembered per dataset


@dataclass(frozen=True)
class Found:
    """A refresh taken as the job's own, and why."""

    refresh: RefreshStatus
    reason: str


def find_own_refresh(powerbi: Any, running: RunningJob, ours: set[str]) -> Found | None:
    """The refresh the job's unanswered POST started, if the history shows one (else None).

    Raises the :class:`~refresh.powerbi.errors.PowerBIError` when the history (or an enhanced refresh's
    details) cannot be read: then nobody knows whether that POST started a refresh, and posting again
    could start a second one that no row describes, so the caller must look again later instead.
    """
    if not running.unsure_since:
        return None
    since = parse_iso(running.unsure_since)
    history = powerbi.get_refresh_history(running.workspace_id, running.dataset_id, top=HISTORY_TOP)
    kind = "viaenhancedapi" if running.enhanced else "viaapi"
    candidates = [e for e in history
                  if e.start_time is not None and e.start_time >= since - timedelta(seconds=CLOCK_SKEW)
                  and (e.refresh_type or "").lower() == kind and e.request_id and e.request_id not in ours]
    for entry in sorted(candidates, key=lambda e: e.start_time or since):
        assert entry.start_time is not None
        matched = _details_match(powerbi, running, entry) if running.enhanced else ""
        if matched is None:
            continue
        reason = (f"{running.unsure_reason or 'an earlier POST got no answer'}; refresh {entry.request_id} "
                  f"({entry.refresh_type}) started {entry.start_time:%H:%M:%S}, after that POST was sent at "
                  f"{since:%H:%M:%S}, no other job of this app recorded it{matched}")
        return Found(entry, reason)
    return None


def _details_match(powerbi: Any, running: RunningJob, entry: RefreshStatus) -> str | None:
    """For an enhanced refresh: None if its execution details differ from what the POST asked for, else a
    note for the reason (empty when nothing could be compared)."""
    posted = running.unsure_posted or running.posted or Posted()  # what the unanswered POST asked for
    details = powerbi.get_refresh(running.workspace_id, running.dataset_id, entry.request_id)  # errors: see above
    wanted_type, wanted_tables = posted.type, posted.tables
    if wanted_type and details.refresh_type and details.refresh_type.lower() != str(wanted_type).lower():
        return None
    if wanted_tables and details.tables and set(details.tables) != set(wanted_tables):
        return None
    if not wanted_type and not wanted_tables:
        return ""
    return f", and its details match the POST (type {details.refresh_type or '?'}, tables " \
           f"{', '.join(details.tables) or '?'})"


def remember(ours: list[dict[str, str]], refresh_id: str, job_id: str, at: str) -> list[dict[str, str]]:
    """The dataset's list of refreshes this app started, with one more (newest last, bounded)."""
    kept = [o for o in ours if o.get("id") != refresh_id]
    kept.append({"id": refresh_id, "job_id": job_id, "at": at})
    return kept[-MAX_OURS:]
