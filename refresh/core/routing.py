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

Three modules: :mod:`refresh.core.routing_model` (the dataset objects and table globs),
:mod:`refresh.core.routing_schema` (the per-key rules) and this one (the whole config: routing a
table to its datasets, loading the file). The ``check-config`` command is
:mod:`refresh.surfaces.check_config`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from refresh.core import adhoc
from refresh.core.adhoc import AdhocAccess
from refresh.core.routing_model import (
    ENHANCED_OPTION_KEYS,
    MAX_DELAY,
    MAX_SLO_MINUTES,
    MAX_TABLE_LENGTH,
    ConfigError,
    DatasetConfig,
    RefreshOptions,
    Source,
    compile_glob,
    glob_problems,
    segment_regex,
)
from refresh.core.routing_schema import (
    DATASET_KEYS,
    REFRESH_KEYS,
    SOURCE_KEYS,
    JsonObject,
    Problems,
    dataset_to_dict,
    json_object_hook,
    parse_datasets,
)

__all__ = [  # the routing config's public names: this module's own and the ones it re-exports
    "DATASET_KEYS", "ENHANCED_OPTION_KEYS", "MAX_DELAY", "MAX_SLO_MINUTES", "MAX_TABLE_LENGTH", "REFRESH_KEYS",
    "SOURCE_KEYS", "ConfigError", "DatasetConfig", "JsonObject", "Problems", "RefreshOptions", "RoutingConfig",
    "Source", "compile_glob", "dataset_to_dict", "glob_problems", "json_object_hook", "load_config",
    "parse_config", "parse_datasets", "segment_regex",
]

_ROUTE_CACHE_SIZE = 10_000



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
        out: dict[str, Any] = {"datasets": {key: dataset_to_dict(ds) for key, ds in self.datasets.items()}}
        if self.adhoc.enabled:
            out[adhoc.CONFIG_KEY] = self.adhoc.to_json()
        return out


def parse_config(data: object, source: str = "<config>") -> RoutingConfig:
    """Validate already-decoded JSON ``data``; raises :class:`ConfigError` listing every problem
    (each line prefixed by ``source``)."""
    problems = Problems()
    datasets, access = parse_datasets(data, problems)
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

