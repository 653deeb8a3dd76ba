"""A webhook receiver on loopback for tests and the local runtime: records every POST it gets.

``WebhookSink(answers=[500, 500])`` answers 500 to the first two requests and 200 (or ``default``)
after that; :attr:`WebhookSink.received` holds what arrived, in order, with the parsed JSON body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request the sink got, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    answered: int


@dataclass
class WebhookSink:
    """A threaded HTTP server on 127.0.0.1 with scripted answers."""

    answers: list[int] = field(default_factory=list)
    default: int = 200
    headers_for: dict[int, dict[str, str]] = field(default_factory=dict)  # extra answer headers by status
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "sink not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def script(self, answers: Iterable[int]) -> None:
        with self._lock:
            self.answers = list(answers)

    def accepted(self) -> list[Received]:
        """The requests answered with a 2xx."""
        with self._lock:
            return [r for r in self.received if 200 <= r.answered < 300]

    def start(self) -> WebhookSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with sink._lock:
                    status = sink.answers.pop(0) if sink.answers else sink.default
                    sink.received.append(Received("POST", self.path, dict(self.headers.items()), body, status))
                payload = b"{}" if 200 <= status < 300 else b'{"error":"sink says no"}'
                self.send_response(status)
                for name, value in sink.headers_for.get(status, {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
