"""The safety net: probe every configured gold table for commits the events did not announce.

Explicit tables come straight from the routing config; globs are expanded by listing the gold
container one directory level at a time (never descending into a table, whose data files can be
many). All watermarks are read in one query; then each table costs one request when nothing is new
(a read of the commit after its watermark, which is absent).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from refresh.core.routing import segment_regex
from refresh.detection.detector import Detector, TableResult
from refresh.detection.watermarks import Watermarks

log = logging.getLogger(__name__)

MAX_DEPTH = 12


@dataclass
class SweepResult:
    """Summary of one sweep."""

    tables: int = 0
    new_commits: int = 0
    jobs: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    repaired: int = 0


def expand_glob(container: Any, pattern: str) -> list[str]:
    """Table roots in ``container`` matching ``pattern`` (``*`` one segment, ``**`` any depth)."""
    segments = pattern.split("/")
    matchers = [None if seg == "**" else re.compile(segment_regex(seg)) for seg in segments]
    found: list[str] = []

    def children(prefix: str) -> tuple[list[str], bool]:
        dirs, is_table = [], False
        for item in container.walk_blobs(name_starts_with=prefix, delimiter="/"):
            name = item.name
            if name.endswith("/"):
                child = name[len(prefix):-1]
                if child == "_delta_log":
                    is_table = True
                else:
                    dirs.append(child)
        return dirs, is_table

    def walk(prefix: str, states: set[int], depth: int) -> None:
        # states: indexes into `segments` still to match (NFA over segments; '**' may match zero)
        states = _close(states)
        dirs, is_table = children(prefix)
        if is_table:
            if len(segments) in states:
                found.append(prefix.rstrip("/"))
            return
        if depth >= MAX_DEPTH:
            return
        for child in dirs:
            nxt: set[int] = set()
            for i in states:
                if i >= len(segments):
                    continue
                matcher = matchers[i]
                if matcher is None:  # '**'
                    nxt.add(i)
                elif matcher.fullmatch(child):
                    nxt.add(i + 1)
            if nxt:
                walk(f"{prefix}{child}/", nxt, depth + 1)

    def _close(states: set[int]) -> set[int]:
        closed = set(states)
        for i in sorted(states):
            j = i
            while j < len(segments) and segments[j] == "**":
                j += 1
                closed.add(j)
        return closed

    # start below the static (glob-free) leading segments
    static = []
    for seg in segments:
        if "*" in seg:
            break
        static.append(seg)
    prefix = "/".join(static) + "/" if static else ""
    walk(prefix, {len(static)}, len(static))
    return sorted(set(found))


def configured_tables(config: Any, container: Any) -> list[str]:
    tables_ = set(config.explicit_tables())
    for pattern in config.glob_sources():
        tables_.update(expand_glob(container, pattern))
    return sorted(tables_)


def sweep(detector: Detector, watermarks: Watermarks, container: Any, states: Any = None,
          concurrency: int = 16) -> SweepResult:
    """Probe every configured table; returns what was found."""
    result = SweepResult()
    detector.watching.since()  # a sweep is detection too: it records when the app started watching
    names = configured_tables(detector.config, container)
    # one query: every watermark, plus pending jobs whose queue message may not have been sent
    marks, unsent = watermarks.all(also=states.UNSENT_FILTER if states is not None else None)
    result.tables = len(names)

    def one(table: str) -> TableResult:
        return detector.process(table, known=marks.get(table))

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(names) or 1))) as pool:
        futures = {pool.submit(one, t): t for t in names}
        for future, table in futures.items():
            try:
                res = future.result()
            except Exception as exc:  # one table's storage trouble must not stop the others
                log.exception("sweep: table %s failed", table)
                result.errors[table] = f"{type(exc).__name__}: {exc}"
                continue
            result.new_commits += len(res.commits)
            result.jobs.update(res.jobs)
            if res.error:
                result.errors[table] = res.error
    if states is not None:
        result.repaired = states.repair_unsent(candidates=unsent)
    log.info("sweep: %s tables, %s new commits, %s datasets with jobs, %s errors",
             result.tables, result.new_commits, len(result.jobs), len(result.errors))
    return result
