"""The worker's daily-limit and concurrency paths, and the pending-job merge (refresh/jobs/worker.py,
refresh/jobs/endings.py, refresh/jobs/pending.py): Azurite tables and queue, the Power BI simulator, virtual time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_worker import World
from worker_world import advance, aligned_world

from refresh.core import storage as tables
from refresh.core.clock import iso, parse_iso
from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import start_other_refresh
from refresh.jobs.pending import Change


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = aligned_world(azurite, sim, registered, unique)  # the simulator's times follow the app's clock
    yield w
    set_app(None)


def _ops_commit(world: World, *versions: int):
    return world.commit(dataset="ops", table="ops/a", versions=versions, model_tables=None)


def test_power_bis_own_daily_limit_waits_for_the_slot_its_history_shows_with_what_arrived_meanwhile(world):
    """Refreshes started by others count against the shared-capacity limit, though the app's own count
    does not know them: Power BI's "exceeded limit" answer sends the job back to wait until the oldest of
    the last 8 refreshes is 24 h old, merged with a commit that landed while the POST was in flight."""
    world.sim.refresh_duration = 60
    first_other = world.clock.now()
    for _ in range(8):
        start_other_refresh(world.sim, world.ops_ds, duration=60)
        advance(world, 600)
    real_start = world.app.powerbi.start_refresh
    arrived = []

    def commit_lands_during_the_post(*args, **kwargs):
        if not arrived:
            arrived.append(_ops_commit(world, 2))
        return real_start(*args, **kwargs)

    world.app.powerbi.start_refresh = commit_lands_during_the_post
    job = _ops_commit(world, 1)
    world.pump.run(until=world.clock.now() + timedelta(minutes=30))

    row = world.row(job.job_id)
    assert row["status"] == "Waiting" and "daily refresh limit" in row["detail"]
    assert row["error_code"] is None and row["ended_at"] is None  # a wait, not a failure
    slot = first_other + timedelta(hours=24)
    assert abs((parse_iso(row["next_attempt_at"]) - slot).total_seconds()) <= 5
    merged = world.row(arrived[0].job_id)
    assert merged["status"] == "Skipped" and job.job_id in merged["detail"]
    pending = world.app.states.pending("ops")
    assert pending.job_id == job.job_id
    assert (pending.sources["ops/a"].first_version, pending.sources["ops/a"].last_version) == (1, 2)
    assert [p.status for p in world.posts(world.ops_ds)] == [400]

    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Completed"
    assert parse_iso(row["started_at"]) >= slot
    assert row["sources"] == {"ops/a": {"first_version": 1, "last_version": 2, "commits": 2}}
    assert [p.status for p in world.posts(world.ops_ds) if p.status != 403] == [400, 202]  # 403: token renewed


def test_power_bis_daily_limit_without_a_readable_history_waits_an_hour(world):
    for _ in range(8):
        start_other_refresh(world.sim, world.ops_ds, duration=60)
        advance(world, 600)
    job = _ops_commit(world, 1)
    world.sim.fail_next(500, times=3, method="GET", path_contains="/refreshes")  # the history cannot be read
    start = world.clock.now()
    world.pump.run(until=start + timedelta(minutes=30))
    row = world.row(job.job_id)
    assert row["status"] == "Waiting" and "daily refresh limit" in row["detail"]
    assert parse_iso(row["next_attempt_at"]) - start >= timedelta(minutes=59)


def test_a_job_due_while_another_holds_the_lease_waits_for_it_and_runs_after(world):
    """One refresh per dataset: the next job, due while the first is running, waits (Queued, saying for
    which job) and looks again just after the running job's next check; the two never overlap."""
    world.sim.refresh_duration = 900
    first = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=120))
    assert world.row(first.job_id)["status"] == "Running"
    running = tables.get_json(world.state("sales"), "running")
    assert running["job_id"] == first.job_id and running["next_check_at"]

    second = world.commit(versions=(2,))
    world.pump.run(until=world.clock.now() + timedelta(seconds=70))  # due after its 60 s debounce
    waiting = world.row(second.job_id)
    assert waiting["status"] == "Queued" and f"waiting for job {first.job_id}" in waiting["detail"]
    requeued = [d for _, d in world.app.queue.delays if d >= 10]
    assert requeued and max(requeued) <= 600

    world.pump.run()
    done_first, done_second = world.row(first.job_id), world.row(second.job_id)
    assert done_first["status"] == done_second["status"] == "Completed"
    assert parse_iso(done_second["started_at"]) >= parse_iso(done_first["ended_at"])
    refreshes = sorted(world.sim.refreshes(world.sales_ds), key=lambda r: r["startTime"])
    assert len(refreshes) == 2 and refreshes[1]["startTime"] >= refreshes[0]["endTime"]


def _change(world: World, *, trigger: str = "commit", table: str | None = "sales/fact_orders",
            versions: tuple[int, ...] = (1,), model_tables: frozenset[str] | None = frozenset({"Orders"}),
            **kw) -> Change:
    """A change as detection (commits: the dataset's timing) or the HTTP API (manual: due now) records it."""
    cfg = world.app.config.datasets["sales"]
    explicit = trigger != "commit"
    return Change(trigger=trigger, table=table, versions=versions if table else (), model_tables=model_tables,
                  debounce_seconds=0 if explicit else cfg.debounce_seconds,
                  max_delay_seconds=0 if explicit else cfg.max_delay_seconds, **kw)


def test_the_pending_job_merge(world):
    states, start = world.app.states, world.clock.now()
    first = states.record("sales", _change(world, versions=(3, 1, 2)))
    assert first.created and first.due_at == iso(start + timedelta(seconds=60))
    # versions already covered are ignored: nothing new is recorded (detection re-run after a crash)
    again = states.record("sales", _change(world, versions=(2, 3)))
    assert again.job_id is None and not again.created

    world.clock.advance(30)
    dim = states.record("sales", _change(world, table="sales/dim_store", versions=(7, 9), model_tables=None,
                                         reason="new stores"))
    assert dim.job_id == first.job_id and dim.joined == "pending" and not dim.earlier
    assert dim.due_at == iso(start + timedelta(seconds=90))  # debounce restarts from the latest change
    job = states.pending("sales")
    assert (job.sources["sales/fact_orders"].first_version, job.sources["sales/fact_orders"].last_version,
            job.sources["sales/fact_orders"].commits) == (1, 3, 3)
    assert job.sources["sales/dim_store"].commits == 2
    assert job.whole_model and job.model_tables == [] and job.objects() is None  # a whole-model source widens it
    orders = states.record("sales", _change(world, versions=(4,)))
    assert states.pending("sales").whole_model  # ... and stays whole when a narrower change follows
    assert orders.job_id == first.job_id

    # a burst never pushes the job past max_delay_seconds (900) after its first change
    for _ in range(17):  # the last change at 880 s: its debounce would end at 940 s
        world.clock.advance(50)
        states.record("sales", _change(world, versions=(int(world.clock.now().timestamp()),)))
    assert states.pending("sales").due_at == iso(start + timedelta(seconds=900))

    # an explicit request makes the job due now (earlier: a message for the new time is sent) ...
    sent = len(world.app.queue.delays)
    manual = states.record("sales", _change(world, trigger="manual", table=None, model_tables=None,
                                            requested_by="ana", refresh_type="DataOnly"))
    assert manual.job_id == first.job_id and manual.earlier
    assert parse_iso(manual.due_at) <= world.clock.now()
    assert len(world.app.queue.delays) == sent + 1
    # a commit after it restarts the debounce, still within max_delay_seconds of the first change
    later = states.record("sales", _change(world, versions=(10**12,)))
    assert later.due_at == iso(start + timedelta(seconds=900)) and not later.earlier
    job = states.pending("sales")
    assert job.triggers == ["commit", "manual"] and job.requested_by == ["ana"] and job.reasons == ["new stores"]
    assert job.refresh_type == "DataOnly" and job.trigger == "commit"
    assert tables.get_json(world.state("sales"), "covered")["sales/fact_orders"] == 10**12
