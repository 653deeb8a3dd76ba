"""Every job that runs or ends has its outcome row (issue 9, chaos figures "without row" and "non-terminal").

A job is recorded in its dataset's state first and gets its outcome row right after (the ``on_created``
hook of refresh/jobs/pending.py). An instance killed in between, or one that is merely slower than the
worker, left a job without a row: the worker then ran its refresh (woken as the follow-up of the job
before it) and ended it, each row write silently finding no row, so Power BI had a Completed refresh no
row named; or the worker merged it into the job it was posting and wrote its Skipped end into no row,
and the creator then wrote the row as Queued, for good.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from worker_world import aligned_world, refresh_ids

from refresh.core import storage as tables
from refresh.core.clock import parse_iso
from refresh.core.context import set_app
from refresh.jobs import messages
from refresh.jobs.outcomes import queued_fields


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = aligned_world(azurite, sim, registered, unique)
    yield w
    set_app(None)


def _killed_after_the_state_write(world):
    """The next job created stops (kill -9) right after the state write, before its row and message."""
    def killed(dataset, job):
        raise SystemExit("killed")

    world.app.states.on_created = killed


def test_a_job_whose_creator_died_before_its_row_runs_with_a_true_row(world, caplog):
    caplog.set_level(logging.INFO, logger="refresh.outcome")
    create_row = world.app.states.on_created
    world.sim.refresh_duration = 30
    first = world.commit(versions=(1,))
    world.pump.run(until=world.clock.now() + timedelta(seconds=70))
    assert world.row(first.job_id)["status"] == "Running"
    _killed_after_the_state_write(world)
    with pytest.raises(SystemExit):
        world.commit(versions=(2,))
    world.app.states.on_created = create_row  # other instances carry on
    second = world.app.states.pending("sales")
    assert world.row(second.job_id) is None
    world.pump.run()  # the first job ends and wakes the second, its follow-up
    ids = refresh_ids(world, world.sales_ds)
    assert len(ids) == 2
    row = world.row(second.job_id)
    assert row is not None, "the second refresh ran without an outcome row"
    assert row["status"] == "Completed" and row["request_id"] == ids[1]
    assert row["sources"] == {"sales/fact_orders": {"first_version": 2, "last_version": 2, "commits": 1}}
    lines = [r.refresh_outcome for r in caplog.records if r.name == "refresh.outcome"]
    assert [(x["job_id"], x["request_id"]) for x in lines] == [(first.job_id, ids[0]), (second.job_id, ids[1])]
    rows = list(world.app.outcomes.table.query_entities("PartitionKey eq 'sales'"))
    assert len(rows) == 2  # one row per job


def test_a_job_merged_away_before_its_creator_wrote_its_row_ends_skipped(world):
    world.sim.busy_next(times=1)
    deferred: list = []
    create_row = world.app.states.on_created
    first = world.commit(versions=(1,))
    world.app.states.on_created = lambda dataset, job: deferred.append((dataset, job))  # a slow creator
    start = world.app.worker.powerbi.start_refresh

    def post_while_a_change_arrives(*args, **kwargs):
        world.commit(table="sales/dim_store", versions=(7,), model_tables=None)  # recorded, no row yet
        world.app.worker.powerbi.start_refresh = start
        return start(*args, **kwargs)  # answered busy: the first job steps back and absorbs the second

    world.app.worker.powerbi.start_refresh = post_while_a_change_arrives
    world.pump.step()
    [(dataset, second)] = deferred
    assert world.app.states.pending("sales").job_id == first.job_id
    create_row(dataset, second)  # the creator gets there now
    world.app.states.on_created = create_row
    world.pump.run()
    row = world.row(second.job_id)
    assert row["status"] == "Skipped" and row["detail"] == f"merged into job {first.job_id}"
    done = world.row(first.job_id)
    assert done["status"] == "Completed" and set(done["sources"]) == {"sales/fact_orders", "sales/dim_store"}


def test_creating_a_row_twice_keeps_one_row_under_the_first_key(world):
    world.commit(versions=(1,))
    job = world.app.states.pending("sales")
    outcomes = world.app.outcomes
    fresh = type(outcomes)(outcomes.table, outcomes.index)  # another instance: nothing cached
    again = fresh.create("sales", job.job_id, world.clock.now() + timedelta(seconds=3), queued_fields(job))
    assert again["RowKey"] == world.app.outcomes.locate(job.job_id)[1]
    rows = list(outcomes.table.query_entities("PartitionKey eq 'sales'"))
    assert len(rows) == 1 and rows[0]["job_id"] == job.job_id and tables.value(rows[0], "status") == "Queued"


# ------------------------------------------------------------------------------------------------------
# a kill between saving the live check's token and sending its message (chaos: a dataset "stuck" running,
# its row still Queued or Waiting, its Completed refresh named by no row, for a minute and more)


def _kill_before_check_send(world, nth: int) -> list[str]:
    """The handler dies right before sending the ``nth`` check message (its token is already saved)."""
    send = world.app.queue.send_message
    seen: list[str] = []

    def killed(content, visibility_timeout=None, **kwargs):
        if messages.decode(content).type == "check":
            seen.append(content)
            if len(seen) == nth:
                raise RuntimeError("killed before sending the check")
        return send(content, visibility_timeout=visibility_timeout, **kwargs)

    world.app.queue.send_message = killed
    return seen


def _lag(world, job_id: str) -> float:
    row = world.row(job_id)
    [pbi] = world.sim.refreshes(world.sales_ds)
    assert row["status"] == "Completed" and row["request_id"] == pbi["requestId"], row
    state = world.state("sales")
    assert tables.get_json(state, "running") is None and world.pump.pending() == 0
    return (parse_iso(row["ended_at"]) - parse_iso(pbi["endTime"])).total_seconds()


@pytest.mark.parametrize("nth, duration", [(1, 30), (2, 30), (3, 30)])
def test_a_redelivered_message_whose_handler_died_before_sending_the_live_check_sends_it(world, nth, duration):
    world.sim.refresh_duration = duration
    job = world.commit()
    _kill_before_check_send(world, nth)
    world.pump.run()
    # the redelivery (30 s later, host.json's visibilityTimeout) sends the live check: no minute of grace
    assert _lag(world, job.job_id) <= 20
