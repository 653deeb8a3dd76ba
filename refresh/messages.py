"""Queue messages on ``REFRESH_QUEUE``: a small versioned JSON document, base64 text on the wire.

Encoding: ``host.json`` sets ``extensions.queues.messageEncoding`` to ``base64`` and every producer
uses :data:`MESSAGE_ENCODING` through :func:`queue_client` (tests/test_project.py checks they agree;
a mismatch would send every message silently to ``<queue>-poison``).

Body, version 1 (``v``)::

    {"v": 1,
     "type": "job" | "check",     # "job": a pending job of `dataset` may be due; "check": follow a running refresh
     "dataset": "<dataset key>",  # the routing-config key (or "adhoc-..." for unconfigured manual refreshes)
     "job_id": "<uuid hex>",      # the job this message is about; stale ids are ignored by the worker
     "sent_at": "<ISO-8601 UTC>",   # check messages: "<time>#<token>" naming the one live check chain
     "attempt": 0}                # re-queue count for this step (backoff bookkeeping)

The truth about a job lives in Table Storage (``STATE_TABLE`` and ``OUTCOMES_TABLE``), never in the
message, so a duplicate, late or stale message is harmless: the worker compares ``job_id`` with the
dataset's state and drops what no longer applies.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .clock import iso

MESSAGE_VERSION = 1
MESSAGE_ENCODING = "base64"
MESSAGE_TYPES = ("job", "check")
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600 - 60
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_JOB_RE = re.compile(r"^[0-9a-f]{32}$")


class BadMessage(ValueError):
    """A queue message that cannot be understood; the message says what is wrong with it."""


@dataclass(frozen=True)
class JobMessage:
    """A decoded queue message."""

    type: str
    dataset: str
    job_id: str
    sent_at: str
    attempt: int = 0

    def encode(self) -> str:
        return json.dumps(
            {"v": MESSAGE_VERSION, "type": self.type, "dataset": self.dataset, "job_id": self.job_id,
             "sent_at": self.sent_at, "attempt": self.attempt},
            separators=(",", ":"),
        )

    @classmethod
    def new(cls, type_: str, dataset: str, job_id: str, now: datetime, attempt: int = 0) -> JobMessage:
        return cls(type=type_, dataset=dataset, job_id=job_id, sent_at=iso(now), attempt=attempt)


def decode(body: str | bytes) -> JobMessage:
    """Parse and validate a message body (already base64-decoded by the host)."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if len(body) > 64 * 1024:
        raise BadMessage(f"body is {len(body)} characters; at most 65536 are accepted")
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadMessage(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise BadMessage(f"body must be a JSON object, not {type(data).__name__}")
    version = data.get("v")
    if version != MESSAGE_VERSION:
        raise BadMessage(f"v: unsupported message version {version!r} (this app reads {MESSAGE_VERSION})")
    problems = []
    type_ = data.get("type")
    if type_ not in MESSAGE_TYPES:
        problems.append(f"type: must be one of {', '.join(MESSAGE_TYPES)}, got {type_!r}")
    dataset = data.get("dataset")
    if not isinstance(dataset, str) or not _KEY_RE.match(dataset):
        problems.append(f"dataset: not a dataset key: {dataset!r}"[:200])
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not _JOB_RE.match(job_id):
        problems.append(f"job_id: must be 32 lowercase hex digits, got {job_id!r}"[:200])
    attempt = data.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt <= 10_000:
        problems.append(f"attempt: must be a whole number 0..10000, got {attempt!r}"[:200])
    sent_at = data.get("sent_at", "")
    if not isinstance(sent_at, str) or len(sent_at) > 40:
        problems.append("sent_at: must be an ISO-8601 string")
    if problems:
        raise BadMessage("; ".join(problems))
    return JobMessage(type=type_, dataset=dataset, job_id=job_id, sent_at=sent_at, attempt=attempt)


def visibility_seconds(delay: float) -> int:
    """A visibility delay the queue accepts: whole seconds, 0..7 days minus a minute."""
    if delay <= 0:
        return 0
    return min(MAX_VISIBILITY_SECONDS, math.ceil(delay))


def queue_client(service: Any, name: str) -> Any:
    """A QueueClient for ``name`` that encodes and decodes as ``host.json`` says (base64)."""
    from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

    return service.get_queue_client(
        name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
    )


def send(queue: Any, message: JobMessage, delay_seconds: float = 0) -> None:
    """Put ``message`` on ``queue``, invisible for ``delay_seconds`` (the debounce or a back-off)."""
    queue.send_message(message.encode(), visibility_timeout=visibility_seconds(delay_seconds),
                       time_to_live=-1)
