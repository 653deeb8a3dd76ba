"""Helpers for tests/test_deltalog.py: hand-written Delta actions and commit files, real tables.

Hand-written actions follow PROTOCOL.md field names; :func:`write_log_file` writes raw bytes so
tests control line endings, trailing newlines and broken content exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

Part = dict[str, str | None]


def line(action: str, value: Any) -> bytes:
    """One action line (no newline)."""
    return json.dumps({action: value}, separators=(",", ":")).encode()


def commit_info(operation: str | None = "WRITE", **extra: Any) -> bytes:
    """A ``commitInfo`` line; ``operation=None`` leaves the field out."""
    value: dict[str, Any] = {"timestamp": 1_700_000_000_000}
    if operation is not None:
        value["operation"] = operation
    value.update(extra)
    return line("commitInfo", value)


def add(path: str, partition_values: Mapping[str, str | None] | None, *, data_change: bool = True,
        **extra: Any) -> bytes:
    """An ``add`` line with realistic fields (stats as a JSON string)."""
    value: dict[str, Any] = {"path": path, "partitionValues": dict(partition_values or {}), "size": 1234,
                             "modificationTime": 1_700_000_000_000, "dataChange": data_change,
                             "stats": json.dumps({"numRecords": 10, "minValues": {"id": 1},
                                                  "maxValues": {"id": 10}, "nullCount": {"id": 0}})}
    value.update(extra)
    return line("add", value)


def remove(path: str, partition_values: Mapping[str, str | None] | None = None, *, data_change: bool = True,
           **extra: Any) -> bytes:
    """A ``remove`` line; ``partition_values=None`` leaves ``partitionValues`` out (it is optional)."""
    value: dict[str, Any] = {"path": path, "deletionTimestamp": 1_700_000_000_000, "dataChange": data_change}
    if partition_values is not None:
        value["partitionValues"] = dict(partition_values)
    value.update(extra)
    return line("remove", value)


def cdc(path: str, partition_values: Mapping[str, str | None]) -> bytes:
    """A Change Data Feed ``cdc`` line (dataChange false, as the protocol says)."""
    value = {"path": path, "partitionValues": dict(partition_values), "size": 10, "dataChange": False}
    return line("cdc", value)


def metadata(partition_columns: list[str], physical: Mapping[str, str] | None = None,
             mode: str | None = "name", extra_columns: Iterable[str] = ("id",)) -> bytes:
    """A ``metaData`` line whose schema gives ``physical`` (logical -> physical) names to columns."""
    physical = dict(physical or {})
    fields = []
    for name in [*extra_columns, *partition_columns]:
        meta: dict[str, Any] = {}
        if name in physical:
            meta = {"delta.columnMapping.id": len(fields) + 1,
                    "delta.columnMapping.physicalName": physical[name]}
        fields.append({"name": name, "type": "string", "nullable": True, "metadata": meta})
    configuration = {"delta.columnMapping.mode": mode} if mode is not None else {}
    return line("metaData", {
        "id": "6f3d2a4e-0000-4000-8000-000000000001", "format": {"provider": "parquet", "options": {}},
        "schemaString": json.dumps({"type": "struct", "fields": fields}),
        "partitionColumns": partition_columns, "configuration": configuration,
        "createdTime": 1_700_000_000_000,
    })


def commit_bytes(lines: Iterable[bytes], *, trailing_newline: bool = True, newline: bytes = b"\n") -> bytes:
    """Join action lines into a commit file's content."""
    body = newline.join(lines)
    return body + newline if trailing_newline and body else body


def write_log_file(root: Path, name: str, content: bytes) -> Path:
    """Write ``_delta_log/<name>`` under table ``root`` (creating folders)."""
    path = root / "_delta_log" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ----------------------------------------------------------------------------- real tables


@dataclass(frozen=True)
class Expected:
    """What a real commit must classify as."""

    operation: str
    data_change: bool
    partitions: list[Part]
    metadata_seen: bool = False


def _orders(ids: list[int], regions: list[str | None]) -> pa.Table:
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "region": pa.array(regions, pa.string()),
        "amount": pa.array([float(i) * 1.5 for i in ids], pa.float64()),
    })


def build_history(path: str, storage_options: dict[str, str] | None = None) -> dict[int, Expected]:
    """A partitioned (``region``, with nulls) table taken through every kind of operation.

    Returns the expected classification of each version. Works on local paths and ``az://`` URLs.
    """
    opts = {"storage_options": storage_options} if storage_options else {}
    expected: dict[int, Expected] = {}

    def dt() -> DeltaTable:
        return DeltaTable(path, **opts)

    write_deltalake(path, _orders([1, 2, 3], ["eu", None, "us"]), partition_by=["region"], **opts)
    expected[0] = Expected("WRITE", True, [{"region": None}, {"region": "eu"}, {"region": "us"}], True)
    write_deltalake(path, _orders([4, 5], ["eu", "eu"]), partition_by=["region"], mode="append", **opts)
    expected[1] = Expected("WRITE", True, [{"region": "eu"}])
    dt().delete("id = 2")
    expected[2] = Expected("DELETE", True, [{"region": None}])
    source = _orders([3, 9], ["us", "ap"])
    (dt().merge(source, "t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all().when_not_matched_insert_all().execute())
    expected[3] = Expected("MERGE", True, [{"region": "ap"}, {"region": "us"}])
    dt().optimize.compact()
    expected[4] = Expected("OPTIMIZE", False, [])
    dt().optimize.z_order(["id"])
    expected[5] = Expected("OPTIMIZE", False, [])
    dt().alter.set_table_properties({"delta.logRetentionDuration": "interval 30 days"})
    expected[6] = Expected("SET TBLPROPERTIES", False, [], True)
    dt().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    expected[7] = Expected("VACUUM START", False, [])
    expected[8] = Expected("VACUUM END", False, [])
    dt().create_checkpoint()  # writes 8.checkpoint.parquet and _last_checkpoint, no commit
    evolved = _orders([7], [None]).append_column("channel", pa.array(["web"], pa.string()))
    write_deltalake(path, evolved, partition_by=["region"], mode="append", schema_mode="merge", **opts)
    expected[9] = Expected("WRITE", True, [{"region": None}], True)
    write_deltalake(path, evolved, partition_by=["region"], mode="overwrite", schema_mode="overwrite", **opts)
    # overwrite removes every live file (all regions) and adds the new one
    expected[10] = Expected("WRITE", True, [{"region": None}, {"region": "ap"}, {"region": "eu"},
                                            {"region": "us"}])
    dt().delete("id = 12345")  # matches nothing: delta-rs writes no commit
    return expected
