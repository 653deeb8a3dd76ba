"""The routing configuration: which gold Delta tables feed which Power BI semantic models.

A JSON file (named by the ``REFRESH_CONFIG`` setting) maps a *dataset key* to a semantic model and
the tables it listens to::

    {"datasets": {"sales": {"workspace": "Finance Analytics", "dataset": "Sales Model",
                            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]},
                                        {"table": "sales/dim_*"}]}}}

Validation is strict and complete: unknown keys are errors, and every problem found is reported at
once in a single :class:`ConfigError` as ``<key path>: <problem>`` lines. The keys of a dataset,
with their validators and defaults, are listed in one table, :data:`DATASET_KEYS` (refresh options:
:data:`REFRESH_KEYS`; sources: :data:`SOURCE_KEYS`), so a new key is one line there plus its
dataclass field. docs/config-reference.md documents every key.

Table globs: segments are separated by ``/``; ``*`` matches within one segment, ``**`` as a whole
segment matches zero or more segments. Other characters (including ``[``, ``]``) are literal.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any

from refresh.core.ncrontab import CronError
from refresh.core.ncrontab import parse as parse_schedule
from refresh.core.settings import Settings, SettingsError
from refresh.core.validation import (  # noqa: F401  (re-exported: the config's names for the shared vocabulary)
    COMMIT_MODES,
    CONTROL_RE,
    DATASET_KEY_RE,
    DATASET_KEY_RULE,
    MAX_NAME_LENGTH,
    NOTIFY_OPTIONS,
    REFRESH_TYPES,
    TIMEOUT_RE,
    json_type,
    text_problem,
    unicode_problem,
)
from refresh.jobs import adhoc
from refresh.jobs.adhoc import AdhocAccess

MAX_DELAY = 7 * 24 * 3600 - 60
"""Upper bound of ``debounce_seconds`` and ``max_delay_seconds``: 7 days minus 1 minute (a storage
queue message cannot stay invisible longer than 7 days)."""
MAX_SLO_MINUTES = 30 * 24 * 60
"""Upper bound of ``freshness_slo_minutes``: 30 days."""
MAX_TABLE_LENGTH = 1024
ENHANCED_OPTION_KEYS = ("type", "commit_mode", "max_parallelism", "retry_count", "timeout",
                        "apply_refresh_policy", "effective_date")
"""The :class:`RefreshOptions` fields sent in an enhanced refresh request (snake_case)."""

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_$-]+$")
_ROUTE_CACHE_SIZE = 10_000


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


class _Problems:
    """Collects ``(key path, problem)`` pairs while a config is validated."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append((path, problem))


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()
"""What a validator returns after reporting a problem."""
REQUIRED: Any = object()
"""Default of a key that must be present."""

Validator = Callable[[Any, str, _Problems], Any]
"""``(value, key path, problems) -> converted value``, or :data:`INVALID` after reporting."""


def _child(path: str, key: str) -> str:
    if _PLAIN_KEY_RE.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


# --------------------------------------------------------------------------------------------------
# table globs


def glob_problems(table: str) -> list[str]:
    """What is wrong with a source ``table`` path or glob (empty list: nothing)."""
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
        listens, whole, tables = False, False, set()
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


@dataclass(frozen=True)
class RoutingConfig:
    """Every configured dataset, by key (sorted), and the file it came from (None: not a file)."""

    datasets: Mapping[str, DatasetConfig] = field(hash=False)
    source_file: str | None = None
    adhoc: AdhocAccess = field(default_factory=AdhocAccess)
    """Workspaces whose unconfigured datasets may be refreshed on request (``adhoc_workspaces``)."""
    _exact: dict[str, set[str]] = field(init=False, repr=False, compare=False, default_factory=dict)
    _globs: list[tuple[str, Source]] = field(init=False, repr=False, compare=False, default_factory=list)
    _cache: dict[str, tuple[tuple[str, frozenset[str] | None], ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        for key, ds in self.datasets.items():
            if ds.key != key:
                raise ValueError(f"dataset under key {key!r} says its key is {ds.key!r}")
        ordered = {key: self.datasets[key] for key in sorted(self.datasets)}
        object.__setattr__(self, "datasets", MappingProxyType(ordered))
        for key, ds in ordered.items():  # index: plain table -> dataset keys; globs checked one by one
            for source in ds.sources:
                if source.is_glob:
                    self._globs.append((key, source))
                else:
                    self._exact.setdefault(source.table, set()).add(key)

    def routes_for(self, table_path: str) -> list[tuple[str, frozenset[str] | None]]:
        """``(dataset key, model tables or None for the whole model)`` for every dataset listening
        to ``table_path``, sorted by key. Cached per table path."""
        cached = self._cache.get(table_path)
        if cached is None:
            keys = set(self._exact.get(table_path, ()))
            keys.update(key for key, source in self._globs if key not in keys and source.matches(table_path))
            cached = tuple((key, self.datasets[key].route(table_path)[1]) for key in sorted(keys))
            if len(self._cache) >= _ROUTE_CACHE_SIZE:
                self._cache.clear()
            self._cache[table_path] = cached
        return list(cached)

    def explicit_tables(self) -> list[str]:
        """Every plain (non-glob) source table, once, sorted."""
        return sorted(self._exact)

    def glob_sources(self) -> list[str]:
        """Every glob source pattern, once, sorted."""
        return sorted({source.table for _, source in self._globs})

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data with every default filled in; :func:`parse_config` reads
        it back to an equal config."""
        out: dict[str, Any] = {"datasets": {key: _dataset_to_dict(ds) for key, ds in self.datasets.items()}}
        if self.adhoc.enabled:
            out[adhoc.CONFIG_KEY] = self.adhoc.to_json()
        return out


# --------------------------------------------------------------------------------------------------
# validators


def _string(value: Any, path: str, problems: _Problems) -> Any:
    if not isinstance(value, str):
        problems.add(path, f"must be a string, got {json_type(value)}")
        return INVALID
    problem = unicode_problem(value)
    if problem:
        problems.add(path, problem)
        return INVALID
    return value


def _name(value: Any, path: str, problems: _Problems) -> Any:
    """A workspace or dataset name or GUID."""
    problem = text_problem(value, MAX_NAME_LENGTH)
    if problem:
        problems.add(path, problem)
        return INVALID
    return value


def _bool(value: Any, path: str, problems: _Problems) -> Any:
    if not isinstance(value, bool):
        problems.add(path, f"must be true or false, got {json_type(value)}")
        return INVALID
    return value


def _int(low: int, high: int, unit: str = "") -> Validator:
    def check(value: Any, path: str, problems: _Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                problems.add(path, f"must be a whole number without a decimal point, got {value!r}")
            else:
                problems.add(path, f"must be a whole number, got {json_type(value)}")
            return INVALID
        if not low <= value <= high:
            problems.add(path, f"must be between {low} and {high}{unit}, got {value}")
            return INVALID
        return value
    return check


def _choice(*choices: str) -> Validator:
    def check(value: Any, path: str, problems: _Problems) -> Any:
        if _string(value, path, problems) is INVALID:
            return INVALID
        if value not in choices:
            hint = [c for c in choices if c.lower() == value.lower()]
            extra = f" (did you mean {hint[0]!r}? values are case-sensitive)" if hint else ""
            problems.add(path, f"must be one of {', '.join(choices)}; got {value!r}{extra}")
            return INVALID
        return value
    return check


def _timeout(value: Any, path: str, problems: _Problems) -> Any:
    if _string(value, path, problems) is INVALID:
        return INVALID
    if not TIMEOUT_RE.match(value):
        problems.add(path, f"must be a duration hh:mm:ss below 24:00:00, got {value!r}")
        return INVALID
    return value


def _iso_date(value: Any, path: str, problems: _Problems) -> Any:
    if _string(value, path, problems) is INVALID:
        return INVALID
    try:
        if not _DATE_RE.match(value):
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        problems.add(path, f"must be a date YYYY-MM-DD, got {value!r}")
        return INVALID
    return value


def _schedule(value: Any, path: str, problems: _Problems) -> Any:
    if _string(value, path, problems) is INVALID:
        return INVALID
    try:
        parse_schedule(value)
    except CronError as exc:
        problems.add(path, str(exc))
        return INVALID
    return value


def _table(value: Any, path: str, problems: _Problems) -> Any:
    found = glob_problems(value)
    for problem in found:
        problems.add(path, problem)
    return INVALID if found else value


def _model_tables(value: Any, path: str, problems: _Problems) -> Any:
    if not isinstance(value, list):
        problems.add(path, f"must be a non-empty array of model table names, got {json_type(value)}")
        return INVALID
    if not value:
        problems.add(path, "must not be empty (leave the key out to refresh the whole model)")
        return INVALID
    seen: dict[str, str] = {}
    ok = True
    for i, name in enumerate(value):
        item = f"{path}[{i}]"
        if _string(name, item, problems) is INVALID:
            ok = False
        elif name.strip() == "":
            problems.add(item, "must not be empty")
            ok = False
        elif CONTROL_RE.search(name):
            problems.add(item, "contains a control character")
            ok = False
        elif name.lower() in seen:
            problems.add(item, f"{name!r} repeats {seen[name.lower()]!r} "
                               "(model table names are case-insensitive)")
            ok = False
        else:
            seen[name.lower()] = name
    return tuple(value) if ok else INVALID


def _sources(value: Any, path: str, problems: _Problems) -> Any:
    if not isinstance(value, list):
        problems.add(path, f"must be a non-empty array of sources, got {json_type(value)}")
        return INVALID
    if not value:
        problems.add(path, "must list at least one source")
        return INVALID
    result: list[Source] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        values = _validate_object(item, item_path, SOURCE_KEYS, problems)
        if values is None:
            continue
        table = values["table"]
        if table is not INVALID:
            if table in first_index:
                problems.add(_child(item_path, "table"), f"{table!r} is already listed in "
                             f"{path}[{first_index[table]}]; merge the two sources")
                continue
            first_index[table] = i
        if INVALID not in values.values():
            result.append(Source(**values))
    return tuple(result) if len(result) == len(value) else INVALID


def _refresh(value: Any, path: str, problems: _Problems) -> Any:
    values = _validate_object(value, path, REFRESH_KEYS, problems)
    if values is None:
        return INVALID
    if values["commit_mode"] == "PartialBatch" and values["apply_refresh_policy"] is True:
        problems.add(path, "commit_mode 'PartialBatch' cannot be combined with apply_refresh_policy true "
                           "(Power BI does not support it)")
        return INVALID
    return INVALID if INVALID in values.values() else RefreshOptions(**values)


# --------------------------------------------------------------------------------------------------
# the key tables


@dataclass(frozen=True)
class Key:
    """One key of a config object: its validator, its default (:data:`REQUIRED` if it must be
    given) and whether JSON ``null`` is accepted (meaning the default None)."""

    name: str
    validate: Validator
    default: Any = None
    nullable: bool = False


DATASET_KEYS: tuple[Key, ...] = (
    Key("workspace", _name, REQUIRED),
    Key("dataset", _name, REQUIRED),
    Key("sources", _sources, REQUIRED),
    Key("debounce_seconds", _int(0, MAX_DELAY, " seconds"), 60),
    Key("max_delay_seconds", _int(0, MAX_DELAY, " seconds"), 900),
    Key("schedule", _schedule),
    Key("schedule_skip_if_unchanged", _bool, False),
    Key("refresh", _refresh, RefreshOptions()),
    Key("dedicated_capacity", _bool, None, nullable=True),
    Key("daily_limit", _int(1, 1000), None, nullable=True),
    Key("timeout_minutes", _int(1, 1440, " minutes"), 120),
    Key("freshness_slo_minutes", _int(1, MAX_SLO_MINUTES, " minutes"), None, nullable=True),
)
"""Every key of a dataset object, in documentation order. The dataset key itself is not here."""

SOURCE_KEYS: tuple[Key, ...] = (
    Key("table", _table, REQUIRED),
    Key("model_tables", _model_tables),
)

REFRESH_KEYS: tuple[Key, ...] = (
    Key("type", _choice(*REFRESH_TYPES), "Full"),
    Key("commit_mode", _choice(*COMMIT_MODES)),
    Key("max_parallelism", _int(1, 200)),
    Key("retry_count", _int(0, 10)),
    Key("timeout", _timeout),
    Key("apply_refresh_policy", _bool),
    Key("effective_date", _iso_date),
    Key("notify_option", _choice(*NOTIFY_OPTIONS), "NoNotification"),
)


def _datasets_object(value: Any, path: str, problems: _Problems) -> Any:
    """The ``datasets`` object itself; its members are validated by :func:`_parse`."""
    if not isinstance(value, dict):
        problems.add(path, f"must be an object of datasets by key, got {json_type(value)}")
        return INVALID
    if not value:
        problems.add(path, "must configure at least one dataset")
    return value


def _adhoc_workspaces(value: Any, path: str, problems: _Problems) -> Any:
    """``"*"`` or a non-empty array of workspace names or ids (see refresh/jobs/adhoc.py)."""
    if value == adhoc.ALL:
        return AdhocAccess(everything=True)
    if not isinstance(value, list) or not value:
        problems.add(path, f"must be \"*\" (every workspace) or a non-empty array of workspace names or ids, "
                           f"got {json_type(value) if value != [] else 'an empty array'}")
        return INVALID
    ok, seen = True, set()
    for i, name in enumerate(value):
        problem = text_problem(name, MAX_NAME_LENGTH)
        if problem is None and name == adhoc.ALL:
            problem = "'*' must be given alone, as the whole value"
        if problem is None and name.lower() in seen:
            problem = f"{name!r} is listed twice (workspace names are case-insensitive)"
        if problem:
            problems.add(f"{path}[{i}]", problem)
            ok = False
        else:
            seen.add(name.lower())
    return AdhocAccess.of(value) if ok else INVALID


TOP_LEVEL_KEYS: tuple[Key, ...] = (
    Key("$schema", _string),  # lets editors find a JSON schema; otherwise ignored
    Key("datasets", _datasets_object, REQUIRED),
    Key(adhoc.CONFIG_KEY, _adhoc_workspaces, None, nullable=True),
)


def _check_delays(values: dict[str, Any], path: str, problems: _Problems) -> None:
    debounce, max_delay = values["debounce_seconds"], values["max_delay_seconds"]
    if INVALID not in (debounce, max_delay) and max_delay < debounce:
        problems.add(_child(path, "max_delay_seconds"),
                     f"must be at least debounce_seconds ({debounce}), got {max_delay}")


def _check_skip_needs_schedule(values: dict[str, Any], path: str, problems: _Problems) -> None:
    if values["schedule_skip_if_unchanged"] is True and values["schedule"] is None:
        problems.add(_child(path, "schedule_skip_if_unchanged"), "is true but no schedule is set")


DATASET_CHECKS: tuple[Callable[[dict[str, Any], str, _Problems], None], ...] = (
    _check_delays,
    _check_skip_needs_schedule,
)
"""Rules that involve more than one key of a dataset."""


# --------------------------------------------------------------------------------------------------
# parsing


class JsonObject(dict):
    """A JSON object that remembers keys given more than once (``json`` keeps the last silently)."""

    duplicates: tuple[str, ...] = ()


def json_object_hook(pairs: list[tuple[str, Any]]) -> JsonObject:
    """``object_pairs_hook`` for ``json.loads`` that records repeated keys in ``.duplicates``."""
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for name, _ in pairs:
            if name in seen and name not in repeated:
                repeated.append(name)
            seen.add(name)
        obj.duplicates = tuple(repeated)
    return obj


def _validate_object(value: Any, path: str, keys: tuple[Key, ...],
                     problems: _Problems) -> dict[str, Any] | None:
    """Validate a JSON object against ``keys``: values (defaults filled in, :data:`INVALID` where a
    problem was reported) by key name, or None if ``value`` is not an object."""
    if not isinstance(value, dict):
        problems.add(path or "(top level)", f"must be an object, got {json_type(value)}")
        return None
    _report_duplicates(value, path, problems)
    names = [k.name for k in keys]
    for name in value:
        if name not in names:
            problems.add(_child(path, name), _unknown(name, names))
    values: dict[str, Any] = {}
    for key in keys:
        key_path = _child(path, key.name)
        if key.name not in value:
            if key.default is REQUIRED:
                problems.add(key_path, "is required")
                values[key.name] = INVALID
            else:
                values[key.name] = key.default
        elif value[key.name] is None and key.nullable:
            values[key.name] = None
        elif value[key.name] is None:
            problems.add(key_path, "must not be null (leave the key out for the default)")
            values[key.name] = INVALID
        else:
            values[key.name] = key.validate(value[key.name], key_path, problems)
    return values


def _report_duplicates(value: dict, path: str, problems: _Problems) -> None:
    for name in getattr(value, "duplicates", ()):
        problems.add(_child(path, name), "is given more than once (only the last would count)")


def _unknown(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(allowed)})"


def _dataset(key: str, value: Any, path: str, problems: _Problems) -> DatasetConfig | None:
    ok = True
    if not DATASET_KEY_RE.match(key):
        problems.add(path, "dataset key must be 1-64 letters, digits, '_' or '-', starting with a letter "
                           "or digit")
        ok = False
    values = _validate_object(value, path, DATASET_KEYS, problems)
    if values is None:
        return None
    for check in DATASET_CHECKS:
        check(values, path, problems)
    if not ok or INVALID in values.values():
        return None
    return DatasetConfig(key=key, **values)


def _parse(data: object, problems: _Problems) -> tuple[dict[str, DatasetConfig], AdhocAccess]:
    top = _validate_object(data, "", TOP_LEVEL_KEYS, problems)
    if top is None or top["datasets"] is INVALID:
        return {}, AdhocAccess()
    access = top[adhoc.CONFIG_KEY] if isinstance(top[adhoc.CONFIG_KEY], AdhocAccess) else AdhocAccess()
    datasets = top["datasets"]
    _report_duplicates(datasets, "datasets", problems)
    result: dict[str, DatasetConfig] = {}
    for key, value in datasets.items():
        ds = _dataset(key, value, _child("datasets", key), problems)
        if ds is not None:
            result[key] = ds
    _check_distinct_targets(result, problems)
    return result, access


def _check_distinct_targets(datasets: dict[str, DatasetConfig], problems: _Problems) -> None:
    first: dict[tuple[str, str], str] = {}
    for key, ds in datasets.items():
        target = (ds.workspace.lower(), ds.dataset.lower())
        if target in first:
            problems.add(_child("datasets", key), f"refreshes the same workspace and dataset as "
                         f"{_child('datasets', first[target])}; use one key per semantic model")
        else:
            first[target] = key


def parse_config(data: object, source: str = "<config>") -> RoutingConfig:
    """Validate already-decoded JSON ``data``; raises :class:`ConfigError` listing every problem
    (each line prefixed by ``source``)."""
    problems = _Problems()
    datasets, access = _parse(data, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    return RoutingConfig(datasets=datasets, adhoc=access)


def load_config(path: str | Path) -> RoutingConfig:
    """Read and validate the routing config file at ``path``; raises :class:`ConfigError`."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(source, [("", "routing config file not found (check the REFRESH_CONFIG setting)")]
                          ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [("", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot be read: {exc.strerror or exc}")]) from None
    try:
        data = json.loads(text, object_pairs_hook=json_object_hook)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
                          ) from None
    return replace(parse_config(data, source), source_file=source)


# --------------------------------------------------------------------------------------------------
# output


def _dataset_to_dict(ds: DatasetConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in DATASET_KEYS:
        value = getattr(ds, key.name)
        if key.name == "sources":
            value = [{"table": s.table} | ({"model_tables": list(s.model_tables)} if s.model_tables else {})
                     for s in value]
        elif key.name == "refresh":
            value = {k.name: getattr(value, k.name) for k in REFRESH_KEYS
                     if getattr(value, k.name) is not None}
        if value is not None or key.nullable:
            out[key.name] = value
    return out


def _duration(seconds: int) -> str:
    if seconds == 0:
        return "0 s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts)


def _limits(ds: DatasetConfig) -> list[str]:
    capacities = {True: "dedicated", False: "shared", None: "detected from the workspace"}
    if ds.daily_limit is not None:
        limit = f"{ds.daily_limit} refreshes/day"
    elif ds.dedicated_capacity is None:
        limit = "8 refreshes/day on shared capacity, unlimited on dedicated"
    else:
        limit = "unlimited" if ds.dedicated_capacity else "8 refreshes/day"
    slo = "none" if ds.freshness_slo_minutes is None else _duration(ds.freshness_slo_minutes * 60)
    return [f"  capacity {capacities[ds.dedicated_capacity]}; daily limit {limit}",
            f"  refresh timeout {ds.timeout_minutes} min; freshness objective {slo}"]


def describe(config: RoutingConfig) -> str:
    """A human-readable summary: per dataset, its model, sources, timing, schedule and limits."""
    count = len(config.datasets)
    lines = [f"Routing config {config.source_file or '(in memory)'}: {count} dataset{'s' * (count != 1)}"]
    if config.adhoc.enabled:
        allowed = "every workspace" if config.adhoc.everything else ", ".join(sorted(config.adhoc.workspaces))
        lines.append(f"Ad-hoc refreshes of unconfigured datasets allowed in: {allowed}")
    for key, ds in config.datasets.items():
        lines += ["", f"{key}: workspace {ds.workspace!r}, dataset {ds.dataset!r}"]
        for s in ds.sources:
            target = ", ".join(s.model_tables) if s.model_tables else "whole model"
            lines.append(f"  {s.table}{' (glob)' if s.is_glob else ''} -> {target}")
        lines.append(f"  debounce {_duration(ds.debounce_seconds)}, "
                     f"max delay {_duration(ds.max_delay_seconds)}")
        if ds.schedule:
            skip = ", skipped when nothing changed" if ds.schedule_skip_if_unchanged else ""
            lines.append(f"  schedule {ds.schedule} (UTC){skip}")
        else:
            lines.append("  schedule none (commits only)")
        options = ", ".join(f"{k} {v}" for k, v in ds.refresh.enhanced_options().items())
        lines.append(f"  refresh {options}; notify {ds.refresh.notify_option} (standard refresh)")
        lines += _limits(ds)
    return "\n".join(lines)


def check_config_main(argv: list[str] | None = None) -> int:
    """``python -m refresh check-config [PATH] [--json]``: validate the routing config and print it.
    Returns 0 when valid, 1 (problems on stderr) when not."""
    parser = argparse.ArgumentParser(
        prog="python -m refresh check-config",
        description="Validate the routing config and print what it routes where.")
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="config file (default: the REFRESH_CONFIG setting)")
    parser.add_argument("--json", action="store_true",
                        help="print the config as JSON with every default filled in")
    args = parser.parse_args(argv)
    try:
        path = Path(args.path) if args.path else Settings.from_env().refresh_config
        config = load_config(path)
    except (ConfigError, SettingsError) as exc:
        print(exc, file=sys.stderr)
        if isinstance(exc, ConfigError):
            print(f"{len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}; the config is not valid",
                  file=sys.stderr)
        return 1
    print(json.dumps(config.to_dict(), indent=2) if args.json else describe(config))
    from refresh.core.lake_check import check_config_lake  # lake preconditions (issue 10 item 7)
    return check_config_lake()

