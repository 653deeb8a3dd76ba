"""Turn what the triggers receive into hints: "table T may have a new commit (version V)".

* Blob trigger (``on_delta_commit``): the blob path ``<container>/<table>/_delta_log/<v>.json``.
* Event Grid (``on_lake_event``): ``Microsoft.Storage.BlobCreated`` names the blob in ``data.url``;
  ``Microsoft.Storage.BlobRenamed`` (Spark/Databricks commit on ADLS Gen2 by renaming a temp file)
  names the commit only in ``data.destinationUrl``. URLs are percent-encoded and may be blob
  (``*.blob.core.windows.net``), DFS (``*.dfs.core.windows.net``) or path-style emulator URLs.

Anything that is not a commit of the gold container (data files, checkpoints, temp files, other
containers) yields no hint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .deltalog import split_commit_path

CREATED = "Microsoft.Storage.BlobCreated"
RENAMED = "Microsoft.Storage.BlobRenamed"


@dataclass(frozen=True)
class Hint:
    """A table that may have new commits; ``version`` is the commit that was seen, if known."""

    table: str
    version: int | None
    source: str


def hint_from_blob_path(path: str, container: str, source: str = "blob") -> Hint | None:
    """``path`` is ``<container>/<blob name>`` (the blob trigger's ``InputStream.name``)."""
    path = path.lstrip("/")
    head, _, rest = path.partition("/")
    if head != container or not rest:
        return None
    found = split_commit_path(rest)
    return Hint(found[0], found[1], source) if found else None


def blob_path_from_url(url: str) -> str | None:
    """``<container>/<blob>`` from a blob or DFS URL (decoded), or None if it is not a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    segments = parts.path.lstrip("/").split("/")
    if _path_style(parts.hostname):
        segments = segments[1:]  # emulator: /<account>/<container>/<blob>
    if len(segments) < 2:
        return None
    return unquote("/".join(segments))


def _path_style(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def hint_from_event(event_type: str, subject: str | None, data: Mapping[str, Any] | None,
                    container: str) -> Hint | None:
    """Hint from an Event Grid storage event, or None if it is not about a gold commit."""
    if not isinstance(data, Mapping):
        return None
    if event_type == RENAMED:
        url = data.get("destinationUrl")
    elif event_type == CREATED:
        url = data.get("url")
    else:
        return None
    path = blob_path_from_url(url) if isinstance(url, str) else None
    if path is None and event_type == CREATED and isinstance(subject, str):
        # /blobServices/default/containers/<c>/blobs/<name>
        prefix = "/blobServices/default/containers/"
        if subject.startswith(prefix):
            c, _, blob = subject[len(prefix):].partition("/blobs/")
            path = f"{c}/{unquote(blob)}" if blob else None
    if path is None:
        return None
    return hint_from_blob_path(path, container, source="renamed" if event_type == RENAMED else "created")
