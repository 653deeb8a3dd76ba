"""Type checks at the storage boundary: a record stored as JSON (the running job, the pending job) read back
into its dataclass must have the types the dataclass declares. A record that does not is corrupt (edited by
hand, truncated, written by an incompatible version): :class:`CorruptRecord` names the field and what is
wrong, instead of a ``TypeError`` somewhere later."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any


class CorruptRecord(ValueError):
    """A stored record that cannot be read back; ``column`` is where it is stored (e.g. ``running``)."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(f"the stored {column} record cannot be read: {problem}")
        self.column = column
        self.problem = problem


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(cls: type, values: Mapping[str, Any], column: str, *, skip: frozenset[str] = frozenset()) -> None:
    """Raise :class:`CorruptRecord` unless ``values`` has every required field of the dataclass ``cls`` and each
    value has the declared type (nested dataclasses: a JSON object; ``skip``: fields checked by the caller)."""
    if not isinstance(values, Mapping):
        raise CorruptRecord(column, f"expected a JSON object, found {type(values).__name__}")
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        if field.name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise CorruptRecord(column, f"field {field.name!r} is missing")
            continue
        value = values[field.name]
        if not _matches(value, hints[field.name]):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise CorruptRecord(column, f"field {field.name!r} is {shown}, expected {_name(hints[field.name])}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if origin is dict:
        _, item = args if args else (str, Any)
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, item) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)  # its own reader checks the inside
    return True  # Any, and what this checker does not know


def _name(hint: Any) -> str:
    text = str(hint) if typing.get_origin(hint) or hint is type(None) else getattr(hint, "__name__", str(hint))
    return text.replace("typing.", "").replace("NoneType", "None")
