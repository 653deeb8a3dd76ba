"""Issue 9 items 2 and 3: busy waits for the refresh that is running; checks timed from Power BI's own
durations, so a refresh's end is reported promptly and the lag never grows from one refresh to the next."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from worker_world import advance, aligned_world

from refresh.core.clock import parse_iso
from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import start_other_refresh
from refresh.jobs import timing
from refresh.powerbi.models import RefreshState, RefreshStatus

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.virtual_clock  # lags are measured on the app's and the simulator's virtual clocks


def entry(rid: str, start: float, end: float | None, kind: str = "ViaApi") -> RefreshStatus:
    return RefreshStatus(request_id=rid, state=RefreshState.RUNNING if end is None else RefreshState.COMPLETED,
                         raw_status="Unknown" if end is None else "Completed", extended_status=None,
                         refresh_type=kind, start_time=T0 + timedelta(seconds=start),
                         end_time=None if end is None else T0 + timedelta(seconds=end), error_code=None,
                         error_message=None, messages=(), attempts=None)


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = aligned_world(azurite, sim, registered, unique)
    yield w
    set_app(None)


# -- the policy itself ----------------------------------------------------------------------------

def test_first_check_lands_just_after_the_expected_end_or_soon_without_history():
    assert timing.first_check_delay(300.0) == 302.0
    assert timing.first_check_delay(None) == timing.FIRST_CHECK_NO_HISTORY == 5.0


def test_checks_after_the_expected_end_are_short_and_back_off():
    assert timing.next_check_delay(100, 300.0) == 202.0           # not there yet: just after the end
    assert timing.next_check_delay(302, 300.0) == pytest.approx(30.2)  # overdue: 10 % of elapsed
    assert timing.next_check_delay(10, 8.0) == 3.0                 # at least MIN_CHECK
    delays, elapsed = [], 5.0
    for _ in range(6):                                             # no history: 5 s, then growing
        delays.append(timing.next_check_delay(elapsed, None))
        elapsed += delays[-1]
    assert delays[0] == 5.0 and delays == sorted(delays) and max(delays) <= timing.MAX_CHECK


def test_busy_with_a_refresh_in_progress_waits_until_its_expected_end():
    history = [entry("now", 100, None, "Scheduled"), entry("b", 0, 60), entry("a", -200, -140)]
    wait = timing.busy_wait(history, T0 + timedelta(seconds=103), 1, random.Random(1))
    assert wait.refresh_id == "now" and wait.delay == pytest.approx(100 + 60 - 103 + 2)
    assert "waiting for refresh now started 12:01:40 by another client (Scheduled)" in wait.detail
    assert "expected to end ~12:02:40" in wait.detail


def test_busy_with_nothing_in_progress_posts_again_within_seconds_then_backs_off():
    rng = random.Random(7)
    quick = [timing.busy_wait([entry("b", 0, 60)], T0, tries, rng) for tries in (1, 2, 3)]
    assert all(w.quick and 2.0 <= w.delay <= 4.0 for w in quick)
    later = timing.busy_wait([], T0, 6, rng)
    assert not later.quick and later.delay > 4.0 and "6 times" in later.detail


# -- through the worker ---------------------------------------------------------------------------

def _report_lags(world, dataset: str, dataset_id: str, count: int) -> list[float]:
    lags = []
    for v in range(1, count + 1):
        job = world.commit(dataset=dataset, table="ops/a" if dataset == "ops" else "sales/fact_orders",
                           versions=(v,), model_tables=None)
        world.pump.run()
        row = world.row(job.job_id)
        assert row["status"] == "Completed"
        [pbi] = [e for e in world.sim.refreshes(dataset_id) if e["requestId"] == row["request_id"]]
        lags.append((parse_iso(row["ended_at"]) - parse_iso(pbi["endTime"])).total_seconds())
        advance(world, 30)
    return lags


@pytest.mark.parametrize("dataset", ["sales", "ops"])
def test_ten_sequential_refreshes_are_reported_promptly_and_the_lag_never_grows(world, dataset):
    world.sim.refresh_duration = 7
    lags = _report_lags(world, dataset, world.sales_ds if dataset == "sales" else world.ops_ds, 10)
    # with no history: within one (short) check interval; then within 3 s of the real end, every time
    assert lags[0] <= timing.FIRST_CHECK_NO_HISTORY
    assert all(0 <= lag <= 3.0 for lag in lags[1:]), lags
    assert max(lags[1:]) <= lags[1] + 0.5, lags


def test_first_check_is_timed_from_power_bi_durations_not_the_observed_ones(world):
    world.sim.refresh_duration = 7
    _report_lags(world, "sales", world.sales_ds, 3)
    rows = world.app.outcomes.history("sales", top=3)
    assert len(rows) == 3
    assert all(r["powerbi_duration_seconds"] == pytest.approx(7, abs=0.1) for r in rows)
    assert world.app.outcomes.recent_durations("sales") == [pytest.approx(7, abs=0.1)] * 3


def test_busy_with_nothing_running_posts_again_within_seconds(world):
    world.sim.busy_next()
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)
    world.pump.run()
    first, second = [p for p in world.posts(world.ops_ds)]
    assert (first.status, second.status) == (400, 202)
    waited = (parse_iso(world.row(job.job_id)["started_at"]) - parse_iso(world.row(job.job_id)["queued_at"]))
    assert waited <= timedelta(seconds=5)  # was 48-72 s: a flat minute with jitter


def test_busy_waits_for_the_other_refresh_and_posts_just_after_its_expected_end(world):
    for _ in range(2):  # history: the other client's refreshes take 40 s
        start_other_refresh(world.sim, world.sales_ds, refresh_type="Scheduled", duration=40)
        advance(world, 100)
    job = world.commit()
    advance(world, 50)
    other = start_other_refresh(world.sim, world.sales_ds, refresh_type="Scheduled", duration=40)
    other_start = world.clock.now()
    world.pump.step()  # the POST 10 s later: busy
    row = world.row(job.job_id)
    expected_end = other_start + timedelta(seconds=40)
    assert row["status"] == "Waiting" and f"waiting for refresh {other}" in row["detail"]
    assert f"expected to end ~{expected_end:%H:%M:%S}" in row["detail"]
    world.pump.run()
    posts = world.posts(world.sales_ds)
    assert [p.status for p in posts] == [400, 202]  # no polling in between: one wait, one new POST
    started = parse_iso(world.row(job.job_id)["started_at"])
    assert expected_end <= started <= expected_end + timedelta(seconds=3)
