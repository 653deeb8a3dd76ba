"""Classify what a Delta Lake commit did, streaming; read a table's log locally or from Blob Storage.

Which blobs are commits (``<table>/_delta_log/<20 digits>.json``) and how a commit's bytes split into
lines lives in refresh/detection/deltafiles.py; its names are re-exported here.

:func:`classify_commit` reads a commit line by line and never holds more than one action plus the
(capped) set of partitions touched. Data change is decided from the actions, never from the
operation name: ``add``/``remove`` with ``dataChange`` true, or any ``cdc`` action.

Readers (:class:`LocalLogReader`, :class:`BlobLogReader`) expose one table's ``_delta_log`` through
the small :class:`LogReader` protocol, so the same code runs on a local folder and on Blob Storage.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from refresh.detection.deltafiles import (
    COMMIT_NAME_RE,
    LOG_DIR,
    MAX_VERSION,
    commit_file_name,
    commit_version,
    iter_lines,
    split_commit_path,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

__all__ = [
    "COMMIT_NAME_RE",
    "MAX_VERSION",
    "BlobLogReader",
    "CommitInfo",
    "LocalLogReader",
    "LogReader",
    "MalformedCommit",
    "classify_commit",
    "classify_version",
    "commit_file_name",
    "commit_version",
    "iter_lines",
    "split_commit_path",
    "valid_text",
]

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20  # local reads: 1 MiB at a time
_COLUMN_MAPPING_PHYSICAL = "delta.columnMapping.physicalName"
_COLUMN_MAPPING_MODE = "delta.columnMapping.mode"
# Known actions whose value must be a JSON object (or null, read as absent).
_OBJECT_ACTIONS = frozenset({"protocol", "txn", "domainMetadata"})

PartitionSet = tuple[tuple[str, str | None], ...]
_Fail = Callable[[str], "MalformedCommit"]  # builds the error for the current line


# --------------------------------------------------------------------------- results


class MalformedCommit(ValueError):
    """A commit file that is not newline-delimited JSON actions; says which table, version and line."""

    def __init__(self, table: str, version: int, line: int | None, reason: str) -> None:
        where = f"{table} version {version}" + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {reason}")
        self.table = table
        self.version = version
        self.line = line
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table, self.version, self.line, self.reason))


@dataclass(frozen=True)
class CommitInfo:
    """What one commit did, as far as a refresh decision is concerned.

    ``partitions`` holds the distinct partition-value sets touched by data-changing actions, with
    logical column names, each set sorted by column and the whole tuple sorted (``None`` first). Sets
    of an unpartitioned table are empty and not listed, so ``data_change`` with ``partitions == ()``
    means "the whole table". ``partitions_truncated`` says the list is incomplete: there were more
    distinct sets than the cap (the first ones in log order are kept), or a data-changing action
    carried no ``partitionValues`` (possible for ``remove``), so its partition is unknown.
    """

    table: str
    version: int
    operation: str | None
    timestamp: int | None
    data_change: bool
    partitions: tuple[PartitionSet, ...]
    partitions_truncated: bool
    actions: int
    metadata_seen: bool
    column_mapping: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def partitions_as_dicts(self) -> list[dict[str, str | None]]:
        """``partitions`` as a list of ``{column: value}`` dicts."""
        return [dict(values) for values in self.partitions]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (used by the explain CLI)."""
        return {
            "version": self.version,
            "operation": self.operation,
            "timestamp": self.timestamp,
            "data_change": self.data_change,
            "partitions": self.partitions_as_dicts(),
        }


# --------------------------------------------------------------------------- streaming


def valid_text(text: str) -> bool:
    """Whether ``text`` is valid Unicode: JSON ``\\uD800``-style escapes can produce lone surrogates,
    which no store, log or page can encode. O(1) for ASCII text."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_LONE_SURROGATE = "is not valid Unicode (a lone surrogate \\u escape)"


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _partition_set(values: dict[str, Any], fail: _Fail) -> PartitionSet:
    """A canonical partition-value set: sorted by column, ``""`` read as null, scalars as strings."""
    items: list[tuple[str, str | None]] = []
    for column, value in values.items():
        if not valid_text(column):
            raise fail(f"partition column name {column!r} {_LONE_SURROGATE}")
        if value is None or type(value) is str:
            if value and not valid_text(value):
                raise fail(f"partition value of {column!r} {_LONE_SURROGATE}")
            items.append((column, value or None))
        elif isinstance(value, bool):
            items.append((column, "true" if value else "false"))
        elif isinstance(value, int | float):
            items.append((column, json.dumps(value)))
        else:
            raise fail(f"partition value of {column!r} is not a string (got {_type_name(value)})")
    items.sort()
    return tuple(items)


def _sort_key(values: PartitionSet) -> tuple[tuple[str, bool, str], ...]:
    return tuple((column, value is not None, value or "") for column, value in values)


def _mapping_from_metadata(meta: dict[str, Any], fail: _Fail) -> dict[str, str]:
    """physical -> logical names of the partition columns described by a ``metaData`` action.

    Physical names come from ``delta.columnMapping.physicalName`` in the schema's field metadata;
    ignored when the table says ``delta.columnMapping.mode`` is ``none``.
    """
    configuration = meta.get("configuration")
    if isinstance(configuration, dict) and configuration.get(_COLUMN_MAPPING_MODE) == "none":
        return {}
    columns = meta.get("partitionColumns")
    if columns is None:
        columns = []
    if not isinstance(columns, list):
        raise fail(f"metaData.partitionColumns is not a list (got {_type_name(columns)})")
    if not columns:
        return {}
    schema_string = meta.get("schemaString")
    if not isinstance(schema_string, str):
        return {}
    try:
        schema = json.loads(schema_string)
    except ValueError as exc:
        raise fail(f"metaData.schemaString is not valid JSON ({exc})") from exc
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not isinstance(fields, list):
        return {}
    wanted = set(columns)
    mapping: dict[str, str] = {}
    for entry in fields:
        if not isinstance(entry, dict) or entry.get("name") not in wanted:
            continue
        metadata = entry.get("metadata")
        physical = metadata.get(_COLUMN_MAPPING_PHYSICAL) if isinstance(metadata, dict) else None
        if isinstance(physical, str) and physical:
            for text in (physical, entry["name"]):
                if not valid_text(text):
                    raise fail(f"metaData column name {text!r} {_LONE_SURROGATE}")
            mapping[physical] = entry["name"]
    return mapping


def _millis(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return int(value)
    return None


def classify_commit(
    lines: Iterable[bytes],
    *,
    table: str,
    version: int,
    column_mapping: Mapping[str, str] | None = None,
    max_partitions: int = 100,
) -> CommitInfo:
    """Classify one commit from its lines (bytes, with or without line endings), streaming.

    Every non-blank line is parsed and checked, so a broken commit raises :class:`MalformedCommit`
    naming the line, wherever it is. Unknown actions and fields are ignored. ``column_mapping``
    (physical -> logical partition column names, e.g. from :meth:`LogReader.find_column_mapping`)
    translates physical ``partitionValues`` keys; a ``metaData`` action in this commit replaces it,
    and translation happens at the end, so ``metaData`` may come after the files it describes.
    """
    if max_partitions < 0:
        raise ValueError("max_partitions must be >= 0")

    def fail(reason: str) -> MalformedCommit:
        return MalformedCommit(table, version, lineno, reason)

    loads = json.loads
    lineno = 0
    actions = 0
    operation: str | None = None
    timestamp: int | None = None
    commit_info_seen = False
    data_change = False
    truncated = False
    metadata_mapping: dict[str, str] | None = None
    kept: dict[PartitionSet, None] = {}  # insertion-ordered set, at most max_partitions
    seen_raw: dict[tuple[tuple[str, Any], ...], None] = {}  # cache of raw items already kept
    seen_raw_limit = 4 * max_partitions + 16

    for line in lines:
        lineno += 1
        if not line or line.isspace():
            continue
        try:
            action = loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise fail(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
        except ValueError as exc:
            raise fail(f"not valid JSON ({exc})") from exc
        if type(action) is not dict:
            raise fail(f"not a JSON object (got {_type_name(action)})")
        actions += 1
        for key, value in action.items():
            if key == "add" or key == "remove" or key == "cdc":
                if type(value) is not dict:
                    if value is None:
                        continue
                    raise fail(f"{key!r} action is not a JSON object (got {_type_name(value)})")
                values = value.get("partitionValues")
                if values is not None and type(values) is not dict:
                    raise fail(f"{key}.partitionValues is not a JSON object (got {_type_name(values)})")
                # cdc always counts; a missing dataChange (required by the protocol) counts as a change.
                if key != "cdc" and value.get("dataChange", True) is False:
                    continue
                data_change = True
                if values is None:
                    truncated = True  # partition unknown
                    continue
                if not values:
                    continue  # unpartitioned
                try:
                    raw = tuple(values.items())
                    if raw in seen_raw:
                        continue
                except TypeError:  # an unhashable (list/object) value; _partition_set reports it
                    raw = None
                canonical = _partition_set(values, fail)
                if canonical not in kept:
                    if len(kept) >= max_partitions:
                        truncated = True
                        continue
                    kept[canonical] = None
                if raw is not None and len(seen_raw) < seen_raw_limit:
                    seen_raw[raw] = None
            elif key == "commitInfo":
                if type(value) is not dict:
                    if value is None:
                        continue
                    raise fail(f"'commitInfo' action is not a JSON object (got {_type_name(value)})")
                if commit_info_seen:
                    continue
                commit_info_seen = True
                op = value.get("operation")
                operation = op if isinstance(op, str) else None
                if operation is not None and not valid_text(operation):
                    raise fail(f"commitInfo.operation {operation!r} {_LONE_SURROGATE}")
                timestamp = _millis(value.get("inCommitTimestamp"))
                if timestamp is None:
                    timestamp = _millis(value.get("timestamp"))
            elif key == "metaData":
                if type(value) is not dict:
                    if value is None:
                        continue
                    raise fail(f"'metaData' action is not a JSON object (got {_type_name(value)})")
                metadata_mapping = _mapping_from_metadata(value, fail)
            elif key in _OBJECT_ACTIONS and value is not None and type(value) is not dict:
                raise fail(f"{key!r} action is not a JSON object (got {_type_name(value)})")

    if metadata_mapping is not None:
        mapping = metadata_mapping
    else:
        mapping = dict(column_mapping) if column_mapping else {}
    if mapping:
        translated = {
            tuple(sorted((mapping.get(column, column), value) for column, value in values)): None
            for values in kept
        }
    else:
        translated = kept
    partitions = tuple(sorted(translated, key=_sort_key))
    return CommitInfo(
        table=table,
        version=version,
        operation=operation,
        timestamp=timestamp,
        data_change=data_change,
        partitions=partitions,
        partitions_truncated=truncated,
        actions=actions,
        metadata_seen=metadata_mapping is not None,
        column_mapping=MappingProxyType(mapping),
    )


# --------------------------------------------------------------------------- readers


@runtime_checkable
class LogReader(Protocol):
    """Read side of one table's ``_delta_log``."""

    table: str

    def open_commit(self, version: int) -> Iterator[bytes] | None:
        """The commit's lines, or None if that commit does not exist."""
        ...

    def commit_versions(self, after: int | None = None, upto: int | None = None) -> list[int]:
        """Sorted versions of the commit files (only those > ``after`` and <= ``upto`` if given)."""
        ...

    def latest_version(self) -> int | None:
        """The newest commit version, or None if the log has no commit files."""
        ...

    def find_column_mapping(self, before_version: int, limit: int = 200) -> dict[str, str]:
        """physical -> logical partition column names from the newest metaData <= ``before_version``."""
        ...

    def last_modified(self, version: int) -> datetime | None:
        """When the commit file was last written (None: unknown, or the file does not exist)."""
        ...


def _close(lines: Iterator[bytes]) -> None:
    close = getattr(lines, "close", None)
    if close is not None:
        close()


close_lines = _close


def _find_column_mapping(reader: LogReader, before_version: int, limit: int) -> dict[str, str]:
    """Scan back over at most ``limit`` commit files (newest first) for a metaData action.

    Lines are only parsed when they could hold a ``metaData`` key (the literal name, or a JSON escape
    that might spell it), so big commits are skipped quickly. Metadata kept only in a checkpoint is
    not seen ({} is returned).
    """
    if limit <= 0:
        return {}
    versions = [v for v in reader.commit_versions() if v <= before_version][-limit:]
    for version in reversed(versions):
        lines = reader.open_commit(version)
        if lines is None:  # deleted meanwhile (log cleanup)
            continue
        try:
            for lineno, line in enumerate(lines, start=1):
                if b"metaData" not in line and b"\\u" not in line:
                    continue
                fail = partial(MalformedCommit, reader.table, version, lineno)
                try:
                    action = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise fail(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
                except ValueError as exc:
                    raise fail(f"not valid JSON ({exc})") from exc
                meta = action.get("metaData") if isinstance(action, dict) else None
                if isinstance(meta, dict):
                    return _mapping_from_metadata(meta, fail)
        finally:
            _close(lines)
    return {}


class _FileLines(Iterator[bytes]):
    """Lines of an open binary file, read in large chunks; closes the file when exhausted or closed."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._lines = iter_lines(iter(lambda: handle.read(_READ_CHUNK), b""))

    def __next__(self) -> bytes:
        try:
            return next(self._lines)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        """Release the file."""
        self._handle.close()

    def __enter__(self) -> _FileLines:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class _ReaderBase:
    """What every :class:`LogReader` derives from its ``commit_versions`` and ``open_commit``."""

    table: str

    def open_commit(self, version: int) -> Iterator[bytes] | None:
        raise NotImplementedError

    def commit_versions(self, after: int | None = None, upto: int | None = None) -> list[int]:
        raise NotImplementedError

    def latest_version(self) -> int | None:
        """The newest commit version, or None."""
        versions = self.commit_versions()
        return versions[-1] if versions else None

    def find_column_mapping(self, before_version: int, limit: int = 200) -> dict[str, str]:
        """physical -> logical partition column names from the newest metaData <= ``before_version``."""
        return _find_column_mapping(self, before_version, limit)

    def last_modified(self, version: int) -> datetime | None:
        return None  # unknown (see LogReader)


class LocalLogReader(_ReaderBase):
    """:class:`LogReader` over a table folder on the local file system."""

    def __init__(self, root: str | Path, table: str | None = None) -> None:
        self.root = Path(root)
        self.table = table if table is not None else str(root)
        self._log = self.root / LOG_DIR

    def open_commit(self, version: int) -> Iterator[bytes] | None:
        """The commit's lines, or None if the file does not exist."""
        try:
            handle = open(self._log / commit_file_name(version), "rb")  # closed by _FileLines
        except FileNotFoundError:
            return None
        return _FileLines(handle)

    def last_modified(self, version: int) -> datetime | None:
        """The commit file's modification time (None when it does not exist)."""
        try:
            return datetime.fromtimestamp((self._log / commit_file_name(version)).stat().st_mtime, UTC)
        except OSError:
            return None

    def commit_versions(self, after: int | None = None, upto: int | None = None) -> list[int]:
        """Sorted versions of the commit files in ``_delta_log`` (> ``after``, <= ``upto`` if given)."""
        floor = -1 if after is None else after
        ceiling = MAX_VERSION if upto is None else min(upto, MAX_VERSION)
        versions: list[int] = []
        try:
            with os.scandir(self._log) as entries:
                for entry in entries:
                    version = commit_version(entry.name)
                    if version is not None and floor < version <= ceiling and entry.is_file():
                        versions.append(version)
        except FileNotFoundError:
            return []
        versions.sort()
        return versions



def _listing_prefix(after: int | None, upto: int | None = None) -> str:
    """Leading digits every commit version in ``(after, upto]`` shares (``upto`` default: the largest)."""
    low = f"{0 if after is None or after < 0 else after + 1:020d}"
    high = f"{MAX_VERSION if upto is None else max(0, min(upto, MAX_VERSION)):020d}"
    shared = 0
    while shared < min(len(low), len(high)) and low[shared] == high[shared]:
        shared += 1
    return low[:shared]


class BlobLogReader(_ReaderBase):
    """:class:`LogReader` over ``<table>/_delta_log/`` in a Blob Storage container."""

    def __init__(self, container: ContainerClient, table: str) -> None:
        self.container = container
        self.table = table.strip("/")
        if not self.table:
            raise ValueError("table path must not be empty")
        self._prefix = f"{self.table}/{LOG_DIR}/"
        self.modified: dict[int, Any] = {}  # version -> the commit blob's last-modified time (from the download)

    def open_commit(self, version: int) -> Iterator[bytes] | None:
        """Stream the commit's lines; one request (and None) when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        name = self._prefix + commit_file_name(version)
        try:
            downloader = self.container.download_blob(name)
        except ResourceNotFoundError:
            logger.debug("commit %s not found", name)
            return None
        self.modified[version] = getattr(downloader.properties, "last_modified", None)
        return iter_lines(downloader.chunks())

    def last_modified(self, version: int) -> datetime | None:
        """The commit blob's last-modified time: from its download when this reader read it, else one request
        for its properties (None when it does not exist)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            modified = self.modified.get(version) or self.container.get_blob_client(
                self._prefix + commit_file_name(version)).get_blob_properties().last_modified
        except ResourceNotFoundError:
            return None
        return None if not isinstance(modified, datetime) else modified if modified.tzinfo else \
            modified.replace(tzinfo=UTC)

    def commit_versions(self, after: int | None = None, upto: int | None = None) -> list[int]:
        """Sorted commit versions (> ``after``, <= ``upto`` if given), listing only the ``_delta_log`` level.

        The listing prefix is narrowed to the leading digits shared by every possible version in
        ``(after, upto]`` (versions fit in a signed 64-bit integer, so at least ``0``; a block of 100
        versions shares 18 digits); filtering is exact.
        """
        from azure.storage.blob import BlobPrefix

        prefix = self._prefix + _listing_prefix(after, upto)
        floor = -1 if after is None else after
        ceiling = MAX_VERSION if upto is None else min(upto, MAX_VERSION)
        start = len(self._prefix)
        versions: list[int] = []
        for item in self.container.walk_blobs(name_starts_with=prefix, delimiter="/"):
            if isinstance(item, BlobPrefix):  # a subfolder such as _staged_commits/
                continue
            version = commit_version(item.name[start:])
            if version is not None and floor < version <= ceiling:
                versions.append(version)
        versions.sort()
        return versions



def classify_version(
    reader: LogReader, version: int, column_mapping: Mapping[str, str] | None = None
) -> CommitInfo | None:
    """Open and classify one commit of ``reader``'s table; None if the commit does not exist."""
    lines = reader.open_commit(version)
    if lines is None:
        return None
    try:
        return classify_commit(lines, table=reader.table, version=version, column_mapping=column_mapping)
    finally:
        _close(lines)
