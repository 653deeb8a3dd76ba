"""What the HTTP API (refresh/surfaces/http_api.py) accepts from a request, checked before anything uses it.

* Every text of the request (query and route values, header values, and each string and field name
  of a JSON body) must be valid Unicode; otherwise 400 naming it (:func:`check_request_text`,
  :func:`read_json_object`).
* A body is JSON sent as ``Content-Type: application/json`` (UTF-8); any other type is refused with
  415, so a browser cannot send a state-changing request cross-site as a "simple" form post or
  ``text/plain`` (:func:`require_json_content`).
* Who asked (:func:`requester`): the App Service authentication principal only when the platform
  set it, else how the caller authenticated.

The rules of names, keys and ids themselves live in :mod:`refresh.core.validation`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

from refresh.core.routing import json_object_hook
from refresh.core.validation import (
    CONTROL_RE,
    DATASET_KEY_RE,
    DATASET_KEY_RULE,
    first_bad_string,
    shown,
    unicode_problem,
)

MAX_BODY_BYTES = 64 * 1024
MAX_REQUESTER_LENGTH = 256
JSON_CONTENT_TYPE = "application/json"
AUTH_ENABLED_SETTING = "WEBSITE_AUTH_ENABLED"
"""Set to ``True`` by App Service when its authentication (Easy Auth) is on for the app."""
PRINCIPAL_NAME = "x-ms-client-principal-name"
PRINCIPAL_PROOF = ("x-ms-client-principal-idp", "x-ms-client-principal-id")
"""Headers App Service authentication sets next to the name (it strips all of them from callers)."""


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


def field_name(name: str) -> str:
    """A field name from a request, safe to put in an answer (valid Unicode, no control characters)."""
    return shown(name)


def check_request_text(req: func.HttpRequest) -> None:
    """400 if a query value, route value or header (name or value) is not valid Unicode."""
    problems: dict[str, str] = {}
    for kind, values in (("query parameter", req.params), ("route value", req.route_params),
                         ("header", req.headers)):
        for name, value in (values or {}).items():
            problem = unicode_problem(name) or (unicode_problem(value) if isinstance(value, str) else None)
            if problem:
                problems[f"{kind} {field_name(name)}"] = problem
    if problems:
        raise ApiError(400, "invalid_request", "the request contains text that is not valid Unicode", problems)


def require_json_content(req: func.HttpRequest) -> None:
    """415 unless the request says its body is ``application/json`` (UTF-8)."""
    raw = req.headers.get("content-type") or ""
    mime, _, params = raw.partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if mime.strip().lower() != JSON_CONTENT_TYPE or charset not in ("", "utf-8", "utf8"):
        got = f"Content-Type {shown(raw, 80)!r}" if raw.strip() else "no Content-Type"
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as JSON with the header Content-Type: {JSON_CONTENT_TYPE} (got {got})",
                       headers={"Accept-Post": JSON_CONTENT_TYPE})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(req: func.HttpRequest) -> dict[str, Any]:
    """The body as a JSON object: 415 if it is not sent as JSON, 413 over :data:`MAX_BODY_BYTES`, 400
    when it is not a JSON object of valid Unicode text."""
    require_json_content(req)
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
        data = json.loads(text, object_pairs_hook=json_object_hook, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json",
                       f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    bad = first_bad_string(data)
    if bad is not None:
        field = bad or "(body)"
        raise ApiError(400, "invalid_request", "the body contains text that is not valid Unicode",
                       {field: "is not valid Unicode: it holds a lone surrogate (e.g. \\ud800), which cannot be "
                               "stored or shown"})
    return data


def adhoc_key(workspace: str, dataset: str) -> str:
    """The dataset key of a dataset that is not configured: ``adhoc-`` and a short stable hash."""
    digest = hashlib.sha256(f"{workspace.lower()}\n{dataset.lower()}".encode()).hexdigest()
    return "adhoc-" + digest[:16]


def platform_auth_enabled(env: Mapping[str, str] | None) -> bool:
    """Whether App Service authentication is on (the platform sets ``WEBSITE_AUTH_ENABLED=True``)."""
    env = os.environ if env is None else env
    return (env.get(AUTH_ENABLED_SETTING) or "").strip().lower() == "true"


def requester(req: func.HttpRequest, auth_enabled: bool) -> str:
    """Who asked.

    The ``x-ms-client-principal-name`` header is trusted only when App Service authentication is on
    (``auth_enabled``) and the platform's companion headers (identity provider and principal id) are
    there too: with authentication on, App Service strips these headers from every incoming request
    and sets them itself; with it off, any caller can send them. Otherwise the caller is named by how
    it authenticated: ``function key`` (the Python programming model does not tell the worker which
    key the host accepted), or ``anonymous`` when no key was sent (a local run).
    """
    if auth_enabled and all((req.headers.get(h) or "").strip() for h in PRINCIPAL_PROOF):
        principal = CONTROL_RE.sub("", (req.headers.get(PRINCIPAL_NAME) or "").strip())[:MAX_REQUESTER_LENGTH]
        if principal:
            return principal
    if req.headers.get("x-functions-key") or req.params.get("code"):
        return "function key"
    return "anonymous"


def status_url(req: func.HttpRequest, job_id: str) -> str:
    """``<scheme>://<host>/api/refreshes/<job_id>`` from the request's own URL."""
    parts = urlsplit(req.url or "")
    base = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return f"{base}/api/refreshes/{job_id}"


def dataset_key(value: str | None, field: str = "key") -> str:
    """A dataset key from a route value or query parameter; 400 naming ``field`` otherwise."""
    if not value or not DATASET_KEY_RE.fullmatch(value):
        raise ApiError(400, "invalid_request", "not a dataset key",
                       {field: f"must be a dataset key: {DATASET_KEY_RULE}"})
    return value
