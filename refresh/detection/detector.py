"""From "table T may have new commits" (a hint) to pending refresh jobs, exactly once per version.

Every detection path (blob trigger, Event Grid, the sweep) ends here. For one table:

1. read its watermark (the newest version handled); a table seen for the first time starts after its
   commits made before the app started watching (refresh/detection/first_sight.py). A hinted version
   is only a hint: a watermark only ever moves to a version that was read from the log, so a forged or
   early event cannot move it past real commits;
2. read the commits after the watermark in order, streaming each one (refresh/detection/deltalog.py);
3. put the data-changing ones into the pending job of every dataset that listens to the table
   (refresh/jobs/pending.py; idempotent per table and version);
4. only then move the watermark, ETag-guarded. A crash between 3 and 4 re-reads the same commits on
   the next hint and step 3 ignores what it already recorded; two instances racing both record
   (once, thanks to step 3) and one of them wins the watermark.

A malformed commit (including kept texts that are not valid Unicode) stops that table at that
version: the error is stored on the watermark entity (where ``python -m refresh explain`` and the
status page show it) and the next pass retries it; other tables carry on. A version gap (log cleanup
while the app was away) is skipped over once, recorded on the watermark, and not looped on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso
from refresh.core.routing import RoutingConfig
from refresh.detection import first_sight
from refresh.detection.deltalog import CommitInfo, LogReader, MalformedCommit, classify_commit, valid_text
from refresh.detection.watermarks import Watermark, Watermarks
from refresh.jobs.pending import Change, DatasetStates

log = logging.getLogger(__name__)


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
                 reader_for: Callable[[str], LogReader], clock: Clock, batch_size: int = 500) -> None:
        self.config = config
        self.watermarks = watermarks
        self.states = states
        self.reader_for = reader_for
        self.clock = clock
        self.batch_size = batch_size
        self.watching = first_sight.Watching(watermarks.table, clock)  # when the app started watching

    def process(self, table: str, hint_version: int | None = None, *,
                known: Watermark | None = None) -> TableResult:
        """Handle whatever is new in ``table``. ``known`` is a watermark already read (the sweep)."""
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
            while len(batch) < self.batch_size:
                try:
                    info = self._read(reader, next_version, mark)
                except MalformedCommit as exc:
                    error = exc
                    break
                if info is None:
                    if not gap_checked and hint_version is not None and hint_version > next_version:
                        gap_checked = True
                        later = reader.commit_versions(after=next_version - 1)
                        if later:
                            mark.gap = f"versions {next_version}..{later[0] - 1} missing (log cleanup?)"
                            log.warning("table %s: %s; continuing at %s", table, mark.gap, later[0])
                            next_version = later[0]
                            continue
                    break
                batch.append(info)
                next_version = info.version + 1
            if batch:
                self._route(table, batch, routes, result)
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
            if error is not None or len(batch) < self.batch_size:
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

    def _read(self, reader: LogReader, version: int, mark: Watermark) -> CommitInfo | None:
        lines = reader.open_commit(version)
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

    def _route(self, table: str, batch: list[CommitInfo], routes: list, result: TableResult) -> None:
        changed = [c.version for c in batch if c.data_change]
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
                debounce_seconds=ds.debounce_seconds, max_delay_seconds=ds.max_delay_seconds,
            ))
            if recorded.job_id is not None:
                result.jobs[key] = recorded.job_id
                if recorded.created:
                    result.created.append(key)
                log.info("job %s for dataset %s: %s versions %s..%s of %s (due %s)",
                         "created" if recorded.created else "coalesced", key,
                         "+".join(sorted(model_tables)) if model_tables else "whole model",
                         changed[0], changed[-1], table, recorded.due_at)


def _short(partitions: list[dict], limit: int = 3) -> str:
    if not partitions:
        return "-"
    text = ";".join(",".join(f"{k}={v}" for k, v in p.items()) for p in partitions[:limit])
    return text + (f";+{len(partitions) - limit} more" if len(partitions) > limit else "")
