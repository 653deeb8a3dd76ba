"""The routing config's model: what a dataset listens to and how it is refreshed, and table globs.

:class:`Source`, :class:`RefreshOptions` and :class:`DatasetConfig` are the validated, immutable
objects :mod:`refresh.core.routing` builds from the JSON file (the rules live in
:mod:`refresh.core.routing_schema`); :class:`ConfigError` is what any of them raises on bad input.

Table globs: segments are separated by ``/``; ``*`` matches within one segment, ``**`` as a whole
segment matches zero or more segments. Other characters (including ``[``, ``]``) are literal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from refresh.core.validation import CONTROL_RE, json_type, unicode_problem

MAX_DELAY = 7 * 24 * 3600 - 60
"""Upper bound of ``debounce_seconds`` and ``max_delay_seconds``: 7 days minus 1 minute (a storage
queue message cannot stay invisible longer than 7 days)."""
MAX_SLO_MINUTES = 30 * 24 * 60
"""Upper bound of ``freshness_slo_minutes``: 30 days."""
MAX_TABLE_LENGTH = 1024
ENHANCED_OPTION_KEYS = ("type", "commit_mode", "max_parallelism", "retry_count", "timeout",
                        "apply_refresh_policy", "effective_date")
"""The :class:`RefreshOptions` fields sent in an enhanced refresh request (snake_case)."""


# --------------------------------------------------------------------------------------------------
# errors


class ConfigError(ValueError):
    """The routing config cannot be used. ``problems`` holds every ``(key path, problem)`` found;
    the message has one ``<source>: <key path>: <problem>`` line per problem."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = list(problems)
        lines = [f"{source}: {path}: {problem}" if path else f"{source}: {problem}"
                 for path, problem in self.problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# table globs


def glob_problems(table: object) -> list[str]:
    """What is wrong with a source ``table`` path or glob (empty list: nothing). ``table`` may be any
    JSON value (the config parser passes what it read)."""
    if not isinstance(table, str):
        return [f"must be a string, got {json_type(table)}"]
    if table.strip() == "":
        return ["must not be empty"]
    bad_text = unicode_problem(table)
    if bad_text:
        return [bad_text]
    problems = []
    if len(table) > MAX_TABLE_LENGTH:
        problems.append(f"is {len(table)} characters long; the limit is {MAX_TABLE_LENGTH}")
    if CONTROL_RE.search(table):
        problems.append("contains a control character")
    if "\\" in table:
        problems.append("contains a backslash; separate segments with '/'")
    if table.startswith("/") or table.endswith("/"):
        problems.append("must not start or end with '/'")
    if "//" in table:
        problems.append("contains an empty segment ('//')")
    if "?" in table:
        problems.append("'?' is not supported; use '*' (any characters within a segment)")
    segments = table.split("/")
    for bad in ("..", "."):
        if bad in segments:
            problems.append(f"glob may not contain {bad!r}")
    if "_delta_log" in segments:
        problems.append("must name the table, not its '_delta_log' folder")
    mixed = [s for s in segments if "**" in s and s != "**"]
    if mixed:
        problems.append(f"'**' must be a whole segment (got {mixed[0]!r})")
    if any(a == b == "**" for a, b in pairwise(segments)):
        problems.append("'**/**' is redundant; use a single '**'")
    return problems


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regex matching exactly the table paths ``pattern`` (already validated) matches."""
    segments = pattern.split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "**":
            if last == 0:
                out.append(r"[^/]+(?:/[^/]+)*")
            elif i == last:
                out.append(r"(?:/[^/]+)*")  # zero or more trailing segments
            else:
                out.append(("/" if i else "") + r"(?:[^/]+/)*")  # zero or more, each with its '/'
        else:
            if i and segments[i - 1] != "**":
                out.append("/")
            out.append(r"[^/]+" if seg == "*" else segment_regex(seg))
    return re.compile("".join(out))


def segment_regex(segment: str) -> str:
    """Regex text for one glob segment without ``**``: ``*`` matches within the segment, the rest is literal."""
    return re.escape(segment).replace(r"\*", r"[^/]*")

# --------------------------------------------------------------------------------------------------
# the configuration objects


@dataclass(frozen=True)
class Source:
    """One table (or glob of tables) a dataset listens to, and the model tables it feeds
    (``model_tables`` None: the whole model)."""

    table: str
    model_tables: tuple[str, ...] | None = None
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)
    _prefix: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        problems = glob_problems(self.table)
        if problems:
            raise ValueError(f"source table {self.table!r}: {'; '.join(problems)}")
        if self.model_tables is not None:
            object.__setattr__(self, "model_tables", tuple(self.model_tables))
            if not self.model_tables:
                raise ValueError(f"source {self.table!r}: model_tables must be None (whole model) "
                                 "or non-empty")
        object.__setattr__(self, "_regex", compile_glob(self.table) if self.is_glob else None)
        static = []
        for seg in self.table.split("/"):
            if "*" in seg:
                break
            static.append(seg)
        object.__setattr__(self, "_prefix", "".join(seg + "/" for seg in static))

    @property
    def is_glob(self) -> bool:
        """Whether ``table`` contains ``*`` (and so names a set of tables)."""
        return "*" in self.table

    def matches(self, table_path: str) -> bool:
        """Whether the table at ``table_path`` (inside the gold container) is this source."""
        if self._regex is None:
            return table_path == self.table
        return (table_path + "/").startswith(self._prefix) and self._regex.fullmatch(table_path) is not None

    def static_prefix(self) -> str:
        """The leading glob-free segments, each followed by ``/`` (``"sales/"`` for ``sales/dim_*``,
        ``""`` for ``**``): where to start listing. For a plain table, the table path plus ``/``."""
        return self._prefix


@dataclass(frozen=True)
class RefreshOptions:
    """How the model is refreshed. All but ``notify_option`` go into an enhanced refresh request;
    ``notify_option`` applies to a standard refresh only."""

    type: str = "Full"
    commit_mode: str | None = None
    max_parallelism: int | None = None
    retry_count: int | None = None
    timeout: str | None = None
    apply_refresh_policy: bool | None = None
    effective_date: str | None = None
    notify_option: str = "NoNotification"

    def enhanced_options(self) -> dict[str, Any]:
        """The enhanced-refresh options that are set, with snake_case keys."""
        return {key: getattr(self, key) for key in ENHANCED_OPTION_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class DatasetConfig:
    """One semantic model, the tables that feed it, and how and when it is refreshed."""

    key: str
    workspace: str
    dataset: str
    sources: tuple[Source, ...]
    debounce_seconds: int = 60
    max_delay_seconds: int = 900
    schedule: str | None = None
    schedule_skip_if_unchanged: bool = False
    refresh: RefreshOptions = field(default_factory=RefreshOptions)
    dedicated_capacity: bool | None = None
    daily_limit: int | None = None
    timeout_minutes: int = 120
    freshness_slo_minutes: int | None = None

    def route(self, table_path: str) -> tuple[bool, frozenset[str] | None]:
        """``(listens, model tables)`` for a change to ``table_path``: the union of the model tables
        of every matching source, or None (the whole model) if any matching source has no
        ``model_tables``. ``(False, frozenset())`` when no source matches."""
        listens, whole = False, False
        tables: set[str] = set()
        for source in self.sources:
            if source.matches(table_path):
                listens = True
                if source.model_tables is None:
                    whole = True
                else:
                    tables.update(source.model_tables)
        if not listens:
            return False, frozenset()
        return True, None if whole else frozenset(tables)

