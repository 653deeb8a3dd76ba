"""Small helpers for ETag-guarded Table Storage updates and JSON-valued properties."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

# Table Storage string properties hold at most 64 KiB (32K UTF-16 characters); big JSON values are
# split over several properties NAME_0, NAME_1, ... with NAME_n holding the count.
_CHUNK = 30_000

class Conflict(Exception):
    """Another writer changed the entity first (ETag mismatch or a concurrent create)."""


def row_key(text: str) -> str:
    """A RowKey/PartitionKey-safe, reversible, readable encoding ('/' and friends are not allowed)."""
    return quote(text, safe="-_.~!$&'()*+,;=:@")


def from_row_key(key: str) -> str:
    return unquote(key)


def value(entity: Any, name: str, default: Any = None) -> Any:
    """A property's plain value (Int64 properties come back wrapped)."""
    raw = entity.get(name, default) if entity is not None else default
    return getattr(raw, "value", raw)


def get_json(entity: Any, name: str, default: Any = None) -> Any:
    if entity is None:
        return default
    count = value(entity, f"{name}_n")
    if count is None:
        return default
    text = "".join(value(entity, f"{name}_{i}", "") for i in range(int(count)))
    return json.loads(text) if text else default


def raw_json(entity: Any, name: str) -> str:
    """The stored text of a JSON property (its chunks joined), read or not."""
    count = value(entity, f"{name}_n")
    try:
        return "".join(str(value(entity, f"{name}_{i}", "")) for i in range(int(count or 0)))
    except (TypeError, ValueError):
        return ""


def put_json(entity: dict[str, Any], name: str, data: Any) -> None:
    """Store ``data`` as JSON in ``entity`` (chunked); removes stale chunks by writing empties."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)
    old = int(value(entity, f"{name}_n", 0) or 0)
    chunks = [text[i:i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    for i, chunk in enumerate(chunks):
        entity[f"{name}_{i}"] = chunk
    for i in range(len(chunks), old):
        entity[f"{name}_{i}"] = ""
    entity[f"{name}_n"] = len(chunks)


def get_entity(table: Any, pk: str, rk: str) -> Any | None:
    try:
        return table.get_entity(pk, rk)
    except ResourceNotFoundError:
        return None


def write(table: Any, entity: dict[str, Any], etag: str | None) -> str:
    """Create (``etag`` None) or replace guarded by ``etag``; raise :class:`Conflict` if someone was first.

    Returns the new ETag.
    """
    try:
        if etag is None:
            meta = table.create_entity(entity)
        else:
            meta = table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                       match_condition=MatchConditions.IfNotModified)
    except (ResourceModifiedError, ResourceExistsError) as exc:
        raise Conflict(str(exc).splitlines()[0]) from None
    except ResourceNotFoundError:
        raise Conflict("entity was deleted meanwhile") from None
    return str(meta.get("etag"))


def update(table: Any, pk: str, rk: str, mutate: Callable[[dict[str, Any]], bool], *, create: bool = False,
           attempts: int = 20, what: str = "entity") -> Any | None:
    """The one ETag-guarded read-modify-write: read the entity, let ``mutate`` change a copy in place (it returns
    False to leave it as it is), write it guarded by the ETag it was read with; on a conflict, read again and
    retry (``attempts`` times, then :class:`Conflict` naming ``what``). A missing entity: None, or with
    ``create`` a new one from ``{PartitionKey, RowKey}`` (created only if still missing). Returns the entity as
    written, or as read when unchanged (None when missing and unchanged)."""
    for _ in range(attempts):
        entity = get_entity(table, pk, rk)
        if entity is None and not create:
            return None
        data = dict(entity) if entity is not None else {"PartitionKey": pk, "RowKey": rk}
        if not mutate(data):
            return entity
        try:
            write(table, data, entity.metadata["etag"] if entity is not None else None)
            return data
        except Conflict:
            continue
    raise Conflict(f"{what} kept changing under {attempts} attempts")


def delete(table: Any, pk: str, rk: str, etag: str) -> None:
    try:
        table.delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
    except ResourceModifiedError as exc:
        raise Conflict(str(exc).splitlines()[0]) from None
    except ResourceNotFoundError:
        pass


def ensure_table(service: Any, name: str) -> Any:
    """The TableClient for ``name``, creating the table if needed."""
    from azure.core.exceptions import ResourceExistsError as Exists

    try:
        service.create_table(name)
    except Exists:
        pass
    return service.get_table_client(name)
