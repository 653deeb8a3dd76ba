"""PowerBIClient against the loopback simulator, with the real ManagedIdentityCredential.

Every request these tests make is validated against the swagger by the ``sim`` fixture.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ServiceRequestError

from refresh.dev.powerbi_sim.simulator import PowerBISimulator
from refresh.dev.swagger import SwaggerValidator
from refresh.powerbi import (
    AuthenticationError,
    BadRequestError,
    DailyLimitError,
    Dataset,
    NameResolutionError,
    NotFoundError,
    NotRefreshableError,
    PowerBIClient,
    PowerBIError,
    RefreshBusyError,
    RefreshState,
    ServerError,
    ThrottledError,
    TransportError,
    Workspace,
    build_refresh_body,
    dataset_from_api,
    refresh_from_details,
    refresh_from_history_entry,
    workspace_from_api,
)
from refresh.powerbi.errors import error_from_response, parse_retry_after
from refresh.powerbi.models import parse_state

SCOPE = "https://analysis.windows.net/powerbi/api/.default"
STANDARD = {"notifyOption": "NoNotification"}


def api_requests(sim: PowerBISimulator, method: str | None = None, contains: str = "") -> list[Any]:
    return [r for r in sim.requests if (method is None or r.method == method) and contains in r.path]


# -- workspace lookup ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw_filter"),
    [
        ("O'Brien Sales", "name%20eq%20%27O%27%27Brien%20Sales%27"),
        ("Q1 & Q2 finance", "name%20eq%20%27Q1%20%26%20Q2%20finance%27"),
        ("Zürich 東京", "name%20eq%20%27Z%C3%BCrich%20%E6%9D%B1%E4%BA%AC%27"),
        ("it's 'quoted'", "name%20eq%20%27it%27%27s%20%27%27quoted%27%27%27"),
        ("50%+1 #tag?", "name%20eq%20%2750%25%2B1%20%23tag%3F%27"),
    ],
)
def test_workspace_by_name_is_odata_quoted_and_percent_encoded(sim, client, name, raw_filter):
    sim.add_workspace("decoy", dedicated=True)
    wanted = sim.add_workspace(name, dedicated=True)

    workspace = client.get_workspace(name)

    assert workspace.id == wanted and workspace.name == name and workspace.is_on_dedicated_capacity
    sent = api_requests(sim, "GET", "/groups")[-1]
    assert sent.raw_query == "$filter=" + raw_filter
    assert sent.query == {"$filter": "name eq '" + name.replace("'", "''") + "'"}


def test_workspace_by_guid_uses_an_id_filter(sim, client):
    workspace_id = sim.add_workspace("Gold", dedicated=True)

    workspace = client.get_workspace(workspace_id.upper())

    assert workspace.id == workspace_id
    assert workspace.capacity_id is not None
    assert api_requests(sim)[-1].query == {"$filter": f"id eq '{workspace_id.upper()}'"}


def test_shared_workspace_has_no_capacity(sim, client, shared):
    workspace = client.get_workspace("Gold Shared")
    assert workspace.is_on_dedicated_capacity is False and workspace.capacity_id is None


def test_unknown_workspace_name_says_none_was_found(sim, client):
    sim.add_workspace("Other")
    with pytest.raises(NameResolutionError, match="found none") as caught:
        client.get_workspace("Missing")
    assert caught.value.found == ()


def test_unknown_workspace_guid_is_a_resolution_error(sim, client):
    with pytest.raises(NameResolutionError):
        client.get_workspace("00000000-0000-4000-8000-000000000000")


def test_several_workspaces_with_one_name_are_listed(sim, client):
    first = sim.add_workspace("Sales")
    second = sim.add_workspace("Sales")

    with pytest.raises(NameResolutionError) as caught:
        client.get_workspace("Sales")

    assert "2 workspaces match" in str(caught.value)
    assert first in str(caught.value) and second in str(caught.value)
    assert len(caught.value.found) == 2


def test_workspace_lookup_is_cached_until_the_ttl_expires(sim, make_client, fake_clock):
    clock = fake_clock
    client = make_client(clock=clock, cache_ttl=300)
    sim.add_workspace("Gold", dedicated=True)

    first = client.get_workspace("Gold")
    clock.advance(299)
    again = client.get_workspace("Gold")
    assert again is first
    assert len(api_requests(sim, "GET", "/groups")) == 1

    clock.advance(2)
    client.get_workspace("Gold")
    assert len(api_requests(sim, "GET", "/groups")) == 2
    assert client.calls == 2


def test_failed_lookups_are_not_cached(sim, client):
    with pytest.raises(NameResolutionError):
        client.get_workspace("Late")
    sim.add_workspace("Late")
    assert client.get_workspace("Late").name == "Late"


def test_cache_can_be_disabled_and_cleared(sim, make_client):
    sim.add_workspace("Gold")
    uncached = make_client(cache_ttl=0)
    uncached.get_workspace("Gold")
    uncached.get_workspace("Gold")
    assert uncached.calls == 2

    cached = make_client()
    cached.get_workspace("Gold")
    cached.clear_cache()
    cached.get_workspace("Gold")
    assert cached.calls == 2


# -- dataset lookup ------------------------------------------------------------------------------


def test_dataset_by_name_and_by_id_share_one_cached_listing(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.add_dataset(workspace, "Other Model")

    by_name = client.get_dataset(workspace, "Sales Model")
    by_id = client.get_dataset(workspace, dataset.upper())

    assert by_name == by_id
    assert by_name.id == dataset and by_name.is_refreshable and by_name.target_storage_mode == "Abf"
    assert by_name.configured_by
    listing = api_requests(sim, "GET", "/datasets")
    assert len(listing) == 1 and listing[0].query == {}  # no $filter exists for datasets


def test_dataset_listing_cache_expires(sim, make_client, dedicated, fake_clock):
    clock = fake_clock
    client = make_client(clock=clock, cache_ttl=60)
    workspace, _ = dedicated
    client.get_dataset(workspace, "Sales Model")
    with pytest.raises(NameResolutionError):
        client.get_dataset(workspace, "Added Later")
    sim.add_dataset(workspace, "Added Later")
    clock.advance(61)
    assert client.get_dataset(workspace, "Added Later").name == "Added Later"
    assert len(api_requests(sim, "GET", "/datasets")) == 2


def test_unknown_dataset_names_only_what_was_asked(sim, client, dedicated):
    # issue 9 item 14: the message used to list up to 20 names and ids of the workspace's datasets
    workspace, sales = dedicated
    hr = sim.add_dataset(workspace, "HR Model")
    with pytest.raises(NameResolutionError) as caught:
        client.get_dataset(workspace, "Sales")
    message = str(caught.value)
    assert "no dataset" in message and "'Sales'" in message
    assert "Sales Model" not in message and "HR Model" not in message
    assert sales not in message and hr not in message and caught.value.found == ()


def test_dataset_name_match_is_exact_but_near_misses_are_suggested(sim, client, dedicated):
    workspace, _ = dedicated
    with pytest.raises(NameResolutionError) as caught:
        client.get_dataset(workspace, "sales model")
    assert caught.value.found == (f"'Sales Model' ({dedicated[1]})",)


def test_several_datasets_with_one_name_are_listed(sim, client, dedicated):
    workspace, first = dedicated
    second = sim.add_dataset(workspace, "Sales Model")
    with pytest.raises(NameResolutionError) as caught:
        client.get_dataset(workspace, "Sales Model")
    assert first in str(caught.value) and second in str(caught.value)


def test_not_refreshable_dataset_is_refused_before_any_refresh(sim, client, dedicated):
    workspace, _ = dedicated
    direct_query = sim.add_dataset(workspace, "Live Model", refreshable=False)

    with pytest.raises(NotRefreshableError, match="not refreshable"):
        client.get_dataset(workspace, "Live Model")
    assert client.get_dataset(workspace, "Live Model", require_refreshable=False).is_refreshable is False
    # The service itself also refuses it.
    with pytest.raises(BadRequestError):
        client.start_refresh(workspace, direct_query, STANDARD)


def test_datasets_of_an_unknown_workspace_is_not_found(sim, client):
    with pytest.raises(NotFoundError) as caught:
        client.get_dataset("00000000-0000-4000-8000-000000000000", "x")
    assert caught.value.status == 404 and caught.value.code == "PowerBIEntityNotFound"
    assert caught.value.request_id


# -- refresh bodies ------------------------------------------------------------------------------


def test_standard_body_is_notify_option_only(caplog):
    assert build_refresh_body(enhanced=False) == STANDARD
    assert build_refresh_body(enhanced=False, notify_option="mailonfailure") == {"notifyOption": "MailOnFailure"}
    with caplog.at_level(logging.WARNING, logger="refresh.powerbi.client"):
        body = build_refresh_body(enhanced=False, options={"retry_count": 2}, objects=["Sales"])
    assert body == STANDARD
    assert "ignored" in caplog.text


def test_enhanced_body_maps_every_option_and_leaves_notify_option_out():
    body = build_refresh_body(
        enhanced=True,
        options={
            "type": "dataonly",
            "commit_mode": "partialBatch",
            "max_parallelism": 4,
            "retry_count": 2,
            "timeout": timedelta(hours=2, minutes=30),
            "apply_refresh_policy": False,
            "effective_date": date(2025, 1, 31),
        },
        objects=["Sales", "Customers"],
    )
    assert body == {
        "type": "DataOnly",
        "commitMode": "PartialBatch",
        "maxParallelism": 4,
        "retryCount": 2,
        "timeout": "02:30:00",
        "applyRefreshPolicy": False,
        "effectiveDate": "2025-01-31T00:00:00",
        "objects": [{"table": "Sales"}, {"table": "Customers"}],
    }


def test_enhanced_body_defaults_to_a_full_refresh():
    assert build_refresh_body(enhanced=True) == {"type": "Full"}
    assert build_refresh_body(enhanced=True, options={"timeout": "1:05:00", "type": None}) == {
        "type": "Full",
        "timeout": "1:05:00",
    }
    assert build_refresh_body(enhanced=True, options={"timeout": 5400})["timeout"] == "01:30:00"
    moment = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    assert build_refresh_body(enhanced=True, options={"effective_date": moment})["effectiveDate"] == moment.isoformat()


@pytest.mark.parametrize(
    ("options", "objects", "message"),
    [
        ({"retries": 1}, None, "unknown refresh option"),
        ({"type": "Fast"}, None, "type must be one of"),
        ({"commit_mode": "eventual"}, None, "commit_mode"),
        ({"timeout": "24:00:00"}, None, "timeout"),
        ({"timeout": 0}, None, "timeout"),
        ({"timeout": 86400}, None, "timeout"),
        ({"max_parallelism": 0}, None, "max_parallelism"),
        ({"retry_count": -1}, None, "retry_count"),
        ({"retry_count": True}, None, "retry_count"),
        ({"apply_refresh_policy": "yes"}, None, "apply_refresh_policy"),
        ({"commit_mode": "PartialBatch", "apply_refresh_policy": True}, None, "PartialBatch"),
        (None, "Sales", "not one string"),
        (None, ["Sales", ""], "table names"),
    ],
)
def test_enhanced_body_rejects_what_the_service_would(options, objects, message):
    with pytest.raises(ValueError, match=message):
        build_refresh_body(enhanced=True, options=options, objects=objects)


def test_standard_body_rejects_unknown_notify_option():
    with pytest.raises(ValueError, match="notify_option"):
        build_refresh_body(enhanced=False, notify_option="Always")


# -- starting refreshes and their ids ------------------------------------------------------------


def test_enhanced_refresh_sends_no_notify_option_and_gets_all_id_headers(sim, client, dedicated):
    workspace, dataset = dedicated
    body = build_refresh_body(enhanced=True, options={"retry_count": 1}, objects=["Sales"])

    refresh_id = client.start_refresh(workspace, dataset, body)

    post = api_requests(sim, "POST")[-1]
    assert post.body == {"type": "Full", "retryCount": 1, "objects": [{"table": "Sales"}]}
    assert post.status == 202
    assert set(post.response_headers) >= {"RequestId", "x-ms-request-id", "Location"}
    assert refresh_id == post.response_headers["x-ms-request-id"] == sim.refreshes(dataset)[0]["requestId"]
    assert post.headers["Authorization"] == "<redacted>"


def test_standard_refresh_gets_only_request_id(sim, client, shared):
    workspace, dataset = shared

    refresh_id = client.start_refresh(workspace, dataset, build_refresh_body(enhanced=False))

    post = api_requests(sim, "POST")[-1]
    assert post.body == STANDARD
    assert "x-ms-request-id" not in post.response_headers and "Location" not in post.response_headers
    assert refresh_id == post.response_headers["RequestId"] == sim.refreshes(dataset)[0]["requestId"]


@pytest.mark.parametrize("headers", [{"x-ms-request-id"}, {"RequestId"}, {"Location"}])
def test_refresh_id_from_whichever_header_is_sent(sim, client, dedicated, headers):
    workspace, dataset = dedicated
    sim.refresh_headers = headers
    refresh_id = client.start_refresh(workspace, dataset, {"type": "Full"})
    assert refresh_id == sim.refreshes(dataset)[0]["requestId"]


def test_a_202_without_any_id_header_is_an_error(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.refresh_headers = set()
    with pytest.raises(PowerBIError, match="no refresh id") as caught:
        client.start_refresh(workspace, dataset, {"type": "Full"})
    assert caught.value.status == 202


class _ScriptedAdapter(requests.adapters.BaseAdapter):
    """A transport answering every request with one scripted 202, validating the request first."""

    def __init__(self, validator: SwaggerValidator, headers: dict[str, str]) -> None:
        super().__init__()
        self.validator = validator
        self.headers = headers
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        self.validator.validate(request.method, request.url, None, json.loads(request.body))
        response = requests.Response()
        response.status_code = 202
        response.headers.update(self.headers)
        response.url = request.url
        response.request = request
        response._content = b""
        return response

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ms-request-id": "a1", "RequestId": "b2", "Location": "https://x/refreshes/c3"}, "a1"),
        ({"RequestId": "b2", "Location": "https://x/refreshes/c3"}, "b2"),
        ({"Location": "https://api.powerbi.com/v1.0/myorg/groups/g/datasets/d/refreshes/c3/"}, "c3"),
    ],
)
def test_refresh_id_header_precedence(validator, headers, expected):
    adapter = _ScriptedAdapter(validator, headers)
    session = requests.Session()
    session.mount("https://", adapter)
    credential = _StaticCredential("tok")
    client = PowerBIClient("https://api.powerbi.com/v1.0/myorg", SCOPE, credential, session=session, timeout=7)
    workspace = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
    dataset = "cfafbeb1-8037-4d0c-896e-a46fb27ff229"

    assert client.start_refresh(workspace, dataset, {"type": "Full"}) == expected
    assert adapter.sent[0].headers["Authorization"] == "Bearer tok"


def test_every_call_passes_the_timeout():
    seen: list[Any] = []

    class Recording(requests.Session):
        def request(self, method, url, **kwargs):
            seen.append(kwargs.get("timeout"))
            raise requests.ConnectTimeout("no network in this test")

    client = PowerBIClient(
        "https://api.powerbi.com/v1.0/myorg", SCOPE, _StaticCredential("t"), session=Recording(), timeout=12.5
    )
    with pytest.raises(TransportError, match=r"timed out after 12\.5 s"):
        client.get_workspace("Gold")
    assert seen == [12.5]


# -- error mapping -------------------------------------------------------------------------------


def test_429_with_numeric_retry_after_is_throttled_and_not_retried(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.fail_next(429, retry_after=120)

    with pytest.raises(ThrottledError) as caught:
        client.get_refresh_history(workspace, dataset)

    error = caught.value
    assert (error.status, error.retry_after, error.code) == (429, 120.0, "TooManyRequests")
    assert error.request_id and not error.is_retryable
    assert client.calls == 1 and len(sim.requests) == 1


def test_429_with_an_http_date_retry_after(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.fail_next(429, retry_after=email.utils.formatdate(time.time() + 90, usegmt=True), method="POST")

    with pytest.raises(ThrottledError) as caught:
        client.start_refresh(workspace, dataset, {"type": "Full"})

    assert 85 <= caught.value.retry_after <= 90
    assert sim.refreshes(dataset) == []


@pytest.mark.parametrize("busy_status", [400, 409])
def test_a_running_refresh_makes_the_next_one_busy(sim, client, dedicated, busy_status):
    workspace, dataset = dedicated
    sim.busy_status = busy_status
    client.start_refresh(workspace, dataset, {"type": "Full"})

    with pytest.raises(RefreshBusyError) as caught:
        client.start_refresh(workspace, dataset, {"type": "Full"})

    assert caught.value.status == busy_status and caught.value.code == "InvalidRequest"
    assert "already executing" in str(caught.value)
    sim.advance(sim.refresh_duration)
    client.start_refresh(workspace, dataset, {"type": "Full"})  # free again


def test_busy_injection(sim, client, shared):
    workspace, dataset = shared
    sim.busy_next(status=409)
    with pytest.raises(RefreshBusyError):
        client.start_refresh(workspace, dataset, STANDARD)
    assert client.start_refresh(workspace, dataset, STANDARD)


def test_shared_capacity_daily_limit_is_a_rolling_24_hours(sim, client, shared):
    workspace, dataset = shared
    sim.refresh_duration = 60
    for _ in range(8):
        client.start_refresh(workspace, dataset, STANDARD)
        sim.advance(120)

    with pytest.raises(DailyLimitError) as caught:
        client.start_refresh(workspace, dataset, STANDARD)
    assert caught.value.code == "Request Throttled" and caught.value.status == 400
    assert "24 hours" in str(caught.value) and not caught.value.is_retryable

    sim.advance(24 * 3600 - 8 * 120 + 1)  # only the first refresh has left the window
    client.start_refresh(workspace, dataset, STANDARD)
    sim.advance(61)  # that one has finished; the window again holds 8
    with pytest.raises(DailyLimitError):
        client.start_refresh(workspace, dataset, STANDARD)


def test_dedicated_capacity_has_no_daily_limit(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.refresh_duration = 1
    for _ in range(10):
        client.start_refresh(workspace, dataset, {"type": "Full"})
        sim.advance(2)


def test_enhanced_body_on_shared_capacity_is_a_bad_request(sim, client, shared):
    workspace, dataset = shared
    with pytest.raises(BadRequestError, match="shared"):
        client.start_refresh(workspace, dataset, build_refresh_body(enhanced=True))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable_but_not_retried(sim, client, dedicated, status):
    workspace, dataset = dedicated
    sim.fail_next(status, path_contains="/refreshes")
    with pytest.raises(ServerError) as caught:
        client.get_refresh_history(workspace, dataset)
    assert caught.value.status == status and caught.value.is_retryable
    assert client.calls == 1


def test_dropped_connection_is_a_transport_error(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.drop_next_connection(method="POST")
    with pytest.raises(TransportError) as caught:
        client.start_refresh(workspace, dataset, {"type": "Full"})
    assert caught.value.status is None and caught.value.is_retryable
    assert sim.pending_faults() == 0


def test_slow_answer_hits_the_client_timeout(sim, make_client, dedicated):
    workspace, dataset = dedicated
    client = make_client(timeout=0.2)
    client.get_refresh_history(workspace, dataset)  # token fetched, connection warm
    sim.slow_next(0.6)
    with pytest.raises(TransportError, match=r"timed out after 0\.2 s"):
        client.get_refresh_history(workspace, dataset)


def test_unknown_refresh_id_is_not_found(sim, client, dedicated):
    workspace, dataset = dedicated
    with pytest.raises(NotFoundError):
        client.get_refresh(workspace, dataset, "9399bb89-25d1-44f8-8576-136d7e9014b1")


def test_forbidden_without_expiry_is_not_retried(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.fail_next(403, body={"error": {"code": "Unauthorized", "message": "API is not accessible for application"}})
    with pytest.raises(AuthenticationError) as caught:
        client.get_refresh_history(workspace, dataset)
    assert caught.value.status == 403 and client.calls == 1


# -- tokens --------------------------------------------------------------------------------------


def test_token_expired_403_gets_one_retry_with_a_fresh_token(sim, client, dedicated):
    workspace, dataset = dedicated
    client.get_refresh_history(workspace, dataset)
    assert len(sim.identity_requests) == 1
    sim.expire_tokens()  # azure-identity still holds the token in its cache

    assert client.get_refresh_history(workspace, dataset) == []

    assert [r.status for r in api_requests(sim)] == [200, 403, 200]
    assert sim.requests[1].response["error"]["code"] == "TokenExpired"
    assert len(sim.identity_requests) == 2 and client.calls == 3


def test_expired_twice_in_a_row_is_an_authentication_error(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.token_lifetime = 0  # every token is born expired

    with pytest.raises(AuthenticationError) as caught:
        client.get_refresh_history(workspace, dataset)

    assert caught.value.status == 403 and caught.value.code == "TokenExpired"
    assert [r.status for r in api_requests(sim)] == [403, 403]
    assert client.calls == 2


class _StaticCredential:
    """Hands out fixed tokens; records the claims it was asked for."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.claims: list[str | None] = []

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken:
        assert scopes == (SCOPE,)
        self.claims.append(claims)
        token = self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
        return AccessToken(token, int(time.time()) + 3600)


def test_401_retry_asks_the_credential_for_a_fresh_token_with_claims(sim, make_client, dedicated):
    workspace, dataset = dedicated
    credential = _StaticCredential("not-issued-by-the-service", sim.issue_token())
    client = make_client(credential=credential)

    assert client.get_refresh_history(workspace, dataset) == []

    assert [r.status for r in api_requests(sim)] == [401, 200]
    assert credential.claims[0] is None
    claims = json.loads(credential.claims[1])
    assert claims["access_token"]["nbf"]["essential"] is True


def test_claims_from_a_www_authenticate_challenge_are_passed_on(validator):
    challenge = '{"access_token":{"xms_cc":{"values":["cp1"]}}}'
    encoded = base64.b64encode(challenge.encode()).decode()

    class Challenging(requests.adapters.BaseAdapter):
        def __init__(self):
            super().__init__()
            self.count = 0

        def send(self, request, **kwargs):
            validator.validate(request.method, request.url)
            self.count += 1
            response = requests.Response()
            response.status_code = 401 if self.count == 1 else 200
            if self.count == 1:
                response.headers["WWW-Authenticate"] = f'Bearer error="insufficient_claims", claims="{encoded}"'
            response._content = b'{"value": []}'
            response.request = request
            return response

        def close(self):
            pass

    session = requests.Session()
    session.mount("https://", Challenging())
    credential = _StaticCredential("first", "second")
    client = PowerBIClient("https://api.powerbi.com/v1.0/myorg", SCOPE, credential, session=session)
    assert client.get_refresh_history("f089354e-8366-4e18-aea3-4cb4a3a50b48", "d") == []
    assert credential.claims == [None, challenge]


def test_credential_without_claims_support_is_asked_again_plainly(sim, make_client, dedicated):
    workspace, dataset = dedicated
    tokens = ["stale", sim.issue_token()]

    class Plain:
        def get_token(self, *scopes: str) -> AccessToken:
            return AccessToken(tokens.pop(0), int(time.time()) + 3600)

    client = make_client(credential=Plain())
    assert client.get_refresh_history(workspace, dataset) == []
    assert [r.status for r in api_requests(sim)] == [401, 200]


def test_credential_refusing_claims_is_asked_again_plainly(sim, make_client, dedicated, caplog):
    from azure.identity import CredentialUnavailableError

    workspace, dataset = dedicated
    tokens = ["stale", sim.issue_token()]

    class CliLike:
        def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken:
            if claims:
                raise CredentialUnavailableError("This credential doesn't support claims challenges.")
            return AccessToken(tokens.pop(0), int(time.time()) + 3600)

    client = make_client(credential=CliLike())
    with caplog.at_level(logging.WARNING, logger="refresh.powerbi.client"):
        assert client.get_refresh_history(workspace, dataset) == []
    assert [r.status for r in api_requests(sim)] == [401, 200]
    assert "could not be forced to a fresh token (CredentialUnavailableError)" in caplog.text


def test_token_acquisition_failure_is_an_authentication_error(sim, make_client, dedicated, monkeypatch):
    from azure.identity import ManagedIdentityCredential

    workspace, dataset = dedicated
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-secret")
    with ManagedIdentityCredential() as wrong:
        client = make_client(credential=wrong)
        with pytest.raises(AuthenticationError, match="could not acquire"):
            client.get_refresh_history(workspace, dataset)
    assert sim.identity_requests[-1].status == 401
    assert sim.requests == [] and client.calls == 0


def test_unreachable_identity_endpoint_is_a_transport_error():
    class Unreachable:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise ServiceRequestError("Connection refused")

    client = PowerBIClient("https://api.powerbi.com/v1.0/myorg", SCOPE, Unreachable())
    with pytest.raises(TransportError, match="identity endpoint") as caught:
        client.get_workspace("Gold")
    assert caught.value.is_retryable and client.calls == 0


def test_tokens_never_reach_the_logs(sim, client, dedicated, caplog):
    workspace, dataset = dedicated
    with caplog.at_level(logging.DEBUG):
        client.start_refresh(workspace, dataset, {"type": "Full"})
        sim.expire_tokens()
        client.get_refresh_history(workspace, dataset)
    issued = [r.response["access_token"] for r in sim.identity_requests]
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("refresh."))
    assert len(issued) == 2 and "Started enhanced refresh" in ours and "fresh token" in ours
    assert all(token not in ours for token in issued)


# -- following refreshes -------------------------------------------------------------------------


def test_a_refresh_longer_than_the_token_lifetime_is_followed_to_the_end(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.token_lifetime = 3600
    sim.refresh_duration = 3 * 3600 + 300
    refresh_id = client.start_refresh(workspace, dataset, build_refresh_body(enhanced=True))

    states = []
    for _ in range(40):
        status = client.get_refresh(workspace, dataset, refresh_id)
        states.append(status.state)
        if status.is_terminal:
            break
        sim.advance(600)

    assert states[-1] is RefreshState.COMPLETED and states[:-1] and set(states[:-1]) == {RefreshState.RUNNING}
    expired = [r for r in api_requests(sim) if r.status == 403]
    assert len(expired) == 3  # one per hour of refresh, each recovered by one fresh token
    assert len(sim.identity_requests) == 4
    assert all(r.status in (200, 202, 403) for r in api_requests(sim, "GET"))


def test_details_report_not_started_and_in_progress_as_running(sim, client, dedicated):
    workspace, dataset = dedicated
    refresh_id = client.start_refresh(workspace, dataset, build_refresh_body(enhanced=True, objects=["Sales"]))

    first = client.get_refresh(workspace, dataset, refresh_id)
    sim.advance(5)
    second = client.get_refresh(workspace, dataset, refresh_id)

    assert (first.state, first.extended_status) == (RefreshState.RUNNING, "NotStarted")
    assert (second.state, second.extended_status) == (RefreshState.RUNNING, "InProgress")
    assert second.end_time is None and second.start_time is not None
    assert [r.status for r in api_requests(sim, "GET")] == [202, 202]


def test_history_lag_gives_none_then_the_refresh_never_the_latest_other_one(sim, client, shared):
    workspace, dataset = shared
    sim.refresh_duration = 60
    older = client.start_refresh(workspace, dataset, STANDARD)
    sim.advance(120)
    sim.history_lag = 30
    newer = client.start_refresh(workspace, dataset, STANDARD)

    history = client.get_refresh_history(workspace, dataset)
    assert [h.request_id for h in history] == [older]  # a completed older refresh is "latest"
    assert client.find_refresh(workspace, dataset, newer) is None

    sim.advance(31)
    found = client.find_refresh(workspace, dataset, newer.upper())
    assert found is not None and found.request_id == newer
    assert (found.state, found.raw_status, found.end_time) == (RefreshState.RUNNING, "Unknown", None)
    assert found.refresh_type == "ViaApi"

    sim.advance(60)
    done = client.find_refresh(workspace, dataset, newer)
    assert done.state is RefreshState.COMPLETED and done.end_time > done.start_time
    assert [h.request_id for h in client.get_refresh_history(workspace, dataset, top=1)] == [newer]
    assert api_requests(sim, "GET")[-1].query == {"$top": "1"}


def test_history_top_must_be_positive(client):
    with pytest.raises(ValueError, match="top"):
        client.get_refresh_history("f089354e-8366-4e18-aea3-4cb4a3a50b48", "d", top=0)


def test_failed_refresh_history_parses_service_exception_json(sim, client, shared):
    workspace, dataset = shared
    sim.fail_refresh(
        dataset,
        {
            "errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
            "errorDescription": "Credentials missing",
        },
    )
    refresh_id = client.start_refresh(workspace, dataset, STANDARD)
    sim.advance(sim.refresh_duration)

    status = client.find_refresh(workspace, dataset, refresh_id)

    assert status.state is RefreshState.FAILED and not status.succeeded
    assert status.error_code == "ModelRefreshFailed_CredentialsNotSpecified"
    assert status.error_message == "Credentials missing"
    assert status.attempts == 1


def test_failed_enhanced_refresh_details_give_the_engine_messages(sim, client, dedicated):
    workspace, dataset = dedicated
    messages = [
        {"code": "0xC11C0020", "message": "The model was evicted from memory.", "type": "Error"},
        {"message": "Partition skipped", "type": "Warning"},
    ]
    sim.fail_refresh(dataset, {"errorCode": "ModelRefresh_ShortMessage_ProcessingError"}, messages)
    refresh_id = client.start_refresh(workspace, dataset, build_refresh_body(enhanced=True))
    sim.advance(sim.refresh_duration)

    status = client.get_refresh(workspace, dataset, refresh_id)

    assert status.state is RefreshState.FAILED
    assert (status.error_code, status.error_message) == ("0xC11C0020", "The model was evicted from memory.")
    assert len(status.messages) == 2 and status.attempts == 1
    assert api_requests(sim, "GET")[-1].status == 200


def test_timed_out_refresh(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.fail_refresh(dataset, extended_status="TimedOut")
    refresh_id = client.start_refresh(workspace, dataset, build_refresh_body(enhanced=True))
    sim.advance(sim.refresh_duration)
    assert client.get_refresh(workspace, dataset, refresh_id).state is RefreshState.TIMED_OUT


def test_cancel_an_enhanced_refresh(sim, client, dedicated):
    workspace, dataset = dedicated
    refresh_id = client.start_refresh(workspace, dataset, build_refresh_body(enhanced=True))
    sim.advance(10)

    client.cancel_refresh(workspace, dataset, refresh_id)

    assert client.get_refresh(workspace, dataset, refresh_id).state is RefreshState.CANCELLED
    entry = client.find_refresh(workspace, dataset, refresh_id)
    assert (entry.state, entry.raw_status) == (RefreshState.CANCELLED, "Cancelled")
    with pytest.raises(BadRequestError, match="not in progress"):
        client.cancel_refresh(workspace, dataset, refresh_id)
    client.start_refresh(workspace, dataset, {"type": "Full"})  # the dataset is free again


def test_standard_refreshes_cannot_be_cancelled(sim, client, shared):
    workspace, dataset = shared
    refresh_id = client.start_refresh(workspace, dataset, STANDARD)
    with pytest.raises(BadRequestError, match="enhanced"):
        client.cancel_refresh(workspace, dataset, refresh_id)


def test_empty_ids_are_refused_before_sending(client):
    with pytest.raises(ValueError):
        client.get_refresh("f089354e-8366-4e18-aea3-4cb4a3a50b48", "", "x")
    with pytest.raises(ValueError):
        client.get_workspace("  ")
    assert client.calls == 0


def test_ids_are_one_path_segment_each(sim, client, dedicated):
    workspace, _ = dedicated
    with pytest.raises(NotFoundError):
        client.get_refresh_history(workspace, "x/../y?$top=1")
    assert api_requests(sim)[-1].path.endswith("/datasets/x%2F..%2Fy%3F%24top%3D1/refreshes")


# -- payload normalisation (models) --------------------------------------------------------------


def test_payload_fields_are_read_case_insensitively():
    dataset = dataset_from_api({"Id": "d1", "NAME": "M", "IsRefreshable": False, "ConfiguredBy": "me"})
    assert dataset == Dataset("d1", "M", False, "me", None)
    assert dataset_from_api({"id": "d2", "name": "N"}).is_refreshable is True  # absent: not known to be false
    workspace = workspace_from_api({"ID": "w", "Name": "W", "IsOnDedicatedCapacity": True, "CapacityId": "c"})
    assert workspace == Workspace("w", "W", True, "c")
    assert workspace_from_api({"id": "w", "name": "W"}).is_on_dedicated_capacity is False


@pytest.mark.parametrize(
    ("status", "extended", "state"),
    [
        ("Unknown", None, RefreshState.RUNNING),
        ("Unknown", "NotStarted", RefreshState.RUNNING),
        ("InProgress", None, RefreshState.RUNNING),
        (None, None, RefreshState.RUNNING),
        ("Completed", None, RefreshState.COMPLETED),
        ("Unknown", "Completed", RefreshState.COMPLETED),
        ("Failed", None, RefreshState.FAILED),
        ("Failed", "TimedOut", RefreshState.TIMED_OUT),
        ("Cancelled", None, RefreshState.CANCELLED),
        ("Unknown", "Cancelled", RefreshState.CANCELLED),
        ("Disabled", None, RefreshState.DISABLED),
        ("completed", None, RefreshState.COMPLETED),
        ("Completed", "InProgress", RefreshState.RUNNING),  # extendedStatus wins
        ("SomethingNew", None, RefreshState.RUNNING),
    ],
)
def test_state_comes_from_extended_status_else_status(status, extended, state):
    entry = {"requestId": "r", "status": status}
    if extended:
        entry["extendedStatus"] = extended
    assert refresh_from_history_entry(entry).state is state
    assert parse_state(status, extended) is state


def test_terminal_states():
    assert not RefreshState.RUNNING.is_terminal
    assert all(s.is_terminal for s in RefreshState if s is not RefreshState.RUNNING)
    assert RefreshState.TIMED_OUT == "TimedOut"


def test_history_entry_from_the_swagger_example():
    entry = refresh_from_history_entry(
        {
            "refreshType": "ViaApi",
            "startTime": "2017-06-13T09:25:43.153Z",
            "endTime": "2017-06-13T09:31:43.153Z",
            "serviceExceptionJson": '{"errorCode":"ModelRefreshFailed_CredentialsNotSpecified"}',
            "status": "Failed",
            "requestId": "11bf290a-346b-48b7-8973-c5df149337ff",
            "refreshAttempts": [{"attemptId": 1, "type": "Data"}],
        }
    )
    assert entry.request_id == "11bf290a-346b-48b7-8973-c5df149337ff"
    assert entry.state is RefreshState.FAILED and entry.error_code == "ModelRefreshFailed_CredentialsNotSpecified"
    assert entry.error_message is None and entry.attempts == 1 and entry.refresh_type == "ViaApi"
    assert entry.start_time == datetime(2017, 6, 13, 9, 25, 43, 153000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ("not json {", None, "not json {"),
        ('"just a string"', None, '"just a string"'),
        ('{"unexpected": 1}', None, '{"unexpected": 1}'),
        ('{"ErrorCode":"X","ErrorDescription":"Y"}', "X", "Y"),
        ("", None, None),
    ],
)
def test_service_exception_json_is_parsed_tolerantly(raw, code, message):
    entry = refresh_from_history_entry({"requestId": "r", "status": "Failed", "serviceExceptionJson": raw})
    assert (entry.error_code, entry.error_message) == (code, message)


def test_attempt_level_service_exception_is_used_when_the_top_level_has_none():
    entry = refresh_from_history_entry(
        {
            "requestId": "r",
            "status": "Failed",
            "refreshAttempts": [
                {"attemptId": 1, "serviceExceptionJson": '{"errorCode":"First"}'},
                {"attemptId": 2, "serviceExceptionJson": '{"errorCode":"Last"}'},
            ],
        }
    )
    assert entry.error_code == "Last"


def test_details_prefer_error_messages_and_ignore_warnings():
    details = refresh_from_details(
        {
            "status": "Failed",
            "extendedStatus": "Failed",
            "type": "Full",
            "numberOfAttempts": 3,
            "messages": [
                {"message": "just a warning", "type": "Warning"},
                {"code": "0x1", "message": "first error", "type": "Error"},
                {"message": "second error", "type": "Error"},
            ],
        },
        "r1",
    )
    assert details.request_id == "r1" and details.refresh_type == "Full" and details.attempts == 3
    assert (details.error_code, details.error_message) == ("0x1", "first error; second error")
    completed = refresh_from_details({"status": "Completed", "messages": [{"message": "w", "type": "Warning"}]}, "r")
    assert completed.succeeded and completed.error_message is None


def test_http_202_means_running_whatever_the_body_says():
    assert refresh_from_details({"status": "Completed"}, "r", in_progress=True).state is RefreshState.RUNNING


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-12-14T03:46:04.833", datetime(2021, 12, 14, 3, 46, 4, 833000, tzinfo=UTC)),
        ("2024-01-01T00:00:00.1234567Z", datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2024-01-01T01:00:00+01:00", datetime(2024, 1, 1, 0, 0, tzinfo=UTC)),
        ("", None),
        ("yesterday", None),
    ],
)
def test_timestamps_are_aware_and_tolerant(text, expected):
    assert refresh_from_history_entry({"requestId": "r", "startTime": text}).start_time == expected


# -- error mapping -------------------------------------------------------------------------------


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            _error_body("InvalidRequest", "Another refresh request is already executing"),
            RefreshBusyError,
        ),
        (409, _error_body("Conflict", "Another refresh request is already executing"), RefreshBusyError),
        (
            400,
            _error_body("Request Throttled", "Number of refresh requests in last 24 hours exceeded limit"),
            DailyLimitError,
        ),
        (400, _error_body("Request Throttled", "Throttled"), DailyLimitError),
        (400, _error_body("InvalidRequest", "bad"), BadRequestError),
        (409, _error_body("Conflict", "something else"), BadRequestError),
        (401, b"", AuthenticationError),
        (403, _error_body("TokenExpired", "expired"), AuthenticationError),
        (404, b"", NotFoundError),
        (429, b'{"message": "Retry in 3392 seconds."}', ThrottledError),
        (500, b"<html>oops</html>", ServerError),
        (504, b"", ServerError),
        (302, b"", PowerBIError),
    ],
)
def test_error_from_response_picks_the_class(status, body, kind):
    error = error_from_response(status, requests.structures.CaseInsensitiveDict(), body)
    assert type(error) is kind and error.status == status


def test_error_carries_code_retry_after_and_request_id():
    headers = requests.structures.CaseInsensitiveDict({"Retry-After": "3392", "x-ms-request-id": "abc"})
    error = error_from_response(429, headers, b'{"message": "Retry in 3392 seconds."}', what="GET groups")
    assert (error.retry_after, error.request_id, error.code) == (3392.0, "abc", None)
    assert str(error) == ("GET groups failed: Retry in 3392 seconds. (HTTP 429, retry after 3392 s, request id abc)")
    assert "ThrottledError" in repr(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 90.0),
        ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_numeric_or_http_date(value, expected):
    now = datetime(2015, 10, 21, 7, 26, 30, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == expected


def test_only_server_and_transport_errors_are_retryable():
    assert ServerError("x").is_retryable and TransportError("x").is_retryable
    for kind in (
        ThrottledError,
        RefreshBusyError,
        DailyLimitError,
        AuthenticationError,
        NotFoundError,
        BadRequestError,
        NameResolutionError,
        NotRefreshableError,
        PowerBIError,
    ):
        assert not kind("x").is_retryable
        assert kind.__doc__ and "\n" not in kind.__doc__.strip()
