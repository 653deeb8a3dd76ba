"""The HTTP API: one handler per endpoint, each taking a ``func.HttpRequest`` and returning a response.

Every route is registered for every method so that a wrong method gets *our* JSON 405 (with
``Allow``). Input is validated before it is used anywhere: dataset keys against
:data:`refresh.config.DATASET_KEY_RE`, job ids as 32 lowercase hex digits, body fields one by one
(each problem reported under its field name). Nothing from a request reaches an OData filter or a
Table Storage query (lookups are by validated key; ad-hoc names only reach Power BI through the
client, which quotes OData literals), and nothing from a request is logged before it is validated
(request bodies never). See docs/http-api.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timedelta
from functools import wraps
from typing import Any
from urllib.parse import quote, urlsplit

import azure.functions as func

from . import tables
from .app import get_app
from .clock import iso, parse_iso
from .config import DATASET_KEY_RE, MAX_NAME_LENGTH, REFRESH_TYPES, ConfigError
from .outcomes import END_STATES
from .pending import PK_DATASET, Change, pending_of
from .settings import SettingsError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DEFAULT_TOP = 20
MAX_TOP = 100
MAX_MODEL_TABLES = 100
MAX_MODEL_TABLE_LENGTH = 128
MAX_REASON_LENGTH = 500
MAX_REQUESTER_LENGTH = 256
HEALTH_TIMEOUT_SECONDS = 10.0
SHARED_DAILY_LIMIT = 8
REQUEST_FIELDS = ("dataset", "workspace", "model_tables", "type", "reason")
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
"""The methods every route is registered for (the handler answers 405 for the ones it does not serve)."""
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ApiError(Exception):
    """An answer other than success: HTTP status, a short code, a message, and per-field problems."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}


# --------------------------------------------------------------------------------------------------
# responses


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A JSON response (UTF-8, never cached)."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return func.HttpResponse(body=body, status_code=status, headers={**JSON_HEADERS, **(headers or {})},
                             mimetype="application/json", charset="utf-8")


def _error_body(exc: ApiError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.fields:
        out["fields"] = exc.fields
    return out


def _html_error(exc: ApiError) -> func.HttpResponse:
    from . import status_page

    return status_page.html_response(status_page.render_error(exc.status, exc.message), exc.status,
                                     exc.headers)


def endpoint(*methods: str, html: bool = False) -> Callable[[Callable[..., func.HttpResponse]],
                                                            Callable[[func.HttpRequest], func.HttpResponse]]:
    """Wrap a handler: 405 for other methods, :class:`ApiError` as its answer, config or settings
    problems as 503, anything unexpected as a logged 500 (no details to the caller)."""
    def wrap(handler: Callable[..., func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
        @wraps(handler)
        def run(req: func.HttpRequest) -> func.HttpResponse:
            try:
                if (req.method or "").upper() not in methods:
                    raise ApiError(405, "method_not_allowed", f"use {' or '.join(methods)} on this URL",
                                   headers={"Allow": ", ".join(methods)})
                return handler(req)
            except ApiError as exc:
                if html:
                    return _html_error(exc)
                return json_response(_error_body(exc), exc.status, exc.headers)
            except (ConfigError, SettingsError) as exc:
                log.error("%s: the app is misconfigured: %s", handler.__name__, exc)
                error = ApiError(503, "misconfigured", f"the app is misconfigured: {exc}")
            except Exception:
                log.exception("%s failed", handler.__name__)
                error = ApiError(500, "internal_error", "the request could not be handled; see the app's logs")
            return _html_error(error) if html else json_response(_error_body(error), error.status)
        return run
    return wrap


# --------------------------------------------------------------------------------------------------
# request parsing


class _Pairs(dict):
    duplicates: tuple[str, ...] = ()


def _pairs(items: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(items)
    if len(obj) != len(items):
        seen: set[str] = set()
        repeated: list[str] = []
        for name, _ in items:
            if name in seen and name not in repeated:
                repeated.append(name)
            seen.add(name)
        obj.duplicates = tuple(repeated)
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(req: func.HttpRequest) -> dict[str, Any]:
    """The body as a JSON object: 413 over :data:`MAX_BODY_BYTES`, 400 when it is not a JSON object."""
    declared = req.headers.get("content-length")
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES or (declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, "payload_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise ApiError(400, "malformed_json", "the body must be a JSON object, e.g. {\"dataset\": \"sales\"}")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json",
                       f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return data


def _field_name(name: str) -> str:
    shown = name if len(name) <= 64 else name[:61] + "..."
    return _CONTROL_RE.sub("?", shown)


def _check_text(value: Any, max_length: int, *, required: bool = True) -> str | None:
    """The problem with a name-like string, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {_json_type(value)}"
    if required and value.strip() == "":
        return "must not be empty"
    if len(value) > max_length:
        return f"is {len(value)} characters long; the limit is {max_length}"
    if _CONTROL_RE.search(value):
        return "contains a control character"
    if value != value.strip():
        return "has leading or trailing whitespace"
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def adhoc_key(workspace: str, dataset: str) -> str:
    """The dataset key of a dataset that is not configured: ``adhoc-`` and a short stable hash."""
    digest = hashlib.sha256(f"{workspace.lower()}\n{dataset.lower()}".encode()).hexdigest()
    return "adhoc-" + digest[:16]


def requester(req: func.HttpRequest) -> str:
    """Who asked: the App Service authentication principal when present, else the function key.

    The Python programming model does not hand the worker the name of the function key the host
    checked, so a key-authenticated call is recorded as ``function key``.
    """
    principal = (req.headers.get("x-ms-client-principal-name") or "").strip()
    if principal:
        principal = _CONTROL_RE.sub("", principal)[:MAX_REQUESTER_LENGTH]
        if principal:
            return principal
    name = (req.headers.get("x-functions-key-name") or "").strip()
    if name and not _CONTROL_RE.search(name) and len(name) <= MAX_REQUESTER_LENGTH:
        return f"function key {name}"
    if req.headers.get("x-functions-key") or req.params.get("code"):
        return "function key"
    return "anonymous"


def status_url(req: func.HttpRequest, job_id: str) -> str:
    """``<scheme>://<host>/api/refreshes/<job_id>`` from the request's own URL."""
    parts = urlsplit(req.url or "")
    base = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return f"{base}/api/refreshes/{job_id}"


