"""Queue messages on ``REFRESH_QUEUE``: a small versioned JSON document, base64 text on the wire.

Encoding: every producer writes base64 text (:data:`MESSAGE_ENCODING`, through :func:`queue_client`),
and the app decodes it itself: ``host.json`` sets ``extensions.queues.messageEncoding`` to ``none``
(:data:`HOST_MESSAGE_ENCODING`; tests/test_project.py checks it) and the queue functions call
:func:`unwrap`. Were the host to decode, a message that is not base64 would never reach a function:
the host moves it to ``<queue>-poison``, where it cannot be decoded either, and no outcome row would
ever say so. Decoded here, it is rejected with a ``Rejected`` row like any other garbage. A body
that is already the JSON document (a manual run through ``/admin/functions``) is taken as it is.

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

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from refresh.core.clock import iso
from refresh.core.validation import DATASET_KEY_RE, JOB_ID_RE, first_bad_string

MESSAGE_VERSION = 1
MESSAGE_ENCODING = "base64"
"""How producers encode a message's text on the queue."""
HOST_MESSAGE_ENCODING = "none"
"""``host.json``'s ``extensions.queues.messageEncoding``: the host hands the text over as it is."""
MESSAGE_TYPES = ("job", "check")
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600 - 60
_KEY_RE = DATASET_KEY_RE
_JOB_RE = JOB_ID_RE
_BASE64_RE = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


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


def unwrap(body: str | bytes | None) -> bytes:
    """The message document from the text the host hands over (``messageEncoding`` ``none``): base64
    decoded, or as it is when it already is a JSON object. :class:`BadMessage` when it is neither."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body or b"")
    text = raw.strip()
    if text.startswith(b"{"):
        return text  # '{' is not a base64 character: the JSON document itself
    try:
        if not text or len(text) % 4 or not _BASE64_RE.match(text):
            raise ValueError
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        decode(raw)
        detail = "it is not a JSON object either"  # not reached: a JSON object starts with '{'
    except BadMessage as exc:
        detail = f"read as it is, {exc}"
    raise BadMessage(f"body is not base64 text (producers encode messages as {MESSAGE_ENCODING}) and, {detail}")


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
    bad = first_bad_string(data)
    if bad is not None:
        raise BadMessage(f"{bad or 'a key'}: is not valid Unicode (a lone surrogate)")
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
    assert isinstance(type_, str) and isinstance(dataset, str) and isinstance(job_id, str)  # checked above
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


class Encodable(Protocol):
    """A queue message of any type (a job or check, or an alert: refresh/monitoring/alerts.py)."""

    def encode(self) -> str: ...


def send(queue: Any, message: Encodable, delay_seconds: float = 0) -> None:
    """Put ``message`` on ``queue``, invisible for ``delay_seconds`` (the debounce or a back-off)."""
    queue.send_message(message.encode(), visibility_timeout=visibility_seconds(delay_seconds),
                       time_to_live=-1)
