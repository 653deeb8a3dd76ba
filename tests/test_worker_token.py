"""Issue 9 item 7: the token endpoint down is transient. Due jobs wait and start when it is back; a
refresh already started is followed to its real end (a check without a token checks again later)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from azure.identity import DefaultAzureCredential
from worker_world import aligned_world, refresh_ids

from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import bring_identity_up, take_identity_down


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = aligned_world(azurite, sim, registered, unique)
    # the app's own credential class, without azure-core's real-time retry sleeps inside one call
    w.app.__dict__["credential"] = DefaultAzureCredential(retry_total=0)
    yield w
    set_app(None)


def _outage(world, seconds: float) -> None:
    """The token endpoint is down from now for ``seconds`` of virtual time."""
    up_at = world.clock.now() + timedelta(seconds=seconds)
    take_identity_down(world.sim)
    world.pump.advance.append(lambda _s: bring_identity_up(world.sim) if world.clock.now() >= up_at else None)


def test_a_due_job_waits_out_a_40_s_token_outage_and_then_refreshes(world):
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)  # due at once
    _outage(world, 40)
    world.pump.step()
    waiting = world.row(job.job_id)
    assert waiting["status"] == "Waiting" and "could not acquire a Power BI token" in waiting["detail"]
    assert "DefaultAzureCredential" in waiting["detail"]  # the credential's own words
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["request_id"] == refresh_ids(world, world.ops_ds)[0]
    assert any(r.status is None for r in world.sim.identity_requests)  # the outage really dropped requests


def test_a_running_refresh_is_followed_through_a_token_outage(world):
    world.sim.refresh_duration = 300
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)  # timeout_minutes 120
    world.pump.run(until=world.clock.now() + timedelta(seconds=100))
    assert world.row(job.job_id)["status"] == "Running"
    world.sim.expire_tokens()  # the cached token is refused: a new one is needed while the endpoint is down
    _outage(world, 3600)       # down for an hour, long past the refresh's end
    world.pump.run()
    row = world.row(job.job_id)
    [ours] = refresh_ids(world, world.ops_ds)
    assert row["status"] == "Completed", row["error_message"]
    assert row["request_id"] == ours  # Power BI completed it: so says the row
    assert len(world.sim.refreshes(world.ops_ds)) == 1
    checks = [r for r in world.sim.requests if r.method == "GET" and r.path.endswith("/refreshes")]
    assert len(checks) <= 40  # re-checks back off (up to 5 minutes apart) instead of hammering for an hour

