"""``PowerBISimulator``: a loopback stand-in for the Power BI REST API and a managed-identity endpoint.

For tests and the local runtime only: it listens on 127.0.0.1 (port 0 = any free port) and keeps
everything in memory. It answers like the service, in the shapes of the official swagger
(``tests/data/powerbi-swagger.json``), including its rough edges (see shared/notes/powerbi-api.md):

* ``GET groups`` with OData ``$filter`` (``name eq '...'`` / ``id eq '...'`` with doubled
  apostrophes, ``contains(name,'...')``, joined by ``or``/``and``), ``$top``, ``$skip``;
  ``GET groups/{g}``; ``GET groups/{g}/datasets`` (``{"value": [...]}``, camelCase);
  ``GET groups/{g}/datasets/{d}``.
* ``POST .../refreshes``: 202 with a ``RequestId`` header always, plus ``x-ms-request-id`` and
  ``Location`` only for an enhanced body (any field besides ``notifyOption``), as the swagger
  says. ``refresh_headers`` (a set of those names) overrides which ones are sent.
  Rejections: another refresh running → 400 (``busy_status``, 409 possible) "Another refresh
  request is already executing"; shared capacity: more than ``daily_limit`` (8) refreshes in a
  rolling 24 h → 400 ``Request Throttled``; an enhanced body on shared capacity, an enhanced body
  with ``notifyOption``, unknown fields, or a non-refreshable dataset → 400.
* A refresh runs ``refresh_duration`` seconds of the simulator's clock (``clock()``; move it with
  ``advance(seconds)``, no sleeping). History ``GET .../refreshes?$top=N`` (newest first)
  shows ``status: "Unknown"`` and no ``endTime`` while running, then ``Completed``, ``Failed``
  (with a ``serviceExceptionJson`` string) or ``Cancelled``; a new refresh shows up there only
  ``history_lag`` seconds after it started. Details ``GET .../refreshes/{id}`` (enhanced only;
  404 for standard ones): 202 while running (``extendedStatus`` ``NotStarted`` in its first
  second, then ``InProgress``), 200 when done, with ``objects`` and ``messages``.
  ``DELETE .../refreshes/{id}`` cancels a running enhanced refresh.
* Bearer tokens: only tokens it issued are accepted; an expired one → 403 ``TokenExpired``
  (as Power BI does), anything else → 401. Tokens live ``token_lifetime`` seconds of the
  simulator's clock; ``expire_tokens()`` expires every token issued so far.
* Managed identity, App Service style, at ``identity_endpoint`` (``.../msi/token``): point
  ``IDENTITY_ENDPOINT`` there and ``IDENTITY_HEADER`` to ``identity_header`` and the real
  ``azure.identity.ManagedIdentityCredential`` gets tokens from here. It checks the
  ``X-IDENTITY-HEADER`` header and answers ``{"access_token", "expires_on" (epoch seconds, as a
  string), "resource", "token_type": "Bearer", "client_id"}`` (what MSAL's
  ``_obtain_token_on_app_service`` reads). ``expires_on`` is wall-clock time; the simulator
  itself judges expiry on its own clock, so a test can expire tokens while azure-identity
  still holds them in its cache (exactly the 403 TokenExpired case).

Misbehaviour, one-shot or ``times`` times, for API requests (``/v1.0/...``; a fault reaches the
identity endpoint only when its ``path_contains`` names it, e.g. ``"/msi/"``):
``fail_next(status, times=, retry_after=, body=, method=, path_contains=)``, ``busy_next()``,
``drop_next_connection()`` (closes the socket without an answer), ``slow_next(seconds)`` (a real
delay before the request is handled), ``fail_refresh(dataset_id, service_exception=, messages=)``
(the next refresh of that dataset ends Failed), ``expire_tokens()``. More in simulator_extras.py: a
refresh started by another client, a POST handled but its answer lost, the token endpoint down.

Every API request is recorded in ``requests`` (:class:`RecordedRequest`: method, path, query,
headers with the Authorization value redacted, JSON body, and the answer's status and body);
identity requests go to ``identity_requests``.

Admin endpoints (JSON, no auth, for another process such as the local runtime or end-to-end
tests), under ``admin_url`` = ``http://127.0.0.1:<port>/_sim``:

=======  ====================  ===========================================================================
method   path                  body → answer
=======  ====================  ===========================================================================
GET      /_sim/state           → ``{"clock", "config", "workspaces", "datasets", "refreshes"}``
POST     /_sim/workspaces      ``{"name", "dedicated": false, "id"?}`` → 201 ``{"id"}``
POST     /_sim/datasets        ``{"workspace_id", "name", "refreshable": true, "id"?}`` → 201 ``{"id"}``
GET      /_sim/requests        → ``{"value": [recorded request, ...]}``
DELETE   /_sim/requests        forget recorded requests → 204
POST     /_sim/faults          ``{"kind": "fail", "status", "times"?, "retry_after"?, "body"?, "method"?,
                               "path_contains"?}``, or kind ``busy`` (``times``, ``status``), ``drop``,
                               ``slow`` (``seconds``), ``fail_refresh`` (``dataset_id``,
                               ``service_exception``, ``messages``), ``expire_tokens`` → 204
POST     /_sim/advance         ``{"seconds"}`` → ``{"clock"}``
PATCH    /_sim/config          any of ``refresh_duration``, ``history_lag``, ``token_lifetime``,
                               ``busy_status``, ``daily_limit``, ``refresh_headers`` (list or null)
                               → the whole config
POST     /_sim/tokens          → ``{"access_token"}`` (a valid token, for callers without MI)
=======  ====================  ===========================================================================
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["PowerBISimulator", "RecordedRequest"]

_LOGGER = logging.getLogger(__name__)

API_PREFIX = "/v1.0/myorg"
IDENTITY_PATH = "/msi/token"
ADMIN_PREFIX = "/_sim"
DAY = 24 * 3600.0
_REFRESH_FIELDS = {
    "notifyOption",
    "type",
    "commitMode",
    "maxParallelism",
    "retryCount",
    "objects",
    "applyRefreshPolicy",
    "effectiveDate",
    "timeout",
}
_BUSY_MESSAGE = "Invalid dataset refresh request. Another refresh request is already executing"
_DAILY_MESSAGE = "Invalid dataset refresh request. Number of refresh requests in last 24 hours exceeded limit"
_DEFAULT_BODIES = {
    429: {
        "error": {
            "code": "TooManyRequests",
            "message": "You have exceeded the amount of requests allowed "
            "in the current time frame and further requests will fail.",
        }
    },
    500: {"error": {"code": "InternalServerError", "message": "An internal error occurred."}},
    502: {"error": {"code": "BadGateway", "message": "Bad gateway."}},
    503: {"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."}},
}


@dataclass
class RecordedRequest:
    """One API request as the simulator saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_query: str = ""
    status: int | None = None
    response: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: str  # "status", "drop", "slow" or "lost_answer"
    times: int
    method: str | None = None
    path_contains: str | None = None
    status: int = 500
    body: Any = None
    retry_after: Any = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_contains is None:
            return path.startswith(API_PREFIX)
        return self.path_contains in path


@dataclass
class _Outcome:
    extended_status: str = "Failed"
    service_exception: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None


@dataclass
class _Refresh:
    id: str
    dataset_id: str
    enhanced: bool
    start: float
    duration: float
    body: dict[str, Any]
    outcome: _Outcome | None = None
    cancelled_at: float | None = None
    kind: str | None = None  # refreshType; None: ViaApi / ViaEnhancedApi from the body (simulator_extras)


@dataclass
class _Workspace:
    id: str
    name: str
    dedicated: bool
    capacity_id: str | None


@dataclass
class _Dataset:
    id: str
    workspace_id: str
    name: str
    refreshable: bool
    refreshes: list[_Refresh] = field(default_factory=list)


class _Answer(Exception):
    """Raised inside a handler to send an answer at once."""

    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.add_request_id = True  # every API answer carries a RequestId unless told otherwise


def _error(status: int, code: str, message: str) -> _Answer:
    return _Answer(status, {"error": {"code": code, "message": message}})


class _ODataFilter:
    """The tiny OData ``$filter`` subset the groups endpoint needs, parsed per the ABNF quoting."""

    _TOKEN = re.compile(
        r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F-]{27})|(?P<word>[A-Za-z_]+)|(?P<sym>[(),]))"
    )

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = self._TOKEN.match(text, position)
            if not match or match.end() == position:
                raise ValueError(f"cannot parse $filter at {text[position : position + 20]!r}")
            kind = match.lastgroup or ""
            value = match.group(kind)
            if kind == "str":
                value = value[1:-1].replace("''", "'")
            self.tokens.append((kind, value))
            position = match.end()
            while position < len(text) and text[position].isspace():
                position += 1
        self.position = 0
        self.clauses = self._parse_or()
        if self.position != len(self.tokens):
            raise ValueError("unexpected text after the $filter expression")

    def _next(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise ValueError("$filter ends too early")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def _peek_word(self, word: str) -> bool:
        return self.position < len(self.tokens) and self.tokens[self.position] == ("word", word)

    def _parse_or(self) -> list[list[tuple[str, str, str]]]:
        groups = [self._parse_and()]
        while self._peek_word("or"):
            self.position += 1
            groups.append(self._parse_and())
        return groups

    def _parse_and(self) -> list[tuple[str, str, str]]:
        terms = [self._parse_term()]
        while self._peek_word("and"):
            self.position += 1
            terms.append(self._parse_term())
        return terms

    def _parse_term(self) -> tuple[str, str, str]:
        kind, value = self._next()
        if kind == "word" and value == "contains":
            if self._next() != ("sym", "("):
                raise ValueError("contains needs '('")
            _, prop = self._next()
            if self._next() != ("sym", ","):
                raise ValueError("contains needs ','")
            literal_kind, literal = self._next()
            if literal_kind != "str" or self._next() != ("sym", ")"):
                raise ValueError("contains needs a string literal and ')'")
            return self._checked(prop), "contains", literal
        if kind != "word":
            raise ValueError(f"expected a property name, got {value!r}")
        if self._next() != ("word", "eq"):
            raise ValueError("only 'eq' and contains() are supported")
        literal_kind, literal = self._next()
        if literal_kind not in ("str", "guid"):
            raise ValueError("expected a quoted string literal")
        return self._checked(value), "eq", literal

    @staticmethod
    def _checked(prop: str) -> str:
        if prop not in ("name", "id"):
            raise ValueError(f"unsupported property {prop!r} in $filter")
        return prop

    def matches(self, item: Mapping[str, str]) -> bool:
        """True when any ``or`` group has all its terms true."""
        for group in self.clauses:
            ok = True
            for prop, op, literal in group:
                value = item[prop]
                if prop == "id":
                    value, literal = value.lower(), literal.lower()
                if op == "eq" and value != literal:
                    ok = False
                if op == "contains" and literal.lower() not in value.lower():
                    ok = False
            if ok:
                return True
        return False


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: PowerBISimulator) -> None:
        self.simulator = simulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _LOGGER.debug("Simulator connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; no 40 ms stalls
    server: _Server

    def do_GET(self) -> None:
        self.server.simulator._dispatch(self)

    do_POST = do_GET
    do_DELETE = do_GET
    do_PATCH = do_GET
    do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("simulator: %s", format % args)


class PowerBISimulator:
    """An in-memory Power BI service and managed-identity endpoint on loopback (see module doc).

    :keyword clock: monotonic base clock (``advance`` adds to it).
    :keyword refresh_duration: how long each refresh runs, in clock seconds.
    :keyword history_lag: seconds before a new refresh appears in the history.
    :keyword token_lifetime: seconds a token issued here stays valid.
    :keyword busy_status: 400 (today's service) or 409 (2021 docs) for "already executing".
    :keyword daily_limit: refreshes per rolling 24 h per dataset on shared capacity.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        refresh_duration: float = 60.0,
        history_lag: float = 0.0,
        token_lifetime: float = 3600.0,
        busy_status: int = 400,
        daily_limit: int = 8,
        identity_header: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._base_clock = clock
        self._offset = 0.0
        self._clock_zero = clock()
        self._epoch_zero = time.time()
        self.refresh_duration = refresh_duration
        self.history_lag = history_lag
        self.token_lifetime = token_lifetime
        self.busy_status = busy_status
        self.daily_limit = daily_limit
        self.refresh_headers: set[str] | None = None
        self.identity_header = identity_header or secrets.token_hex(16)
        self.requests: list[RecordedRequest] = []
        self.identity_requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._workspaces: dict[str, _Workspace] = {}
        self._datasets: dict[str, _Dataset] = {}
        self._tokens: dict[str, float] = {}
        self._faults: list[_Fault] = []
        self._outcomes: dict[str, list[_Outcome]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PowerBISimulator:
        """Start serving in a background thread; returns self."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="powerbi-simulator",
            daemon=True,
        )
        self._thread.start()
        _LOGGER.info("Power BI simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PowerBISimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API root, ``http://127.0.0.1:<port>/v1.0/myorg``."""
        return self.root_url + API_PREFIX

    @property
    def identity_endpoint(self) -> str:
        """The App Service style managed-identity endpoint (``IDENTITY_ENDPOINT``)."""
        return self.root_url + IDENTITY_PATH

    @property
    def admin_url(self) -> str:
        """Root of the admin endpoints, ``http://127.0.0.1:<port>/_sim``."""
        return self.root_url + ADMIN_PREFIX

    # -- time --------------------------------------------------------------------------------

    def clock(self) -> float:
        """The simulator's clock: the base clock plus every ``advance``."""
        with self._lock:
            return self._base_clock() + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward (refreshes progress, tokens age) without sleeping."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
            return self.clock()

    def _wall(self, at: float) -> str:
        return _iso(self._epoch_zero + (at - self._clock_zero))

    # -- seeding -----------------------------------------------------------------------------

    def add_workspace(self, name: str, dedicated: bool = False, id: str | None = None) -> str:
        """Add a workspace (``dedicated`` = on Premium/Fabric capacity); returns its id."""
        workspace_id = (id or str(uuid.uuid4())).lower()
        capacity = str(uuid.uuid4()) if dedicated else None
        with self._lock:
            self._workspaces[workspace_id] = _Workspace(workspace_id, name, dedicated, capacity)
        return workspace_id

    def add_dataset(self, workspace_id: str, name: str, refreshable: bool = True, id: str | None = None) -> str:
        """Add a dataset to a workspace (``refreshable`` False = DirectQuery-like); returns its id."""
        dataset_id = (id or str(uuid.uuid4())).lower()
        with self._lock:
            if workspace_id.lower() not in self._workspaces:
                raise KeyError(f"no workspace {workspace_id}")
            self._datasets[dataset_id] = _Dataset(dataset_id, workspace_id.lower(), name, refreshable)
        return dataset_id

    def issue_token(self) -> str:
        """A new valid bearer token (what the identity endpoint hands out)."""
        token = "sim-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = self.clock() + self.token_lifetime
        return token

    def refreshes(self, dataset_id: str) -> list[dict[str, Any]]:
        """The dataset's refreshes, newest first, as history entries (ignores ``history_lag``)."""
        with self._lock:
            dataset = self._datasets[dataset_id.lower()]
            now = self.clock()
            return [self._history_entry(r, now) for r in reversed(dataset.refreshes)]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()
            self.identity_requests.clear()

    # -- misbehaviour ------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | str | None = None,
        body: Any = None,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (e.g. 429, 500, 503).

        ``retry_after`` (seconds or an HTTP-date string) becomes the ``Retry-After`` header;
        ``body`` defaults to a Power BI style error for the status.
        """
        default = _DEFAULT_BODIES.get(
            status,
            {
                "error": {
                    "code": HTTPStatus(status).phrase.replace(" ", ""),
                    "message": HTTPStatus(status).phrase,
                }
            },
        )
        self._add_fault(
            _Fault("status", times, method, path_contains, status, default if body is None else body, retry_after)
        )

    def busy_next(self, *, times: int = 1, status: int | None = None) -> None:
        """The next ``times`` refresh POSTs answer "Another refresh request is already executing"."""
        self.fail_next(
            status or self.busy_status,
            times=times,
            method="POST",
            path_contains="/refreshes",
            body={"error": {"code": "InvalidRequest", "message": _BUSY_MESSAGE}},
        )

    def drop_next_connection(
        self, *, times: int = 1, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Close the connection of the next ``times`` matching requests without answering."""
        self._add_fault(_Fault("drop", times, method, path_contains))

    def slow_next(
        self, seconds: float, *, times: int = 1, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Wait ``seconds`` (real time) before handling the next ``times`` matching requests."""
        self._add_fault(_Fault("slow", times, method, path_contains, seconds=seconds))

    def fail_refresh(
        self,
        dataset_id: str,
        service_exception: Mapping[str, Any] | None = None,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        extended_status: str = "Failed",
    ) -> None:
        """Make the next refresh of ``dataset_id`` end ``Failed`` (or ``TimedOut``) with these details.

        ``service_exception`` becomes the history's ``serviceExceptionJson`` string; ``messages``
        the details' engine messages (default: one ``Error`` built from the exception).
        """
        exception = dict(
            service_exception
            or {
                "errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
                "errorDescription": "The credentials provided for the data source are invalid.",
            }
        )
        if messages is None:
            text = exception.get("errorDescription") or exception.get("errorCode") or "Refresh failed"
            message_list = [{"code": "0xC112000B", "message": str(text), "type": "Error"}]
        else:
            message_list = [dict(m) for m in messages]
        with self._lock:
            self._outcomes.setdefault(dataset_id.lower(), []).append(_Outcome(extended_status, exception, message_list))

    def expire_tokens(self) -> None:
        """Expire every token issued so far (new ones from the identity endpoint stay valid)."""
        with self._lock:
            expired = self.clock() - 1
            for token in self._tokens:
                self._tokens[token] = min(self._tokens[token], expired)

    def pending_faults(self) -> int:
        """How many injected faults have not fired yet (per remaining time)."""
        with self._lock:
            return sum(f.times for f in self._faults)

    def _add_fault(self, fault: _Fault) -> None:
        if fault.times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- HTTP plumbing -----------------------------------------------------------------------

    def _dispatch(self, handler: _Handler) -> None:
        method = handler.command.upper()
        parts = urlsplit(handler.path)
        path = parts.path
        raw_body = b""
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            raw_body = handler.rfile.read(length)
        record = RecordedRequest(
            method=method,
            path=path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={
                k: ("<redacted>" if k.lower() in ("authorization", "x-identity-header") else v)
                for k, v in handler.headers.items()
            },
            body=_json_or_text(raw_body),
            raw_query=parts.query,
        )
        extra_headers: dict[str, str] = {}
        fault = None
        try:
            if path.startswith(ADMIN_PREFIX + "/"):
                answer = self._admin(method, path[len(ADMIN_PREFIX) :], record.body)
                self._write(handler, answer.status, answer.body, answer.headers)
                return
            is_api = path.startswith(API_PREFIX + "/") or path == API_PREFIX
            with self._lock:
                (self.identity_requests if path == IDENTITY_PATH else self.requests).append(record)
            fault = self._take_fault(method, path)
            if fault is not None and fault.kind == "drop":
                _drop(handler)
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "status":
                if fault.retry_after is not None:
                    extra_headers["Retry-After"] = (
                        fault.retry_after if isinstance(fault.retry_after, str) else f"{fault.retry_after:g}"
                    )
                raise _Answer(fault.status, fault.body)
            if path == IDENTITY_PATH:
                answer = self._identity(method, record, handler)
            elif is_api:
                self._authorize(handler)
                answer = self._api(method, path[len(API_PREFIX) :], record)
            else:
                answer = _error(404, "NotFound", f"no such path {path}")
        except _Answer as raised:
            answer = raised
        except Exception:
            _LOGGER.exception("Simulator failed on %s %s", method, path)
            answer = _error(500, "SimulatorError", "the simulator failed; see its log")
        answer.headers = {**extra_headers, **answer.headers}
        if path.startswith(API_PREFIX) and answer.add_request_id:
            answer.headers.setdefault("RequestId", str(uuid.uuid4()))
        record.status, record.response, record.response_headers = answer.status, answer.body, dict(answer.headers)
        if fault is not None and fault.kind == "lost_answer":  # handled, then the answer is lost
            return _drop(handler)
        self._write(handler, answer.status, answer.body, answer.headers)

    @staticmethod
    def _write(handler: _Handler, status: int, body: Any, headers: Mapping[str, str]) -> None:
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            if payload:
                handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
        except OSError:  # the client gave up (e.g. its timeout hit during slow_next)
            handler.close_connection = True

    # -- identity ----------------------------------------------------------------------------

    def _identity(self, method: str, record: RecordedRequest, handler: _Handler) -> _Answer:
        if method != "GET":
            return _Answer(405, {"statusCode": 405, "message": "Method not allowed"})
        if handler.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return _Answer(401, {"statusCode": 401, "message": "The X-IDENTITY-HEADER header is missing or wrong"})
        resource = record.query.get("resource")
        if not resource or record.query.get("api-version") != "2019-08-01":
            return _Answer(400, {"statusCode": 400, "message": "resource and api-version=2019-08-01 are required"})
        token = self.issue_token()
        return _Answer(
            200,
            {
                "access_token": token,
                "expires_on": str(int(time.time() + self.token_lifetime)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "00000000-0000-0000-0000-00000000c11e",
            },
        )

    def _authorize(self, handler: _Handler) -> None:
        header = handler.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        with self._lock:
            expires = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
            now = self.clock()
        if expires is None:
            raise _Answer(
                401,
                {
                    "error": {
                        "code": "PowerBINotAuthorizedException",
                        "message": "Authorization header is missing or the token is invalid",
                    }
                },
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/'
                    'common/oauth2/authorize", error="invalid_token"'
                },
            )
        if now >= expires:
            raise _error(403, "TokenExpired", "Access token has expired, resubmit with a new access token")

    # -- API ---------------------------------------------------------------------------------

    def _api(self, method: str, path: str, record: RecordedRequest) -> _Answer:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        lowered = [s.lower() for s in segments]
        with self._lock:
            if lowered == ["groups"] and method == "GET":
                return self._list_groups(record.query)
            if len(lowered) >= 2 and lowered[0] == "groups":
                workspace = self._workspace(segments[1])
                rest = lowered[2:]
                if rest == [] and method == "GET":
                    return _Answer(200, self._group_json(workspace))
                if rest == ["datasets"] and method == "GET":
                    return _Answer(
                        200,
                        {
                            "@odata.context": f"{self.base_url}/groups/{workspace.id}/$metadata#datasets",
                            "value": [
                                self._dataset_json(d) for d in self._datasets.values() if d.workspace_id == workspace.id
                            ],
                        },
                    )
                if len(rest) >= 2 and rest[0] == "datasets":
                    dataset = self._dataset(workspace, segments[3])
                    tail = rest[2:]
                    if tail == [] and method == "GET":
                        return _Answer(200, self._dataset_json(dataset))
                    if tail == ["refreshes"] and method == "POST":
                        return self._start_refresh(workspace, dataset, record.body)
                    if tail == ["refreshes"] and method == "GET":
                        return self._history(dataset, record.query)
                    if len(tail) == 2 and tail[0] == "refreshes":
                        refresh = self._refresh(dataset, segments[5])
                        if method == "GET":
                            return self._details(refresh)
                        if method == "DELETE":
                            return self._cancel(refresh)
        return _error(404, "NotFound", f"no {method} operation at {API_PREFIX}{path}")

    def _workspace(self, workspace_id: str) -> _Workspace:
        workspace = self._workspaces.get(workspace_id.lower())
        if workspace is None:
            raise _error(404, "PowerBIEntityNotFound", f"Couldn't find workspace {workspace_id}")
        return workspace

    def _dataset(self, workspace: _Workspace, dataset_id: str) -> _Dataset:
        dataset = self._datasets.get(dataset_id.lower())
        if dataset is None or dataset.workspace_id != workspace.id:
            raise _error(404, "ItemNotFound", f"Dataset {dataset_id} is not found in workspace {workspace.id}")
        return dataset

    @staticmethod
    def _refresh(dataset: _Dataset, refresh_id: str) -> _Refresh:
        for refresh in dataset.refreshes:
            if refresh.id == refresh_id.lower():
                return refresh
        raise _error(404, "ItemNotFound", f"Refresh {refresh_id} is not found")

    def _group_json(self, workspace: _Workspace) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": workspace.id,
            "isReadOnly": False,
            "isOnDedicatedCapacity": workspace.dedicated,
            "name": workspace.name,
        }
        if workspace.dedicated:
            payload["capacityId"] = workspace.capacity_id
            payload["defaultDatasetStorageFormat"] = "Small"
        return payload

    def _dataset_json(self, dataset: _Dataset) -> dict[str, Any]:
        return {
            "id": dataset.id,
            "name": dataset.name,
            "webUrl": f"https://app.powerbi.com/groups/{dataset.workspace_id}/datasets/{dataset.id}",
            "addRowsAPIEnabled": False,
            "configuredBy": "sp-refresh@contoso.com",
            "isRefreshable": dataset.refreshable,
            "isEffectiveIdentityRequired": False,
            "isEffectiveIdentityRolesRequired": False,
            "isOnPremGatewayRequired": False,
            "targetStorageMode": "Abf",
            "createdDate": self._wall(self._clock_zero),
        }

    def _list_groups(self, query: Mapping[str, str]) -> _Answer:
        top = _int_param(query, "$top", minimum=0)
        skip = _int_param(query, "$skip", minimum=0) or 0
        items = [self._group_json(w) for w in self._workspaces.values()]
        if "$filter" in query:
            try:
                odata = _ODataFilter(query["$filter"])
            except ValueError as exc:
                raise _error(400, "InvalidRequest", f"Invalid $filter: {exc}") from None
            items = [g for g in items if odata.matches(g)]
        items = items[skip:] if top is None else items[skip : skip + top]
        return _Answer(
            200,
            {
                "@odata.context": f"{self.base_url}/$metadata#groups",
                "@odata.count": len(items),
                "value": items,
            },
        )

    def _running(self, dataset: _Dataset, now: float) -> _Refresh | None:
        for refresh in dataset.refreshes:
            if refresh.cancelled_at is None and now < refresh.start + refresh.duration:
                return refresh
        return None

    def _start_refresh(self, workspace: _Workspace, dataset: _Dataset, body: Any) -> _Answer:
        if body is None or body == "":
            body = {}
        if not isinstance(body, dict):
            raise _error(400, "InvalidRequest", "The request body must be a JSON object")
        unknown = sorted(set(body) - _REFRESH_FIELDS)
        if unknown:
            raise _error(400, "InvalidRequest", f"Unknown refresh request properties: {', '.join(unknown)}")
        enhanced = bool(set(body) - {"notifyOption"})
        if enhanced and "notifyOption" in body:
            raise _error(
                400,
                "InvalidRequest",
                "For enhanced refresh, notifyOption is not required and must be excluded from the request",
            )
        if enhanced and not workspace.dedicated:
            raise _error(
                400,
                "InvalidRequest",
                "Enhanced refresh is not supported for shared capacities; only notifyOption can be specified",
            )
        if not dataset.refreshable:
            raise _error(400, "InvalidRequest", f"Dataset {dataset.id} is not refreshable (DirectQuery)")
        now = self.clock()
        if self._running(dataset, now) is not None:
            raise _Answer(self.busy_status, {"error": {"code": "InvalidRequest", "message": _BUSY_MESSAGE}})
        if not workspace.dedicated:
            recent = [r for r in dataset.refreshes if r.start > now - DAY]
            if len(recent) >= self.daily_limit:
                raise _error(400, "Request Throttled", _DAILY_MESSAGE)
        outcomes = self._outcomes.get(dataset.id)
        refresh = _Refresh(
            id=str(uuid.uuid4()),
            dataset_id=dataset.id,
            enhanced=enhanced,
            start=now,
            duration=self.refresh_duration,
            body=dict(body),
            outcome=outcomes.pop(0) if outcomes else None,
        )
        dataset.refreshes.append(refresh)
        location = f"{self.base_url}/groups/{workspace.id}/datasets/{dataset.id}/refreshes/{refresh.id}"
        available = {"RequestId": refresh.id, "x-ms-request-id": refresh.id, "Location": location}
        names = self.refresh_headers
        if names is None:
            names = {"RequestId", "x-ms-request-id", "Location"} if enhanced else {"RequestId"}
        answer = _Answer(202, None, {name: available[name] for name in available if name in names})
        answer.add_request_id = "RequestId" in names
        return answer

    def _status(self, refresh: _Refresh, now: float) -> tuple[str, str, float | None]:
        """(history status, extended status, end time or None while running)."""
        if refresh.cancelled_at is not None:
            return "Cancelled", "Cancelled", refresh.cancelled_at
        end = refresh.start + refresh.duration
        if now < end:
            return "Unknown", ("NotStarted" if now - refresh.start < 1.0 else "InProgress"), None
        if refresh.outcome is not None:
            return "Failed", refresh.outcome.extended_status, end
        return "Completed", "Completed", end

    def _history_entry(self, refresh: _Refresh, now: float) -> dict[str, Any]:
        status, _, end = self._status(refresh, now)
        attempt: dict[str, Any] = {"attemptId": 1, "startTime": self._wall(refresh.start), "type": "Data"}
        entry: dict[str, Any] = {
            "requestId": refresh.id,
            "refreshType": refresh.kind or ("ViaEnhancedApi" if refresh.enhanced else "ViaApi"),
            "startTime": self._wall(refresh.start),
            "status": status,
        }
        if end is not None:
            entry["endTime"] = attempt["endTime"] = self._wall(end)
        if status == "Failed" and refresh.outcome is not None:
            entry["serviceExceptionJson"] = attempt["serviceExceptionJson"] = json.dumps(
                refresh.outcome.service_exception
            )
        entry["refreshAttempts"] = [attempt]
        return entry

    def _history(self, dataset: _Dataset, query: Mapping[str, str]) -> _Answer:
        top = _int_param(query, "$top", minimum=1) or 60
        now = self.clock()
        visible = [r for r in reversed(dataset.refreshes) if now >= r.start + self.history_lag]
        return _Answer(
            200,
            {
                "@odata.context": f"{self.base_url}/groups/{dataset.workspace_id}/$metadata#refreshes",
                "value": [self._history_entry(r, now) for r in visible[:top]],
            },
        )

    def _details(self, refresh: _Refresh) -> _Answer:
        if not refresh.enhanced:
            raise _error(404, "ItemNotFound", "Execution details exist only for enhanced refreshes")
        now = self.clock()
        status, extended, end = self._status(refresh, now)
        # DatasetRefreshDetail.status has no "Cancelled" in the swagger; the detail is in extendedStatus.
        detail_status = "Unknown" if status == "Cancelled" else status
        kind = refresh.body.get("type", "Automatic")
        object_status = extended if end is not None else "InProgress"
        tables = [o.get("table") for o in refresh.body.get("objects", []) if isinstance(o, dict)] or ["Sales"]
        payload: dict[str, Any] = {
            "startTime": self._wall(refresh.start),
            "type": kind,
            "commitMode": refresh.body.get("commitMode", "Transactional"),
            "status": detail_status,
            "extendedStatus": extended,
            "currentRefreshType": kind,
            "numberOfAttempts": 0 if end is None else 1,
            "objects": [{"table": t, "partition": t, "status": object_status} for t in tables],
        }
        if end is not None:
            payload["endTime"] = self._wall(end)
        if status == "Failed" and refresh.outcome is not None:
            payload["messages"] = refresh.outcome.messages or []
        return _Answer(202 if end is None else 200, payload)

    def _cancel(self, refresh: _Refresh) -> _Answer:
        if not refresh.enhanced:
            raise _error(400, "InvalidRequest", "Only enhanced refresh operations can be cancelled")
        now = self.clock()
        if refresh.cancelled_at is not None or now >= refresh.start + refresh.duration:
            raise _error(400, "InvalidRequest", "The refresh operation is not in progress")
        refresh.cancelled_at = now
        return _Answer(200)

    # -- admin -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The tunable settings, as ``PATCH /_sim/config`` takes them."""
        names = ("refresh_duration", "history_lag", "token_lifetime", "busy_status", "daily_limit")
        return {**{name: getattr(self, name) for name in names},
                "refresh_headers": sorted(self.refresh_headers) if self.refresh_headers is not None else None}

    def _admin(self, method: str, path: str, body: Any) -> _Answer:
        data = body if isinstance(body, dict) else {}
        try:
            if (method, path) == ("GET", "/state"):
                with self._lock:
                    now = self.clock()
                    return _Answer(
                        200,
                        {
                            "clock": now,
                            "config": self.config(),
                            "workspaces": [self._group_json(w) for w in self._workspaces.values()],
                            "datasets": [
                                {**self._dataset_json(d), "workspaceId": d.workspace_id}
                                for d in self._datasets.values()
                            ],
                            "refreshes": {
                                d.id: [self._history_entry(r, now) for r in reversed(d.refreshes)]
                                for d in self._datasets.values()
                            },
                        },
                    )
            if (method, path) == ("POST", "/workspaces"):
                return _Answer(
                    201,
                    {"id": self.add_workspace(str(data["name"]), bool(data.get("dedicated", False)), data.get("id"))},
                )
            if (method, path) == ("POST", "/datasets"):
                return _Answer(
                    201,
                    {
                        "id": self.add_dataset(
                            str(data["workspace_id"]),
                            str(data["name"]),
                            bool(data.get("refreshable", True)),
                            data.get("id"),
                        )
                    },
                )
            if (method, path) == ("GET", "/requests"):
                with self._lock:
                    return _Answer(200, {"value": [asdict(r) for r in self.requests]})
            if (method, path) == ("DELETE", "/requests"):
                self.clear_requests()
                return _Answer(204)
            if (method, path) == ("POST", "/faults"):
                self._admin_fault(data)
                return _Answer(204)
            if (method, path) == ("POST", "/advance"):
                return _Answer(200, {"clock": self.advance(float(data["seconds"]))})
            if (method, path) == ("PATCH", "/config"):
                self._admin_config(data)
                return _Answer(200, self.config())
            if (method, path) == ("POST", "/tokens"):
                return _Answer(200, {"access_token": self.issue_token()})
        except (KeyError, TypeError, ValueError) as exc:
            return _Answer(400, {"error": {"code": "BadSimulatorRequest", "message": repr(exc)}})
        return _Answer(404, {"error": {"code": "NotFound", "message": f"no admin operation {method} {path}"}})

    def _admin_fault(self, data: Mapping[str, Any]) -> None:
        kind = data.get("kind")
        scope = {"method": data.get("method"), "path_contains": data.get("path_contains")}
        times = int(data.get("times", 1))
        if kind == "fail":
            self.fail_next(
                int(data["status"]),
                times=times,
                retry_after=data.get("retry_after"),
                body=data.get("body"),
                **scope,
            )
        elif kind == "busy":
            self.busy_next(times=times, status=data.get("status"))
        elif kind == "drop":
            self.drop_next_connection(times=times, **scope)
        elif kind == "slow":
            self.slow_next(float(data["seconds"]), times=times, **scope)
        elif kind == "fail_refresh":
            self.fail_refresh(
                str(data["dataset_id"]),
                data.get("service_exception"),
                data.get("messages"),
                extended_status=data.get("extended_status", "Failed"),
            )
        elif kind == "expire_tokens":
            self.expire_tokens()
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def _admin_config(self, data: Mapping[str, Any]) -> None:
        with self._lock:
            for name in ("refresh_duration", "history_lag", "token_lifetime"):
                if name in data:
                    setattr(self, name, float(data[name]))
            for name in ("busy_status", "daily_limit"):
                if name in data:
                    setattr(self, name, int(data[name]))
            if "refresh_headers" in data:
                names = data["refresh_headers"]
                self.refresh_headers = None if names is None else {str(n) for n in names}


def _int_param(query: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    if name not in query:
        return None
    try:
        value = int(query[name])
    except ValueError:
        raise _error(400, "InvalidRequest", f"{name} must be an integer") from None
    if value < minimum:
        raise _error(400, "InvalidRequest", f"{name} must be at least {minimum}")
    return value


def _json_or_text(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _drop(handler: _Handler) -> None:
    """Close the socket without writing anything."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
