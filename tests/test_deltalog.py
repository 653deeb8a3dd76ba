"""refresh/detection/deltalog.py: commit file names, streaming classification, local and Blob log readers."""

from __future__ import annotations

import itertools
import json
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from deltalake import DeltaTable, write_deltalake
from deltalog_fixtures import (
    add,
    build_history,
    cdc,
    commit_bytes,
    commit_info,
    line,
    metadata,
    remove,
    write_log_file,
)

from refresh.detection.deltalog import (
    COMMIT_NAME_RE,
    MAX_VERSION,
    BlobLogReader,
    CommitInfo,
    LocalLogReader,
    LogReader,
    MalformedCommit,
    classify_commit,
    classify_version,
    commit_file_name,
    commit_version,
    iter_lines,
    split_commit_path,
)
from refresh.dev.testing.azurite import Azurite

UUID = "4f6b0f3e-7a5c-4c1e-9d1f-2b3c4d5e6f70"
V5 = "00000000000000000005.json"


def classify(lines: list[bytes], **kwargs: object) -> CommitInfo:
    kwargs.setdefault("table", "sales/orders")
    kwargs.setdefault("version", 7)
    return classify_commit(iter(lines), **kwargs)  # type: ignore[arg-type]


def from_bytes(content: bytes, chunk: int = 5, **kwargs: object) -> CommitInfo:
    """Classify raw file content, streamed in small chunks through iter_lines."""
    chunks = (content[i:i + chunk] for i in range(0, len(content), chunk))
    return classify(list(iter_lines(chunks)), **kwargs)


# ----------------------------------------------------------------------------- file names

# (name relative to _delta_log/, version if a commit): every kind of file in the notes, sections 1 and 8.
LOG_NAMES: list[tuple[str, int | None]] = [
    ("00000000000000000000.json", 0),
    (V5, 5),
    ("00000000000000009999.json", 9999),
    ("09223372036854775807.json", MAX_VERSION),
    ("99999999999999999999.json", 10**20 - 1),
    ("00000000000000000005.checkpoint.parquet", None),
    ("00000000000000000005.checkpoint.0000000001.0000000002.parquet", None),
    (f"00000000000000000005.checkpoint.{UUID}.json", None),
    (f"00000000000000000005.checkpoint.{UUID}.parquet", None),
    (f"_sidecars/00000000000000000005.checkpoint.0000000001.0000000001.{UUID}.parquet", None),
    ("00000000000000000003.00000000000000000005.compacted.json", None),
    ("00000000000000000005.crc", None),
    ("_last_checkpoint", None),
    (f"_staged_commits/00000000000000000005.{UUID}.json", None),
    (f"_commits/00000000000000000005.{UUID}.json", None),
    (f".00000000000000000005.json.{UUID}.tmp", None),
    (f"_commit_{UUID}.json.tmp", None),
    (".00000000000000000005.json.crc", None),
    (f"..00000000000000000005.json.{UUID}.tmp.crc", None),
    ("._last_checkpoint.crc", None),
    (".tmp/00000000000000000005.json", None),
    ("_autostats/00000000000000000005.0000000000.stats.json", None),
    (".s3-optimization-0", None),
    (".gitignore", None),
    ("0000000000000000005.json", None),  # 19 digits
    ("000000000000000000005.json", None),  # 21 digits
    ("00000000000000000005.JSON", None),
    ("00000000000000000005.json.tmp", None),
    ("00000000000000000005.json\n", None),
    ("0000000000000000000\u0665.json", None),  # a non-ASCII digit
    ("x0000000000000000005.json", None),
    ("", None),
]


@pytest.mark.parametrize(("name", "version"), LOG_NAMES)
def test_commit_version_and_split_path(name: str, version: int | None) -> None:
    assert commit_version(name) == version
    expected = None if version is None else ("sales/fact_orders", version)
    assert split_commit_path(f"sales/fact_orders/_delta_log/{name}") == expected
    assert split_commit_path(f"/sales/fact_orders/_delta_log/{name}") == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("sales/fact_orders/_delta_log/00000000000000000003.json", ("sales/fact_orders", 3)),
    ("/sales/fact_orders/_delta_log/00000000000000000003.json", ("sales/fact_orders", 3)),
    ("orders/_delta_log/" + V5, ("orders", 5)),
    ("a/b/c/d/_delta_log/" + V5, ("a/b/c/d", 5)),
    ("my_delta_log/_delta_log/" + V5, ("my_delta_log", 5)),
    ("_delta_log/" + V5, None),  # empty table path
    ("/_delta_log/" + V5, None),
    (V5, None),
    ("sales/orders/" + V5, None),  # not in _delta_log
    ("sales/orders/_delta_log/_delta_log/" + V5, None),
    ("sales/_delta_log/orders/_delta_log/" + V5, None),  # second _delta_log segment
    ("_delta_log/orders/_delta_log/" + V5, None),
    ("sales//orders/_delta_log/" + V5, None),
    ("sales/../_delta_log/" + V5, None),
    ("sales/orders/_DELTA_LOG/" + V5, None),
    ("sales/orders/_delta_log/", None),
    ("sales/orders/_delta_log", None),
    ("sales/orders/region=eu/part-00000.snappy.parquet", None),
    ("", None),
])
def test_split_commit_path_table_rules(path: str, expected: tuple[str, int] | None) -> None:
    assert split_commit_path(path) == expected


def test_commit_file_name() -> None:
    assert commit_file_name(5) == "00000000000000000005.json"
    assert commit_file_name(0) == "00000000000000000000.json"
    assert commit_file_name(10**20 - 1) == "99999999999999999999.json"
    for version in (0, 1, 42, 9999, MAX_VERSION):
        assert commit_version(commit_file_name(version)) == version
        assert COMMIT_NAME_RE.fullmatch(commit_file_name(version))
    for bad in (-1, 10**20):
        with pytest.raises(ValueError, match="20 digits"):
            commit_file_name(bad)
    for wrong in (True, 5.0, "5"):
        with pytest.raises(TypeError):
            commit_file_name(wrong)  # type: ignore[arg-type]
    assert COMMIT_NAME_RE.pattern == r"^\d{20}\.json$"


# ----------------------------------------------------------------------------- iter_lines

SAMPLE = b'{"a":1}\r\n{"b":2}\n\n  \n{"c":"x\\ny"}\r\n{"d":4}'


def _expected_lines(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def _chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    for size in (1, 2, 3, 7, 8, max(len(data), 1)):
        yield f"size{size}", [data[i:i + size] for i in range(0, len(data), size)]
    # every single cut point, with empty chunks around it
    for cut in range(len(data) + 1):
        yield f"cut{cut}", [b"", data[:cut], b"", data[cut:], b""]


@pytest.mark.parametrize("data", [
    SAMPLE,
    SAMPLE + b"\n",
    SAMPLE + b"\r\n",
    b"",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"only",
    b"x\r",
    b"a\r\nb\r\n",
])
def test_iter_lines_any_chunking(data: bytes) -> None:
    expected = _expected_lines(data) if data else []
    for label, chunks in _chunkings(data):
        assert list(iter_lines(chunks)) == expected, label


def test_iter_lines_known_answers() -> None:
    assert list(iter_lines([b'{"a":1}\r', b'\n{"b"', b":2}"])) == [b'{"a":1}', b'{"b":2}']
    assert list(iter_lines([b"a\n\nb\n"])) == [b"a", b"", b"b"]
    assert list(iter_lines([])) == []


def test_iter_lines_is_lazy() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first\nsec"
        yield b"ond\nthi"
        raise AssertionError("read too far")

    lines = iter_lines(chunks())
    assert next(lines) == b"first"
    assert next(lines) == b"second"


# ----------------------------------------------------------------------------- real tables (deltalake)


def test_real_table_every_operation(tmp_path: Path) -> None:
    root = tmp_path / "fact_orders"
    expected = build_history(str(root))
    reader = LocalLogReader(root, "sales/fact_orders")
    assert isinstance(reader, LogReader)
    # create_checkpoint and the no-op DELETE wrote no commit; the checkpoint is not a commit
    assert reader.commit_versions() == sorted(expected) == list(range(11))
    log = sorted(p.name for p in (root / "_delta_log").iterdir())
    assert "00000000000000000008.checkpoint.parquet" in log and "_last_checkpoint" in log
    assert [n for n in log if commit_version(n) is not None] == [commit_file_name(v) for v in range(11)]
    for version, want in expected.items():
        info = classify_version(reader, version)
        assert info is not None
        got = (info.operation, info.data_change, info.partitions_as_dicts(), info.metadata_seen)
        assert got == (want.operation, want.data_change, want.partitions, want.metadata_seen), version
        assert info.table == "sales/fact_orders" and info.version == version
        assert info.partitions_truncated is False
        assert isinstance(info.timestamp, int) and info.timestamp > 1_600_000_000_000
        assert info.column_mapping == {}
        if want.operation == "OPTIMIZE":
            assert info.actions >= 3  # it did rewrite files (dataChange false)
    assert reader.latest_version() == 10
    assert reader.commit_versions(after=7) == [8, 9, 10]
    assert reader.commit_versions(after=10) == []
    assert reader.commit_versions(after=-1) == list(range(11))
    assert reader.open_commit(11) is None
    assert classify_version(reader, 11) is None
    assert reader.find_column_mapping(10) == {}


def test_real_unpartitioned_table(tmp_path: Path) -> None:
    root = tmp_path / "dim"
    write_deltalake(str(root), pa.table({"id": [1, 2]}))
    write_deltalake(str(root), pa.table({"id": pa.array([], pa.int64())}), mode="append")
    reader = LocalLogReader(root)
    assert reader.table == str(root)
    first = classify_version(reader, 0)
    assert first is not None
    assert (first.data_change, first.partitions, first.partitions_truncated) == (True, (), False)
    empty_append = classify_version(reader, 1)  # delta-rs commits a WRITE that carries no data
    assert empty_append is not None
    assert (empty_append.operation, empty_append.data_change, empty_append.actions) == ("WRITE", False, 1)
    stat = (root / "_delta_log" / "00000000000000000001.json").stat()
    assert reader.last_modified(1) == datetime.fromtimestamp(stat.st_mtime, UTC)
    assert reader.last_modified(7) is None


def test_real_change_data_feed_table(tmp_path: Path) -> None:
    root = tmp_path / "cdf"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "region": ["eu", None, "us"]})
    cdf = {"delta.enableChangeDataFeed": "true"}
    write_deltalake(str(root), data, partition_by=["region"], configuration=cdf)
    DeltaTable(str(root)).delete("id = 3")
    content = (root / "_delta_log" / commit_file_name(1)).read_bytes()
    assert b'"cdc"' in content  # delta-rs wrote a cdc action
    info = classify_version(LocalLogReader(root), 1)
    assert info is not None
    assert (info.operation, info.data_change) == ("DELETE", True)
    assert info.partitions_as_dicts() == [{"region": "us"}]


def test_real_column_mapped_table(tmp_path: Path) -> None:
    root = tmp_path / "mapped"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "region": ["eu", None, "us"]})
    mapped = {"delta.columnMapping.mode": "name"}
    write_deltalake(str(root), data, partition_by=["region"], configuration=mapped)
    write_deltalake(str(root), data.slice(0, 1), partition_by=["region"], mode="append")
    reader = LocalLogReader(root)
    first = classify_version(reader, 0)
    assert first is not None and first.metadata_seen
    physical = next(iter(first.column_mapping))
    assert physical.startswith("col-") and dict(first.column_mapping) == {physical: "region"}
    assert first.partitions_as_dicts() == [{"region": None}, {"region": "eu"}, {"region": "us"}]
    # without metaData in the commit the names stay physical unless a mapping is given
    bare = classify_version(reader, 1)
    assert bare is not None and bare.partitions_as_dicts() == [{physical: "eu"}]
    mapping = reader.find_column_mapping(1)
    assert mapping == {physical: "region"}
    mapped = classify_version(reader, 1, column_mapping=mapping)
    assert mapped is not None and mapped.partitions_as_dicts() == [{"region": "eu"}]
    assert dict(mapped.column_mapping) == mapping
    assert reader.find_column_mapping(1, limit=1) == {}  # v1 has no metaData and the scan stops there
    assert reader.find_column_mapping(1, limit=0) == {}


# ----------------------------------------------------------------------------- quirks (notes section 8)

ORDERS_EU = add("region=eu/part-1.parquet", {"region": "eu"})


@pytest.mark.parametrize("trailing_newline", [True, False])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_line_endings(trailing_newline: bool, newline: bytes) -> None:
    content = commit_bytes([commit_info("WRITE"), ORDERS_EU, add("region=us/p.parquet", {"region": "us"})],
                           trailing_newline=trailing_newline, newline=newline)
    for chunk in (1, 4, 64, len(content)):
        info = from_bytes(content, chunk)
        assert (info.operation, info.data_change, info.actions) == ("WRITE", True, 3)
        assert info.partitions_as_dicts() == [{"region": "eu"}, {"region": "us"}]


def test_commit_info_missing() -> None:
    info = classify([line("protocol", {"minReaderVersion": 1, "minWriterVersion": 2}), ORDERS_EU])
    assert (info.operation, info.timestamp, info.data_change, info.actions) == (None, None, True, 2)


def test_commit_info_without_operation() -> None:
    old = classify([line("commitInfo", {"timestamp": 1_600_000_000_123, "clientVersion": "delta-rs.0.5.0"}),
                    ORDERS_EU])
    assert (old.operation, old.timestamp, old.data_change) == (None, 1_600_000_000_123, True)
    older = classify([line("commitInfo", {"delta-rs": "0.9.0"}), ORDERS_EU])
    assert (older.operation, older.timestamp) == (None, None)


def test_commit_info_last_line() -> None:
    info = classify([ORDERS_EU, remove("region=us/old.parquet", {"region": "us"}), commit_info("MERGE")])
    assert (info.operation, info.timestamp, info.actions) == ("MERGE", 1_700_000_000_000, 3)
    assert info.partitions_as_dicts() == [{"region": "eu"}, {"region": "us"}]


def test_in_commit_timestamp_preferred() -> None:
    info = classify([commit_info("WRITE", inCommitTimestamp=1_700_000_009_999), ORDERS_EU])
    assert info.timestamp == 1_700_000_009_999
    assert classify([line("commitInfo", {"inCommitTimestamp": 5})]).timestamp == 5
    assert classify([line("commitInfo", {"timestamp": "soon", "operation": 3})]).timestamp is None
    assert classify([line("commitInfo", {"timestamp": "soon", "operation": 3})]).operation is None


def test_unknown_actions_and_fields_ignored() -> None:
    info = classify([
        commit_info("WRITE", someNewField={"x": [1, 2]}),
        line("some_new_action", {"anything": True}),
        line("some_scalar_action", 5),
        line("domainMetadata", {"domain": "delta.clustering", "configuration": "{}", "removed": False}),
        add("p.parquet", {"region": "eu"}, futureField=[1], deletionVector=None),
        b"{}",
    ])
    assert (info.operation, info.data_change, info.actions) == ("WRITE", True, 6)
    assert info.partitions_as_dicts() == [{"region": "eu"}]


def test_remove_without_partition_values() -> None:
    repartition = classify([commit_info("WRITE"), remove("a.parquet", data_change=False),
                            add("b.parquet", {"region": "eu"}, data_change=False)])
    assert repartition.data_change is False
    assert (repartition.partitions, repartition.partitions_truncated) == ((), False)
    delete = classify([commit_info("DELETE"), remove("a.parquet")])
    # data changed in a partition nobody named: the list is marked incomplete
    assert (delete.data_change, delete.partitions, delete.partitions_truncated) == (True, (), True)


def test_cdc_only_commit_changes_data() -> None:
    info = classify([commit_info("UPDATE"), cdc("_change_data/region=eu/c.parquet", {"region": "eu"})])
    assert (info.data_change, info.partitions_as_dicts()) == (True, [{"region": "eu"}])


@pytest.mark.parametrize(("lines", "operation"), [
    ([commit_info("STREAMING UPDATE"), line("txn", {"appId": "s1", "version": 42})], "STREAMING UPDATE"),
    ([line("txn", {"appId": "stream-1", "version": 42, "lastUpdated": 1})], None),
    ([commit_info("DELETE")], "DELETE"),  # Databricks no-op DELETE
    ([commit_info("VACUUM END")], "VACUUM END"),
    ([commit_info("WRITE"), add("a.parquet", {"region": "eu"}, data_change=False)], "WRITE"),
    ([commit_info("OPTIMIZE"), remove("a.parquet", {"region": "eu"}, data_change=False),
      add("b.parquet", {"region": "eu"}, data_change=False)], "OPTIMIZE"),
    ([], None),
    ([b"", b"   ", b"\n"], None),
])
def test_commits_without_data_change(lines: list[bytes], operation: str | None) -> None:
    info = classify(lines)
    assert (info.operation, info.data_change, info.partitions, info.partitions_truncated) == (
        operation, False, (), False)
    assert info.actions == sum(1 for x in lines if x.strip())


def test_null_and_empty_partition_values() -> None:
    info = classify([
        add("region=__HIVE_DEFAULT_PARTITION__/a.parquet", {"region": None, "day": "2026-11-21"}),
        add("region=/b.parquet", {"day": "2026-11-21", "region": ""}),  # empty string == null
        add("c.parquet", {"region": "eu", "day": None}),
        remove("d.parquet", {"region": "eu", "day": None}),
    ])
    assert info.partitions == (
        (("day", None), ("region", "eu")),
        (("day", "2026-11-21"), ("region", None)),
    )
    assert info.partitions_as_dicts() == [
        {"day": None, "region": "eu"}, {"day": "2026-11-21", "region": None}]


def test_partition_values_that_are_not_strings() -> None:
    info = classify([add("a", {"year": 2026, "flag": True, "ratio": 0.5})])
    assert info.partitions_as_dicts() == [{"flag": "true", "ratio": "0.5", "year": "2026"}]


def test_only_data_changing_partitions_count() -> None:
    info = classify([
        commit_info("WRITE"),
        add("a", {"region": "eu"}, data_change=False),
        remove("b", {"region": "us"}, data_change=False),
        add("c", {"region": "ap"}),
    ])
    assert info.partitions_as_dicts() == [{"region": "ap"}]


def test_missing_data_change_counts_as_change() -> None:
    info = classify([line("add", {"path": "a", "partitionValues": {"region": "eu"}, "size": 1})])
    assert (info.data_change, info.partitions_as_dicts()) == (True, [{"region": "eu"}])


def test_partition_cap() -> None:
    lines = [add(f"f{i}", {"region": f"r{i}"}) for i in (5, 3, 9, 3, 1, 7)]
    capped = classify(lines, max_partitions=2)
    assert capped.partitions_as_dicts() == [{"region": "r3"}, {"region": "r5"}]  # first two seen, sorted
    assert capped.partitions_truncated is True
    exact = classify(lines, max_partitions=5)
    assert len(exact.partitions) == 5 and exact.partitions_truncated is False
    zero = classify(lines, max_partitions=0)
    assert (zero.partitions, zero.partitions_truncated, zero.data_change) == ((), True, True)
    with pytest.raises(ValueError):
        classify(lines, max_partitions=-1)


def test_many_files_in_few_partitions_is_not_truncated() -> None:
    lines = [add(f"f{i}", {"region": ("eu", "us")[i % 2], "day": "2026-11-21"}) for i in range(5000)]
    info = classify(lines, max_partitions=2)
    assert len(info.partitions) == 2 and not info.partitions_truncated


# ----------------------------------------------------------------------------- column mapping (hand-written)

PHYS = "col-5f1d0c2a-region"
MAPPED_ADD = add("4f/part-1.parquet", {PHYS: "eu"})


def test_column_mapping_from_argument() -> None:
    info = classify([commit_info("WRITE"), MAPPED_ADD, add("x", {"col-unknown": "1", PHYS: None})],
                    column_mapping={PHYS: "region"})
    assert info.partitions_as_dicts() == [{"col-unknown": "1", "region": None}, {"region": "eu"}]
    assert dict(info.column_mapping) == {PHYS: "region"} and info.metadata_seen is False


def test_column_mapping_without_metadata_or_argument_keeps_physical_names() -> None:
    info = classify([commit_info("WRITE"), MAPPED_ADD])
    assert info.partitions_as_dicts() == [{PHYS: "eu"}]
    assert dict(info.column_mapping) == {}


@pytest.mark.parametrize("metadata_first", [True, False])
def test_column_mapping_from_metadata_in_commit(metadata_first: bool) -> None:
    meta = metadata(["region"], {"region": PHYS, "id": "col-id"})
    lines = [commit_info("CREATE TABLE"), meta, MAPPED_ADD] if metadata_first else [
        commit_info("CREATE TABLE"), MAPPED_ADD, meta]
    info = classify(lines, column_mapping={"col-old": "region"})
    assert info.partitions_as_dicts() == [{"region": "eu"}]
    assert dict(info.column_mapping) == {PHYS: "region"}  # partition columns only, replaces the argument
    assert info.metadata_seen


def test_rename_column_keeps_physical_partition_key() -> None:
    # table_with_partitioning_mapping v4: partitionColumns says "newid", partitionValues key stays "id"
    meta = metadata(["newid"], {"newid": "id"}, extra_columns=())
    info = classify([commit_info("RENAME COLUMN"), meta, add("p", {"id": "7"})])
    assert info.partitions_as_dicts() == [{"newid": "7"}]


def test_column_mapping_mode_none_ignores_physical_names() -> None:
    meta = metadata(["region"], {"region": PHYS}, mode="none")
    info = classify([meta, add("p", {"region": "eu"})])
    assert dict(info.column_mapping) == {} and info.partitions_as_dicts() == [{"region": "eu"}]


def test_metadata_without_mapping_clears_it() -> None:
    info = classify([metadata(["region"], mode=None), add("p", {"region": "eu"})],
                    column_mapping={PHYS: "region"})
    assert dict(info.column_mapping) == {} and info.metadata_seen


def test_find_column_mapping_scans_back(tmp_path: Path) -> None:
    root = tmp_path / "t"
    create = [commit_info("CREATE TABLE"), metadata(["region"], {"region": "col-a"}), MAPPED_ADD]
    write_log_file(root, commit_file_name(0), commit_bytes(create))
    write_log_file(root, commit_file_name(1), commit_bytes([commit_info("WRITE"), add("p", {"col-a": "x"})]))
    # a huge metaData-free commit is skipped without parsing; an escaped key is still found
    escaped = line("metaData", json.loads(metadata(["region"], {"region": "col-b"}))["metaData"])
    escaped = escaped.replace(b'"metaData"', b'"\\u006detaData"')
    write_log_file(root, commit_file_name(3), commit_bytes([commit_info("UPDATE"), escaped]))
    big = [add(f"f{i}", {"col-b": "y"}) for i in range(2000)]
    write_log_file(root, commit_file_name(4), commit_bytes(big))
    write_log_file(root, commit_file_name(5), commit_bytes([commit_info("UPDATE"), b"{not json"]))
    reader = LocalLogReader(root, "t")
    assert reader.find_column_mapping(0) == {"col-a": "region"}
    assert reader.find_column_mapping(2) == {"col-a": "region"}  # version gap
    assert reader.find_column_mapping(4) == {"col-b": "region"}
    assert reader.find_column_mapping(4, limit=1) == {}
    assert reader.find_column_mapping(4, limit=2) == {"col-b": "region"}
    assert reader.commit_versions() == [0, 1, 3, 4, 5]
    assert reader.commit_versions(after=1) == [3, 4, 5]
    # a line that could hold the key and does not parse is reported
    write_log_file(root, commit_file_name(6), commit_bytes([b'{"metaData": oops}']))
    with pytest.raises(MalformedCommit) as caught:
        reader.find_column_mapping(6)
    assert (caught.value.version, caught.value.line) == (6, 1)


# ----------------------------------------------------------------------------- malformed commits


@pytest.mark.parametrize(("lines", "line_no", "reason"), [
    ([commit_info(), b'{"add": {"path": "a" "size": 1}}'], 2, "not valid JSON (Expecting ',' delimiter"),
    ([commit_info(), ORDERS_EU, b'[{"add": {}}]'], 3, "not a JSON object (got list)"),
    ([b'"add"'], 1, "not a JSON object (got str)"),
    ([b"null"], 1, "not a JSON object (got null)"),
    ([commit_info(), b'{"add": 5}'], 2, "'add' action is not a JSON object (got int)"),
    ([b'{"remove": "x"}'], 1, "'remove' action is not a JSON object (got str)"),
    ([b'{"commitInfo": [1]}'], 1, "'commitInfo' action is not a JSON object (got list)"),
    ([b'{"metaData": true}'], 1, "'metaData' action is not a JSON object (got bool)"),
    ([b'{"protocol": 1}'], 1, "'protocol' action is not a JSON object (got int)"),
    ([commit_info(), b"", b'{"add": {"path": "a", "partitionValues": "region=eu", "dataChange": true}}'], 3,
     "add.partitionValues is not a JSON object (got str)"),
    ([b'{"remove": {"path": "a", "partitionValues": [], "dataChange": false}}'], 1,
     "remove.partitionValues is not a JSON object (got list)"),
    ([add("a", {"region": ["eu"]})], 1, "partition value of 'region' is not a string (got list)"),
    ([commit_info(), b'{"add": {"path": "\xff\xfe"}}'], 2, "not valid UTF-8 (invalid start byte at byte 18)"),
    ([commit_info(), b'{"commitInfo": {"operation": "WRITE"}}\x00'], 2, "not valid JSON (Extra data"),
    ([line("metaData", {"schemaString": "{", "partitionColumns": ["region"]})], 1,
     "metaData.schemaString is not valid JSON"),
    ([line("metaData", {"schemaString": "{}", "partitionColumns": "region"})], 1,
     "metaData.partitionColumns is not a list (got str)"),
    # texts that are kept (logged, stored, shown) must be valid Unicode: JSON escapes can spell lone surrogates
    ([commit_info("WRITE\ud800")], 1, "commitInfo.operation 'WRITE\\ud800' is not valid Unicode"),
    ([commit_info(), ORDERS_EU, add("b", {"region": "eu\udc00"})], 3,
     "partition value of 'region' is not valid Unicode"),
    ([add("a", {"reg\ud800ion": "eu"})], 1, "partition column name 'reg\\ud800ion' is not valid Unicode"),
    ([metadata(["region"], {"region": "col-\udfff"})], 1, "metaData column name 'col-\\udfff' is not valid"),
    ([b'{"commitInfo": {"operation": "\\ud83d"}}'], 1, "commitInfo.operation '\\ud83d' is not valid Unicode"),
])
def test_malformed_commits(lines: list[bytes], line_no: int, reason: str) -> None:
    with pytest.raises(MalformedCommit) as caught:
        classify(lines, table="sales/fact_orders", version=12)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.table, error.version, error.line) == ("sales/fact_orders", 12, line_no)
    assert error.reason.startswith(reason)
    assert str(error).startswith(f"sales/fact_orders version 12 line {line_no}: {reason}")


def test_surrogate_pairs_and_non_ascii_texts_are_valid() -> None:
    info = classify([commit_info("MERGE \U0001F600 \u00e9"), add("a", {"r\u00e9gion": "\U0001F600"})])
    assert info.operation == "MERGE \U0001F600 \u00e9"
    assert info.partitions_as_dicts() == [{"r\u00e9gion": "\U0001F600"}]
    raw = b'{"commitInfo": {"operation": "\\ud83d\\ude00"}}'  # an escaped pair is one character
    assert classify([raw]).operation == "\U0001F600"


def test_malformed_line_numbers_count_blank_lines_and_chunks() -> None:
    content = commit_bytes([commit_info(), b"", ORDERS_EU, b"{oops"], newline=b"\r\n", trailing_newline=False)
    with pytest.raises(MalformedCommit) as caught:
        from_bytes(content, chunk=3)
    assert caught.value.line == 4
    assert "line 4: not valid JSON (Expecting property name enclosed in double quotes" in str(caught.value)


def test_malformed_commit_message_without_line_and_pickling() -> None:
    error = MalformedCommit("t", 3, None, "empty")
    assert str(error) == "t version 3: empty"
    copy = pickle.loads(pickle.dumps(MalformedCommit("sales/x", 12, 3, "not valid JSON (boom)")))  # noqa: S301
    assert (copy.table, copy.version, copy.line, copy.reason) == ("sales/x", 12, 3, "not valid JSON (boom)")
    assert str(copy) == "sales/x version 12 line 3: not valid JSON (boom)"


def test_null_action_values_are_absent() -> None:
    info = classify([b'{"add": null, "commitInfo": null, "metaData": null, "txn": null}', ORDERS_EU])
    assert (info.actions, info.data_change, info.metadata_seen, info.operation) == (2, True, False, None)


def test_classify_streams_and_stops_at_first_error() -> None:
    def endless() -> Iterator[bytes]:
        yield commit_info("WRITE")
        yield ORDERS_EU
        yield b"{broken"
        for i in itertools.count():  # never materialised
            yield add(f"f{i}", {"region": "eu"})

    with pytest.raises(MalformedCommit) as caught:
        classify_commit(endless(), table="t", version=1)
    assert caught.value.line == 3


def test_lines_with_line_endings_are_accepted() -> None:
    info = classify([commit_info("WRITE") + b"\r\n", b"\n", ORDERS_EU + b"\n"])
    assert (info.operation, info.actions, info.data_change) == ("WRITE", 2, True)


# ----------------------------------------------------------------------------- CommitInfo


def test_commit_info_value_object() -> None:
    lines = [commit_info("WRITE", inCommitTimestamp=1_700_000_000_500), ORDERS_EU, add("x", {"region": None})]
    info = classify(lines, table="sales/fact_orders", version=3, column_mapping={"a": "b"})
    assert info.to_json() == {
        "version": 3, "operation": "WRITE", "timestamp": 1_700_000_000_500, "data_change": True,
        "partitions": [{"region": None}, {"region": "eu"}],
    }
    json.dumps(info.to_json())
    assert info == classify(lines, table="sales/fact_orders", version=3, column_mapping={"a": "b"})
    assert hash(info)  # frozen and hashable, mapping excluded from the hash
    with pytest.raises(TypeError):
        info.column_mapping["x"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        info.version = 4  # type: ignore[misc]


# ----------------------------------------------------------------------------- local reader details


def test_local_reader_missing_table_and_odd_files(tmp_path: Path) -> None:
    assert LocalLogReader(tmp_path / "nope").commit_versions() == []
    assert LocalLogReader(tmp_path / "nope").latest_version() is None
    assert LocalLogReader(tmp_path / "nope").open_commit(0) is None
    root = tmp_path / "t"
    write_log_file(root, commit_file_name(0), commit_bytes([commit_info("WRITE"), ORDERS_EU]))
    write_log_file(root, commit_file_name(13), commit_bytes([commit_info("WRITE")]))
    write_log_file(root, commit_file_name(9999), commit_bytes([commit_info("DELETE")]))
    for name, _ in LOG_NAMES:
        if name and commit_version(name) is None and "\n" not in name:
            write_log_file(root, name, b"{}")
    (root / "_delta_log" / "_staged_commits" / commit_file_name(10000)).write_bytes(b"{}")
    (root / "_delta_log" / commit_file_name(20000)).mkdir()  # a folder is not a commit file
    reader = LocalLogReader(root, "t")
    assert reader.commit_versions() == [0, 13, 9999]
    assert reader.commit_versions(after=13) == [9999]
    assert reader.latest_version() == 9999
    lines = reader.open_commit(0)
    assert lines is not None
    assert list(lines) == [commit_info("WRITE"), ORDERS_EU]
    info = classify_version(reader, 9999)
    assert info is not None and (info.operation, info.version) == ("DELETE", 9999)


def test_local_reader_streams_big_commit_in_chunks(tmp_path: Path) -> None:
    root = tmp_path / "big"
    lines = [commit_info("OPTIMIZE")]
    lines += [add(f"f{i}", {"region": "eu"}, data_change=False) for i in range(6000)]
    write_log_file(root, commit_file_name(0), commit_bytes(lines, trailing_newline=False))
    assert (root / "_delta_log" / commit_file_name(0)).stat().st_size > 1 << 20  # more than one read chunk
    info = classify_version(LocalLogReader(root), 0)
    assert info is not None and (info.actions, info.data_change) == (6001, False)


# ----------------------------------------------------------------------------- Blob Storage (Azurite)


def _container(azurite: Azurite, name: str, **client_kwargs: Any) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(azurite.connection_string, **client_kwargs)
    container = service.get_container_client(name)
    if not container.exists():
        container.create_container()
    return container


def test_blob_reader_on_real_table(azurite: Azurite, unique: str) -> None:
    name = f"gold{unique}"
    container = _container(azurite, name)
    expected = build_history(f"az://{name}/sales/orders", azurite.deltalake_options())
    # noise in the log that must never count as a commit
    for junk in (f"_staged_commits/00000000000000000011.{UUID}.json", ".tmp/00000000000000000011.json",
                 f"00000000000000000010.checkpoint.{UUID}.json", f"_commit_{UUID}.json.tmp",
                 "00000000000000000000.00000000000000000003.compacted.json", "00000000000000000010.crc",
                 f"_sidecars/00000000000000000010.checkpoint.0000000001.0000000001.{UUID}.parquet"):
        container.upload_blob(f"sales/orders/_delta_log/{junk}", b"{}")

    requests: list[str] = []
    counted = _container(azurite, name, raw_request_hook=lambda r: requests.append(
        f"{r.http_request.method} {r.http_request.url}"), max_single_get_size=1024, max_chunk_get_size=1024)
    reader = BlobLogReader(counted, "/sales/orders/")
    assert isinstance(reader, LogReader) and reader.table == "sales/orders"
    assert reader.commit_versions() == list(range(11))
    assert reader.commit_versions(after=8) == [9, 10]
    assert reader.commit_versions(after=10) == []
    assert reader.latest_version() == 10
    for version, want in expected.items():
        info = classify_version(reader, version)  # 1 KiB chunks: lines span chunks
        assert info is not None
        got = (info.operation, info.data_change, info.partitions_as_dicts(), info.metadata_seen)
        assert got == (want.operation, want.data_change, want.partitions, want.metadata_seen), version

    requests.clear()
    assert reader.open_commit(11) is None
    assert len(requests) == 1 and requests[0].startswith("GET ") and commit_file_name(11) in requests[0]
    requests.clear()
    assert classify_version(reader, 99) is None
    assert len(requests) == 1
    assert BlobLogReader(counted, "sales/none").commit_versions() == []
    assert BlobLogReader(counted, "sales/none").latest_version() is None

    # last_modified: from the download when the reader read the commit (no request), else one request
    props = container.get_blob_client(f"sales/orders/_delta_log/{commit_file_name(3)}").get_blob_properties()
    requests.clear()
    assert reader.last_modified(3) == props.last_modified and reader.last_modified(3).tzinfo is not None
    assert requests == []
    fresh = BlobLogReader(counted, "sales/orders")
    assert fresh.last_modified(3) == props.last_modified and len(requests) == 1 and requests[0].startswith("HEAD ")
    assert fresh.last_modified(99) is None


def test_blob_reader_column_mapping(azurite: Azurite, unique: str) -> None:
    name = f"gold{unique}"
    container = _container(azurite, name)
    url = f"az://{name}/mapped"
    opts = azurite.deltalake_options()
    data = pa.table({"id": pa.array([1, 2], pa.int64()), "region": ["eu", None]})
    write_deltalake(url, data, partition_by=["region"], configuration={"delta.columnMapping.mode": "name"},
                    storage_options=opts)
    write_deltalake(url, data.slice(0, 1), partition_by=["region"], mode="append", storage_options=opts)
    reader = BlobLogReader(container, "mapped")
    mapping = reader.find_column_mapping(1)
    assert list(mapping.values()) == ["region"] and next(iter(mapping)).startswith("col-")
    info = classify_version(reader, 1, column_mapping=mapping)
    assert info is not None and info.partitions_as_dicts() == [{"region": "eu"}]


def test_blob_reader_rejects_empty_table(azurite: Azurite, unique: str) -> None:
    with pytest.raises(ValueError):
        BlobLogReader(_container(azurite, f"gold{unique}"), "/")
