"""The chaos suite, short version (issue 9, "Nothing lost, nothing stuck"; docs/reliability.md).

``test_short_chaos_run_meets_the_goal`` runs every scenario of benchmarks/chaos.py side by side for a
few seconds against ``python -m refresh local`` (its own Azurite, the Power BI simulator behind the
fault-injecting proxy, real ``deltalake`` commits) and asserts the goal: 0 lost, 0 stuck, 0 rows
left non-terminal, 0 accepted refreshes without a row. The instrument itself is checked first: the
proxy's faults against the simulator, and what the figures count on hand-made truths.
"""

from __future__ import annotations

import time

import pytest

from refresh.dev.testing.chaos.env import Commit, DatasetSpec, request
from refresh.dev.testing.chaos.figures import measure
from refresh.dev.testing.chaos.proxy import BUSY_BODY, Fault, FaultProxy
from refresh.dev.testing.chaos.runner import RunOptions, run_chaos
from refresh.dev.testing.chaos.scenarios import SCENARIOS

# ---------------------------------------------------------------------------------------- the proxy


@pytest.fixture
def proxied(sim):
    workspace = sim.add_workspace("Chaos", dedicated=True)
    dataset = sim.add_dataset(workspace, "Model")
    proxy = FaultProxy(sim.root_url).start()
    token = sim.issue_token()
    yield sim, proxy, f"{proxy.root_url}/v1.0/myorg/groups/{workspace}/datasets/{dataset}/refreshes", dataset, token
    proxy.stop()


def _post(url: str, token: str) -> tuple[int, object]:
    return request("POST", url, {"type": "Full"}, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_proxy_forwards_and_injects_each_fault_kind(proxied):
    sim, proxy, url, dataset, token = proxied

    proxy.arm(Fault("status", method="POST", path_contains="/refreshes", status=429, retry_after=7))
    proxy.arm(Fault("status", method="POST", path_contains="/refreshes", status=503))
    proxy.arm(Fault("busy", method="POST", path_contains="/refreshes"))
    proxy.arm(Fault("drop", method="POST", path_contains="/refreshes"))
    assert _post(url, token)[0] == 429
    assert proxy.log[-1].fault == "status"
    assert _post(url, token)[0] == 503
    assert _post(url, token) == (400, BUSY_BODY)
    assert _post(url, token) == (0, None)  # closed without an answer
    assert sim.refreshes(dataset) == []  # none of them reached Power BI

    proxy.arm(Fault("forward_then_drop", method="POST"))
    assert _post(url, token) == (0, None)
    [accepted] = sim.refreshes(dataset)  # Power BI took it; the caller never heard
    status, history = request("GET", url, headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and history["value"][0]["requestId"] == accepted["requestId"]
    assert proxy.counts() == {"status": 2, "busy": 1, "drop": 1, "forward_then_drop": 1}


def test_proxy_takes_the_identity_endpoint_down_for_a_window(proxied):
    sim, proxy, url, _, token = proxied
    identity = f"{proxy.root_url}/msi/token?api-version=2019-08-01&resource=https://analysis.windows.net/powerbi/api"
    headers = {"X-IDENTITY-HEADER": sim.identity_header}
    assert request("GET", identity, headers=headers)[0] == 200
    outage = proxy.token_outage(60)
    assert request("GET", identity, headers=headers) == (0, None)
    assert request("GET", url, headers={"Authorization": f"Bearer {token}"})[0] == 200  # the API is up
    outage.until = time.monotonic()  # the window ends
    assert request("GET", identity, headers=headers)[0] == 200


def test_proxy_rejects_unknown_fault_kinds():
    with pytest.raises(ValueError, match="unknown fault kind 'teapot'"):
        Fault("teapot")
    with pytest.raises(ValueError, match="times >= 1 or an until"):
        Fault("drop", times=0)


# -------------------------------------------------------------------------------------- the figures


def test_figures_count_lost_unneeded_stuck_unfinished_and_unrecorded():
    specs = [DatasetSpec("a", ("t/one",)), DatasetSpec("b", ("t/one", "t/**"))]
    commits = [Commit("t/one", 0, 100.0, "s"), Commit("t/one", 1, 200.0, "s"), Commit("t/two", 0, 300.0, "s")]

    def entry(request_id: str, start: float, status: str = "Completed") -> dict:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + ".000Z"
        return {"requestId": request_id, "startTime": stamp, "status": status}

    refreshes = {
        # a: v0 refreshed; v1 only by a refresh that started before it, then a Failed one: v1 is lost
        "a": [entry("a1", 150), entry("a2", 160), entry("a3", 250, "Failed")],
        # b: one refresh after everything covers all three commits
        "b": [entry("b1", 400)],
    }
    rows = [{"PartitionKey": "a", "job_id": "j1", "status": "Completed", "request_id": "a1"},
            {"PartitionKey": "a", "job_id": "j0", "status": "Completed", "request_id": "a1"},  # a1 again
            {"PartitionKey": "a", "job_id": "j2", "status": "Running", "request_id": "a3"},
            {"PartitionKey": "b", "job_id": "j3", "status": "Completed", "request_id": "b1"},
            {"PartitionKey": "b", "job_id": "j4", "status": "Failed", "request_id": "b1"}]  # b1 Completed
    states = {"a": {"pending": None, "running": {"job_id": "j2"}}, "b": {"pending": None, "running": None}}

    figures = measure(specs, commits, refreshes, rows, states)
    assert (figures.commits, figures.pairs) == (3, 5)
    assert (figures.lost_commits, figures.lost_pairs) == (1, 1)
    assert figures.lost_detail == ["s: t/one v1 -> a"]
    assert (figures.refreshes, figures.unneeded) == (4, 1)  # a2 refreshed nothing new after a1
    assert figures.stuck == ["a (running j2)"]
    assert figures.non_terminal == ["a job j2: Running"]
    assert figures.without_row == ["a a2 (Completed)"]
    assert figures.credited_twice == ["a1 claimed by a job j1, a job j0", "b1 claimed by b job j3, b job j4"]
    assert figures.misreported == ["b job j4: row Failed, Power BI Completed"]
    assert not figures.goal_met

    only_b = measure([specs[1]], commits, refreshes, rows, states)
    assert only_b.goal_met and only_b.lost_pairs == 0 and only_b.unneeded == 0
    assert only_b.credited_twice == ["b1 claimed by b job j3, b job j4"]
    assert len(only_b.misreported) == 1


# ------------------------------------------------------------------------------------ the short run


def test_short_chaos_run_meets_the_goal(validator):
    from refresh.dev.swagger import SwaggerMismatch

    def swagger_problems(requests: list) -> list[str]:
        problems = []
        for recorded in requests:
            try:
                validator.validate(recorded.method, recorded.path, recorded.query, recorded.body)
            except SwaggerMismatch as exc:
                problems.append(f"{recorded.method} {recorded.path}: {exc}")
        return problems[:5]

    options = RunOptions(seconds=15, quiet=60, seed=9, parallel=True, token_outage=10)
    report = run_chaos(options, say=lambda text: None, check_requests=swagger_problems)
    print(report.text())

    # the instrument did its job: commits flowed in every scenario, runtimes were killed, faults were injected
    assert set(report.per_scenario) == set(SCENARIOS)
    assert all(f.commits > 0 for f in report.per_scenario.values()), report.text()
    assert report.kills >= 2 and report.faults, report.text()
    assert report.errors == [], report.text()

    # the goal (issue 9): nothing lost, nothing stuck, nothing unfinished, nothing accepted without a row
    total = report.total
    assert (total.lost_pairs, total.stuck, total.non_terminal, total.without_row) == (0, [], [], []), report.text()
