"""Turn what the triggers receive into hints: "table T may have a new commit (version V)".

* Blob trigger (``on_delta_commit``): the blob path ``<container>/<table>/_delta_log/<v>.json``.
* Event Grid (``on_lake_event``): ``Microsoft.Storage.BlobCreated`` names the blob in ``data.url``;
  ``Microsoft.Storage.BlobRenamed`` (Spark/Databricks commit on ADLS Gen2 by renaming a temp file)
  names the commit only in ``data.destinationUrl``. URLs are percent-encoded and may be blob
  (``*.blob.core.windows.net``), DFS (``*.dfs.core.windows.net``) or path-style emulator URLs.

Anything that is not a commit of the gold container (data files, checkpoints, temp files, other
containers) yields no hint; :func:`ignored_because` says why, for the log. :func:`event_problem` says
what makes a posted Event Grid event malformed (not an object, no ``subject`` or ``eventType``, text
that is not valid Unicode ...), so that a webhook can refuse it with 400 and log the reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from refresh.core.clock import parse_iso
from refresh.core.validation import first_bad_string, json_type, shown, unicode_problem
from refresh.detection.deltalog import split_commit_path

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
    if unicode_problem(path):
        return None  # a lone surrogate cannot name a blob
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


def hint_from_event(event_type: str | None, subject: str | None, data: Mapping[str, Any] | None,
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


EVENT_STRING_FIELDS = ("id", "eventType", "subject", "eventTime")
"""Fields every Event Grid event (Event Grid schema) carries as non-empty strings."""


def event_problem(event: Any) -> str | None:
    """What makes ``event`` (one decoded item of an Event Grid post) unusable, or None.

    The Event Grid schema: an object with non-empty string ``id``, ``eventType``, ``subject`` and
    ``eventTime`` (ISO 8601), an object ``data``, optional string ``topic`` and ``dataVersion``; all
    text valid Unicode.
    """
    if not isinstance(event, Mapping):
        return f"an event must be a JSON object, got {json_type(event)}"
    for name in EVENT_STRING_FIELDS:
        value = event.get(name)
        if value is None:
            return f"{name} is missing"
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty string, got {json_type(value)}"
        problem = unicode_problem(value)
        if problem:
            return f"{name} {problem}"
    try:
        parse_iso(event["eventTime"])
    except ValueError:
        return f"eventTime {shown(event['eventTime'], 40)!r} is not an ISO 8601 time"
    for name in ("topic", "dataVersion"):
        value = event.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a string, got {json_type(value)}"
    if "data" not in event:
        return "data is missing"
    if not isinstance(event["data"], Mapping):
        return f"data must be an object, got {json_type(event['data'])}"
    bad = first_bad_string(dict(event))
    if bad is not None:
        return f"{bad or 'a key'} is not valid Unicode (a lone surrogate)"
    return None


def ignored_because(event_type: Any, subject: Any, data: Any, container: str) -> str:
    """Why :func:`hint_from_event` found no gold commit in an event (for the log line)."""
    if not isinstance(event_type, str) or not event_type:
        return "the event has no eventType"
    if event_type not in (CREATED, RENAMED):
        return f"event type {shown(event_type)!r} is neither {CREATED} nor {RENAMED}"
    if not isinstance(data, Mapping):
        return f"its data is {json_type(data)}, not an object"
    bad = first_bad_string({"subject": subject, "data": dict(data)})
    if bad is not None:
        return f"{bad} is not valid Unicode (a lone surrogate)"
    field = "destinationUrl" if event_type == RENAMED else "url"
    url = data.get(field)
    path = blob_path_from_url(url) if isinstance(url, str) else None
    if path is None and not (event_type == CREATED and isinstance(subject, str)
                             and subject.startswith("/blobServices/default/containers/")):
        return f"data.{field} is missing or not a blob URL, and the subject names no blob"
    return f"the blob is not a Delta commit (<table>/_delta_log/<version>.json) in container {container!r}"
