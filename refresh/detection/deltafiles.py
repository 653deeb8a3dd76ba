"""Which blobs of a ``_delta_log`` are commits, and how a commit's bytes split into lines.

A blob is a commit iff its name relative to ``<table>/_delta_log/`` has no ``/`` and matches
``^\\d{20}\\.json$`` (see ``/work/shared/notes/delta-log.md`` section 1). Everything else in the log
(checkpoints, ``.crc``, compacted files, staged commits, temp files) is ignored. Re-exported by
refresh/detection/deltalog.py, which classifies what a commit did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = [
    "COMMIT_NAME_RE",
    "LOG_DIR",
    "MAX_VERSION",
    "commit_file_name",
    "commit_version",
    "iter_lines",
    "split_commit_path",
]

#: A published commit's file name inside ``_delta_log/``. ASCII digits only (``re.ASCII``); use
#: ``fullmatch`` (``$`` alone would also accept a trailing newline).
COMMIT_NAME_RE = re.compile(r"^\d{20}\.json$", re.ASCII)

#: Largest version any writer can produce (versions are signed 64-bit in Delta Spark, delta-rs and
#: delta-kernel-rs). Its 20-digit form starts with ``0``, which lets listings skip the rest of the log.
MAX_VERSION = 2**63 - 1

LOG_DIR = "_delta_log"
_VERSION_LIMIT = 10**20  # 20 digits


def commit_file_name(version: int) -> str:
    """The commit file name of ``version`` inside ``_delta_log/``: 5 -> ``00000000000000000005.json``."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, not {type(version).__name__}")
    if not 0 <= version < _VERSION_LIMIT:
        raise ValueError(f"version {version} does not fit in 20 digits")
    return f"{version:020d}.json"


def commit_version(name_in_log: str) -> int | None:
    """The version of a commit named relative to ``_delta_log/``; None for anything that is not a commit."""
    if "/" in name_in_log or COMMIT_NAME_RE.fullmatch(name_in_log) is None:
        return None
    return int(name_in_log[:20])


def split_commit_path(path: str) -> tuple[str, int] | None:
    """Split a (decoded) blob path inside the container into ``(table path, version)`` if it is a commit.

    ``"sales/fact_orders/_delta_log/00000000000000000003.json"`` -> ``("sales/fact_orders", 3)``.
    None for every other file of a Delta log (checkpoints, compacted files, ``.crc``, temp files,
    anything in a subfolder of ``_delta_log``), for paths with a second ``_delta_log`` segment, and for
    an empty table path or one with empty, ``.`` or ``..`` segments (no Delta writer can create those).
    Leading slashes are stripped.
    """
    segments = path.lstrip("/").split("/")
    if len(segments) < 3 or segments[-2] != LOG_DIR:
        return None
    version = commit_version(segments[-1])
    if version is None:
        return None
    table_segments = segments[:-2]
    for segment in table_segments:
        if segment in ("", ".", "..", LOG_DIR):
            return None
    return "/".join(table_segments), version


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a stream of byte chunks into lines (without ``\\n`` / ``\\r\\n``), one chunk at a time.

    Lines may span chunks; a last line without a trailing newline is still yielded; an empty stream
    yields nothing. Only the current chunk and the pieces of one unfinished line are held.
    """
    pending: list[bytes] = []
    for chunk in chunks:
        if not chunk:
            continue
        parts = chunk.split(b"\n")
        last = parts.pop()
        if parts:
            if pending:
                pending.append(parts[0])
                parts[0] = b"".join(pending)
                pending.clear()
            for line in parts:
                yield line[:-1] if line.endswith(b"\r") else line
        if last:
            pending.append(last)
    if pending:
        line = b"".join(pending)
        yield line[:-1] if line.endswith(b"\r") else line
