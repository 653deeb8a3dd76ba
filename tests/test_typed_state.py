"""Typed job state at the Table Storage boundary: the outcome row (refresh/jobs/outcomes.py), read and written
through Azurite after a real job ran against the Power BI simulator."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_worker import World

from refresh.core import storage as tables
from refresh.core.context import set_app
from refresh.jobs.outcomes import OutcomeRow, Status
from refresh.jobs.pending import running_of


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = World(azurite, sim, registered, unique)
    yield w
    set_app(None)


def test_the_outcome_row_of_a_finished_job_reads_back_typed_and_writes_back_unchanged(world):
    job = world.commit()
    world.pump.run()
    row = world.app.outcomes.get_row(job.job_id)
    assert isinstance(row, OutcomeRow)
    assert row.status is Status.COMPLETED and row.is_end
    assert row.sources == {"sales/fact_orders": {"first_version": 1, "last_version": 1, "commits": 1}}
    assert row.model_tables == ["Orders"] and row.triggers == ["commit"] and row.refresh_type == "enhanced"
    assert row.request_id and row.powerbi_duration_seconds is not None and row.extra == {}
    where = world.app.outcomes.locate(job.job_id)
    stored = tables.get_entity(world.app.outcomes.table, *where)
    entity = row.to_entity()
    assert (entity["PartitionKey"], entity["RowKey"]) == where
    assert OutcomeRow.from_entity(entity) == row
    assert {k: v for k, v in entity.items() if k in dict(stored)} == {
        k: getattr(v, "value", v) for k, v in dict(stored).items() if k in entity}


def test_a_column_written_by_a_newer_version_is_kept(world):
    job = world.commit()
    world.pump.run()
    world.app.outcomes.update("sales", job.job_id, lambda row: {"future_column": "kept"})
    row = world.app.outcomes.get_row(job.job_id)
    assert row.extra == {"future_column": "kept"}
    assert row.to_entity()["future_column"] == "kept"


def test_the_running_job_read_by_pending_jobs_is_the_workers_record(world):
    world.sim.refresh_duration = 600
    job = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=120))
    running = running_of(world.state("sales"))
    assert running is not None and running.job_id == job.job_id and running.refresh_id
    assert running.job.sources["sales/fact_orders"].last_version == 1
    assert running.to_dict() == tables.get_json(world.state("sales"), "running")
