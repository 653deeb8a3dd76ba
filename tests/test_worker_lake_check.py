"""A debounced job looks at its tables once more as it falls due (issue 13: one refresh per burst). When
their events are late (detection behind a backlog, Event Grid slow), commits that already landed join the
job and move its due time on, instead of making a refresh mid-burst and another one after it. Real parts:
Azurite (lake, states, queue), Delta commit files, the Power BI simulator, the registered entry points."""

from __future__ import annotations

from datetime import datetime

import pytest
from test_detect_backlog import _now, put

from refresh.core.clock import FakeClock
from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import align_wall
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs.pending import pending_of

CONFIG = {"datasets": {
    "d": {"workspace": "W", "dataset": "M", "sources": [{"table": "t/a"}, {"table": "t/b"}],
          "debounce_seconds": 10, "max_delay_seconds": 60},
    "now": {"workspace": "W", "dataset": "N", "sources": [{"table": "t/c"}],
            "debounce_seconds": 0, "max_delay_seconds": 0},
}}


@pytest.fixture
def rig(azurite, sim, powerbi_identity, registered, unique):
    workspace = sim.add_workspace("W", dedicated=True)
    sim.model_id = sim.add_dataset(workspace, "M")
    sim.add_dataset(workspace, "N")
    sim.refresh_duration = 2
    app = make_app(azurite.connection_string, CONFIG, token=unique, clock=FakeClock(_now()),
                   POWERBI_API_URL=sim.base_url)
    align_wall(sim, app.clock.now())
    app.__dict__["queue"] = VirtualQueue(app.queue, app.clock)
    set_app(app)
    an_hour_ago = int(app.clock.now().timestamp() * 1000) - 3_600_000
    for table in ("t/a", "t/b", "t/c"):
        put(app, table, 0, an_hour_ago)  # committed before the app watched: history, never refreshed
        app.detector.process(table)  # first sight: starts after version 0
    yield app, Pump(app.queue, registered["run_refresh_job"], advance=[sim.advance]), sim
    set_app(None)


def posts_to(sim, dataset_id: str) -> int:
    return len([r for r in sim.requests if r.method == "POST" and r.path.endswith(f"/datasets/{dataset_id}/refreshes")])


def test_commits_whose_events_are_late_join_the_job_as_it_falls_due(rig):
    app, pump, sim = rig
    put(app, "t/a", 1)
    app.detector.process("t/a", 1)  # the first commit's event: a job, due in 10 s
    job_id = pending_of(app.states.get("d")).job_id
    put(app, "t/a", 2)
    put(app, "t/b", 1)  # they landed, but their events are late (no detection for them)
    pump.run()
    [row] = app.outcomes.history("d", 5)
    assert row["job_id"] == job_id and row["status"] == "Completed"
    assert row["sources"] == {"t/a": {"first_version": 1, "last_version": 2, "commits": 2},
                              "t/b": {"first_version": 1, "last_version": 1, "commits": 1}}
    assert posts_to(sim, sim.model_id) == 1
    # the late events themselves now find nothing new: no second job
    assert not app.detector.process("t/a", 2).commits and not app.detector.process("t/b", 1).commits
    assert pending_of(app.states.get("d")) is None


def test_a_job_at_its_max_delay_starts_with_what_it_found(rig):
    app, pump, sim = rig
    put(app, "t/a", 1)
    app.detector.process("t/a", 1)
    app.clock.advance(59)  # 1 s before the max delay (60 s after the job was created)
    sim.advance(59)
    put(app, "t/a", 2)
    pump.run()
    [row] = app.outcomes.history("d", 5)
    assert row["status"] == "Completed" and row["sources"]["t/a"]["last_version"] == 2
    started = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
    created = datetime.fromisoformat(row["queued_at"].replace("Z", "+00:00"))
    assert (started - created).total_seconds() <= 61  # the burst never holds it past its max delay


def test_a_dataset_without_debounce_is_not_held_back(rig):
    app, pump, _ = rig
    put(app, "t/c", 1)
    app.detector.process("t/c", 1)
    put(app, "t/c", 2)  # its event is late
    pump.run()
    rows = app.outcomes.history("now", 5)
    assert [r["sources"]["t/c"]["last_version"] for r in rows] == [1]  # started at once, with what it had
