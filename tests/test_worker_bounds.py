"""Issue 9 item 12 (worker part): whatever a job holds, no state or row write can fail after its POST:
the running record and the outcome row stay within Table Storage's limits (64 KiB per property,
1 MiB per entity). A job with too many model tables refreshes the whole model."""

from __future__ import annotations

import pytest
from worker_world import aligned_world

from refresh.core import storage as tables
from refresh.core.context import set_app
from refresh.jobs.pending import Change
from refresh.jobs.running import MAX_MODEL_TABLES


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = aligned_world(azurite, sim, registered, unique)
    yield w
    set_app(None)


def test_a_job_with_a_huge_table_list_and_long_texts_is_refreshed_and_recorded(world):
    many = frozenset(f"Table {i:04d} " + "x" * 40 for i in range(MAX_MODEL_TABLES * 5))  # ~50 K characters
    job = world.app.states.record("sales", Change(trigger="manual", debounce_seconds=0, max_delay_seconds=0,
                                                  model_tables=many, requested_by="ops@contoso.com",
                                                  reason="why " * 5000))
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["request_id"]
    [post] = world.posts()
    assert "objects" not in post.body  # past the cap: the whole model
    assert row["model_tables"] == [] and len(row["reasons"][0]) <= 500
    assert tables.get_json(world.state("sales"), "running") is None
