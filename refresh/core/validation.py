"""One validation vocabulary: the patterns and text rules shared by the routing config, the HTTP API,
queue messages and (later) the Power BI client.

* **Text** that enters the app (HTTP bodies, query and route values, headers, config, queue
  messages) must be valid Unicode: a Python ``str`` decoded from JSON can hold a lone surrogate
  (``"\\ud800"``), which cannot be encoded as UTF-8 and so can be neither stored safely nor shown.
  :func:`unicode_problem` finds it; :func:`text_problem` applies every rule of a name-like value.
* **Readers** of what is already stored never fail on such text: :func:`readable` replaces each
  surrogate code point with U+FFFD (the replacement character), recursively in rows.
* **Patterns**: dataset keys, GUIDs, job ids, the ``hh:mm:ss`` timeout of an enhanced refresh.
* **Refresh options**: the values Power BI accepts for ``type``, ``commitMode`` and ``notifyOption``.
"""

from __future__ import annotations

import re
from typing import Any

DATASET_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""A dataset key of the routing config (also the ``dataset`` of a queue message)."""
DATASET_KEY_RULE = "1-64 letters, digits, '_' or '-', starting with a letter or digit"
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
"""A workspace or dataset id as Power BI writes it."""
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
"""A refresh job id: a UUID as 32 lowercase hex digits."""
TIMEOUT_RE = re.compile(r"^([0-1]?[0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$")
"""The ``timeout`` of an enhanced refresh: ``hh:mm:ss`` below 24 hours."""
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters (and DEL): never allowed in a name."""
SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
"""Surrogate code points: a valid Python text never holds one (JSON's ``\\ud800`` can put one there)."""

MAX_NAME_LENGTH = 256
"""Workspace and dataset names or ids."""

REFRESH_TYPES = ("Full", "ClearValues", "Calculate", "DataOnly", "Automatic", "Defragment")
COMMIT_MODES = ("Transactional", "PartialBatch")
NOTIFY_OPTIONS = ("NoNotification", "MailOnFailure", "MailOnCompletion")

REPLACEMENT = "\ufffd"


def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (holds no surrogate code point)."""
    return SURROGATE_RE.search(text) is None


def unicode_problem(text: str) -> str | None:
    """What is wrong with ``text`` as Unicode, or None."""
    found = SURROGATE_RE.search(text)
    if found is None:
        return None
    return (f"is not valid Unicode: a lone surrogate U+{ord(found.group()):04X} at character {found.start()} "
            "(text must be encodable as UTF-8)")


def text_problem(value: Any, max_length: int, *, required: bool = True, strip: bool = True) -> str | None:
    """The problem with a name-like string (a name, a model table, a reason), or None.

    A string; valid Unicode; non-empty unless not ``required``; at most ``max_length`` characters;
    no control characters; with ``strip``, no leading or trailing whitespace.
    """
    if not isinstance(value, str):
        return f"must be a string, got {json_type(value)}"
    problem = unicode_problem(value)
    if problem:
        return problem
    if required and value.strip() == "":
        return "must not be empty"
    if len(value) > max_length:
        return f"is {len(value)} characters long; the limit is {max_length}"
    if CONTROL_RE.search(value):
        return "contains a control character"
    if strip and value != value.strip():
        return "has leading or trailing whitespace"
    return None


def json_type(value: object) -> str:
    """How JSON would call ``value``'s type, for messages (``a string``, ``an array`` ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown(text: str, limit: int = 64) -> str:
    """``text`` made safe to quote in a message or a log line: valid Unicode, control characters as
    ``?``, at most ``limit`` characters."""
    text = SURROGATE_RE.sub(REPLACEMENT, text)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return CONTROL_RE.sub("?", text)


def readable(value: Any) -> Any:
    """``value`` with every surrogate code point in its strings (keys included) replaced by U+FFFD:
    what a reader does with stored text so that it can always be encoded and shown."""
    if isinstance(value, str):
        return SURROGATE_RE.sub(REPLACEMENT, value) if SURROGATE_RE.search(value) else value
    if isinstance(value, dict):
        return {readable(k): readable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [readable(v) for v in value]
    return value


def first_bad_string(value: Any, path: str = "") -> str | None:
    """The key path of the first string (or object key) in a JSON value that is not valid Unicode, or
    None. Paths look like ``a.b[2]``; the top level is ``""``. Iterative: any nesting depth."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not is_valid_unicode(item):
                return where
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                child_path = f"{where}.{shown(key)}" if where else shown(key)
                if isinstance(key, str) and not is_valid_unicode(key):
                    return child_path
                children.append((child, child_path))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(child, f"{where}[{i}]") for i, child in enumerate(item)]))
    return None
