"""Where a table the app has never seen starts (issue 9 item 9): decided by time, never by a hint.

The app records once when it started watching: an entity in ``STATE_TABLE`` (PartitionKey ``app``,
RowKey ``watching``, ``since``), created if absent (ETag create) the first time any detection runs,
and never changed afterwards; every instance reads the same one.

On first sight of a table, its commits made after ``since`` happened while the app watched: they are
new and go into jobs, even when their events came late, out of order, or named a version that did not
exist yet. Commits made before ``since`` are the table's state before the app existed: the table
starts after them (no replay of history). A commit's time is its Delta commit timestamp
(``commitInfo.inCommitTimestamp``, else ``commitInfo.timestamp``), else its log file's last-modified
time.

The log is read backwards from its newest version, at most :data:`MAX_LOOKBACK` versions; a table
with more new commits than that starts ``MAX_LOOKBACK`` versions before its newest, and says so in
the watermark's gap note. The start never passes the newest version that exists: a hinted version is
only a hint. An event announcing a version that exists still gets the newest commit handled (the
event says something new happened, whatever the clocks say).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso, parse_iso
from refresh.detection.deltalog import LogReader, close_lines

log = logging.getLogger(__name__)

PK_APP = "app"
RK_WATCHING = "watching"
MAX_LOOKBACK = 100           # versions read on first sight of a table
MAX_LINES = 1000             # lines of one commit scanned for its commitInfo (else: last-modified)


class Watching:
    """When the app started watching: created once (ETag create-if-absent), then cached."""

    def __init__(self, table: Any, clock: Clock) -> None:
        self.table = table
        self.clock = clock
        self._since: datetime | None = None
        self._lock = threading.Lock()

    def since(self) -> datetime:
        """The recorded start, recording now as the start if none is stored yet."""
        if self._since is not None:
            return self._since
        with self._lock:
            if self._since is None:
                self._since = self._read_or_create()
        return self._since

    def _read_or_create(self) -> datetime:
        entity = tables.get_entity(self.table, PK_APP, RK_WATCHING)
        if entity is None:
            now = self.clock.now()
            try:
                tables.write(self.table, {"PartitionKey": PK_APP, "RowKey": RK_WATCHING, "since": iso(now)}, None)
                log.info("detection: the app watches for commits since %s", iso(now))
                return now
            except tables.Conflict:  # another instance recorded it first
                entity = tables.get_entity(self.table, PK_APP, RK_WATCHING)
        if entity is None or not isinstance(entity.get("since"), str):
            raise ValueError(f"the state table's {PK_APP}/{RK_WATCHING} entity has no readable 'since'")
        return parse_iso(entity["since"])


@dataclass(frozen=True)
class Start:
    """Where a table seen for the first time starts: after ``version`` (-1: from its first commit)."""

    version: int
    gap: str = ""
    new_commits: int = 0


def starting_point(reader: LogReader, since: datetime, hint_version: int | None = None,
                   lookback: int = MAX_LOOKBACK) -> Start | None:
    """The start of a table seen for the first time (None: it has no commit yet)."""
    versions = reader.commit_versions()
    if not versions:
        return None
    latest = versions[-1]
    recent = versions[-lookback:]
    start: int | None = None
    new = 0
    for version in reversed(recent):
        made = commit_time(reader, version)
        if made is None or made <= since:
            start = version
            break
        new += 1
    gap = ""
    if start is None:  # every commit read was made after the app started watching
        first = recent[0]
        if len(versions) > len(recent):
            start = first - 1
            gap = (f"first seen with more than {lookback} commits made since the app started watching "
                   f"({iso(since)}); versions up to {start} not read, started after {start}")
            log.warning("table %s: %s", reader.table, gap)
        else:
            start = first - 1  # from the first commit the log has
    if hint_version is not None and hint_version <= latest:
        start = min(start, latest - 1)  # an event announced a commit that exists: the newest is handled
    elif hint_version is not None:
        log.warning("table %s: an event announced version %s but the log's newest is %s; starting after %s",
                    reader.table, hint_version, latest, start)
    return Start(version=start, gap=gap, new_commits=latest - start)


def commit_time(reader: LogReader, version: int) -> datetime | None:
    """When ``version`` was committed: its commitInfo timestamp, else its file's last-modified (None:
    neither could be read, e.g. the file was removed by log cleanup meanwhile)."""
    stamp = _commit_info_millis(reader, version)
    if stamp is not None:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    return reader.last_modified(version)


def _commit_info_millis(reader: LogReader, version: int) -> int | None:
    lines = reader.open_commit(version)
    if lines is None:
        return None
    try:
        for count, line in enumerate(lines):
            if count >= MAX_LINES:
                return None
            if b"commitInfo" not in line:
                continue
            try:
                action = json.loads(line.decode("utf-8"))
            except ValueError:  # a malformed commit is reported when it is read for jobs
                return None
            info = action.get("commitInfo") if isinstance(action, dict) else None
            if not isinstance(info, dict):
                continue
            for key in ("inCommitTimestamp", "timestamp"):
                value = info.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**13:
                    return value
            return None
        return None
    finally:
        close_lines(lines)


