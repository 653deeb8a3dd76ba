"""A dataset's stored job record that cannot be read (edited by hand, truncated, written by an incompatible
version) never blocks the dataset: it is reported naming the field, set aside for a human to look at, the job
it belonged to is recorded as unknown, and the dataset refreshes again. Real Azurite, the simulator, the
registered entry points."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from test_api import answer
from test_worker import World

from refresh.core import storage as tables
from refresh.core.context import set_app
from refresh.core.records import CorruptRecord, check_fields
from refresh.jobs.job_model import PendingJob, SourceChange
from refresh.jobs.running import RunningJob


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = World(azurite, sim, registered, unique)
    yield w
    set_app(None)


def _corrupt(world: World, column: str, change) -> None:
    entity = world.state("sales")
    data = dict(entity)
    record = tables.get_json(data, column)
    tables.put_json(data, column, change(record))
    tables.write(world.app.states.table, data, entity.metadata["etag"])


def _bad_attempts(record: dict) -> dict:
    return {**record, "attempts": "three"}


def test_check_fields_names_the_field_and_what_is_wrong():
    job = PendingJob("a" * 32, "commit", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")
    check_fields(PendingJob, job.to_dict(), "pending")  # a job as stored is fine
    with pytest.raises(CorruptRecord, match=r"stored pending record cannot be read: field 'due_at' is missing"):
        check_fields(PendingJob, {k: v for k, v in job.to_dict().items() if k != "due_at"}, "pending")
    with pytest.raises(CorruptRecord, match=r"field 'model_tables' is \['A', 7\], expected list\[str\]"):
        check_fields(PendingJob, {**job.to_dict(), "model_tables": ["A", 7]}, "pending")
    with pytest.raises(CorruptRecord, match=r"field 'whole_model' is 1, expected bool"):
        check_fields(PendingJob, {**job.to_dict(), "whole_model": 1}, "pending")
    with pytest.raises(CorruptRecord,
                       match=r"stored pending.sources\['t'\] record cannot be read: field 'commits' is missing"):
        PendingJob.from_dict({**job.to_dict(), "sources": {"t": {"first_version": 1, "last_version": 2}}})
    with pytest.raises(CorruptRecord, match="expected a JSON object, found list"):
        check_fields(SourceChange, [1, 2, 3], "pending.sources")


def test_a_running_record_that_cannot_be_read_is_set_aside_and_the_dataset_refreshes_again(world, caplog):
    world.sim.refresh_duration = 600
    first = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=61))  # claimed and started: a check is queued
    assert world.row(first.job_id)["status"] == "Running"
    _corrupt(world, "running", _bad_attempts)
    with pytest.raises(CorruptRecord, match="field 'attempts' is 'three', expected int"):
        RunningJob.from_dict(tables.get_json(world.state("sales"), "running"))
    caplog.set_level(logging.ERROR)
    world.pump.run()  # the check finds the record unreadable
    row = world.row(first.job_id)
    assert row["status"] == "Failed" and row["error_code"] == "CorruptState"
    assert "field 'attempts' is 'three'" in row["error_message"] and "unknown" in row["error_message"]
    state = world.state("sales")
    assert tables.get_json(state, "running") is None
    assert '"attempts":"three"' in state["running_quarantined"]  # kept for a human to look at
    assert any("running_quarantined" in r.getMessage() and "attempts" in r.getMessage() for r in caplog.records)
    # the dataset is not blocked: the next commit refreshes
    world.sim.refresh_duration = 5
    later = world.commit(versions=(2,))
    world.pump.run()
    assert world.row(later.job_id)["status"] == "Completed"


def test_a_pending_record_that_cannot_be_read_never_stops_detection_or_the_views(world):
    world.sim.refresh_duration = 5
    old = world.commit()
    _corrupt(world, "pending", lambda record: {**record, "sources": {"sales/fact_orders": {"first_version": "x"}}})
    listed = answer(world.fn["list_datasets"](_get("/api/datasets")))  # the views still answer
    assert sorted(d["key"] for d in listed["datasets"]) == ["ops", "sales"]
    new = world.commit(versions=(2,))  # detection sets the record aside in the same write: nothing is lost
    assert new.created and new.job_id != old.job_id
    assert "first_version" in world.state("sales")["pending_quarantined"]
    world.pump.run()
    assert world.row(new.job_id)["status"] == "Completed"
    stale = world.row(old.job_id)  # its message arrived after the record was set aside: said so, not left Queued
    assert stale["status"] == "Failed" and stale["error_code"] == "CorruptState" and "never ran" in \
        stale["error_message"]


def _get(path: str):
    import azure.functions as func

    return func.HttpRequest("GET", f"http://localhost{path}", headers={}, params={}, route_params={}, body=b"")
