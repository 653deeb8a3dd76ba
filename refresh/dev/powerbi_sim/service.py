"""The Power BI simulator's service: state and behaviours (workspaces, datasets, refreshes, limits, faults,
the REST API's answers), apart from the HTTP server in :mod:`refresh.dev.powerbi_sim.simulator`."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from refresh.dev.powerbi_sim.odata import ODataFilter
from refresh.dev.powerbi_sim.records import (
    API_PREFIX,
    BUSY_MESSAGE,
    DAILY_MESSAGE,
    DAY,
    DEFAULT_BODIES,
    REFRESH_FIELDS,
    Answer,
    Dataset,
    Fault,
    Outcome,
    RecordedRequest,
    Refresh,
    Workspace,
    api_error,
    iso_time,
)


class SimulatedService:
    """The simulated service's state and behaviours: workspaces, datasets, refreshes on a movable clock,
    tokens, injected faults, and the answers of the REST API; no HTTP (see :class:`PowerBISimulator`)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_duration: float = 60.0,
        history_lag: float = 0.0,
        token_lifetime: float = 3600.0,
        busy_status: int = 400,
        daily_limit: int = 8,
        identity_header: str | None = None,
    ) -> None:
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
        self._workspaces: dict[str, Workspace] = {}
        self._datasets: dict[str, Dataset] = {}
        self._tokens: dict[str, float] = {}
        self._faults: list[Fault] = []
        self._outcomes: dict[str, list[Outcome]] = {}

    @property
    def base_url(self) -> str:
        """The API's base URL (``@odata.context``, ``Location``): known to the HTTP side, which overrides this."""
        raise NotImplementedError("the service's URL is known once it is served (PowerBISimulator)")

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
        return iso_time(self._epoch_zero + (at - self._clock_zero))

    # -- seeding -----------------------------------------------------------------------------

    def add_workspace(self, name: str, dedicated: bool = False, id: str | None = None) -> str:
        """Add a workspace (``dedicated`` = on Premium/Fabric capacity); returns its id."""
        workspace_id = (id or str(uuid.uuid4())).lower()
        capacity = str(uuid.uuid4()) if dedicated else None
        with self._lock:
            self._workspaces[workspace_id] = Workspace(workspace_id, name, dedicated, capacity)
        return workspace_id

    def add_dataset(self, workspace_id: str, name: str, refreshable: bool = True, id: str | None = None) -> str:
        """Add a dataset to a workspace (``refreshable`` False = DirectQuery-like); returns its id."""
        dataset_id = (id or str(uuid.uuid4())).lower()
        with self._lock:
            if workspace_id.lower() not in self._workspaces:
                raise KeyError(f"no workspace {workspace_id}")
            self._datasets[dataset_id] = Dataset(dataset_id, workspace_id.lower(), name, refreshable)
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
        default = DEFAULT_BODIES.get(
            status,
            {
                "error": {
                    "code": HTTPStatus(status).phrase.replace(" ", ""),
                    "message": HTTPStatus(status).phrase,
                }
            },
        )
        self._add_fault(
            Fault("status", times, method, path_contains, status, default if body is None else body, retry_after)
        )

    def busy_next(self, *, times: int = 1, status: int | None = None) -> None:
        """The next ``times`` refresh POSTs answer "Another refresh request is already executing"."""
        self.fail_next(
            status or self.busy_status,
            times=times,
            method="POST",
            path_contains="/refreshes",
            body={"error": {"code": "InvalidRequest", "message": BUSY_MESSAGE}},
        )

    def drop_next_connection(
        self, *, times: int = 1, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Close the connection of the next ``times`` matching requests without answering."""
        self._add_fault(Fault("drop", times, method, path_contains))

    def slow_next(
        self, seconds: float, *, times: int = 1, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Wait ``seconds`` (real time) before handling the next ``times`` matching requests."""
        self._add_fault(Fault("slow", times, method, path_contains, seconds=seconds))

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
            self._outcomes.setdefault(dataset_id.lower(), []).append(Outcome(extended_status, exception, message_list))

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

    def _add_fault(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- API ---------------------------------------------------------------------------------

    def _api(self, method: str, path: str, record: RecordedRequest) -> Answer:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        lowered = [s.lower() for s in segments]
        with self._lock:
            if lowered == ["groups"] and method == "GET":
                return self._list_groups(record.query)
            if len(lowered) >= 2 and lowered[0] == "groups":
                workspace = self._workspace(segments[1])
                rest = lowered[2:]
                if rest == [] and method == "GET":
                    return Answer(200, self._group_json(workspace))
                if rest == ["datasets"] and method == "GET":
                    return Answer(
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
                        return Answer(200, self._dataset_json(dataset))
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
        return api_error(404, "NotFound", f"no {method} operation at {API_PREFIX}{path}")

    def _workspace(self, workspace_id: str) -> Workspace:
        workspace = self._workspaces.get(workspace_id.lower())
        if workspace is None:
            raise api_error(404, "PowerBIEntityNotFound", f"Couldn't find workspace {workspace_id}")
        return workspace

    def _dataset(self, workspace: Workspace, dataset_id: str) -> Dataset:
        dataset = self._datasets.get(dataset_id.lower())
        if dataset is None or dataset.workspace_id != workspace.id:
            raise api_error(404, "ItemNotFound", f"Dataset {dataset_id} is not found in workspace {workspace.id}")
        return dataset

    @staticmethod
    def _refresh(dataset: Dataset, refresh_id: str) -> Refresh:
        for refresh in dataset.refreshes:
            if refresh.id == refresh_id.lower():
                return refresh
        raise api_error(404, "ItemNotFound", f"Refresh {refresh_id} is not found")

    def _group_json(self, workspace: Workspace) -> dict[str, Any]:
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

    def _dataset_json(self, dataset: Dataset) -> dict[str, Any]:
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

    def _list_groups(self, query: Mapping[str, str]) -> Answer:
        top = int_param(query, "$top", minimum=0)
        skip = int_param(query, "$skip", minimum=0) or 0
        items = [self._group_json(w) for w in self._workspaces.values()]
        if "$filter" in query:
            try:
                odata = ODataFilter(query["$filter"])
            except ValueError as exc:
                raise api_error(400, "InvalidRequest", f"Invalid $filter: {exc}") from None
            items = [g for g in items if odata.matches(g)]
        items = items[skip:] if top is None else items[skip : skip + top]
        return Answer(
            200,
            {
                "@odata.context": f"{self.base_url}/$metadata#groups",
                "@odata.count": len(items),
                "value": items,
            },
        )

    def _running(self, dataset: Dataset, now: float) -> Refresh | None:
        for refresh in dataset.refreshes:
            if refresh.cancelled_at is None and now < refresh.start + refresh.duration:
                return refresh
        return None

    def _start_refresh(self, workspace: Workspace, dataset: Dataset, body: Any) -> Answer:
        if body is None or body == "":
            body = {}
        if not isinstance(body, dict):
            raise api_error(400, "InvalidRequest", "The request body must be a JSON object")
        unknown = sorted(set(body) - REFRESH_FIELDS)
        if unknown:
            raise api_error(400, "InvalidRequest", f"Unknown refresh request properties: {', '.join(unknown)}")
        enhanced = bool(set(body) - {"notifyOption"})
        if enhanced and "notifyOption" in body:
            raise api_error(
                400,
                "InvalidRequest",
                "For enhanced refresh, notifyOption is not required and must be excluded from the request",
            )
        if enhanced and not workspace.dedicated:
            raise api_error(
                400,
                "InvalidRequest",
                "Enhanced refresh is not supported for shared capacities; only notifyOption can be specified",
            )
        if not dataset.refreshable:
            raise api_error(400, "InvalidRequest", f"Dataset {dataset.id} is not refreshable (DirectQuery)")
        now = self.clock()
        if self._running(dataset, now) is not None:
            raise Answer(self.busy_status, {"error": {"code": "InvalidRequest", "message": BUSY_MESSAGE}})
        if not workspace.dedicated:
            recent = [r for r in dataset.refreshes if r.start > now - DAY]
            if len(recent) >= self.daily_limit:
                raise api_error(400, "Request Throttled", DAILY_MESSAGE)
        outcomes = self._outcomes.get(dataset.id)
        refresh = Refresh(
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
        answer = Answer(202, None, {name: available[name] for name in available if name in names})
        answer.add_request_id = "RequestId" in names
        return answer

    def _status(self, refresh: Refresh, now: float) -> tuple[str, str, float | None]:
        """(history status, extended status, end time or None while running)."""
        if refresh.cancelled_at is not None:
            return "Cancelled", "Cancelled", refresh.cancelled_at
        end = refresh.start + refresh.duration
        if now < end:
            return "Unknown", ("NotStarted" if now - refresh.start < 1.0 else "InProgress"), None
        if refresh.outcome is not None:
            return "Failed", refresh.outcome.extended_status, end
        return "Completed", "Completed", end

    def _history_entry(self, refresh: Refresh, now: float) -> dict[str, Any]:
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

    def _history(self, dataset: Dataset, query: Mapping[str, str]) -> Answer:
        top = int_param(query, "$top", minimum=1) or 60
        now = self.clock()
        visible = [r for r in reversed(dataset.refreshes) if now >= r.start + self.history_lag]
        return Answer(
            200,
            {
                "@odata.context": f"{self.base_url}/groups/{dataset.workspace_id}/$metadata#refreshes",
                "value": [self._history_entry(r, now) for r in visible[:top]],
            },
        )

    def _details(self, refresh: Refresh) -> Answer:
        if not refresh.enhanced:
            raise api_error(404, "ItemNotFound", "Execution details exist only for enhanced refreshes")
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
        return Answer(202 if end is None else 200, payload)

    def _cancel(self, refresh: Refresh) -> Answer:
        if not refresh.enhanced:
            raise api_error(400, "InvalidRequest", "Only enhanced refresh operations can be cancelled")
        now = self.clock()
        if refresh.cancelled_at is not None or now >= refresh.start + refresh.duration:
            raise api_error(400, "InvalidRequest", "The refresh operation is not in progress")
        refresh.cancelled_at = now
        return Answer(200)



def int_param(query: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    if name not in query:
        return None
    try:
        value = int(query[name])
    except ValueError:
        raise api_error(400, "InvalidRequest", f"{name} must be an integer") from None
    if value < minimum:
        raise api_error(400, "InvalidRequest", f"{name} must be at least {minimum}")
    return value

