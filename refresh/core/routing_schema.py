"""The routing config's rules: one validator per key, the key tables, and the parse of a decoded file.

The keys of a dataset, with their validators and defaults, are listed in one table,
:data:`DATASET_KEYS` (refresh options: :data:`REFRESH_KEYS`; sources: :data:`SOURCE_KEYS`), so a new
key is one line there plus its dataclass field. Every problem found is collected as
``(key path, problem)``; :func:`refresh.core.routing.parse_config` raises them at once.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from refresh.core import adhoc
from refresh.core.adhoc import AdhocAccess
from refresh.core.ncrontab import CronError
from refresh.core.ncrontab import parse as parse_schedule
from refresh.core.routing_model import (
    MAX_DELAY,
    MAX_SLO_MINUTES,
    DatasetConfig,
    RefreshOptions,
    Source,
    glob_problems,
)
from refresh.core.validation import (
    COMMIT_MODES,
    CONTROL_RE,
    DATASET_KEY_RE,
    MAX_NAME_LENGTH,
    NOTIFY_OPTIONS,
    REFRESH_TYPES,
    TIMEOUT_RE,
    json_type,
    text_problem,
    unicode_problem,
)

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_$-]+$")



class Problems:
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

Validator = Callable[[Any, str, Problems], Any]
"""``(value, key path, problems) -> converted value``, or :data:`INVALID` after reporting."""


def _child(path: str, key: str) -> str:
    if _PLAIN_KEY_RE.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


# --------------------------------------------------------------------------------------------------
# validators


def _string(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        problems.add(path, f"must be a string, got {json_type(value)}")
        return INVALID
    problem = unicode_problem(value)
    if problem:
        problems.add(path, problem)
        return INVALID
    return value


def _name(value: Any, path: str, problems: Problems) -> Any:
    """A workspace or dataset name or GUID."""
    problem = text_problem(value, MAX_NAME_LENGTH)
    if problem:
        problems.add(path, problem)
        return INVALID
    return value


def _bool(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, bool):
        problems.add(path, f"must be true or false, got {json_type(value)}")
        return INVALID
    return value


def _int(low: int, high: int, unit: str = "") -> Validator:
    def check(value: Any, path: str, problems: Problems) -> Any:
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
    def check(value: Any, path: str, problems: Problems) -> Any:
        if _string(value, path, problems) is INVALID:
            return INVALID
        if value not in choices:
            hint = [c for c in choices if c.lower() == value.lower()]
            extra = f" (did you mean {hint[0]!r}? values are case-sensitive)" if hint else ""
            problems.add(path, f"must be one of {', '.join(choices)}; got {value!r}{extra}")
            return INVALID
        return value
    return check


def _timeout(value: Any, path: str, problems: Problems) -> Any:
    if _string(value, path, problems) is INVALID:
        return INVALID
    if not TIMEOUT_RE.match(value):
        problems.add(path, f"must be a duration hh:mm:ss below 24:00:00, got {value!r}")
        return INVALID
    return value


def _iso_date(value: Any, path: str, problems: Problems) -> Any:
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


def _schedule(value: Any, path: str, problems: Problems) -> Any:
    if _string(value, path, problems) is INVALID:
        return INVALID
    try:
        parse_schedule(value)
    except CronError as exc:
        problems.add(path, str(exc))
        return INVALID
    return value


def _table(value: Any, path: str, problems: Problems) -> Any:
    found = glob_problems(value)
    for problem in found:
        problems.add(path, problem)
    return INVALID if found else value


def _model_tables(value: Any, path: str, problems: Problems) -> Any:
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


def _sources(value: Any, path: str, problems: Problems) -> Any:
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


def _refresh(value: Any, path: str, problems: Problems) -> Any:
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


def _datasets_object(value: Any, path: str, problems: Problems) -> Any:
    """The ``datasets`` object itself; its members are validated by :func:`parse_datasets`."""
    if not isinstance(value, dict):
        problems.add(path, f"must be an object of datasets by key, got {json_type(value)}")
        return INVALID
    if not value:
        problems.add(path, "must configure at least one dataset")
    return value


def _adhoc_workspaces(value: Any, path: str, problems: Problems) -> Any:
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


def _check_delays(values: dict[str, Any], path: str, problems: Problems) -> None:
    debounce, max_delay = values["debounce_seconds"], values["max_delay_seconds"]
    if INVALID not in (debounce, max_delay) and max_delay < debounce:
        problems.add(_child(path, "max_delay_seconds"),
                     f"must be at least debounce_seconds ({debounce}), got {max_delay}")


def _check_skip_needs_schedule(values: dict[str, Any], path: str, problems: Problems) -> None:
    if values["schedule_skip_if_unchanged"] is True and values["schedule"] is None:
        problems.add(_child(path, "schedule_skip_if_unchanged"), "is true but no schedule is set")


DATASET_CHECKS: tuple[Callable[[dict[str, Any], str, Problems], None], ...] = (
    _check_delays,
    _check_skip_needs_schedule,
)
"""Rules that involve more than one key of a dataset."""


# --------------------------------------------------------------------------------------------------
# parsing


class JsonObject(dict[str, Any]):
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
                     problems: Problems) -> dict[str, Any] | None:
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


def _report_duplicates(value: dict[str, Any], path: str, problems: Problems) -> None:
    for name in getattr(value, "duplicates", ()):
        problems.add(_child(path, name), "is given more than once (only the last would count)")


def _unknown(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(allowed)})"


def _dataset(key: str, value: Any, path: str, problems: Problems) -> DatasetConfig | None:
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


def parse_datasets(data: object, problems: Problems) -> tuple[dict[str, DatasetConfig], AdhocAccess]:
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


def _check_distinct_targets(datasets: dict[str, DatasetConfig], problems: Problems) -> None:
    first: dict[tuple[str, str], str] = {}
    for key, ds in datasets.items():
        target = (ds.workspace.lower(), ds.dataset.lower())
        if target in first:
            problems.add(_child("datasets", key), f"refreshes the same workspace and dataset as "
                         f"{_child('datasets', first[target])}; use one key per semantic model")
        else:
            first[target] = key



def dataset_to_dict(ds: DatasetConfig) -> dict[str, Any]:
    """``ds`` as JSON-ready data with every default filled in (the shape :data:`DATASET_KEYS` reads)."""
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
