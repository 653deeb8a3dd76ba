"""The safety net: probe every configured gold table for commits the events did not announce.

Explicit tables come straight from the routing config; globs are expanded by listing the gold
container one directory level at a time, in parallel, never descending into a table and listing only
folders that are not tables already known from the last sweep (refresh/detection/globs.py). All
watermarks, the remembered glob expansions and the pending jobs whose message may be missing are read
in one query; then each table costs one request when nothing is new (a read of the commit after its
watermark, which is absent).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from refresh.detection.detector import Detector, TableResult
from refresh.detection.globs import GLOB_FILTER, PK_GLOB, Expansion, GlobWalker, expand_glob, expansion_of, remember
from refresh.detection.watermarks import Watermarks

log = logging.getLogger(__name__)

@dataclass
class SweepResult:
    """Summary of one sweep."""

    tables: int = 0
    new_commits: int = 0
    jobs: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    repaired: int = 0


def configured_tables(config: Any, container: Any, remembered: dict[str, Expansion] | None = None,
                      state_table: Any = None, concurrency: int = 16) -> list[str]:
    """Explicit tables plus every glob's expansion (from ``remembered`` ones, stored again if changed)."""
    tables_ = set(config.explicit_tables())
    walker = GlobWalker(container, concurrency)
    for pattern in config.glob_sources():
        previous = (remembered or {}).get(pattern)
        matched = walker.expand(pattern, previous.tables if previous else None)
        if state_table is not None:
            remember(state_table, previous, pattern, matched)
        tables_.update(matched)
    return sorted(tables_)


def sweep(detector: Detector, watermarks: Watermarks, container: Any, states: Any = None,
          concurrency: int = 16) -> SweepResult:
    """Probe every configured table; returns what was found."""
    result = SweepResult()
    detector.watching.since()  # a sweep is detection too: it records when the app started watching
    # one query: every watermark, the remembered glob expansions, and pending jobs whose queue
    # message may not have been sent
    also = GLOB_FILTER if detector.config.glob_sources() else None
    if states is not None:
        also = f"{also} or {states.UNSENT_FILTER}" if also else states.UNSENT_FILTER
    marks, others = watermarks.all(also=also)
    remembered: dict[str, Expansion] = {}
    unsent = []
    for entity in others:
        if entity["PartitionKey"] == PK_GLOB:
            expansion = expansion_of(entity)
            if expansion is not None:
                remembered[expansion.pattern] = expansion
        else:
            unsent.append(entity)
    names = configured_tables(detector.config, container, remembered, watermarks.table, concurrency)
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

__all__ = ["SweepResult", "configured_tables", "expand_glob", "sweep"]
