"""The status views at scale: per-dataset summaries written at each job end, read with a fixed number of
queries; freshness per dataset in ``GET /api/datasets`` and on the page; alert delivery problems on the page.
Real Azurite, the Power BI simulator, the registered entry points."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from test_api import ApiWorld, answer

from refresh.core.clock import iso
from refresh.jobs import summaries
from refresh.jobs.outcomes import Status, to_public
from refresh.monitoring.alerts import AlertStore
from refresh.monitoring.freshness import (
    AlertEvent,
    FreshnessRecord,
    RefreshResult,
    commit_time,
    record_commits,
    record_refresh,
)


def _config(n: int, slo: int | None = 60) -> dict:
    return {"datasets": {
        f"ds{i:03d}": {"workspace": "Finance Analytics", "dataset": f"Model {i}",
                       "sources": [{"table": f"gold/t{i:03d}"}], "debounce_seconds": 0, "max_delay_seconds": 0,
                       **({"freshness_slo_minutes": slo} if slo else {})}
        for i in range(n)}}


@pytest.fixture
def views(azurite, sim, powerbi_identity, registered, unique):
    made: list[ApiWorld] = []

    def make(n: int, token_suffix: str = "") -> ApiWorld:
        world = ApiWorld(azurite, sim, registered, unique + token_suffix, config=_config(n))
        made.append(world)
        return world

    yield make
    from refresh.core.context import set_app

    set_app(None)


def _seed(world: ApiWorld, key: str, count: int, status: str = "Completed") -> None:
    now = world.clock.now()
    for r in range(count):
        queued = now - timedelta(hours=count - r)
        row = world.app.outcomes.create(key, f"{abs(hash((key, r))) % 16**32:032x}", queued, {
            "status": status, "trigger": "commit", "triggers": ["commit"], "started_at": iso(queued),
            "ended_at": iso(queued + timedelta(seconds=100 + r)), "duration_seconds": 100.0 + r,
            "refresh_type": "enhanced"})
        summaries.note_end(world.app.states, key, to_public(row))


def _requests(world: ApiWorld, name: str, path: str, **kwargs) -> tuple[object, int]:
    before = len(world.storage_urls)
    resp = world.call(name, "GET", path, **kwargs)
    return resp, len(world.storage_urls) - before


def test_views_cost_the_same_few_requests_at_3_and_40_datasets(views):
    """Old code: one outcome query per dataset (1 + N requests); now one query for /api/datasets and two for
    the overview (dataset states with their summaries, alert problems), whatever the number of datasets."""
    counts = {}
    for n in (3, 40):
        world = views(n, f"n{n}")
        for i in range(n):
            _seed(world, f"ds{i:03d}", 4)
        listed, list_requests = _requests(world, "list_datasets", "/api/datasets")
        page, page_requests = _requests(world, "status_page", "/api/status")
        assert listed.status_code == 200 and page.status_code == 200
        data = answer(listed)["datasets"]
        assert len(data) == n, n
        assert [d["key"] for d in data if not (d["summarized"] and d["last_outcome"]["status"] == "Completed")] == []
        assert all(d["durations"]["completed_counted"] == 4 for d in data)
        counts[n] = (list_requests, page_requests)
    assert counts[3] == counts[40] == (1, 2)


def test_worker_records_each_end_once_in_the_summary(views):
    world = views(2)
    model = world.sim.add_dataset(world.finance, "Model 0")
    world.commit("ds000", "gold/t000", versions=(1,), model_tables=None)
    world.pump.run()
    summary = summaries.read_one(world.app.states, "ds000")
    assert summary.last is not None and summary.last["status"] == Status.COMPLETED
    assert summary.last_success == summary.last and len(summary.recent) == 1
    row = world.app.outcomes.history("ds000", 1)[0]
    assert summary.last["job_id"] == row["job_id"] and summary.last["ended_at"] == row["ended_at"]
    # the same end seen again (a redelivered message) writes nothing and adds nothing
    before = len(world.storage_urls)
    assert summaries.note_end(world.app.states, "ds000", row) is False
    assert len(world.storage_urls) - before == 1  # one read
    assert len(summaries.read_one(world.app.states, "ds000").recent) == 1
    # a failed refresh: last outcome Failed with Power BI's words, last success unchanged
    world.sim.fail_refresh(model, service_exception={"errorCode": "ModelRefreshFailed_CredentialsNotSpecified"})
    world.clock.advance(60)
    world.commit("ds000", "gold/t000", versions=(2,), model_tables=None)
    world.pump.run()
    listed = {d["key"]: d for d in answer(world.call("list_datasets", "GET", "/api/datasets"))["datasets"]}
    assert listed["ds000"]["last_outcome"]["status"] == Status.FAILED
    assert "ModelRefreshFailed_CredentialsNotSpecified" in str(listed["ds000"]["last_outcome"])
    assert listed["ds000"]["last_success_at"] == row["ended_at"]
    assert len(summaries.read_one(world.app.states, "ds000").recent) == 2


def test_datasets_without_a_summary_are_backfilled_a_few_per_view(views):
    """Rows recorded before summaries existed: each view builds at most 3 summaries from outcome rows."""
    world = views(5)
    now = world.clock.now()
    for i in range(5):
        world.app.outcomes.create(f"ds{i:03d}", f"{i + 1:032x}", now - timedelta(hours=1), {
            "status": "Failed", "ended_at": iso(now), "error_message": "boom"})
    first = answer(world.call("list_datasets", "GET", "/api/datasets"))["datasets"]
    assert [d["summarized"] for d in first] == [True, True, True, False, False]
    assert [(d["last_outcome"] or {}).get("status") for d in first] == ["Failed"] * 3 + [None, None]
    second = answer(world.call("list_datasets", "GET", "/api/datasets"))["datasets"]
    assert all(d["summarized"] and d["last_outcome"]["error_message"] == "boom" for d in second)
    _, requests = _requests(world, "list_datasets", "/api/datasets")
    assert requests == 1


def _write_freshness(world: ApiWorld, key: str, record: FreshnessRecord) -> None:
    def put(data: dict) -> bool:
        record.to_entity(data)
        return True

    world.app.states.update(key, put)


def test_list_datasets_gives_each_dataset_its_freshness(views):
    world = views(3)
    now = world.clock.now()
    # ds000: a commit 2 h old not yet refreshed (SLO 60 min): breached
    late = FreshnessRecord.from_entity(None)
    record_commits(late, "gold/t000", [commit_time(5, int((now - timedelta(hours=2)).timestamp() * 1000), None, now)])
    _write_freshness(world, "ds000", late)
    # ds001: refreshed with everything: up to date
    done = FreshnessRecord.from_entity(None)
    record_commits(done, "gold/t001", [commit_time(3, int((now - timedelta(minutes=30)).timestamp() * 1000),
                                                   None, now)])
    record_refresh(done, RefreshResult(job_id="a" * 32, status="Completed", ended_at=now - timedelta(minutes=5),
                                       started_at=now - timedelta(minutes=10), included={"gold/t001": 3}))
    done.state.refreshed_at = iso(now - timedelta(minutes=5))
    _write_freshness(world, "ds001", done)
    data = {d["key"]: d["freshness"] for d in answer(world.call("list_datasets", "GET", "/api/datasets"))["datasets"]}
    assert data["ds000"]["state"] == "breached" and data["ds000"]["breached"] is True
    assert data["ds000"]["lag_seconds"] == 7200 and data["ds000"]["slo_seconds"] == 3600
    assert data["ds001"]["state"] == "up_to_date" and data["ds001"]["lag_seconds"] == 0
    assert data["ds001"]["data_as_of"]["tables"] == {"gold/t001": iso(now - timedelta(minutes=30))}
    assert data["ds001"]["data_as_of"]["overall"] == iso(now - timedelta(minutes=30))
    assert data["ds001"]["refreshed_at"] == iso(now - timedelta(minutes=5))
    assert data["ds002"]["state"] == "unknown" and data["ds002"]["breached"] is False
    html = world.call("status_page", "GET", "/api/status").get_body().decode()
    states = dict(re.findall(r'<tr class="dataset" id="ds-([^"]+)".*?data-freshness="([^"]+)"', html))
    assert states == {"ds000": "breached", "ds001": "up_to_date", "ds002": "unknown"}
    assert "breached for 1 h" in html
    detail = world.call("status_page", "GET", "/api/status", params={"dataset": "ds000"}).get_body().decode()
    assert 'data-freshness="breached"' in detail


def test_page_shows_alert_delivery_failures(views):
    world = views(2)
    now = world.clock.now()
    store = AlertStore(world.app.state_table)
    event = AlertEvent.from_json({"id": "c" * 32, "event": "refresh_failed", "dataset": "ds001",
                                  "occurred_at": iso(now), "lag_seconds": 0})
    store.create(event, "failed", now, last_error="HTTP 500 from the webhook <b>")
    html = world.call("status_page", "GET", "/api/status").get_body().decode()
    assert 'class="alerts"' in html and "refresh_failed" in html
    assert "HTTP 500 from the webhook &lt;b&gt;" in html and "<b>from" not in html
    detail = world.call("status_page", "GET", "/api/status", params={"dataset": "ds001"}).get_body().decode()
    assert "refresh_failed" in detail
    other = world.call("status_page", "GET", "/api/status", params={"dataset": "ds000"}).get_body().decode()
    assert 'class="alerts"' not in other


def test_a_datasets_page_shows_its_alert_problems_however_many_other_datasets_have(views):
    """Old code: the dataset page filtered the overview's newest 10 problems, so 10 newer ones of other datasets
    hid this dataset's own."""
    world = views(2)
    now = world.clock.now()
    store = AlertStore(world.app.state_table)
    store.create(AlertEvent.from_json({"id": "a" * 32, "event": "freshness_breached", "dataset": "ds000",
                                       "occurred_at": iso(now - timedelta(hours=1)), "lag_seconds": 4000}),
                 "failed", now - timedelta(hours=1), last_error="HTTP 500 for ds000")
    for i in range(12):
        store.create(AlertEvent.from_json({"id": f"{i:032x}", "event": "refresh_failed", "dataset": "ds001",
                                           "occurred_at": iso(now), "lag_seconds": 0}),
                     "failed", now + timedelta(seconds=i), last_error="HTTP 500 for ds001")
    detail = world.call("status_page", "GET", "/api/status", params={"dataset": "ds000"}).get_body().decode()
    assert "HTTP 500 for ds000" in detail and "HTTP 500 for ds001" not in detail


def test_overview_at_300_datasets_is_small_and_puts_what_needs_attention_first(views):
    world = views(300)
    for i in range(300):
        _seed(world, f"ds{i:03d}", 4, "Failed" if i % 50 == 7 else "Completed")
    resp, requests = _requests(world, "status_page", "/api/status")
    html = resp.get_body().decode()
    assert requests == 2
    assert len(html.encode()) <= 400_000, len(html.encode())
    assert "Needs attention (6)" in html and "Healthy (294)" in html
    urgent, _, healthy = html.partition('<details class="healthy">')
    assert re.findall(r'id="ds-([^"]+)"', urgent) == [f"ds{i:03d}" for i in range(300) if i % 50 == 7]
    assert urgent.count("<svg") == 6 + 0 and "<svg" not in healthy
    assert len(re.findall(r'<tr class="dataset"', healthy)) == 294


def test_a_job_end_updates_the_summary_in_the_write_that_releases_the_lease(views):
    """The summary costs no request of its own at a job's end: the check reads the dataset's state entity, and
    the end reads and writes it once (the release, with freshness and the summary folded in). Old code: a second
    read and write for the summary."""
    world = views(1)
    world.sim.add_dataset(world.finance, "Model 0")
    world.sim.refresh_duration = 1
    world.commit("ds000", "gold/t000", versions=(1,), model_tables=None)
    while world.app.outcomes.history("ds000", 1)[0]["status"] != Status.RUNNING:
        assert world.pump.step() is not None
    before = len(world.storage_urls)
    world.pump.run()  # the first check sees the refresh Completed: the job ends
    state_entity = [u for u in world.storage_urls[before:] if "PartitionKey='dataset',RowKey='ds000'" in u
                    or "PartitionKey=%27dataset%27,RowKey=%27ds000%27" in u]
    assert world.app.outcomes.history("ds000", 1)[0]["status"] == Status.COMPLETED
    assert len(state_entity) == 3, state_entity  # the check's read; the release's read and write
    summary = summaries.read_one(world.app.states, "ds000")
    assert summary.last is not None and summary.last["status"] == Status.COMPLETED
