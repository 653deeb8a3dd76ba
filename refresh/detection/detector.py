"""From "table T may have new commits" (a hint) to pending refresh jobs, exactly once per version.

Every detection path (blob trigger, Event Grid, the sweep) ends here. For one table:

1. read its watermark (the newest version handled); a table seen for the first time starts after its
   commits made before the app started watching (refresh/detection/first_sight.py). A hinted version
   is only a hint: a watermark only ever moves to a version that
   was read from the log, so a forged or early event cannot move it past real commits;
2. read the commits after the watermark: the next one, then (when it exists) the rest of the run found
   by listing the log per block of 100 versions, read concurrently (bounded) and classified in
   version order, streaming each one (refresh/detection/deltalog.py);
3. put the data-changing ones into the pending job of every dataset that listens to the table, one
   change per table and dataset per batch (refresh/jobs/pending.py; idempotent per table and version);
4. only then move the watermark, ETag-guarded, once per batch. A crash between 3 and 4 re-reads the same commits on
   the next hint and step 3 ignores what it already recorded; two instances racing both record
   (once, thanks to step 3) and one of them wins the watermark.

A malformed commit (including kept texts that are not valid Unicode) stops that table at that
version: the error is stored on the watermark entity (where ``python -m refresh explain`` and the
status page show it) and the next pass retries it; other tables carry on. A version gap (log cleanup
while the app was away) is skipped over once, recorded on the watermark, and not looped on.

Within one process, passes over the same table run one at a time; a hint for a version this process
already handled costs nothing, and one it cannot know about costs one read (the watermark).

Debounce and a backlog of events: a pass reads every commit the log holds, so in a burst it reads
ahead of the events still on their way (queued behind thousands of others when detection cannot keep
up). Those late events are the detection catching up, and the burst is not over for its datasets until
they stop: an event for a version already handled keeps the pending job it went into (known to this
process) from falling due, moving its due time to a debounce after the event once less than 3/4 of
the debounce is left (:meth:`DatasetStates.postpone`: one read and one write, about once per quarter
debounce per dataset while the backlog lasts; never beyond the max delay, never for a job an explicit
request joined). Without this, a dataset whose tables' next events waited longer than the debounce
got a refresh mid-backlog and another one after it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso, parse_iso
from refresh.core.routing import RoutingConfig
from refresh.detection import first_sight
from refresh.detection.deltalog import (
    CommitInfo,
    LogReader,
    MalformedCommit,
    classify_commit,
    close_lines,
    valid_text,
)
from refresh.detection.watermarks import Watermark, Watermarks
from refresh.jobs.pending import Change, DatasetStates
from refresh.monitoring.freshness_tracker import commit_times

Routes = list[tuple[str, frozenset[str] | None]]
"""``(dataset key, model tables or None for the whole model)`` for each dataset a table feeds."""

log = logging.getLogger(__name__)

LIST_BLOCK = 100          # versions per listing of the log while finding a run of new commits
PASSES_AT_ONCE = 4        # passes over different tables that keep their whole read window at once (host.json
                          # blobs.maxDegreeOfParallelism); more share the read threads
CATCH_UP_TABLES = 20      # tables of a job looked at once more when it falls due (refresh/jobs/worker.py)
POSTPONE_AT = 0.75        # a late event postpones a job once less than this share of its debounce is left
_POOL_LOCK = threading.Lock()


@dataclass
class _KnownDue:
    """The pending job of a dataset this process put changes into, and its due time as last stored."""

    job_id: str
    due: datetime
    capped: bool = False   # at its max delay: late events cannot move it


@dataclass
class TableResult:
    """What one detection pass over one table did."""

    table: str
    commits: list[CommitInfo] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)     # dataset -> job id that got new versions
    created: list[str] = field(default_factory=list)        # datasets whose job was created by this pass
    first_seen: bool = False
    error: str | None = None
    skipped: str | None = None
    watermark: int | None = None


class Detector:
    """Reads new commits of a table and turns them into pending refresh jobs."""

    def __init__(self, config: RoutingConfig, watermarks: Watermarks, states: DatasetStates,
                 reader_for: Callable[[str], LogReader], clock: Clock, batch_size: int = 500,
                 read_concurrency: int = 8) -> None:
        self.config = config
        self.watermarks = watermarks
        self.states = states
        self.reader_for = reader_for
        self.clock = clock
        self.batch_size = batch_size
        self.read_concurrency = read_concurrency
        self._reads: ThreadPoolExecutor | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._handled: dict[str, int] = {}   # table -> newest version this process moved its watermark to
        self._dues: dict[str, _KnownDue] = {}  # dataset -> the pending job this process last put changes into
        self._dues_lock = threading.Lock()
        self.watching = first_sight.Watching(watermarks.table, clock)  # when the app started watching

    def process(self, table: str, hint_version: int | None = None, *,
                known: Watermark | None = None) -> TableResult:
        """Handle whatever is new in ``table``. ``known`` is a watermark already read (the sweep).

        Passes over one table in this process run one at a time: hints that arrive while a pass runs
        (a burst of commits) wait for it, and the versions it handled cost them no request at all.
        """
        result = TableResult(table=table)
        self.watching.since()  # the first detection ever records when the app started watching
        if not valid_text(table):  # e.g. a "\ud800" escape in an event's JSON: no store could hold it
            result.skipped = "the table path is not valid Unicode (lone surrogate)"
            log.warning("table %s: %s; ignored", ascii(table), result.skipped)
            return result
        routes = self.config.routes_for(table)
        if not routes:
            result.skipped = "no configured dataset listens to this table"
            return result
        with self._lock_for(table):
            handled = self._handled.get(table)
            if hint_version is not None and handled is not None and hint_version <= handled:
                # a watermark only moves forward: what this process moved it to is covered for good
                result.skipped = f"version {hint_version} already handled"
                result.watermark = handled
            else:
                result = self._process(table, hint_version, known, routes, result)
                if result.watermark is not None and not result.error and (result.commits or result.first_seen):
                    self._handled[table] = max(result.watermark, self._handled.get(table, -1))
        if (hint_version is not None and not result.commits and not result.error and result.watermark is not None
                and hint_version <= result.watermark):
            self._late_event(table, routes)
        return result

    def catch_up(self, tables_of_job: list[str]) -> int:
        """Before a debounced job starts: a pass over each of its tables (at most :data:`CATCH_UP_TABLES`), so
        commits that landed but whose events have not been handled yet go into the job (and move its due
        time) instead of into a second refresh. Two requests per table when nothing is new (the watermark and
        the next version's absence). Returns how many new commits were recorded; a table that cannot be read
        is skipped (it never holds the refresh back)."""
        found = 0
        for table in tables_of_job[:CATCH_UP_TABLES]:
            result = self.process(table)
            if result.error:
                log.info("table %s: not checked before its job starts (%s)", table, result.error)
            found += len(result.commits)
        return found

    def _late_event(self, table: str, routes: Routes) -> None:
        """An event for a commit already read: keep the jobs it went into from falling due (module docstring)."""
        now = self.clock.now()
        for key, _ in routes:
            ds = self.config.datasets[key]
            if ds.debounce_seconds <= 0:
                continue
            target = now + timedelta(seconds=ds.debounce_seconds)
            with self._dues_lock:
                known = self._dues.get(key)
                if known is None or known.capped or \
                        (known.due - now).total_seconds() >= ds.debounce_seconds * POSTPONE_AT:
                    continue
                was = known.due
                known.due = target  # other threads' late events for this dataset need not postpone it too
            stored = self.states.postpone(key, known.job_id, target, ds.max_delay_seconds)
            with self._dues_lock:
                if stored is None:
                    if self._dues.get(key) is known:
                        del self._dues[key]  # that job started (or was replaced): nothing to keep back
                    continue
                known.capped = parse_iso(stored) < target
                known.due = parse_iso(stored) if known.capped else max(known.due, parse_iso(stored))
            if parse_iso(stored) > was:
                log.info("job %s for dataset %s: due %s (events of %s still arriving: detection catching up)",
                         known.job_id, key, stored, table)

    def _lock_for(self, table: str) -> threading.Lock:
        with self._locks_lock:
            lock = self._locks.get(table)
            if lock is None:
                lock = self._locks[table] = threading.Lock()
            return lock

    def _process(self, table: str, hint_version: int | None, known: Watermark | None, routes: Routes,
                 result: TableResult) -> TableResult:
        mark = known if known is not None else self.watermarks.get(table)
        reader = None
        if mark is not None and not mark.checked:
            reader = self.reader_for(table)
            mark = self._check(table, reader, mark)
            if mark is None:
                result.skipped = "watermark moved by another instance"
                return result
        if mark is not None and hint_version is not None and hint_version <= mark.version and not mark.error:
            result.skipped = f"version {hint_version} already handled"
            result.watermark = mark.version
            return result
        reader = reader or self.reader_for(table)
        if mark is None:
            mark = self._first_seen(table, reader, hint_version)
            if mark is None:
                result.skipped = "no Delta log found"
                return result
            result.first_seen = True

        gap_checked = False
        next_version = mark.version + 1
        while True:
            batch: list[CommitInfo] = []
            error: MalformedCommit | None = None
            batch, error, absent = self._read_run(reader, next_version, mark)
            if absent and not gap_checked and hint_version is not None and hint_version > next_version:
                gap_checked = True
                later = reader.commit_versions(after=next_version - 1)
                if later:
                    mark.gap = f"versions {next_version}..{later[0] - 1} missing (log cleanup?)"
                    log.warning("table %s: %s; continuing at %s", table, mark.gap, later[0])
                    next_version = later[0]
                    batch, error, absent = self._read_run(reader, next_version, mark)
            if batch:
                next_version = batch[-1].version + 1
            if batch:
                self._route(table, batch, routes, result, reader)
                mark.version = batch[-1].version
                result.commits.extend(batch)
            changed = bool(batch)
            if error is not None:
                result.error = str(error)
                if mark.error != str(error):
                    log.error("table %s: %s (will retry on the next pass)", table, error)
                    mark.error, mark.error_version = str(error), error.version
                    mark.extra["error_at"] = iso(self.clock.now())
                    changed = True
            elif mark.error and (batch or next_version > (mark.error_version or 0)):
                mark.error, mark.error_version = "", None
                changed = True
            if changed:
                try:
                    self.watermarks.save(mark)
                except tables.Conflict:
                    # another instance moved it; it has handled (or will handle) the same versions
                    log.info("table %s: watermark moved by another instance", table)
                    break
            if error is not None:
                break
            if len(batch) < self.batch_size:
                if batch and not gap_checked and hint_version is not None and hint_version >= next_version:
                    continue  # the hinted version lies beyond the run: look for a gap once
                break
        result.watermark = mark.version
        return result

    def _first_seen(self, table: str, reader: LogReader, hint_version: int | None) -> Watermark | None:
        """Where a table the app has never seen starts: refresh/detection/first_sight.py."""
        start = first_sight.starting_point(reader, self.watching.since(), hint_version)
        if start is None:
            return None
        mark = Watermark(table=table, version=start.version, gap=start.gap)
        try:
            self.watermarks.save(mark)
            log.info("table %s: first seen, starting after version %s", table, start.version)
        except tables.Conflict:
            mark = self.watermarks.get(table) or mark
        return mark

    def _check(self, table: str, reader: LogReader, mark: Watermark) -> Watermark | None:
        """Once per watermark stored by older code: one listing of the log, and if the watermark is past
        the log's newest version (a bogus event's version), restart it there, handling the newest commit:
        the commits the bogus watermark hid are all in the table a refresh after it reads."""
        latest = reader.latest_version()
        if latest is not None and mark.version > latest:
            restart = latest - 1
            mark.gap = (f"watermark {mark.version} was past the log's newest version {latest} (set from an event "
                        f"for a version that did not exist); restarted after {restart}")
            log.warning("table %s: %s", table, mark.gap)
            mark.version = restart
            mark.error, mark.error_version = "", None
        mark.checked = True
        try:
            return self.watermarks.save(mark)
        except tables.Conflict:
            return self.watermarks.get(table)

    def _read_run(self, reader: LogReader, start: int, mark: Watermark
                  ) -> tuple[list[CommitInfo], MalformedCommit | None, bool]:
        """Up to ``batch_size`` consecutive commits from ``start``, classified in version order.

        One read of ``start`` first (when it is absent, the usual case for a sweep, that is the only
        request). When it exists, the rest of the run is found by listing the log in blocks of
        :data:`LIST_BLOCK` versions (a listing costs what the final absent read used to) and read
        concurrently, at most ``read_concurrency`` at a time, while classification stays in order (the read
        threads are shared by the passes over different tables: :data:`PASSES_AT_ONCE` of them each keep
        their whole window).
        Returns (commits, the malformed commit that stopped the run, whether ``start`` was absent).
        """
        batch: list[CommitInfo] = []
        try:
            first = self._classify(reader, start, reader.open_commit(start), mark)
        except MalformedCommit as exc:
            return batch, exc, False
        if first is None:
            return batch, None, True
        batch.append(first)
        run = self._following(reader, start + 1, self.batch_size - 1)
        if not run:
            return batch, None, False
        pool = self._pool()
        window = max(1, self.read_concurrency)
        futures: deque[tuple[int, Future[Any]]] = deque()
        pending = iter(run)
        try:
            for version in pending:
                futures.append((version, pool.submit(reader.open_commit, version)))
                if len(futures) >= window:
                    break
            while futures:
                version, future = futures.popleft()
                nxt = next(pending, None)
                if nxt is not None:
                    futures.append((nxt, pool.submit(reader.open_commit, nxt)))
                info = self._classify(reader, version, future.result(), mark)
                if info is None:  # listed but gone (log cleanup racing us): stop, the next pass sees it
                    break
                batch.append(info)
        except MalformedCommit as exc:
            return batch, exc, False
        finally:
            for version, future in futures:
                future.cancel()
                if not future.cancelled():
                    try:
                        lines = future.result()
                    except Exception as exc:  # only releasing; the pass already stopped
                        log.debug("table %s: read of version %s after the stop failed: %s", reader.table, version, exc)
                        continue
                    if lines is not None:
                        close_lines(lines)
        return batch, None, False

    def _following(self, reader: LogReader, start: int, limit: int) -> list[int]:
        """The consecutive versions ``start``, ``start+1``, ... that the log lists (at most ``limit``)."""
        run: list[int] = []
        expected = start
        while len(run) < limit:
            block_end = (expected // LIST_BLOCK + 1) * LIST_BLOCK - 1
            listed = reader.commit_versions(after=expected - 1, upto=block_end)
            for version in listed:
                if version != expected or len(run) >= limit:
                    return run
                run.append(version)
                expected += 1
            if expected <= block_end:  # the block ended before its last version: no more commits
                return run
        return run

    def _pool(self) -> ThreadPoolExecutor:
        with _POOL_LOCK:
            if self._reads is None:
                self._reads = ThreadPoolExecutor(max_workers=max(1, self.read_concurrency) * PASSES_AT_ONCE,
                                                 thread_name_prefix="commit-read")
            return self._reads

    def _classify(self, reader: LogReader, version: int, lines: Iterator[bytes] | None,
                  mark: Watermark) -> CommitInfo | None:
        if lines is None:
            return None
        info = classify_commit(lines, table=reader.table, version=version, column_mapping=mark.column_mapping)
        unknown = {k for part in info.partitions for k, _ in part if k.startswith("col-")}
        if info.data_change and unknown - set(mark.column_mapping):
            mapping = reader.find_column_mapping(version)
            if mapping:
                lines = reader.open_commit(version)
                if lines is not None:
                    info = classify_commit(lines, table=reader.table, version=version, column_mapping=mapping)
        mark.column_mapping = dict(info.column_mapping)
        return info

    def _route(self, table: str, batch: list[CommitInfo], routes: Routes, result: TableResult,
               reader: LogReader | None = None) -> None:
        changed = [c.version for c in batch if c.data_change]
        times = tuple(commit_times(batch, self.clock.now(), reader.last_modified if reader is not None else None))
        for info in batch:
            log.info(
                "commit detected: table=%s version=%s operation=%s data_change=%s partitions=%s datasets=%s",
                table, info.version, info.operation, info.data_change, _short(info.partitions_as_dicts()),
                ",".join(k for k, _ in routes) if info.data_change else "-",
            )
        if not changed:
            return
        for key, model_tables in routes:
            ds = self.config.datasets[key]
            recorded = self.states.record(key, Change(
                trigger="commit", table=table, versions=tuple(changed), model_tables=model_tables,
                debounce_seconds=ds.debounce_seconds, max_delay_seconds=ds.max_delay_seconds, commit_times=times,
            ))
            if recorded.job_id is not None:
                result.jobs[key] = recorded.job_id
                if recorded.due_at is not None:
                    with self._dues_lock:
                        self._dues[key] = _KnownDue(recorded.job_id, parse_iso(recorded.due_at))
                if recorded.created:
                    result.created.append(key)
                log.info("job %s for dataset %s: %s versions %s..%s of %s (due %s)",
                         "created" if recorded.created else "coalesced", key,
                         "+".join(sorted(model_tables)) if model_tables else "whole model",
                         changed[0], changed[-1], table, recorded.due_at)


def _short(partitions: list[dict[str, Any]], limit: int = 3) -> str:
    if not partitions:
        return "-"
    text = ";".join(",".join(f"{k}={v}" for k, v in p.items()) for p in partitions[:limit])
    return text + (f";+{len(partitions) - limit} more" if len(partitions) > limit else "")
