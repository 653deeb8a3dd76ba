"""Issue 9 items 1 and 6: a job never takes a refresh that is not its own.

Adoption is for one case only: the job's own POST may have been accepted without the answer being
seen (timeout, dropped connection, a crash between the POST and recording it). A POST answered busy,
500, 503 or never sent (no token) was not accepted: the job waits and posts again."""

from __future__ import annotations

import logging

import pytest
from worker_world import advance, aligned_world, refresh_ids

from refresh.core import storage as tables
from refresh.core.clock import parse_iso
from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import bring_identity_up, lose_next_answer, start_other_refresh, take_identity_down


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = aligned_world(azurite, sim, registered, unique)
    yield w
    set_app(None)


def test_a_refresh_another_client_started_5_s_earlier_is_not_adopted(world, caplog):
    job = world.commit()  # sales: debounce 60 s, enhanced refreshes
    advance(world, 55)
    other = start_other_refresh(world.sim, world.sales_ds, refresh_type="ViaEnhancedApi", duration=40)
    world.pump.step()  # the POST, 5 s later: busy
    waiting = world.row(job.job_id)
    assert waiting["status"] == "Waiting" and other in waiting["detail"] and "another client" in waiting["detail"]
    world.pump.run()
    row = world.row(job.job_id)
    [ours] = refresh_ids(world, world.sales_ds)
    assert row["status"] == "Completed" and row["adopted"] is False
    assert row["request_id"] == ours != other  # the row describes the job's own refresh
    [entry] = [e for e in world.sim.refreshes(world.sales_ds) if e["requestId"] == ours]
    other_entry = next(e for e in world.sim.refreshes(world.sales_ds) if e["requestId"] == other)
    assert parse_iso(entry["startTime"]) >= parse_iso(other_entry["endTime"])  # ours ran after the other
    assert all("adopted" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", ["500", "503", "busy", "token"])
def test_after_one_failed_post_the_job_posts_again_instead_of_claiming_the_previous_refresh(world, fault):
    world.sim.refresh_duration = 5
    first = world.commit(dataset="ops", table="ops/a", model_tables=None)
    world.pump.run()
    assert world.row(first.job_id)["status"] == "Completed"
    advance(world, 10)  # the next job comes 10 s later: the first refresh started well within 120 s
    if fault == "busy":
        world.sim.busy_next()
    elif fault == "token":
        world.app.__dict__["credential"] = _fast_credential()
        for name in ("powerbi", "worker"):
            world.app.__dict__.pop(name, None)
        take_identity_down(world.sim)
        world.pump.advance.append(lambda _s: bring_identity_up(world.sim))  # up again at the next delivery
    else:
        world.sim.fail_next(int(fault), method="POST")
    second = world.commit(dataset="ops", table="ops/a", versions=(2,), model_tables=None)
    world.pump.run()
    row, before = world.row(second.job_id), world.row(first.job_id)
    ids = refresh_ids(world, world.ops_ds)
    assert len(ids) == 2 and len(world.sim.refreshes(world.ops_ds)) == 2
    assert row["status"] == "Completed" and row["adopted"] is False
    assert row["request_id"] == ids[1] != before["request_id"] == ids[0]


def test_a_post_whose_answer_was_lost_is_adopted_with_its_reason(world, caplog):
    caplog.set_level(logging.INFO, logger="refresh.outcome")
    lose_next_answer(world.sim)  # Power BI starts the refresh, the answer never arrives
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    [ours] = refresh_ids(world, world.sales_ds)
    assert len(world.sim.refreshes(world.sales_ds)) == 1
    assert row["status"] == "Completed" and row["adopted"] is True and row["request_id"] == ours
    assert "got no answer" in row["adopted_reason"] and ours in row["adopted_reason"]
    [line] = [r for r in caplog.records if r.name == "refresh.outcome"]
    assert line.refresh_outcome["adopted"] is True and line.refresh_outcome["request_id"] == ours


def test_a_lost_answer_never_adopts_a_scheduled_refresh(world):
    world.sim.refresh_duration = 30
    world.sim.drop_next_connection(method="POST")  # not accepted, and we cannot know it
    job = world.commit()
    world.pump.step()  # POST: dropped
    scheduled = start_other_refresh(world.sim, world.sales_ds, refresh_type="Scheduled", duration=30)
    world.pump.run()
    row = world.row(job.job_id)
    [ours] = refresh_ids(world, world.sales_ds)
    assert row["status"] == "Completed" and row["adopted"] is False and row["request_id"] == ours != scheduled


def _fast_credential():
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(retry_total=0)  # the real credential, without azure-core's own retry sleeps


def test_a_lost_answer_never_adopts_another_clients_enhanced_refresh_that_asked_for_something_else(world):
    world.sim.refresh_duration = 30
    world.sim.drop_next_connection(method="POST")  # not accepted, and we cannot know it
    job = world.commit()
    world.pump.step()  # POST: dropped
    other = start_other_refresh(world.sim, world.sales_ds, refresh_type="ViaEnhancedApi", duration=30)
    world.pump.run()  # the other one: type Automatic, another table; ours: type Full, table Orders
    row = world.row(job.job_id)
    [ours] = refresh_ids(world, world.sales_ds)
    assert row["status"] == "Completed" and row["adopted"] is False and row["request_id"] == ours != other


def test_a_lost_answer_is_adopted_only_when_the_details_match_what_was_posted(world):
    lose_next_answer(world.sim)
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    assert row["adopted"] is True and "details match the POST (type Full, tables Orders)" in row["adopted_reason"]


@pytest.mark.parametrize("status", [503, 429])
def test_an_unreadable_history_never_leads_to_a_second_post_while_the_first_may_have_started_a_refresh(world, status):
    """The chaos suite's "accepted refresh without a row": a POST whose answer was lost, then the history read
    that should find its refresh fails; posting again then started a second refresh and left the first one,
    which Power BI ran to its end, in no row. The job must wait and look again instead."""
    world.sim.refresh_duration = 1  # the lost POST's refresh is over before the job looks again: no busy answer
    lose_next_answer(world.sim)  # Power BI starts the refresh, the answer never arrives
    world.sim.fail_next(status, method="GET", path_contains="/refreshes", retry_after=2 if status == 429 else None)
    job = world.commit()
    world.pump.run()
    [refresh] = world.sim.refreshes(world.sales_ds)  # one refresh only: the job never posted a second time
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["adopted"] is True
    assert row["request_id"] == refresh["requestId"]


def test_when_the_history_stays_unreadable_the_row_says_the_outcome_is_unknown(world):
    world.sim.refresh_duration = 1
    lose_next_answer(world.sim)
    world.sim.fail_next(503, times=50, method="GET", path_contains="/refreshes")
    job = world.commit()
    world.pump.run()
    assert len(world.sim.refreshes(world.sales_ds)) == 1  # still never a second POST
    row = world.row(job.job_id)
    assert row["status"] == "Failed" and row["error_code"] == "HistoryUnreadable"
    assert "got no answer" in row["error_message"] and "unknown" in row["error_message"]
    assert tables.get_json(world.state("sales"), "running") is None  # the dataset is free again
