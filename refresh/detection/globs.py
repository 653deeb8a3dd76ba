"""Glob sources expanded to Delta table roots, remembered between sweeps.

A pattern (``*`` one path segment, ``**`` any depth) is expanded by listing the gold container one
directory level at a time with a ``/`` delimiter, one level of the whole tree at a time in parallel
(bounded). A folder is a table when it has a ``_delta_log/`` sub-folder; the walk never descends into
a table. A folder's listing stops at its first page that shows ``_delta_log/`` (``_`` sorts before the
lowercase names of data files and partition folders), so a table full of data files costs one
request, not one per 5,000 files.

The tables each pattern matched are stored in ``STATE_TABLE`` (PartitionKey ``glob``, RowKey the
encoded pattern, the list compressed) and read in the sweep's one query of watermarks. A later sweep
lists only the folders that are not known tables: a known table is kept as long as its parent folder
still lists it, and a new child folder is listed once to learn whether it is a table. That is one
request per non-table folder, not one per table.
"""

from __future__ import annotations

import base64
import logging
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from refresh.core import storage as tables
from refresh.core.routing import segment_regex

log = logging.getLogger(__name__)

PK_GLOB = "glob"
GLOB_FILTER = f"(PartitionKey eq '{PK_GLOB}')"
MAX_DEPTH = 12
LOG_FOLDER = "_delta_log"
MAX_STORED_CHARS = 600_000   # well below Table Storage's 1 MB entity limit (UTF-16)


@dataclass
class Expansion:
    """The tables one pattern matched, as stored (``etag`` None = not stored yet)."""

    pattern: str
    tables: set[str] = field(default_factory=set)
    etag: str | None = None

    def to_entity(self) -> dict[str, Any]:
        packed = base64.b64encode(zlib.compress("\n".join(sorted(self.tables)).encode("utf-8"), 6)).decode()
        entity: dict[str, Any] = {"PartitionKey": PK_GLOB, "RowKey": tables.row_key(self.pattern),
                                  "pattern": self.pattern, "count": len(self.tables)}
        tables.put_json(entity, "tables", packed)
        return entity


def expansion_of(entity: Any) -> Expansion | None:
    """The stored expansion in ``entity``, or None when it cannot be read (then the walk starts afresh)."""
    try:
        packed = tables.get_json(entity, "tables", "")
        text = zlib.decompress(base64.b64decode(packed)).decode("utf-8") if packed else ""
    except (ValueError, zlib.error, UnicodeDecodeError) as exc:
        log.warning("glob %s: stored expansion unreadable (%s); walking afresh", entity.get("pattern"), exc)
        return None
    pattern = entity.get("pattern") or tables.from_row_key(entity["RowKey"])
    return Expansion(pattern=pattern, tables=set(filter(None, text.split("\n"))),
                     etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None)


@dataclass
class _Folder:
    prefix: str           # "a/b/" (or "" for the container root)
    states: frozenset[int]
    depth: int


class GlobWalker:
    """Expands patterns against one container with a bounded pool of listing threads."""

    def __init__(self, container: Any, concurrency: int = 16) -> None:
        self.container = container
        self.concurrency = max(1, concurrency)

    def children(self, prefix: str) -> tuple[list[str], bool]:
        """Sub-folder names of ``prefix`` and whether it is a table (stops paging once it knows)."""
        dirs: list[str] = []
        for item in self.container.walk_blobs(name_starts_with=prefix, delimiter="/"):
            name = item.name
            if name.endswith("/"):
                child = name[len(prefix):-1]
                if child == LOG_FOLDER:
                    return dirs, True
                dirs.append(child)
        return dirs, False

    def expand(self, pattern: str, known: set[str] | None = None) -> list[str]:
        """Table roots matching ``pattern``; ``known`` tables (an earlier expansion) are not listed."""
        segments = pattern.split("/")
        matchers = [None if seg == "**" else re.compile(segment_regex(seg)) for seg in segments]
        known = known or set()

        def close(states: set[int]) -> frozenset[int]:
            closed = set(states)
            for i in sorted(states):
                j = i
                while j < len(segments) and segments[j] == "**":
                    j += 1
                    closed.add(j)
            return frozenset(closed)

        def step(states: frozenset[int], child: str) -> set[int]:
            nxt: set[int] = set()
            for i in states:
                if i >= len(segments):
                    continue
                matcher = matchers[i]
                if matcher is None:  # '**'
                    nxt.add(i)
                elif matcher.fullmatch(child):
                    nxt.add(i + 1)
            return nxt

        static = []
        for seg in segments:
            if "*" in seg:
                break
            static.append(seg)
        root = "/".join(static) + "/" if static else ""
        found: set[str] = set()
        level = [_Folder(root, close({len(static)}), len(static))]
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="glob-walk") as pool:
            while level:
                listed = list(pool.map(lambda f: self.children(f.prefix), level))
                following: list[_Folder] = []
                for folder, (dirs, is_table) in zip(level, listed, strict=True):
                    if is_table:
                        if len(segments) in folder.states:
                            found.add(folder.prefix.rstrip("/"))
                        continue
                    if folder.depth >= MAX_DEPTH:
                        continue
                    for child in dirs:
                        nxt = step(folder.states, child)
                        if not nxt:
                            continue
                        states = close(nxt)
                        path = f"{folder.prefix}{child}"
                        if path in known:  # a table last time and still listed by its parent
                            if len(segments) in states:
                                found.add(path)
                            continue
                        following.append(_Folder(path + "/", states, folder.depth + 1))
                level = following
        return sorted(found)


def expand_glob(container: Any, pattern: str, known: set[str] | None = None, concurrency: int = 16) -> list[str]:
    """Table roots in ``container`` matching ``pattern`` (``*`` one segment, ``**`` any depth)."""
    return GlobWalker(container, concurrency).expand(pattern, known)


def remember(state_table: Any, previous: Expansion | None, pattern: str, matched: list[str]) -> None:
    """Store what ``pattern`` matched when it differs from ``previous`` (a cache: last writer wins)."""
    if previous is not None and previous.tables == set(matched):
        return
    expansion = Expansion(pattern=pattern, tables=set(matched))
    entity = expansion.to_entity()
    size = sum(len(v) for v in entity.values() if isinstance(v, str))
    if size > MAX_STORED_CHARS:
        log.warning("glob %s: %s tables too many to remember (%s chars); the next sweep walks again",
                    pattern, len(matched), size)
        return
    try:
        state_table.upsert_entity(entity)
    except Exception as exc:  # only a cache: the next sweep walks the full tree again
        log.warning("glob %s: could not remember its %s tables: %s", pattern, len(matched), exc)
