"""HTTP triggers on ``http://127.0.0.1:<port>/<routePrefix>/<route>``, as the host serves them.

Routes come from each ``httpTrigger`` binding: ``route`` (default: the function name), ``methods``
(default: any) and the ``routePrefix`` of host.json (default ``api``). Route templates follow
ASP.NET Core's syntax as far as Functions routes use it: ``{name}``, optional ``{name?}``,
constraints ``{name:int}`` / ``guid`` / ``alpha`` / ``bool`` (others are accepted and not
enforced) and the catch-all ``{*rest}``; matching is case-insensitive and routes with more
literal segments win. Parameters reach the function in ``req.route_params``.

The function gets an ``azure.functions.HttpRequest`` (method, full URL, headers, query ``params``
with repeated keys joined by commas, ``route_params``, body bytes). Its return value is turned
into the response by the library's own ``HttpResponseConverter`` (status, headers, content type
from ``mimetype``/``charset``, body), a plain ``str`` becomes a 200 text response, ``None`` a 204.
A function that raises gives an empty 500, as the host does. An unknown path or method: 404.

Keys: ``authLevel`` ``function``/``admin`` is *not* enforced, as in ``func start`` (keys are not
required when running locally); deployed in Azure the ``code`` query parameter or
``x-functions-key`` header is needed.

For this machine only: the server listens on loopback and also refuses (421) any request whose
``Host`` header is not a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``), so a web page
cannot reach it through DNS rebinding. A POST must send ``Content-Type: application/json`` (else
415), so a page cannot run functions or the admin endpoints with a cross-site form or ``text/plain``
post. A ``Content-Length`` that is not a non-negative number, or a malformed chunked body, gets 400
and the connection is closed; a connection idle for :data:`IDLE_TIMEOUT` seconds is closed.

Host endpoints kept for local use: ``GET /`` (what runs), ``GET /admin/host/status``,
``POST /admin/functions/<name>`` with ``{"input": "..."}`` to run a non-HTTP function now (a timer,
a queue message body, ``"<container>/<blob>"`` for a blob trigger, an event for Event Grid), and
the webhooks ``POST /runtime/webhooks/EventGrid?functionName=<name>`` and
``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>`` that take Event Grid events
(e.g. a ``BlobRenamed`` event as Spark on ADLS Gen2 produces it). A post that is not JSON, or an event
that does not follow the Event Grid schema (:func:`refresh.detection.lake_events.event_problem`: no ``subject``, no
``eventType``, a number instead of an object ...) is answered 400 naming the problem, and logged.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from refresh.dev.local.invoke import FunctionSpec, Invoker, current_function

log = logging.getLogger(__name__)

_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+)(?:\([^)]*\))?)?(\?)?\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
}
MAX_BODY = 100 * 1024 * 1024
IDLE_TIMEOUT = 30.0
"""Seconds a connection may stay idle (or stall mid-request) before the server closes it."""
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d{1,5}))?$")
JSON_TYPE = "application/json"


class BadRequest(ValueError):
    """A request the server answers itself with ``status`` (and then closes the connection)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Route:
    """One HTTP function's route, compiled."""

    spec: FunctionSpec
    arg: str
    template: str
    regex: re.Pattern[str]
    methods: list[str] | None
    auth_level: str
    literals: int
    catch_all: bool

    @classmethod
    def from_binding(cls, spec: FunctionSpec, trigger: Mapping[str, Any]) -> Route:
        template = str(trigger.get("route") or spec.name).strip("/")
        regex, literals, catch_all = compile_route(template)
        methods = [str(m).upper() for m in trigger.get("methods") or []] or None
        return cls(spec, str(trigger["name"]), template, regex, methods, str(trigger.get("authLevel", "FUNCTION")),
                   literals, catch_all)

    @property
    def display(self) -> str:
        return self.template

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.match(path)
        if not found:
            return None
        return {k: unquote(v) for k, v in found.groupdict().items() if v is not None}


def compile_route(template: str) -> tuple[re.Pattern[str], int, bool]:
    """``(regex, literal segment count, has catch-all)`` of a route template (see module doc)."""
    parts: list[str] = []
    literals = 0
    catch_all = False
    segments = [s for s in template.strip("/").split("/") if s] if template.strip("/") else []
    for index, segment in enumerate(segments):
        whole = _PARAM.fullmatch(segment)
        if whole and whole.group(1):  # {*rest}
            if index != len(segments) - 1:
                raise ValueError(f"route {template!r}: a catch-all parameter must be the last segment")
            catch_all = True
            sep = "/" if parts else ""
            parts.append(f"(?:{sep}(?P<{whole.group(2)}>.*))?")
            continue
        if whole and whole.group(4):  # a whole optional segment {name?}
            sep = "/" if parts else ""
            pattern = _CONSTRAINTS.get((whole.group(3) or "").lower(), r"[^/]+")
            parts.append(f"(?:{sep}(?P<{whole.group(2)}>{pattern}))?")
            continue
        regex, position, has_param = "", 0, False
        for param in _PARAM.finditer(segment):
            regex += re.escape(segment[position:param.start()])
            pattern = _CONSTRAINTS.get((param.group(3) or "").lower(), r"[^/]+?" if param.end() < len(segment)
                                       else r"[^/]+")
            regex += f"(?P<{param.group(2)}>{pattern})"
            position, has_param = param.end(), True
        regex += re.escape(segment[position:])
        literals += 0 if has_param else 1
        parts.append(("/" if parts else "") + regex)
    try:
        return re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE), literals, catch_all
    except re.error as exc:
        raise ValueError(f"route {template!r} cannot be compiled: {exc}") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: HttpServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("HTTP connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Per server, not per class (StreamRequestHandler.setup applies only the class-level ``timeout``).
        self.connection.settimeout(self.server.owner.idle_timeout)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):  # TimeoutError: stalled mid-request
            self.close_connection = True

    def do_GET(self) -> None:
        self.server.owner.handle(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: %s", format % args)


class HttpServer:
    """The HTTP side of the local host: function routes plus a few host endpoints."""

    def __init__(self, routes: list[Route], invoker: Invoker, specs: list[FunctionSpec], route_prefix: str = "api",
                 *, host: str = "127.0.0.1", port: int = 7071, event_targets: list[Any] | None = None,
                 blob_targets: list[Any] | None = None, watchers: Mapping[Any, Any] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.routes = sorted(routes, key=lambda r: (r.catch_all, -r.literals, -len(r.template)))
        self.invoker = invoker
        self.specs = {s.name: s for s in specs}
        self.prefix = route_prefix.strip("/")
        self.host = host
        self.port = port
        self.event_targets = {t.spec.name.lower(): t for t in (event_targets or [])}
        self.blob_targets = {t.spec.name.lower(): t for t in (blob_targets or [])}
        self.watchers = dict(watchers or {})
        self.idle_timeout = idle_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/{self.prefix}" if self.prefix else self.root_url

    # requests -----------------------------------------------------------------------------------
    def handle(self, handler: _Handler) -> None:
        method = handler.command.upper()
        parts = urlsplit(handler.path)
        path = parts.path
        try:
            _check_host(handler.headers.get_all("Host") or [])
            if method == "POST":
                _check_json(handler.headers.get("Content-Type") or "")
            body = _read_body(handler)
        except BadRequest as exc:
            log.warning("%s %s -> %s: %s", method, path[:200], exc.status, exc)
            handler.close_connection = True  # the body (if any) was not read: the connection cannot go on
            self._write(handler, exc.status, {"error": str(exc)}, close=True)
            return
        lowered = path.lower().rstrip("/")
        if lowered == "" and method in ("GET", "HEAD"):
            self._write(handler, 200, self._index())
            return
        if lowered == "/admin/host/status":
            self._write(handler, 200, {"state": "Running", "version": "local", "processUptime": time.process_time()})
            return
        if lowered.startswith("/admin/functions/") and method == "POST":
            self._manual_run(handler, unquote(path.rstrip("/").rsplit("/", 1)[1]), body)
            return
        if lowered in ("/runtime/webhooks/eventgrid", "/runtime/webhooks/blobs") and method == "POST":
            self._webhook(handler, lowered.rsplit("/", 1)[1], dict(parse_qsl(parts.query)), body)
            return
        prefix = f"/{self.prefix}" if self.prefix else ""
        if not (path == prefix or path.startswith(prefix + "/")):
            self._write(handler, 404, None)
            return
        relative = path[len(prefix):].strip("/")
        for route in self.routes:
            params = route.match(relative)
            if params is None:
                continue
            if route.methods is not None and method not in route.methods and not (
                    method == "HEAD" and "GET" in route.methods):
                continue
            self._invoke(handler, route, method, params, parts.query, body)
            return
        log.info("%s %s -> 404 (no function route matches)", method, path)
        self._write(handler, 404, None)

    def _invoke(self, handler: _Handler, route: Route, method: str, params: dict[str, str], query: str,
                body: bytes) -> None:
        import azure.functions as func
        from azure.functions.http import HttpResponseConverter

        host_header = handler.headers.get("Host") or f"{self.host}:{self.port}"
        url = f"http://{host_header}{handler.path}"
        query_params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            query_params[key] = f"{query_params[key]},{value}" if key in query_params else value
        request = func.HttpRequest(method=method, url=url, headers=dict(handler.headers.items()),
                                   params=query_params, route_params=params, body=body)
        summary = f"{method} {urlsplit(handler.path).path}"
        started = time.perf_counter()
        outcome = self.invoker.call(route.spec, {route.arg: request}, summary, log_start=False,
                                    detail={"method": method, "path": handler.path})
        status, headers, payload = 500, {}, b""
        if outcome.ok:
            value = outcome.value
            if value is None:
                status = 204
            else:
                try:
                    datum = HttpResponseConverter.encode(value, expected_type=None)
                except Exception:  # not an HttpResponse or str
                    log.error("%s returned %s, not an HttpResponse", route.spec.name, type(value).__name__)
                    datum = None
                if datum is not None and datum.type == "http":
                    status = int(datum.value["status_code"].value)
                    headers = {n: d.value for n, d in datum.value["headers"].items()}
                    payload = datum.value["body"].value or b""
                    if isinstance(payload, str):
                        payload = payload.encode("utf-8")
                elif datum is not None:
                    status, headers = 200, {"content-type": "text/plain; charset=utf-8"}
                    payload = str(datum.value).encode("utf-8")
        token = current_function.set(route.spec.name)
        try:
            log.info("%s -> %s (%.0f ms)", summary, status, (time.perf_counter() - started) * 1000)
        finally:
            current_function.reset(token)
        self._send(handler, status, headers, payload)

    # host endpoints -----------------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        return {"runtime": "refresh local runtime", "functions": sorted(self.specs),
                "routes": [{"function": r.spec.name, "methods": r.methods or ["ANY"],
                            "url": f"{self.base_url}/{r.template}"} for r in self.routes]}

    def _manual_run(self, handler: _Handler, name: str, body: bytes) -> None:
        import azure.functions.queue as fq
        import azure.functions.timer as ft

        spec = next((s for n, s in self.specs.items() if n.lower() == name.lower()), None)
        if spec is None or spec.error:
            self._write(handler, 404, {"error": f"no runnable function {name!r}"})
            return
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            self._write(handler, 400, {"error": 'the body must be JSON: {"input": "..."}'})
            return
        text = data.get("input", "") if isinstance(data, dict) else ""
        trigger = spec.trigger
        kind, arg = trigger.get("type"), str(trigger.get("name"))
        args: dict[str, Any]
        if kind == "timerTrigger":
            args = {arg: ft.TimerRequest(past_due=False, schedule_status=None, schedule={"AdjustForDST": False})}
        elif kind == "queueTrigger":
            text = text if isinstance(text, str) else json.dumps(text)
            args = {arg: fq.QueueMessage(id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1)}
        elif kind == "blobTrigger":
            target = self.blob_targets.get(spec.name.lower())
            container, _, blob = str(text).partition("/")
            watcher = self.watchers.get((target.connection, container.lower())) if target else None
            if watcher is None or not blob or not watcher.deliver_named(target, blob):
                self._write(handler, 404, {"error": f"no blob {text!r} in a container {name} watches"})
                return
            self._write(handler, 202, None)
            return
        elif kind == "eventGridTrigger":
            from refresh.detection.lake_events import event_problem
            from refresh.dev.testing.events import to_function_event

            try:
                event = text if isinstance(text, dict) else json.loads(text or "{}")
            except (ValueError, TypeError, RecursionError):
                event = text
            problem = event_problem(event)
            if problem:
                self._refuse_events(handler, "admin", f"input: {problem}")
                return
            args = {arg: to_function_event({"topic": "", **event})}
        else:
            self._write(handler, 400, {"error": f"{name} is an HTTP function: call its route"})
            return
        try:
            self.invoker.submit(spec, args, "manual run (POST /admin/functions)")
        except RuntimeError:
            self._write(handler, 503, None)
            return
        self._write(handler, 202, None)

    def _webhook(self, handler: _Handler, kind: str, query: Mapping[str, str], body: bytes) -> None:
        from refresh.detection.lake_events import blob_path_from_url, event_problem
        from refresh.dev.testing.events import to_function_event

        name = query.get("functionName", "").removeprefix("Host.Functions.").lower()
        try:
            payload = json.loads(body or b"[]")
        except (ValueError, RecursionError):
            self._refuse_events(handler, kind, "the body is not JSON (Event Grid posts a JSON array of events)")
            return
        events = payload if isinstance(payload, list) else [payload]
        if (handler.headers.get("aeg-event-type") or "").lower() == "subscriptionvalidation":
            first = events[0] if events and isinstance(events[0], dict) else {}
            data = first.get("data")
            code = data.get("validationCode") if isinstance(data, dict) else None
            if not isinstance(code, str):
                self._refuse_events(handler, kind, "a SubscriptionValidation post needs data.validationCode")
                return
            self._write(handler, 200, {"validationResponse": code})
            return
        if not events:
            self._refuse_events(handler, kind, "the body is an empty array: no events")
            return
        for index, event in enumerate(events):
            problem = event_problem(event)
            if problem:
                self._refuse_events(handler, kind, f"event {index}: {problem}")
                return
        if kind == "eventgrid":
            target = self.event_targets.get(name)
            if target is None:
                self._write(handler, 404, {"error": f"no Event Grid function {name!r}"})
                return
            ok = True
            for event in events:
                kind_name = str(event.get("eventType", "")).rsplit(".", 1)[-1]
                outcome = self.invoker.call(target.spec, {target.arg: to_function_event({"topic": "", **event})},
                                            f"{kind_name} {event.get('subject')} (webhook)",
                                            detail={"event_id": event.get("id")})
                ok = ok and outcome.ok
            self._write(handler, 200 if ok else 500, None)
            return
        target = self.blob_targets.get(name)
        if target is None:
            self._write(handler, 404, {"error": f"no blob trigger function {name!r}"})
            return
        for event in events:
            url = event["data"].get("url")
            path = blob_path_from_url(url) if isinstance(url, str) else None
            if not path:
                continue
            container, _, blob = path.partition("/")
            watcher = self.watchers.get((target.connection, container.lower()))
            if watcher is not None and target.matches(blob):
                watcher.deliver_named(target, blob)
        self._write(handler, 202, None)

    def _refuse_events(self, handler: _Handler, kind: str, reason: str) -> None:
        """400 for a post to a webhook that is not Event Grid events; the reason is logged too."""
        log.warning("webhook %s: refused a post (400): %s", kind, reason)
        self._write(handler, 400, {"error": reason})

    # writing ------------------------------------------------------------------------------------
    def _write(self, handler: _Handler, status: int, body: Any, close: bool = False) -> None:
        payload = b"" if body is None else json.dumps(body, indent=2).encode("utf-8")
        headers = {"content-type": "application/json; charset=utf-8"} if payload else {}
        if close:
            headers["connection"] = "close"
        self._send(handler, status, headers, payload)

    @staticmethod
    def _send(handler: _Handler, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        try:
            handler.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    handler.send_header(name, value)
            if handler.close_connection:
                handler.send_header("Connection", "close")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD" and payload:
                handler.wfile.write(payload)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True


def _check_host(values: list[str]) -> None:
    """421 unless the request names this machine by a loopback name (no DNS rebinding)."""
    if len(values) != 1:
        raise BadRequest(400, "exactly one Host header is required")
    found = _HOST_RE.match(values[0].strip())
    host = (found.group("v6") or found.group("name") or "").lower() if found else ""
    if host not in LOOPBACK_NAMES:
        raise BadRequest(421, f"this local runtime answers only requests for 127.0.0.1, localhost or [::1], "
                              f"not Host {values[0][:100]!r}")


def _check_json(content_type: str) -> None:
    """415 unless a POST says its body is JSON (no cross-site form or text/plain posts)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != JSON_TYPE:
        got = f"Content-Type {content_type[:100]!r}" if content_type.strip() else "no Content-Type"
        raise BadRequest(415, f"POST bodies must be sent as Content-Type: {JSON_TYPE} (got {got})")


def _read_body(handler: _Handler) -> bytes:
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        chunks = []
        total = 0
        while True:
            line = handler.rfile.readline(1024).split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", line):
                raise BadRequest(400, "malformed chunked body: bad chunk size")
            size = int(line, 16)
            if size == 0:
                handler.rfile.readline(1024)
                break
            total += size
            if total > MAX_BODY:
                raise BadRequest(413, "request body too large")
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline(1024)
        return b"".join(chunks)
    values = handler.headers.get_all("Content-Length") or []
    if not values:
        return b""
    texts = {v.strip() for v in values}
    if len(texts) != 1 or not all(t.isascii() and t.isdigit() for t in texts):
        raise BadRequest(400, f"Content-Length must be one non-negative whole number, got {', '.join(values)[:60]!r}")
    length = int(texts.pop())
    if length > MAX_BODY:
        raise BadRequest(413, "request body too large")
    return handler.rfile.read(length) if length else b""
