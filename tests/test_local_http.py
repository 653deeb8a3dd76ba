"""The local runtime's HTTP server is for this machine only, and answers every malformed request
(issue 9 items 10 and 16): raw sockets, so that the exact bytes a browser or an attacker sends reach it."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import defaultdict
from typing import Any

import azure.functions as func
import pytest

from refresh.dev.local.blobs import EventTarget
from refresh.dev.local.host import Invoker, functions_from_app
from refresh.dev.local.http import HttpServer, Route
from refresh.dev.testing import events as ev


class Calls:
    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, name: str, value: Any) -> None:
        with self.lock:
            self.seen[name].append(value)


def build_app(calls: Calls) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("change")
    @app.route(route="change", methods=["POST"])
    def change(req: func.HttpRequest) -> func.HttpResponse:
        calls.add("change", req.get_body())
        return func.HttpResponse("{}", status_code=200, mimetype="application/json")

    @app.function_name("look")
    @app.route(route="look", methods=["GET"])
    def look(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse('{"ok": true}', status_code=200, mimetype="application/json")

    @app.function_name("tick")
    @app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=False, use_monitor=False)
    def tick(timer: func.TimerRequest) -> None:
        calls.add("tick", timer)

    @app.function_name("on_event")
    @app.event_grid_trigger(arg_name="event")
    def on_event(event: func.EventGridEvent) -> None:
        calls.add("on_event", event)

    return app


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def server(calls):
    specs = {s.name: s for s in functions_from_app(build_app(calls))}
    invoker = Invoker(max_workers=4)
    routes = [Route.from_binding(specs[n], specs[n].trigger) for n in ("change", "look")]
    srv = HttpServer(routes, invoker, list(specs.values()), "api", port=0, idle_timeout=0.5,
                     event_targets=[EventTarget(specs["on_event"], "event")])
    srv.start()
    yield srv
    srv.stop()
    invoker.shutdown(5)


def raw(server: HttpServer, request: bytes, timeout: float = 5.0) -> tuple[int | None, dict[str, str], bytes]:
    """Send ``request`` as is; ``(status or None if no answer, headers, body)`` once the server answers
    (or closes the connection, or ``timeout`` passes with no answer)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return None, {}, b""
        if not data:
            return None, {}, b""
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def request(method: str, path: str, *, host: str | None = "127.0.0.1", body: bytes = b"",
            headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    given = {k.lower() for k in (headers or {})}
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


JSON = {"Content-Type": "application/json"}


# -------------------------------------------------------------------------------------- Host header


def test_requests_for_another_host_name_are_refused(server, calls):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    for host in ("evil.example", "evil.example:7071", "127.0.0.1.evil.example", "10.0.0.5", "[::2]:80"):
        status, _, body = raw(server, request("GET", "/api/look", host=host))
        assert status == 421, host
        assert "127.0.0.1, localhost or [::1]" in json.loads(body)["error"]
        status, _, _ = raw(server, request("POST", "/api/change", host=host, body=b"{}", headers=JSON))
        assert status == 421, host
    assert raw(server, request("GET", "/api/look", host=None))[0] == 400  # HTTP/1.1 needs a Host
    assert not calls.seen["change"]
    for host in (f"127.0.0.1:{server.port}", "localhost", f"LOCALHOST:{server.port}", f"[::1]:{server.port}"):
        assert raw(server, request("GET", "/api/look", host=host))[0] == 200, host


# -------------------------------------------------------------------------------------- POST bodies


def test_posts_that_a_browser_may_send_cross_site_are_refused(server, calls):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                         None):
        headers = {"Content-Type": content_type} if content_type else {}
        for path in ("/api/change", "/admin/functions/tick", "/runtime/webhooks/EventGrid?functionName=on_event"):
            status, _, body = raw(server, request("POST", path, body=b'{"input": ""}', headers=headers))
            assert status == 415, (content_type, path)
            assert "Content-Type: application/json" in json.loads(body)["error"]
    assert not calls.seen  # nothing ran
    assert raw(server, request("POST", "/api/change", body=b"{}", headers=JSON))[0] == 200
    assert raw(server, request("POST", "/admin/functions/tick", body=b"{}",
                               headers={"Content-Type": "application/json; charset=utf-8"}))[0] == 202


# -------------------------------------------------------------------------------------- Content-Length


def test_a_bad_content_length_gets_400_and_never_holds_the_connection(server, calls):
    for value in ("-1", "-100", "abc", "1e3", "+5", " 12 0"):
        status, headers, body = raw(server, request("POST", "/api/change", body=b"{}",
                                                    headers={**JSON, "Content-Length": value}))
        assert status == 400, value
        assert "Content-Length" in json.loads(body)["error"] and headers.get("connection") == "close"
    two = request("POST", "/api/change", headers={**JSON, "Content-Length": "2"}).replace(
        b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n") + b"{}"
    assert raw(server, two)[0] == 400
    chunked = request("POST", "/api/change", headers={**JSON, "Transfer-Encoding": "chunked"})
    chunked += b"zz\r\n{}\r\n0\r\n\r\n"
    assert raw(server, chunked)[0] == 400
    assert not calls.seen["change"]


def test_idle_connections_are_closed(server):
    """An idle socket must not hold a server thread forever (idle_timeout is 0.5 s here)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert sock.recv(1) == b""  # closed by the server, long before our 10 s
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # stalls mid-request
        sock.sendall(b"GET /api/look HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert sock.recv(1) == b""


# -------------------------------------------------------------------------------------- Event Grid webhook


WEBHOOK = "/runtime/webhooks/EventGrid?functionName=on_event"


def test_malformed_event_grid_posts_get_400_and_a_logged_reason(server, calls, caplog):
    caplog.set_level(logging.WARNING)
    good = ev.blob_created("https://lake.blob.core.windows.net", "gold", "t/_delta_log/00000000000000000001.json")
    no_subject = {k: v for k, v in good.items() if k != "subject"}
    no_type = {k: v for k, v in good.items() if k != "eventType"}
    cases = [
        (b"not json", "not JSON"),
        (b"[1, 2, 3]", "event 0: an event must be a JSON object, got a number"),
        (json.dumps([no_subject]).encode(), "event 0: subject is missing"),
        (json.dumps([good, no_type]).encode(), "event 1: eventType is missing"),
        (json.dumps([{**good, "data": [1]}]).encode(), "event 0: data must be an object"),
        (json.dumps([{**good, "eventTime": "yesterday"}]).encode(), "event 0: eventTime"),
        (json.dumps([{**good, "subject": "\ud800"}]).encode(), "event 0: subject is not valid Unicode"),
        (b"[]", "no events"),
    ]
    for body, reason in cases:
        status, _, answer = raw(server, request("POST", WEBHOOK, body=body,
                                                headers={**JSON, "aeg-event-type": "Notification"}))
        assert status == 400, body[:60]
        assert reason in json.loads(answer)["error"], (reason, answer)
        assert any(reason in r.getMessage() for r in caplog.records), reason
    assert not calls.seen["on_event"]  # a batch with one bad event is refused whole
    status, _, _ = raw(server, request("POST", WEBHOOK, body=json.dumps([good]).encode(),
                                       headers={**JSON, "aeg-event-type": "Notification"}))
    assert status == 200 and len(calls.seen["on_event"]) == 1
    status, _, _ = raw(server, request("POST", "/admin/functions/on_event", body=json.dumps(
        {"input": json.dumps(no_subject)}).encode(), headers=JSON))
    assert status == 400
