"""The loopback Power BI simulator itself: wire shapes, tokens, faults, admin endpoints.

Requests go straight through ``requests`` here; the ``sim`` fixture still validates every one of
them (and every 2xx answer) against the swagger.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from refresh.dev.powerbi_sim.simulator import PowerBISimulator
from refresh.powerbi import RefreshBusyError, RefreshState, ThrottledError

RESOURCE = "https://analysis.windows.net/powerbi/api"
SCOPE = RESOURCE + "/.default"


def auth(sim: PowerBISimulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.issue_token()}"}


def get(sim: PowerBISimulator, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{sim.base_url}/{path}", headers=auth(sim), timeout=5, **kwargs)


def post(sim: PowerBISimulator, path: str, body) -> requests.Response:
    return requests.post(f"{sim.base_url}/{path}", headers=auth(sim), json=body, timeout=5)


def admin(sim: PowerBISimulator, method: str, path: str, body=None) -> requests.Response:
    return requests.request(method, f"{sim.admin_url}/{path}", json=body, timeout=5)


# -- lifecycle and clock -------------------------------------------------------------------------


def test_context_manager_serves_on_loopback_then_frees_the_port():
    with PowerBISimulator() as simulator:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1\.0/myorg", simulator.base_url)
        assert simulator.identity_endpoint == simulator.root_url + "/msi/token"
        assert admin(simulator, "GET", "state").status_code == 200
        url = simulator.admin_url + "/state"
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)


def test_clock_moves_with_advance_only_forward(sim):
    before = sim.clock()
    assert sim.advance(3600) >= before + 3600
    with pytest.raises(ValueError):
        sim.advance(-1)


def test_injected_base_clock():
    ticks = iter(range(100, 10_000, 10))
    simulator = PowerBISimulator(clock=lambda: float(next(ticks)))
    first = simulator.clock()
    assert simulator.advance(5) > first + 5


# -- managed identity ----------------------------------------------------------------------------


def test_identity_endpoint_answers_in_the_app_service_format(sim):
    answer = requests.get(
        sim.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": RESOURCE},
        headers={"X-IDENTITY-HEADER": sim.identity_header},
        timeout=5,
    )
    assert answer.status_code == 200
    payload = answer.json()
    assert set(payload) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert payload["token_type"] == "Bearer" and payload["resource"] == RESOURCE
    assert isinstance(payload["expires_on"], str) and abs(int(payload["expires_on"]) - time.time() - 3600) < 5
    recorded = sim.identity_requests[-1]
    assert recorded.headers["X-IDENTITY-HEADER"] == "<redacted>" and sim.requests == []


def test_identity_endpoint_checks_the_secret_header_and_parameters(sim):
    params = {"api-version": "2019-08-01", "resource": RESOURCE}
    wrong = requests.get(sim.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": "x"}, timeout=5)
    assert wrong.status_code == 401
    missing = requests.get(
        sim.identity_endpoint,
        params={"api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": sim.identity_header},
        timeout=5,
    )
    assert missing.status_code == 400


def test_real_managed_identity_credential_gets_simulator_tokens(sim, credential):
    sim.token_lifetime = 7200
    token = credential.get_token(SCOPE)
    assert token.token.startswith("sim-")
    assert abs(token.expires_on - time.time() - 7200) < 5
    assert sim.identity_requests[-1].query == {"api-version": "2019-08-01", "resource": RESOURCE}
    assert credential.get_token(SCOPE).token == token.token  # cached by azure-identity
    assert len(sim.identity_requests) == 1


# -- bearer tokens -------------------------------------------------------------------------------


def test_only_issued_unexpired_tokens_are_accepted(sim):
    url = f"{sim.base_url}/groups"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401 and "invalid_token" in missing.headers["WWW-Authenticate"]
    bogus = requests.get(url, headers={"Authorization": "Bearer made-up"}, timeout=5)
    assert bogus.status_code == 401

    token = {"Authorization": f"Bearer {sim.issue_token()}"}
    assert requests.get(url, headers=token, timeout=5).status_code == 200
    sim.advance(3600)
    expired = requests.get(url, headers=token, timeout=5)
    assert expired.status_code == 403
    assert expired.json() == {
        "error": {"code": "TokenExpired", "message": "Access token has expired, resubmit with a new access token"}
    }

    fresh = {"Authorization": f"Bearer {sim.issue_token()}"}
    assert requests.get(url, headers=fresh, timeout=5).status_code == 200
    sim.expire_tokens()
    assert requests.get(url, headers=fresh, timeout=5).status_code == 403
    assert all(r.headers.get("Authorization", "<redacted>") == "<redacted>" for r in sim.requests)


# -- groups and datasets -------------------------------------------------------------------------


def test_groups_filter_understands_odata_quoting(sim):
    obrien = sim.add_workspace("O'Brien")
    sales = sim.add_workspace("Sales", dedicated=True)
    sim.add_workspace("Sales EU")
    contoso = sim.add_workspace("contoso")

    def names(odata_filter: str) -> list[str]:
        answer = get(sim, "groups", params={"$filter": odata_filter})
        assert answer.status_code == 200, answer.text
        return [g["name"] for g in answer.json()["value"]]

    assert names("name eq 'O''Brien'") == ["O'Brien"]
    assert names("contains(name,'sales') or name eq 'contoso'") == ["Sales", "Sales EU", "contoso"]
    assert names("name eq 'Sales' and contains(name,'Sal')") == ["Sales"]
    assert names(f"id eq '{sales.upper()}'") == ["Sales"]
    assert names(f"id eq {contoso}") == ["contoso"]
    assert names(f"id eq '{obrien}' or id eq '{contoso}'") == ["O'Brien", "contoso"]

    group = get(sim, "groups", params={"$filter": "name eq 'Sales'"}).json()["value"][0]
    assert group == {
        "id": sales,
        "isReadOnly": False,
        "isOnDedicatedCapacity": True,
        "name": "Sales",
        "capacityId": group["capacityId"],
        "defaultDatasetStorageFormat": "Small",
    }


@pytest.mark.parametrize(
    "bad_filter",
    [
        "name eq 'O'Brien'",  # an apostrophe inside a literal must be doubled
        "startswith(name,'S')",
        "name eq 'unterminated",
        "name ne 'x'",
        "owner eq 'me'",
        "name eq 'a' or",
    ],
)
def test_unsupported_or_malformed_filters_are_bad_requests(sim, bad_filter):
    answer = get(sim, "groups", params={"$filter": bad_filter})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "InvalidRequest"


def test_groups_top_and_skip(sim):
    for name in "abcde":
        sim.add_workspace(name)
    page = get(sim, "groups", params={"$top": 2, "$skip": 2}).json()
    assert [g["name"] for g in page["value"]] == ["c", "d"]
    assert len(get(sim, "groups").json()["value"]) == 5


def test_group_and_dataset_payloads(sim):
    workspace = sim.add_workspace("Gold")
    dataset = sim.add_dataset(workspace, "Model", refreshable=False)

    assert get(sim, f"groups/{workspace}").json()["name"] == "Gold"
    listing = get(sim, f"groups/{workspace}/datasets").json()
    assert [d["id"] for d in listing["value"]] == [dataset]
    entry = listing["value"][0]
    assert entry["isRefreshable"] is False and entry["name"] == "Model" and "configuredBy" in entry
    assert get(sim, f"groups/{workspace}/datasets/{dataset}").json() == entry

    unknown = get(sim, "groups/00000000-0000-4000-8000-000000000000/datasets")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "PowerBIEntityNotFound"
    assert unknown.headers["RequestId"]
    with pytest.raises(KeyError):
        sim.add_dataset("00000000-0000-4000-8000-000000000000", "x")


# -- refreshes -----------------------------------------------------------------------------------


def test_refresh_post_headers_follow_the_swagger(sim):
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"

    standard = post(sim, path, {"notifyOption": "MailOnFailure"})
    assert standard.status_code == 202 and standard.content == b""
    assert "x-ms-request-id" not in standard.headers and "Location" not in standard.headers
    standard_id = standard.headers["RequestId"]
    sim.advance(sim.refresh_duration)

    enhanced = post(sim, path, {"type": "Full", "objects": [{"table": "Sales", "partition": "2025"}]})
    assert enhanced.status_code == 202
    refresh_id = enhanced.headers["x-ms-request-id"]
    assert enhanced.headers["RequestId"] == refresh_id
    assert enhanced.headers["Location"] == f"{sim.base_url}/{path}/{refresh_id}"
    assert [r["requestId"] for r in sim.refreshes(dataset)] == [refresh_id, standard_id]
    assert [r["refreshType"] for r in sim.refreshes(dataset)] == ["ViaEnhancedApi", "ViaApi"]


@pytest.mark.invalid_requests(3)
def test_refresh_bodies_the_service_refuses_or_tolerates(sim):
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"

    both = post(sim, path, {"notifyOption": "NoNotification", "retryCount": 1})
    assert both.status_code == 400 and "must be excluded" in both.json()["error"]["message"]
    unknown = post(sim, path, {"notifyOptions": "NoNotification"})
    assert unknown.status_code == 400 and "notifyOptions" in unknown.json()["error"]["message"]
    empty = post(sim, path, {})  # the docs allow it (a standard refresh); the swagger does not
    assert empty.status_code == 202 and "x-ms-request-id" not in empty.headers


def test_refresh_lifecycle_in_history_and_details(sim):
    sim.refresh_duration = 100
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"
    refresh_id = post(sim, path, {"type": "Full", "commitMode": "PartialBatch"}).headers["x-ms-request-id"]

    running = get(sim, path).json()["value"][0]
    assert running["status"] == "Unknown" and "endTime" not in running and running["requestId"] == refresh_id
    details = get(sim, f"{path}/{refresh_id}")
    assert details.status_code == 202
    assert (details.json()["status"], details.json()["extendedStatus"]) == ("Unknown", "NotStarted")
    assert details.json()["commitMode"] == "PartialBatch"

    sim.advance(100)
    done = get(sim, f"{path}/{refresh_id}")
    assert done.status_code == 200
    body = done.json()
    assert (body["status"], body["extendedStatus"], body["numberOfAttempts"]) == ("Completed", "Completed", 1)
    assert body["endTime"] > body["startTime"]
    assert all(o["status"] == "Completed" for o in body["objects"])
    finished = get(sim, path).json()["value"][0]
    assert finished["status"] == "Completed" and finished["endTime"] == body["endTime"]


def test_standard_refreshes_have_no_execution_details(sim):
    workspace = sim.add_workspace("Shared")
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"
    refresh_id = post(sim, path, {"notifyOption": "NoNotification"}).headers["RequestId"]
    assert get(sim, f"{path}/{refresh_id}").status_code == 404


def test_history_is_newest_first_and_honours_top(sim):
    sim.refresh_duration = 1
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"
    ids = []
    for _ in range(3):
        ids.append(post(sim, path, {"type": "Full"}).headers["x-ms-request-id"])
        sim.advance(2)
    assert [e["requestId"] for e in get(sim, path, params={"$top": 2}).json()["value"]] == ids[:0:-1]
    assert [e["requestId"] for e in get(sim, path).json()["value"]] == ids[::-1]


def test_failed_refresh_shapes(sim):
    sim.refresh_duration = 10
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"
    sim.fail_refresh(dataset.upper(), {"errorCode": "Boom"})
    refresh_id = post(sim, path, {"type": "Full"}).headers["x-ms-request-id"]
    sim.advance(10)

    entry = get(sim, path).json()["value"][0]
    assert entry["status"] == "Failed" and entry["serviceExceptionJson"] == '{"errorCode": "Boom"}'
    assert entry["refreshAttempts"][0]["serviceExceptionJson"] == entry["serviceExceptionJson"]
    details = get(sim, f"{path}/{refresh_id}").json()
    assert details["messages"] == [{"code": "0xC112000B", "message": "Boom", "type": "Error"}]
    assert details["objects"][0]["status"] == "Failed"
    # Only the next refresh was failed.
    second = post(sim, path, {"type": "Full"}).headers["x-ms-request-id"]
    sim.advance(10)
    assert get(sim, f"{path}/{second}").json()["status"] == "Completed"


def test_cancel_only_while_running(sim):
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    path = f"groups/{workspace}/datasets/{dataset}/refreshes"
    refresh_id = post(sim, path, {"type": "Full"}).headers["x-ms-request-id"]
    url = f"{sim.base_url}/{path}/{refresh_id}"

    assert requests.delete(url, headers=auth(sim), timeout=5).status_code == 200
    details = get(sim, f"{path}/{refresh_id}").json()
    assert details["extendedStatus"] == "Cancelled"
    assert get(sim, path).json()["value"][0]["status"] == "Cancelled"
    assert requests.delete(url, headers=auth(sim), timeout=5).status_code == 400


# -- faults --------------------------------------------------------------------------------------


def test_fail_next_counts_and_scopes(sim):
    workspace = sim.add_workspace("Gold")
    sim.fail_next(503, times=2, method="GET", path_contains="/datasets")
    assert sim.pending_faults() == 2

    assert get(sim, "groups").status_code == 200  # out of scope
    statuses = [get(sim, f"groups/{workspace}/datasets").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert sim.pending_faults() == 0
    with pytest.raises(ValueError):
        sim.fail_next(500, times=0)


def test_fail_next_with_retry_after_and_custom_body(sim):
    sim.fail_next(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", body={"message": "slow down"})
    answer = get(sim, "groups")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert answer.json() == {"message": "slow down"}


def test_faults_reach_the_identity_endpoint_only_when_aimed_there(sim):
    params = {"api-version": "2019-08-01", "resource": RESOURCE}
    headers = {"X-IDENTITY-HEADER": sim.identity_header}
    sim.fail_next(500)
    assert requests.get(sim.identity_endpoint, params=params, headers=headers, timeout=5).status_code == 200
    assert sim.pending_faults() == 1
    sim.fail_next(400, path_contains="/msi/")
    assert requests.get(sim.identity_endpoint, params=params, headers=headers, timeout=5).status_code == 400


def test_drop_next_connection_sends_nothing(sim):
    sim.drop_next_connection()
    with pytest.raises(requests.ConnectionError):
        get(sim, "groups")
    assert get(sim, "groups").status_code == 200
    assert sim.requests[0].status is None


def test_slow_next_delays_one_request_without_blocking_others(sim):
    sim.slow_next(3.0, path_contains="/datasets")
    workspace = sim.add_workspace("Gold")
    done: list[str] = []
    slow = threading.Thread(target=lambda: done.append(get(sim, f"groups/{workspace}/datasets").text))
    slow.start()
    while sim.pending_faults():  # until the slow request has taken the fault
        time.sleep(0.01)
    assert get(sim, "groups").status_code == 200  # answered while the slow one is still held
    assert done == [] and slow.is_alive()
    slow.join()
    assert len(done) == 1


# -- recording and admin -------------------------------------------------------------------------


def test_requests_are_recorded_without_secrets(sim):
    workspace = sim.add_workspace("Gold", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    post(sim, f"groups/{workspace}/datasets/{dataset}/refreshes", {"type": "Full"})
    recorded = sim.requests[-1]
    assert (recorded.method, recorded.status, recorded.body) == ("POST", 202, {"type": "Full"})
    assert recorded.headers["Authorization"] == "<redacted>"
    assert recorded.response_headers["x-ms-request-id"]


def test_admin_endpoints_seed_fault_and_inspect(sim, client, validator):
    workspace = admin(sim, "POST", "workspaces", {"name": "Remote", "dedicated": True}).json()["id"]
    dataset = admin(sim, "POST", "datasets", {"workspace_id": workspace, "name": "Model"}).json()["id"]
    config = admin(sim, "PATCH", "config", {"refresh_duration": 10, "refresh_headers": ["RequestId"]}).json()
    assert config["refresh_duration"] == 10 and config["refresh_headers"] == ["RequestId"]

    assert client.get_workspace("Remote").is_on_dedicated_capacity
    assert admin(sim, "POST", "faults", {"kind": "busy"}).status_code == 204
    with pytest.raises(RefreshBusyError):
        client.start_refresh(workspace, dataset, {"type": "Full"})
    admin(sim, "POST", "faults", {"kind": "fail", "status": 429, "retry_after": 7, "method": "POST"})
    with pytest.raises(ThrottledError) as caught:
        client.start_refresh(workspace, dataset, {"type": "Full"})
    assert caught.value.retry_after == 7

    admin(
        sim, "POST", "faults", {"kind": "fail_refresh", "dataset_id": dataset, "service_exception": {"errorCode": "X"}}
    )
    admin(sim, "POST", "faults", {"kind": "expire_tokens"})
    refresh_id = client.start_refresh(workspace, dataset, {"type": "Full"})
    assert admin(sim, "POST", "advance", {"seconds": 11}).json()["clock"] >= sim.clock() - 1
    assert client.get_refresh(workspace, dataset, refresh_id).state is RefreshState.FAILED

    state = admin(sim, "GET", "state").json()
    assert state["refreshes"][dataset][0]["status"] == "Failed"
    assert [d["workspaceId"] for d in state["datasets"]] == [workspace]
    recorded = admin(sim, "GET", "requests").json()["value"]
    assert [r["status"] for r in recorded if r["method"] == "POST"] == [400, 429, 403, 202]

    token = admin(sim, "POST", "tokens").json()["access_token"]
    assert requests.get(f"{sim.base_url}/groups", headers={"Authorization": f"Bearer {token}"}, timeout=5).ok

    for seen in sim.requests:  # validate before clearing: the fixture only sees what is left
        validator.validate(seen.method, seen.path, seen.query, seen.body)
    assert admin(sim, "DELETE", "requests").status_code == 204
    assert admin(sim, "GET", "requests").json() == {"value": []}


def test_admin_rejects_nonsense(sim):
    assert admin(sim, "POST", "faults", {"kind": "meteor"}).status_code == 400
    assert admin(sim, "POST", "datasets", {"workspace_id": "nope", "name": "x"}).status_code == 400
    assert admin(sim, "POST", "workspaces", {}).status_code == 400
    assert admin(sim, "GET", "nothing").status_code == 404
    other = admin(sim, "POST", "faults", {"kind": "drop", "times": 2, "path_contains": "/groups"})
    assert other.status_code == 204 and sim.pending_faults() == 2
    assert admin(sim, "POST", "faults", {"kind": "slow", "seconds": 0.01}).status_code == 204
    assert sim.pending_faults() == 3
