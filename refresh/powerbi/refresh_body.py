"""The body of a Power BI refresh request: standard (``notifyOption`` only) or enhanced (type, commit
mode, parallelism, retries, timeout, refresh policy, effective date, tables), checked before it is sent.

The option names and values are the shared vocabulary of :mod:`refresh.core.validation`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from refresh.core.validation import COMMIT_MODES as _COMMIT_MODES
from refresh.core.validation import NOTIFY_OPTIONS as _NOTIFY_OPTIONS
from refresh.core.validation import REFRESH_TYPES as _TYPES
from refresh.core.validation import TIMEOUT_RE as _TIMEOUT_TEXT

__all__ = ["DEFAULT_ENHANCED_TYPE", "build_refresh_body", "whole_number"]

_LOGGER = logging.getLogger("refresh.powerbi.client")


#: Processing type sent when an enhanced body names none. The service's own default is
#: ``Automatic``, which skips partitions already in the Ready state, so new Delta data would
#: not be loaded; ``Full`` re-reads the data (also the Fabric activity's default).
DEFAULT_ENHANCED_TYPE = "Full"

_OPTION_FIELDS = {
    "type": "type",
    "commit_mode": "commitMode",
    "max_parallelism": "maxParallelism",
    "retry_count": "retryCount",
    "timeout": "timeout",
    "apply_refresh_policy": "applyRefreshPolicy",
    "effective_date": "effectiveDate",
}



def _enum(value: Any, allowed: Sequence[str], name: str) -> str:
    """``value`` in the spelling of ``allowed``, matched case-insensitively."""
    if isinstance(value, str):
        for candidate in allowed:
            if candidate.lower() == value.strip().lower():
                return candidate
    raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _timeout_text(value: Any) -> str:
    """``hh:mm:ss`` from a string, a number of seconds or a timedelta (under 24 hours)."""
    if isinstance(value, str):
        if not _TIMEOUT_TEXT.match(value.strip()):
            raise ValueError(f"timeout must look like hh:mm:ss (under 24 h); got {value!r}")
        return value.strip()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"timeout must be hh:mm:ss, seconds or a timedelta; got {value!r}")
    whole = int(seconds)
    if whole != seconds or not 0 < whole < 24 * 3600:
        raise ValueError(f"timeout must be a whole number of seconds between 1 s and 23:59:59; got {value!r}")
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _effective_date_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00"
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"effective_date must be a date, datetime or ISO string; got {value!r}")


def whole_number(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}; got {value!r}")
    return value


def build_refresh_body(
    *,
    enhanced: bool,
    options: Mapping[str, Any] | None = None,
    objects: Sequence[str] | None = None,
    notify_option: str = "NoNotification",
) -> dict[str, Any]:
    """The JSON body of ``POST .../refreshes``.

    Standard refresh (shared capacity): ``{"notifyOption": notify_option}`` and nothing else;
    ``options``/``objects`` are ignored (logged), as shared capacity rejects them.

    Enhanced refresh (dedicated capacity): ``notifyOption`` is left out (the service requires
    that) and the body has ``type`` (default :data:`DEFAULT_ENHANCED_TYPE`), plus
    ``commitMode``, ``maxParallelism``, ``retryCount``, ``timeout`` (``hh:mm:ss``; seconds and
    timedeltas are converted), ``applyRefreshPolicy`` and ``effectiveDate`` for the snake_case
    keys given in ``options``, and ``objects: [{"table": t}]`` for the tables given.
    Enum values are matched case-insensitively and sent in the swagger's spelling.

    :raises ValueError: an unknown option key, or a value the service would reject.
    """
    if not enhanced:
        if options or objects:
            _LOGGER.warning(
                "Refresh options/tables ignored: a standard refresh (shared capacity) takes only notifyOption"
            )
        return {"notifyOption": _enum(notify_option, _NOTIFY_OPTIONS, "notify_option")}

    options = dict(options or {})
    unknown = sorted(set(options) - set(_OPTION_FIELDS))
    if unknown:
        raise ValueError(f"unknown refresh option(s) {unknown}; known: {sorted(_OPTION_FIELDS)}")
    given = {key: value for key, value in options.items() if value is not None}

    body: dict[str, Any] = {"type": _enum(given.get("type", DEFAULT_ENHANCED_TYPE), _TYPES, "type")}
    if "commit_mode" in given:
        body["commitMode"] = _enum(given["commit_mode"], _COMMIT_MODES, "commit_mode")
    if "max_parallelism" in given:
        body["maxParallelism"] = whole_number(given["max_parallelism"], "max_parallelism", 1)
    if "retry_count" in given:
        body["retryCount"] = whole_number(given["retry_count"], "retry_count", 0)
    if "timeout" in given:
        body["timeout"] = _timeout_text(given["timeout"])
    if "apply_refresh_policy" in given:
        if not isinstance(given["apply_refresh_policy"], bool):
            raise ValueError(f"apply_refresh_policy must be a bool; got {given['apply_refresh_policy']!r}")
        body["applyRefreshPolicy"] = given["apply_refresh_policy"]
        if body["applyRefreshPolicy"] and body.get("commitMode") == "PartialBatch":
            raise ValueError("apply_refresh_policy=True is not supported with commit_mode PartialBatch")
    if "effective_date" in given:
        body["effectiveDate"] = _effective_date_text(given["effective_date"])
    if objects is not None:
        if isinstance(objects, str):
            raise ValueError("objects must be a sequence of table names, not one string")
        tables = list(objects)
        if not all(isinstance(t, str) and t.strip() for t in tables):
            raise ValueError(f"objects must be non-empty table names; got {tables!r}")
        if tables:
            body["objects"] = [{"table": t} for t in tables]
    return body

