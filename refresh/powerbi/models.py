"""Typed views of Power BI payloads. Every raw JSON shape is normalised here and nowhere else.

Payloads mix spellings (the swagger says ``IsRefreshable``, the service sends ``isRefreshable``),
so every field is read case-insensitively. A refresh's outcome is decided from ``extendedStatus``
when present, else from ``status``; ``Unknown``, ``NotStarted`` and ``InProgress`` mean running.
Failure details come from ``serviceExceptionJson`` (a JSON *string*, history entries) and from
``messages[]`` entries of type ``Error`` (execution details).

Every text taken from a payload (names, error codes and messages, engine messages) goes through
:func:`clean_text`: a lone UTF-16 surrogate (JSON allows ``"\ud800"``) becomes U+FFFD, so what the
app stores and renders is always valid Unicode.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from refresh.core.validation import REPLACEMENT, SURROGATE_RE

__all__ = [
    "Dataset",
    "RefreshState",
    "RefreshStatus",
    "Workspace",
    "clean_text",
    "dataset_from_api",
    "parse_state",
    "refresh_from_details",
    "refresh_from_history_entry",
    "workspace_from_api",
]

_LOGGER = logging.getLogger(__name__)


def clean_text(text: str) -> str:
    """``text`` as valid Unicode: every lone surrogate replaced by U+FFFD (the replacement character)."""
    return SURROGATE_RE.sub(REPLACEMENT, text)


def _clean(value: Any) -> Any:
    """``value`` (JSON data) with every string, key or value, passed through :func:`clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RefreshState(StrEnum):
    """Outcome of a refresh, normalised over ``status`` and ``extendedStatus``."""

    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"
    DISABLED = "Disabled"

    @property
    def is_terminal(self) -> bool:
        """True for every state except RUNNING."""
        return self is not RefreshState.RUNNING


_STATES: dict[str, RefreshState] = {
    "": RefreshState.RUNNING,
    "unknown": RefreshState.RUNNING,
    "notstarted": RefreshState.RUNNING,
    "inprogress": RefreshState.RUNNING,
    "completed": RefreshState.COMPLETED,
    "failed": RefreshState.FAILED,
    "cancelled": RefreshState.CANCELLED,
    "canceled": RefreshState.CANCELLED,
    "timedout": RefreshState.TIMED_OUT,
    "disabled": RefreshState.DISABLED,
}


@dataclass(frozen=True)
class Workspace:
    """A Power BI workspace (group)."""

    id: str
    name: str
    is_on_dedicated_capacity: bool
    capacity_id: str | None


@dataclass(frozen=True)
class Dataset:
    """A Power BI dataset (semantic model).

    ``is_refreshable`` is True when the payload does not say otherwise: the service omits
    fields it cannot compute, and a refresh POST will then tell.
    """

    id: str
    name: str
    is_refreshable: bool
    configured_by: str | None
    target_storage_mode: str | None


@dataclass(frozen=True)
class RefreshStatus:
    """One refresh, from the history or from the execution details.

    ``refresh_type`` is ``refreshType`` for history entries (``ViaApi``, ``Scheduled``...) and
    the processing ``type`` for execution details (``Full``...). ``attempts`` is the number of
    ``refreshAttempts`` (history) or ``numberOfAttempts`` (details), None when absent.
    """

    request_id: str
    state: RefreshState
    raw_status: str | None
    extended_status: str | None
    refresh_type: str | None
    start_time: datetime | None
    end_time: datetime | None
    error_code: str | None
    error_message: str | None
    messages: tuple[dict[str, Any], ...]
    attempts: int | None
    tables: tuple[str, ...] = ()  # execution details: the tables of its ``objects`` (empty for history entries)

    @property
    def is_terminal(self) -> bool:
        """True once the refresh has ended, whatever the outcome."""
        return self.state.is_terminal

    @property
    def succeeded(self) -> bool:
        """True only for a completed refresh."""
        return self.state is RefreshState.COMPLETED


def _ci(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Lower-cased keys (the first spelling wins when a payload has two)."""
    folded: dict[str, Any] = {}
    for key, value in payload.items():
        folded.setdefault(str(key).lower(), value)
    return folded


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = clean_text(str(value))
    return text if text else None


def _bool(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return default


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _datetime(value: Any) -> datetime | None:
    """ISO 8601 to an aware datetime (naive service times are UTC); None if empty or unreadable."""
    text = _str(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        _LOGGER.debug("Unreadable Power BI timestamp %r", text)
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_state(status: str | None, extended_status: str | None = None) -> RefreshState:
    """The refresh state from ``extendedStatus`` when present, else ``status``.

    An unrecognised value is treated as RUNNING (and logged): a new in-progress value must not end
    a job early, and the caller's own deadline bounds the wait.
    """
    raw = extended_status if extended_status else status
    key = (raw or "").strip().lower()
    state = _STATES.get(key)
    if state is None:
        _LOGGER.warning("Unrecognised Power BI refresh status %r; treating it as running", raw)
        return RefreshState.RUNNING
    return state


def _service_exception(text: Any) -> tuple[str | None, str | None]:
    """(code, message) from a ``serviceExceptionJson`` string; bad JSON becomes the message."""
    raw = _str(text)
    if raw is None:
        return None, None
    try:
        payload = json.loads(raw)
    except ValueError:
        return None, raw
    if not isinstance(payload, dict):
        return None, raw
    fields = _ci(payload)
    code = _str(fields.get("errorcode") or fields.get("code"))
    message = _str(fields.get("errordescription") or fields.get("message") or fields.get("errormessage"))
    if code is None and message is None:
        return None, raw
    return code, message


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(_clean(item) for item in value if isinstance(item, Mapping))


def _exception_json(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``serviceExceptionJson`` at the top level, else the latest attempt's that has one."""
    code, message = _service_exception(fields.get("serviceexceptionjson"))
    attempts = fields.get("refreshattempts")
    if code is None and message is None and isinstance(attempts, list):
        for attempt in reversed(attempts):
            if isinstance(attempt, Mapping):
                code, message = _service_exception(_ci(attempt).get("serviceexceptionjson"))
                if code or message:
                    break
    return code, message


def _engine_errors(messages: tuple[dict[str, Any], ...]) -> tuple[str | None, str | None]:
    """Code of the first ``Error`` message, and the texts of all of them joined by ``; ``."""
    errors = [_ci(m) for m in messages if str(_ci(m).get("type", "")).lower() == "error"]
    if not errors:
        return None, None
    texts = [clean_text(str(e["message"])) for e in errors if e.get("message")]
    return _str(errors[0].get("code")), ("; ".join(texts) if texts else None)


def _errors(
    fields: Mapping[str, Any], messages: tuple[dict[str, Any], ...], *, messages_first: bool
) -> tuple[str | None, str | None]:
    """Error code and message from the preferred source, each gap filled from the other one."""
    sources = [_engine_errors(messages), _exception_json(fields)]
    if not messages_first:
        sources.reverse()
    (code, message), (other_code, other_message) = sources
    return code or other_code, message or other_message


def _tables(value: Any) -> tuple[str, ...]:
    """The distinct table names of an ``objects`` list (``[{"table", "partition", "status"}]``), in order."""
    if not isinstance(value, list):
        return ()
    names = [_str(_ci(item).get("table")) for item in value if isinstance(item, Mapping)]
    return tuple(dict.fromkeys(n for n in names if n))


def workspace_from_api(payload: Mapping[str, Any]) -> Workspace:
    """A :class:`Workspace` from a ``Group`` payload."""
    fields = _ci(payload)
    return Workspace(
        id=_str(fields.get("id")) or "",
        name=_str(fields.get("name")) or "",
        is_on_dedicated_capacity=_bool(fields.get("isondedicatedcapacity"), False),
        capacity_id=_str(fields.get("capacityid")),
    )


def dataset_from_api(payload: Mapping[str, Any]) -> Dataset:
    """A :class:`Dataset` from a ``Dataset`` payload (``isRefreshable`` or ``IsRefreshable``)."""
    fields = _ci(payload)
    return Dataset(
        id=_str(fields.get("id")) or "",
        name=_str(fields.get("name")) or "",
        is_refreshable=_bool(fields.get("isrefreshable"), True),
        configured_by=_str(fields.get("configuredby")),
        target_storage_mode=_str(fields.get("targetstoragemode")),
    )


def refresh_from_history_entry(payload: Mapping[str, Any]) -> RefreshStatus:
    """A :class:`RefreshStatus` from one ``Refresh`` entry of ``GET .../refreshes``."""
    fields = _ci(payload)
    raw_status = _str(fields.get("status"))
    extended = _str(fields.get("extendedstatus"))
    messages = _messages(fields.get("messages"))
    code, message = _errors(fields, messages, messages_first=False)
    attempts = fields.get("refreshattempts")
    return RefreshStatus(
        request_id=_str(fields.get("requestid") or fields.get("id") or fields.get("refreshid")) or "",
        state=parse_state(raw_status, extended),
        raw_status=raw_status,
        extended_status=extended,
        refresh_type=_str(fields.get("refreshtype")),
        start_time=_datetime(fields.get("starttime")),
        end_time=_datetime(fields.get("endtime")),
        error_code=code,
        error_message=message,
        messages=messages,
        attempts=len(attempts) if isinstance(attempts, list) else None,
    )


def refresh_from_details(payload: Mapping[str, Any], request_id: str, *, in_progress: bool = False) -> RefreshStatus:
    """A :class:`RefreshStatus` from ``GET .../refreshes/{id}`` (``DatasetRefreshDetail``).

    The payload has no id, so the caller passes it. ``in_progress`` is True when the service
    answered 202, which means "still running" whatever the body says.
    """
    fields = _ci(payload)
    raw_status = _str(fields.get("status"))
    extended = _str(fields.get("extendedstatus"))
    messages = _messages(fields.get("messages"))
    code, message = _errors(fields, messages, messages_first=True)
    state = RefreshState.RUNNING if in_progress else parse_state(raw_status, extended)
    return RefreshStatus(
        request_id=request_id,
        state=state,
        raw_status=raw_status,
        extended_status=extended,
        refresh_type=_str(fields.get("type") or fields.get("refreshtype")),
        start_time=_datetime(fields.get("starttime")),
        end_time=_datetime(fields.get("endtime")),
        error_code=code,
        error_message=message,
        messages=messages,
        attempts=_int(fields.get("numberofattempts")),
        tables=_tables(fields.get("objects")),
    )
