"""Counts storage requests (and how many were in flight at once) through the SDK clients' hooks."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlsplit


class Requests:
    """raw_request_hook + raw_response_hook: every request as (method, service port, path, query)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str, dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def kwargs(self) -> dict:
        return {"raw_request_hook": self.request, "raw_response_hook": self.response}

    def request(self, pipeline_request) -> None:
        http = pipeline_request.http_request
        url = urlsplit(http.url)
        with self.lock:
            self.log.append((http.method, str(url.port), url.path, parse_qs(url.query)))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def response(self, pipeline_response) -> None:
        with self.lock:
            self.in_flight -= 1

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.max_in_flight = self.in_flight = 0

    def listings(self) -> list[str]:
        return [q.get("prefix", [""])[0] for m, _, _, q in self.log if m == "GET" and q.get("comp") == ["list"]]

    def where(self, method: str, contains: str) -> int:
        return sum(1 for m, _, p, _ in self.log if m == method and contains in p)
