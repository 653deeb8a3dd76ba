"""The Power BI simulator's records: workspaces, datasets, refreshes, injected faults, recorded requests,
and the error answer its behaviours raise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

API_PREFIX = "/v1.0/myorg"
IDENTITY_PATH = "/msi/token"
ADMIN_PREFIX = "/_sim"
DAY = 24 * 3600.0
REFRESH_FIELDS = {
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
BUSY_MESSAGE = "Invalid dataset refresh request. Another refresh request is already executing"
DAILY_MESSAGE = "Invalid dataset refresh request. Number of refresh requests in last 24 hours exceeded limit"
DEFAULT_BODIES = {
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
class Fault:
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
class Outcome:
    extended_status: str = "Failed"
    service_exception: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None


@dataclass
class Refresh:
    id: str
    dataset_id: str
    enhanced: bool
    start: float
    duration: float
    body: dict[str, Any]
    outcome: Outcome | None = None
    cancelled_at: float | None = None
    kind: str | None = None  # refreshType; None: ViaApi / ViaEnhancedApi from the body (simulator_extras)


@dataclass
class Workspace:
    id: str
    name: str
    dedicated: bool
    capacity_id: str | None


@dataclass
class Dataset:
    id: str
    workspace_id: str
    name: str
    refreshable: bool
    refreshes: list[Refresh] = field(default_factory=list)


class Answer(Exception):
    """Raised inside a handler to send an answer at once."""

    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.add_request_id = True  # every API answer carries a RequestId unless told otherwise


def api_error(status: int, code: str, message: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}})




def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

