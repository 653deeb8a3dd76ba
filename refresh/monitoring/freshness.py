"""Freshness of a dataset: how far its model is behind the gold commits, and the alert transitions.

Pure model: typed dataclasses, no storage, no clock of its own (every function takes ``now``). The
storage glue (ETag-guarded updates of the dataset's state entity, the timer) is in
refresh/monitoring/freshness_tracker.py; alert delivery in refresh/monitoring/alerts.py.

Definitions (issue 12):

* a table's **data as of**: the commit time of the newest version of that source table that a
  Completed refresh included;
* **overall data as of**: the newest commit time T such that every known commit at or before T is
  in the model (the newest per-table "as of" that is older than the oldest commit still missing);
* **lag** (``lag_seconds``): now minus the commit time of the oldest data-changing commit that no
  Completed refresh has included; 0 when the model has every known commit;
* **breached**: lag > ``freshness_slo_minutes`` * 60. The breach starts, deterministically, at the
  oldest missing commit's time plus the SLO, which makes the breach's event id stable.

Commit times are the Delta commit's own timestamp (``inCommitTimestamp`` or ``commitInfo.timestamp``),
else the commit file's last-modified time, else (never known) the time it was detected, which is
later than the real one, so the lag shown is then a lower bound (``source`` says which).

What a refresh included: the versions of its job's ``sources`` (known exactly), and for a
whole-model refresh also every commit made before the refresh started (Power BI reads the tables
as they are when it runs).

Stored form: JSON property ``freshness`` on the dataset's state entity (refresh/jobs/pending.py), written
in ETag-guarded read-modify-writes. Size is bounded: at most :data:`MAX_SPANS` spans of not yet
included versions per table (older neighbours are merged, which can only overstate the lag), at most
:data:`MAX_TABLES` tables (up-to-date tables beyond it are dropped and counted), a bounded outbox of
alert events and a bounded list of handled job ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import iso, parse_iso

PROPERTY = "freshness"
FORMAT_VERSION = 1
FAILURE_STATUSES = frozenset({"Failed", "TimedOut", "Disabled", "NotRefreshable", "Rejected"})
MAX_SPANS = 8
MAX_TABLES = 300
MAX_HANDLED_JOBS = 20
MAX_OUTBOX = 50
MAX_STORED_ERROR = 1000
MAX_EVENT_ERROR = 4000

UP_TO_DATE = "up_to_date"
CATCHING_UP = "catching_up"
BREACHED = "breached"
UNKNOWN = "unknown"


# -- commit times ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitTime:
    """When one data-changing commit was made, and how that is known."""

    version: int
    committed_at: datetime
    source: str = "commitInfo"   # commitInfo | blob | detected


def commit_time(version: int, timestamp_ms: int | None, last_modified: datetime | None,
                detected_at: datetime) -> CommitTime:
    """The commit time from the best source available (see the module docstring)."""
    if timestamp_ms is not None:
        return CommitTime(version, datetime.fromtimestamp(timestamp_ms / 1000, UTC), "commitInfo")
    if last_modified is not None:
        return CommitTime(version, last_modified.astimezone(UTC), "blob")
    return CommitTime(version, detected_at.astimezone(UTC), "detected")


# -- stored state ------------------------------------------------------------------------------------


@dataclass
class Span:
    """Consecutive data-changing versions of one table not yet in the model, with their commit times."""

    first_version: int
    last_version: int
    oldest: str            # commit time of the oldest commit in the span (ISO)
    newest: str            # commit time of the last version of the span (ISO)


@dataclass
class TableFreshness:
    """One source table of a dataset."""

    included_version: int | None = None
    included_commit_time: str | None = None
    unincluded: list[Span] = field(default_factory=list)
    approximate: bool = False  # some commit time was not known (detection time used)

    @property
    def oldest_unincluded_commit_time(self) -> str | None:
        if not self.unincluded:
            return None
        return min((s.oldest for s in self.unincluded), key=parse_iso)


@dataclass
class AlertState:
    """The alert-relevant state of a dataset: what has been announced, and the last outcome."""

    breached: bool = False
    breached_since: str | None = None
    failing: bool = False
    failing_since: str | None = None
    failures: int = 0
    refreshed_at: str | None = None        # end of the last Completed refresh
    last_job_id: str | None = None
    last_status: str | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    last_ended_at: str | None = None
    workspace_name: str | None = None
    dataset_name: str | None = None
    handled_jobs: list[str] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    outbox_dropped: int = 0


@dataclass
class FreshnessRecord:
    """Everything stored about one dataset's freshness (the ``freshness`` property)."""

    tables: dict[str, TableFreshness] = field(default_factory=dict)
    state: AlertState = field(default_factory=AlertState)
    dropped_tables: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "tables": {t: asdict(f) for t, f in sorted(self.tables.items())},
                "state": asdict(self.state), "dropped_tables": self.dropped_tables}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> FreshnessRecord:
        if not data or data.get("v") != FORMAT_VERSION:
            return cls()
        out: dict[str, TableFreshness] = {}
        for name, raw in (data.get("tables") or {}).items():
            spans = [Span(**s) for s in raw.get("unincluded", [])]
            out[name] = TableFreshness(included_version=raw.get("included_version"),
                                       included_commit_time=raw.get("included_commit_time"),
                                       unincluded=spans, approximate=bool(raw.get("approximate")))
        return cls(tables=out, state=AlertState(**(data.get("state") or {})),
                   dropped_tables=int(data.get("dropped_tables", 0)))

    @classmethod
    def from_entity(cls, entity: Any | None) -> FreshnessRecord:
        """The record stored on a dataset state entity (an empty one if there is none)."""
        return cls.from_json(tables.get_json(entity, PROPERTY))

    def to_entity(self, entity: dict[str, Any]) -> None:
        """Store the record on ``entity`` (a dict about to be written ETag-guarded)."""
        tables.put_json(entity, PROPERTY, self.to_json())


# -- recording commits and refreshes -----------------------------------------------------------------


def record_commits(record: FreshnessRecord, table: str, commits: Sequence[CommitTime]) -> bool:
    """Note data-changing commits of ``table`` not yet in the model. Idempotent; returns True if changed."""
    entry = record.tables.get(table)
    if entry is None:
        entry = TableFreshness()
    floor = entry.included_version if entry.included_version is not None else -1
    new = sorted({c.version: c for c in commits if c.version > floor and not _in_span(entry, c.version)}.values(),
                 key=lambda c: c.version)
    if not new:
        return False
    # one span per gap between the spans already there (normally one: commits arrive in version order)
    groups: dict[int, list[CommitTime]] = {}
    for c in new:
        groups.setdefault(sum(1 for s in entry.unincluded if s.last_version < c.version), []).append(c)
    for group in groups.values():
        oldest = min(group, key=lambda c: c.committed_at)
        entry.unincluded.append(Span(group[0].version, group[-1].version, iso(oldest.committed_at),
                                     iso(group[-1].committed_at)))
    entry.unincluded.sort(key=lambda s: s.first_version)
    if any(c.source == "detected" for c in new):
        entry.approximate = True
    while len(entry.unincluded) > MAX_SPANS:
        a, b = entry.unincluded[-2], entry.unincluded[-1]
        entry.unincluded[-2:] = [Span(a.first_version, b.last_version, min(a.oldest, b.oldest, key=parse_iso),
                                      b.newest)]
    record.tables[table] = entry
    _bound_tables(record)
    return True


def _in_span(entry: TableFreshness, version: int) -> bool:
    return any(s.first_version <= version <= s.last_version for s in entry.unincluded)


def _bound_tables(record: FreshnessRecord) -> None:
    if len(record.tables) <= MAX_TABLES:
        return
    up_to_date = sorted((t for t, f in record.tables.items() if not f.unincluded),
                        key=lambda t: record.tables[t].included_commit_time or "")
    for name in up_to_date[:len(record.tables) - MAX_TABLES]:
        del record.tables[name]
        record.dropped_tables += 1


@dataclass(frozen=True)
class RefreshResult:
    """The end of one refresh job, as the worker knows it."""

    job_id: str
    status: str
    ended_at: datetime
    started_at: datetime | None = None
    included: Mapping[str, int] = field(default_factory=dict)  # source table -> newest version in the job
    whole_model: bool = False
    error_code: str | None = None
    error_message: str | None = None
    workspace_name: str | None = None
    dataset_name: str | None = None


def record_refresh(record: FreshnessRecord, result: RefreshResult) -> None:
    """Apply a Completed refresh to what the model contains (other statuses change nothing here)."""
    if result.status != "Completed":
        return
    for table, version in result.included.items():
        _include_version(record.tables.setdefault(table, TableFreshness()), version)
    if result.whole_model and result.started_at is not None:
        for entry in record.tables.values():
            _include_before(entry, result.started_at)
    ended = iso(result.ended_at)
    if record.state.refreshed_at is None or parse_iso(ended) > parse_iso(record.state.refreshed_at):
        record.state.refreshed_at = ended
    _bound_tables(record)


def _include_version(entry: TableFreshness, version: int) -> None:
    keep: list[Span] = []
    for span in entry.unincluded:
        if span.last_version <= version:
            _mark_included(entry, span.last_version, span.newest)
        elif span.first_version <= version:
            keep.append(Span(version + 1, span.last_version, span.oldest, span.newest))  # oldest: an upper bound
        else:
            keep.append(span)
    entry.unincluded = keep
    if entry.included_version is None or version > entry.included_version:
        entry.included_version = version


def _include_before(entry: TableFreshness, started: datetime) -> None:
    keep: list[Span] = []
    for span in entry.unincluded:
        if parse_iso(span.newest) < started and parse_iso(span.oldest) < started:
            _mark_included(entry, span.last_version, span.newest)
        else:
            keep.append(span)
    entry.unincluded = keep


def _mark_included(entry: TableFreshness, version: int, committed: str) -> None:
    if entry.included_version is None or version >= entry.included_version:
        entry.included_version = version
    if entry.included_commit_time is None or parse_iso(committed) > parse_iso(entry.included_commit_time):
        entry.included_commit_time = committed


# -- what to show -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableView:
    """One table's freshness as shown by the API and the status page."""

    data_as_of: str | None
    included_version: int | None
    oldest_unincluded_commit_time: str | None
    unincluded_versions: tuple[int, int] | None  # first..last not yet in the model
    approximate: bool


@dataclass(frozen=True)
class Freshness:
    """A dataset's freshness at ``now``."""

    state: str                        # up_to_date | catching_up | breached | unknown
    since: str | None                 # breached: since; catching up: oldest missing commit; up to date: last refresh
    data_as_of: str | None
    tables: Mapping[str, TableView]
    refreshed_at: str | None
    lag_seconds: float
    slo_seconds: int | None
    breached: bool
    breach_starts_at: str | None      # oldest missing commit + SLO (in the future while catching up)
    dropped_tables: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``freshness`` object of ``GET /api/datasets``."""
        return {
            "state": self.state, "since": self.since, "text": describe(self),
            "data_as_of": {"overall": self.data_as_of,
                           "tables": {t: v.data_as_of for t, v in self.tables.items()}},
            "refreshed_at": self.refreshed_at, "lag_seconds": self.lag_seconds, "slo_seconds": self.slo_seconds,
            "breached": self.breached, "breach_starts_at": self.breach_starts_at,
            "tables": {t: {"data_as_of": v.data_as_of, "included_version": v.included_version,
                           "oldest_unincluded_commit_time": v.oldest_unincluded_commit_time,
                           "unincluded_versions": list(v.unincluded_versions) if v.unincluded_versions else None,
                           "approximate": v.approximate}
                       for t, v in self.tables.items()},
            "dropped_tables": self.dropped_tables,
        }


def freshness_of(record: FreshnessRecord, slo_seconds: int | None, now: datetime) -> Freshness:
    """Compute what to show from the stored record (pure)."""
    views: dict[str, TableView] = {}
    oldest: datetime | None = None
    for name, entry in sorted(record.tables.items()):
        missing = entry.oldest_unincluded_commit_time
        if missing is not None and (oldest is None or parse_iso(missing) < oldest):
            oldest = parse_iso(missing)
        span = (entry.unincluded[0].first_version, entry.unincluded[-1].last_version) if entry.unincluded else None
        views[name] = TableView(entry.included_commit_time, entry.included_version, missing, span, entry.approximate)
    lag = max(0.0, round((now - oldest).total_seconds(), 3)) if oldest is not None else 0.0
    as_of_times = [parse_iso(v.data_as_of) for v in views.values() if v.data_as_of]
    if oldest is not None:
        as_of_times = [t for t in as_of_times if t < oldest]
    data_as_of = iso(max(as_of_times)) if as_of_times else None
    breach_at = oldest + timedelta(seconds=slo_seconds) if oldest is not None and slo_seconds else None
    breached = slo_seconds is not None and lag > slo_seconds
    refreshed = record.state.refreshed_at
    if breached:
        state = BREACHED
        since = record.state.breached_since if record.state.breached and record.state.breached_since \
            else iso(breach_at) if breach_at else None
    elif oldest is not None:
        state, since = CATCHING_UP, iso(oldest)
    elif not record.tables and refreshed is None:
        state, since = UNKNOWN, None
    else:
        state, since = UP_TO_DATE, refreshed
    return Freshness(state=state, since=since, data_as_of=data_as_of, tables=views, refreshed_at=refreshed,
                     lag_seconds=lag, slo_seconds=slo_seconds, breached=breached,
                     breach_starts_at=iso(breach_at) if breach_at else None, dropped_tables=record.dropped_tables)


def describe(f: Freshness) -> str:
    """One line for people: ``breached for 2 h 5 min (lag 3 h 5 min, objective 1 h)``."""
    objective = f", objective {duration_text(f.slo_seconds)}" if f.slo_seconds else ""
    if f.state == BREACHED:
        since = f" for {duration_text(f.lag_seconds - (f.slo_seconds or 0))}" if f.slo_seconds else ""
        return f"breached{since} (lag {duration_text(f.lag_seconds)}{objective})"
    if f.state == CATCHING_UP:
        return f"catching up (lag {duration_text(f.lag_seconds)}{objective})"
    if f.state == UP_TO_DATE:
        return f"up to date{' (last refresh ' + f.refreshed_at + ')' if f.refreshed_at else ''}"
    return "unknown (no commit or refresh seen yet)"


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts[:2])


# -- transitions and events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEvent:
    """One alert, with every fact the webhook body carries (``status_url`` is added when sent)."""

    id: str
    event: str
    dataset: str
    workspace: str | None
    dataset_name: str | None
    status: str | None
    error_code: str | None
    error_message: str | None
    job_id: str | None
    lag_seconds: float
    slo_seconds: int | None
    occurred_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertEvent:
        values: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**values)


def event_id(dataset: str, event: str, key: str) -> str:
    """Stable id of a transition: the same transition always gets the same id (de-duplication)."""
    return hashlib.sha256(f"{dataset}\n{event}\n{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DatasetFacts:
    """Names from the routing config, used when no refresh has reported its resolved names yet."""

    workspace: str | None = None
    dataset_name: str | None = None


def transition(record: FreshnessRecord, *, dataset: str, slo_seconds: int | None, now: datetime,
               outcome: RefreshResult | None = None, facts: DatasetFacts | None = None) -> list[AlertEvent]:
    """Apply ``outcome`` (if any) and re-evaluate the breach; return the events this causes.

    Each event is also appended to the record's outbox, so it is stored in the same ETag-guarded write
    as the transition itself. A job already handled (a redelivered end) causes nothing; a state that
    lasts causes nothing.
    """
    st = record.state
    facts = facts or DatasetFacts()
    events: list[AlertEvent] = []
    if outcome is not None and outcome.job_id not in st.handled_jobs:
        record_refresh(record, outcome)
        st.handled_jobs = [*st.handled_jobs, outcome.job_id][-MAX_HANDLED_JOBS:]
        st.last_job_id, st.last_status = outcome.job_id, outcome.status
        st.last_error_code = outcome.error_code
        st.last_error_message = (outcome.error_message or None) and outcome.error_message[:MAX_STORED_ERROR]
        st.last_ended_at = iso(outcome.ended_at)
        st.workspace_name = outcome.workspace_name or st.workspace_name
        st.dataset_name = outcome.dataset_name or st.dataset_name
        if outcome.status in FAILURE_STATUSES:
            if not st.failing:
                st.failing, st.failing_since = True, iso(outcome.ended_at)
            st.failures += 1
            events.append(_event(record, "refresh_failed", dataset, outcome.job_id, slo_seconds, now, facts,
                                 occurred=outcome.ended_at, outcome=outcome))
        elif outcome.status == "Completed" and st.failing:
            events.append(_event(record, "refresh_recovered", dataset, outcome.job_id, slo_seconds, now, facts,
                                 occurred=outcome.ended_at, outcome=outcome))
            st.failing, st.failing_since, st.failures = False, None, 0
    view = freshness_of(record, slo_seconds, now)
    if view.breached and not st.breached:
        since = parse_iso(view.breach_starts_at) if view.breach_starts_at else now
        st.breached, st.breached_since = True, iso(since)
        events.append(_event(record, "freshness_breached", dataset, iso(since), slo_seconds, now, facts,
                             occurred=since, lag=view.lag_seconds))
    elif st.breached and not view.breached:
        key = st.breached_since or ""
        occurred = outcome.ended_at if outcome is not None and outcome.status == "Completed" else now
        st.breached, st.breached_since = False, None
        events.append(_event(record, "freshness_recovered", dataset, key, slo_seconds, now, facts,
                             occurred=occurred, lag=view.lag_seconds))
    for e in events:
        st.outbox.append(e.to_json())
    if len(st.outbox) > MAX_OUTBOX:
        st.outbox_dropped += len(st.outbox) - MAX_OUTBOX
        st.outbox = st.outbox[-MAX_OUTBOX:]
    return events


def _event(record: FreshnessRecord, name: str, dataset: str, key: str, slo_seconds: int | None, now: datetime,
           facts: DatasetFacts, *, occurred: datetime, outcome: RefreshResult | None = None,
           lag: float | None = None) -> AlertEvent:
    st = record.state
    if lag is None:
        lag = freshness_of(record, slo_seconds, now).lag_seconds
    message = outcome.error_message if outcome is not None else st.last_error_message
    return AlertEvent(
        id=event_id(dataset, name, key), event=name, dataset=dataset,
        workspace=(outcome.workspace_name if outcome else None) or st.workspace_name or facts.workspace,
        dataset_name=(outcome.dataset_name if outcome else None) or st.dataset_name or facts.dataset_name,
        status=outcome.status if outcome else st.last_status,
        error_code=outcome.error_code if outcome else st.last_error_code,
        error_message=message[:MAX_EVENT_ERROR] if message else None,
        job_id=outcome.job_id if outcome else st.last_job_id,
        lag_seconds=lag, slo_seconds=slo_seconds, occurred_at=iso(occurred),
    )


def take_outbox(record: FreshnessRecord, ids: Sequence[str]) -> bool:
    """Remove the events with ``ids`` from the outbox (after they were handed to the queue)."""
    before = len(record.state.outbox)
    record.state.outbox = [e for e in record.state.outbox if e.get("id") not in set(ids)]
    return len(record.state.outbox) != before
