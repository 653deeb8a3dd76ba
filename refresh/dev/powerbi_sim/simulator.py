"""``PowerBISimulator``: a loopback stand-in for the Power BI REST API and a managed-identity endpoint.

This module is the HTTP side (server, identity endpoint, admin endpoints); the service's state and
behaviours are :class:`refresh.dev.powerbi_sim.service.SimulatedService`, its records
:mod:`refresh.dev.powerbi_sim.records`. For tests and the local runtime only: it listens on
127.0.0.1 (port 0 = any free port) and keeps everything in memory. It answers like the service, in
the shapes of the official swagger (``tests/data/powerbi-swagger.json``), including its rough edges
(see shared/notes/powerbi-api.md):

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
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from refresh.dev.powerbi_sim.records import (
    ADMIN_PREFIX,
    API_PREFIX,
    IDENTITY_PATH,
    Answer,
    RecordedRequest,
    api_error,
)
from refresh.dev.powerbi_sim.service import SimulatedService

__all__ = ["PowerBISimulator", "RecordedRequest", "SimulatedService"]

_LOGGER = logging.getLogger(__name__)



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


class PowerBISimulator(SimulatedService):
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
        super().__init__(clock=clock, refresh_duration=refresh_duration, history_lag=history_lag,
                         token_lifetime=token_lifetime, busy_status=busy_status, daily_limit=daily_limit,
                         identity_header=identity_header)
        self.host = host
        self.port = port
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
                raise Answer(fault.status, fault.body)
            if path == IDENTITY_PATH:
                answer = self._identity(method, record, handler)
            elif is_api:
                self._authorize(handler)
                answer = self._api(method, path[len(API_PREFIX) :], record)
            else:
                answer = api_error(404, "NotFound", f"no such path {path}")
        except Answer as raised:
            answer = raised
        except Exception:
            _LOGGER.exception("Simulator failed on %s %s", method, path)
            answer = api_error(500, "SimulatorError", "the simulator failed; see its log")
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

    def _identity(self, method: str, record: RecordedRequest, handler: _Handler) -> Answer:
        if method != "GET":
            return Answer(405, {"statusCode": 405, "message": "Method not allowed"})
        if handler.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return Answer(401, {"statusCode": 401, "message": "The X-IDENTITY-HEADER header is missing or wrong"})
        resource = record.query.get("resource")
        if not resource or record.query.get("api-version") != "2019-08-01":
            return Answer(400, {"statusCode": 400, "message": "resource and api-version=2019-08-01 are required"})
        token = self.issue_token()
        return Answer(
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
            raise Answer(
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
            raise api_error(403, "TokenExpired", "Access token has expired, resubmit with a new access token")

    # -- admin -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The tunable settings, as ``PATCH /_sim/config`` takes them."""
        names = ("refresh_duration", "history_lag", "token_lifetime", "busy_status", "daily_limit")
        return {**{name: getattr(self, name) for name in names},
                "refresh_headers": sorted(self.refresh_headers) if self.refresh_headers is not None else None}

    def _admin(self, method: str, path: str, body: Any) -> Answer:
        data = body if isinstance(body, dict) else {}
        try:
            if (method, path) == ("GET", "/state"):
                with self._lock:
                    now = self.clock()
                    return Answer(
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
                return Answer(
                    201,
                    {"id": self.add_workspace(str(data["name"]), bool(data.get("dedicated", False)), data.get("id"))},
                )
            if (method, path) == ("POST", "/datasets"):
                return Answer(
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
                    return Answer(200, {"value": [asdict(r) for r in self.requests]})
            if (method, path) == ("DELETE", "/requests"):
                self.clear_requests()
                return Answer(204)
            if (method, path) == ("POST", "/faults"):
                self._admin_fault(data)
                return Answer(204)
            if (method, path) == ("POST", "/advance"):
                return Answer(200, {"clock": self.advance(float(data["seconds"]))})
            if (method, path) == ("PATCH", "/config"):
                self._admin_config(data)
                return Answer(200, self.config())
            if (method, path) == ("POST", "/tokens"):
                return Answer(200, {"access_token": self.issue_token()})
        except (KeyError, TypeError, ValueError) as exc:
            return Answer(400, {"error": {"code": "BadSimulatorRequest", "message": repr(exc)}})
        return Answer(404, {"error": {"code": "NotFound", "message": f"no admin operation {method} {path}"}})

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
