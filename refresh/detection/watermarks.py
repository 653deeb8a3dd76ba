"""Per-table watermarks: the newest Delta version of each gold table whose commits were handled.

One entity per table in ``STATE_TABLE`` (PartitionKey ``watermark``, RowKey the encoded table path),
moved forward only with an ETag guard, so concurrent instances never both handle a version. The
entity also keeps what an operator needs to see: the last malformed commit (``error``,
``error_version``, ``error_at``), the last version gap (``gap``), and the table's column-mapping
(physical to logical partition column names).

Every version a watermark takes was read from the log, so it never passes the log's newest version.
``checked`` says so; a watermark stored before that rule (no ``checked``, perhaps set from a bogus
event's version) is checked against the log once (refresh/detection/detector.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refresh.core import storage as tables

PK_WATERMARK = "watermark"


@dataclass
class Watermark:
    """A table's watermark as read from Table Storage (``etag`` None = not stored yet)."""

    table: str
    version: int
    etag: str | None = None
    error: str = ""
    error_version: int | None = None
    gap: str = ""
    column_mapping: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    checked: bool = True   # the version is known to come from the log (False: stored by older code)

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": PK_WATERMARK,
            "RowKey": tables.row_key(self.table),
            "table": self.table,
            "version": self.version,
            "error": self.error,
            "error_version": -1 if self.error_version is None else self.error_version,
            "gap": self.gap,
            "checked": self.checked,
        }
        entity.update(self.extra)
        tables.put_json(entity, "colmap", self.column_mapping)
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> Watermark:
        """The watermark a stored entity holds (its ETag kept for the guarded write)."""
        error_version = tables.value(entity, "error_version", -1)
        return cls(
            table=entity.get("table") or tables.from_row_key(entity["RowKey"]),
            version=int(tables.value(entity, "version")),
            etag=entity.metadata.get("etag"),
            error=entity.get("error", "") or "",
            error_version=None if error_version in (None, -1) else int(error_version),
            gap=entity.get("gap", "") or "",
            column_mapping=tables.get_json(entity, "colmap", {}) or {},
            extra={k: entity[k] for k in ("error_at",) if k in entity},
            checked=entity.get("checked") is True,
        )


class Watermarks:
    """Read and move watermarks."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, table_path: str) -> Watermark | None:
        entity = tables.get_entity(self.table, PK_WATERMARK, tables.row_key(table_path))
        return Watermark.from_entity(entity) if entity is not None else None

    def all(self, also: str | None = None) -> tuple[dict[str, Watermark], list[Any]]:
        """Every stored watermark in one query (pages of up to 1,000 entities).

        ``also``: an extra filter OR-ed into the same query; the matching entities are returned too.
        """
        query = f"PartitionKey eq '{PK_WATERMARK}'" + (f" or {also}" if also else "")
        found, others = {}, []
        for entity in self.table.query_entities(query):
            if entity["PartitionKey"] == PK_WATERMARK:
                mark = Watermark.from_entity(entity)
                found[mark.table] = mark
            else:
                others.append(entity)
        return found, others

    def save(self, mark: Watermark) -> Watermark:
        """Create or replace ``mark`` guarded by its ETag; raises :class:`tables.Conflict`."""
        mark.etag = tables.write(self.table, mark.to_entity(), mark.etag)
        return mark
