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

Host endpoints kept for local use: ``GET /`` (what runs), ``GET /admin/host/status``,
``POST /admin/functions/<name>`` with ``{"input": "..."}`` to run a non-HTTP function now (a timer,
a queue message body, ``"<container>/<blob>"`` for a blob trigger, an event for Event Grid), and
the webhooks ``POST /runtime/webhooks/EventGrid?functionName=<name>`` and
``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>`` that take Event Grid events
(e.g. a ``BlobRenamed`` event as Spark on ADLS Gen2 produces it).
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

from .host import FunctionSpec, Invoker, current_function

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

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except ConnectionError:
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
                 blob_targets: list[Any] | None = None, watchers: Mapping[Any, Any] | None = None) -> None:
        self.routes = sorted(routes, key=lambda r: (r.catch_all, -r.literals, -len(r.template)))
        self.invoker = invoker
        self.specs = {s.name: s for s in specs}
        self.prefix = route_prefix.strip("/")
        self.host = host
        self.port = port
        self.event_targets = {t.spec.name.lower(): t for t in (event_targets or [])}
        self.blob_targets = {t.spec.name.lower(): t for t in (blob_targets or [])}
        self.watchers = dict(watchers or {})
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
            body = _read_body(handler)
        except ValueError as exc:
            self._write(handler, 400, {"error": str(exc)})
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
        kind, arg = trigger.get("type"), trigger.get("name")
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
            from ..testing.events import to_function_event

            event = text if isinstance(text, dict) else json.loads(text or "{}")
            args = {arg: to_function_event(event)}
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
        from ..events import blob_path_from_url
        from ..testing.events import to_function_event

        name = query.get("functionName", "").removeprefix("Host.Functions.").lower()
        try:
            payload = json.loads(body or b"[]")
        except ValueError:
            self._write(handler, 400, {"error": "the body must be Event Grid events (JSON)"})
            return
        events = payload if isinstance(payload, list) else [payload]
        if (handler.headers.get("aeg-event-type") or "").lower() == "subscriptionvalidation":
            code = (events[0].get("data") or {}).get("validationCode") if events else None
            self._write(handler, 200, {"validationResponse": code})
            return
        if kind == "eventgrid":
            target = self.event_targets.get(name)
            if target is None:
                self._write(handler, 404, {"error": f"no Event Grid function {name!r}"})
                return
            ok = True
            for event in events:
                kind_name = str(event.get("eventType", "")).rsplit(".", 1)[-1]
                outcome = self.invoker.call(target.spec, {target.arg: to_function_event(event)},
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
            url = (event.get("data") or {}).get("url")
            path = blob_path_from_url(url) if isinstance(url, str) else None
            if not path:
                continue
            container, _, blob = path.partition("/")
            watcher = self.watchers.get((target.connection, container.lower()))
            if watcher is not None and target.matches(blob):
                watcher.deliver_named(target, blob)
        self._write(handler, 202, None)

    # writing ------------------------------------------------------------------------------------
    def _write(self, handler: _Handler, status: int, body: Any) -> None:
        payload = b"" if body is None else json.dumps(body, indent=2).encode("utf-8")
        headers = {"content-type": "application/json; charset=utf-8"} if payload else {}
        self._send(handler, status, headers, payload)

    @staticmethod
    def _send(handler: _Handler, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        try:
            handler.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD" and payload:
                handler.wfile.write(payload)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True


def _read_body(handler: _Handler) -> bytes:
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        chunks = []
        total = 0
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                break
            total += size
            if total > MAX_BODY:
                raise ValueError("request body too large")
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    if length > MAX_BODY:
        raise ValueError("request body too large")
    return handler.rfile.read(length) if length else b""
