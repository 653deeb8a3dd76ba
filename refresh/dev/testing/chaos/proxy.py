"""A fault-injecting HTTP proxy on loopback, in front of the Power BI simulator (dev and test only).

Every request (the Power BI API under ``/v1.0/myorg`` and the managed-identity endpoint
``/msi/token``) is forwarded to the upstream simulator unless a :class:`Fault` matches it first.
Faults are armed for a number of matching requests (``times``) or for a time window (``until``):

=====================  ==================================================================================
kind                   what the client sees
=====================  ==================================================================================
``status``             ``status`` (500, 502, 503, 429...) with a Power BI style error body, and
                       ``Retry-After`` when ``retry_after`` is set; the request never reaches Power BI
``busy``               400 ``{"error": {"code": "InvalidRequest", "message": "... Another refresh
                       request is already executing"}}`` (powerbi-api.md); not forwarded
``drop``               the connection is closed without an answer; not forwarded (an outage)
``forward_then_drop``  forwarded (Power BI acts on it), then the connection is closed without the answer
``delay``              ``seconds`` of delay, then forwarded normally
``hold``               forwarded, ``on_hit`` is called (e.g. to kill the app), then the answer is held
                       ``seconds`` before it is sent (a POST in flight when the caller dies)
=====================  ==================================================================================

:meth:`FaultProxy.token_outage` takes the identity endpoint down (``drop``) for N seconds.
Every request is recorded in :attr:`FaultProxy.log` (:class:`Passage`) with the fault applied.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

IDENTITY_PATH = "/msi/token"
BUSY_BODY = {"error": {"code": "InvalidRequest",
                       "message": "Invalid dataset refresh request. Another refresh request is already executing"}}
_ERROR_BODIES = {
    429: {"message": "You have exceeded the amount of requests allowed in the current time frame and further "
                     "requests will fail."},
    500: {"error": {"code": "InternalServerError", "message": "An internal error occurred."}},
    502: {"error": {"code": "BadGateway", "message": "Bad gateway."}},
    503: {"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."}},
}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}
KINDS = ("status", "busy", "drop", "forward_then_drop", "delay", "hold")
UPSTREAM_TIMEOUT = 30.0


@dataclass
class Fault:
    """One armed fault (see the module doc for ``kind``)."""

    kind: str
    method: str | None = None
    path_contains: str | None = None
    times: int = 1  # matching requests it applies to; 0 = any number until ``until``
    until: float | None = None  # time.monotonic() deadline of a window fault
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    on_hit: Callable[[], None] | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.times <= 0 and self.until is None:
            raise ValueError("a fault needs times >= 1 or an until deadline")

    def matches(self, method: str, path: str, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_contains is None:  # by default API calls only; the identity endpoint must be named
            return not path.startswith(IDENTITY_PATH)
        return self.path_contains.lower() in path.lower()


@dataclass
class Passage:
    """One request through the proxy."""

    at: float  # time.time()
    method: str
    path: str
    fault: str | None
    status: int | None  # what the client got (None: no answer)


@dataclass
class FaultProxy:
    """The proxy server; ``upstream`` is ``http://127.0.0.1:<port>`` of the simulator."""

    upstream: str
    port: int = 0
    faults: list[Fault] = field(default_factory=list)
    log: list[Passage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 60  # idle sockets do not hold threads forever

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # arming ------------------------------------------------------------------------------------
    def arm(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def disarm(self, fault: Fault) -> None:
        with self._lock:
            if fault in self.faults:
                self.faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def token_outage(self, seconds: float) -> Fault:
        """The managed-identity endpoint closes every connection for ``seconds``."""
        return self.arm(Fault("drop", path_contains=IDENTITY_PATH, times=0, until=time.monotonic() + seconds))

    def counts(self) -> dict[str, int]:
        """How many requests each fault kind was applied to."""
        with self._lock:
            out: dict[str, int] = {}
            for passage in self.log:
                if passage.fault:
                    out[passage.fault] = out.get(passage.fault, 0) + 1
            return out

    def _take(self, method: str, path: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            self.faults = [f for f in self.faults if f.until is None or now < f.until]
            for fault in self.faults:
                if fault.matches(method, path, now):
                    fault.hits += 1
                    if fault.times > 0 and fault.hits >= fault.times:
                        self.faults.remove(fault)
                    return fault
        return None

    # serving -----------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command.upper()
        path = handler.path
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = handler.rfile.read(length) if length > 0 else b""
        fault = self._take(method, urlsplit(path).path)
        kind = fault.kind if fault else None
        status: int | None = None
        passage: Passage | None = None
        try:
            if fault is not None and fault.kind == "drop":
                _close(handler)
            elif fault is not None and fault.kind in ("status", "busy"):
                code = 400 if fault.kind == "busy" else fault.status
                answer = BUSY_BODY if fault.kind == "busy" else _ERROR_BODIES.get(code, _ERROR_BODIES[500])
                headers = {"RequestId": str(uuid.uuid4())}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                passage = self._record(method, path, kind, code)
                status = _write(handler, code, headers, json.dumps(answer).encode())
            else:
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.seconds)
                code, headers, payload = self._forward(method, path, handler.headers, body)
                if fault is not None and fault.kind == "forward_then_drop":
                    _close(handler)
                else:
                    if fault is not None and fault.kind == "hold":
                        if fault.on_hit is not None:
                            fault.on_hit()
                        time.sleep(fault.seconds)
                    passage = self._record(method, path, kind, code)
                    status = _write(handler, code, headers, payload)
        except OSError as exc:  # upstream unreachable, or the client went away
            log.debug("proxy: %s %s: %s", method, path, exc)
            _close(handler)
        if passage is None:  # no answer was written: recorded now, before the connection closes
            self._record(method, path, kind, None)
        elif status is None:  # the answer could not be written after all
            passage.status = None

    def _record(self, method: str, path: str, kind: str | None, status: int | None) -> Passage:
        """Log a passage before its answer leaves, so a client that has the answer finds it in the log."""
        passage = Passage(time.time(), method, path, kind, status)
        with self._lock:
            self.log.append(passage)
        return passage

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        target = urlsplit(self.upstream)
        if target.hostname is None:  # handled by the caller as an unreachable upstream
            raise OSError(f"upstream {self.upstream!r} names no host")
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=UPSTREAM_TIMEOUT)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
            connection.request(method, path, body=body or None, headers=out)
            response = connection.getresponse()
            payload = response.read()
            answer = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
                      and k.lower() != "content-length"}
            return response.status, answer, payload
        finally:
            connection.close()


def _write(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: bytes) -> int | None:
    try:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if payload and not any(k.lower() == "content-type" for k in headers):
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
    except OSError:
        handler.close_connection = True
        return None
    handler.close_connection = True
    return status


def _close(handler: BaseHTTPRequestHandler) -> None:
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
