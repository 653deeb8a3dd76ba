"""Scheduled refreshes through the ``run_schedules`` timer: due-time arithmetic across boundaries, several
instances in the same minute, missed runs, skip-if-unchanged; real Azurite tables and queue, virtual time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from azure.functions.timer import TimerRequest

from refresh.core import storage as tables
from refresh.core.clock import FakeClock, iso, parse_iso
from refresh.core.context import set_app
from refresh.core.routing import parse_config
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs import messages
from refresh.jobs.pending import Change
from refresh.jobs.schedules import MAX_RECORDED_MISSES, PK_SCHEDULE, UNCHANGED_DETAIL, next_due, run_schedules


def config(schedule: str, skip: bool = False, **extra) -> dict:
    ds = {"workspace": "Finance Analytics", "dataset": "Sales Model", "sources": [{"table": "sales/fact_orders"}],
          "debounce_seconds": 60, "max_delay_seconds": 900, "schedule": schedule, **extra}
    if skip:
        ds["schedule_skip_if_unchanged"] = True
    return {"datasets": {"sales": ds, "plain": {"workspace": "W", "dataset": "D", "sources": [{"table": "p/t"}]}}}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Sched:
    """An App on Azurite with a schedule, a fake clock, and helpers to run the timer and read results."""

    def __init__(self, azurite, token: str, schedule: str, start: datetime, skip: bool = False, **settings):
        self.clock = FakeClock(start)
        self.app = make_app(azurite.connection_string, config(schedule, skip), token=token, clock=self.clock,
                            **settings)
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)

    def run(self, at: datetime | None = None):
        if at is not None:
            self.clock.set(at)
        return {r.dataset: r for r in run_schedules(self.app)}["sales"]

    def jobs(self) -> list[messages.JobMessage]:
        return [messages.decode(content) for content, _ in self.app.queue.delays]

    def rows(self, top: int = 100) -> list[dict]:
        return self.app.outcomes.history("sales", top)

    def mark(self):
        return tables.get_entity(self.app.state_table, PK_SCHEDULE, "sales")


@pytest.fixture
def make(azurite, unique):
    def build(schedule: str, start: datetime, **kwargs) -> Sched:
        return Sched(azurite, unique, schedule, start, **kwargs)
    return build


# --------------------------------------------------------------------------------------------------
# arithmetic


@pytest.mark.parametrize("schedule, start, due", [
    ("0 * * * * *", utc(2026, 11, 21, 12, 0, 30), utc(2026, 11, 21, 12, 1)),                  # minute
    ("0 0 * * * *", utc(2026, 11, 21, 12, 59, 10), utc(2026, 11, 21, 13, 0)),                 # hour
    ("0 30 6 * * *", utc(2026, 11, 21, 23, 59, 40), utc(2026, 11, 22, 6, 30)),                # day
    ("0 0 0 1 * *", utc(2026, 11, 30, 23, 59, 0), utc(2026, 12, 1)),                          # month
    ("0 0 0 * * *", utc(2026, 12, 31, 23, 59, 30), utc(2027, 1, 1)),                          # year
    ("0 15 0 29 2 *", utc(2027, 3, 1), utc(2028, 2, 29, 0, 15)),                              # leap day
    ("0 30 6 * * MON-FRI", utc(2026, 11, 21, 7), utc(2026, 11, 23, 6, 30)),                   # weekend
    ("0 0 9 31 * *", utc(2026, 11, 1), utc(2026, 12, 31, 9)),                                 # 30-day month
])
def test_due_time_arithmetic_across_boundaries(schedule, start, due):
    assert next_due(schedule, start) == due
    assert next_due(schedule, due - timedelta(seconds=1)) == due
    assert next_due(schedule, due) > due


@pytest.mark.parametrize("schedule, start, due", [
    ("0 * * * * *", utc(2026, 11, 21, 12, 0, 30), utc(2026, 11, 21, 12, 1)),
    ("0 0 * * * *", utc(2026, 11, 21, 12, 59, 10), utc(2026, 11, 21, 13, 0)),
    ("0 30 6 * * *", utc(2026, 11, 21, 23, 59, 40), utc(2026, 11, 22, 6, 30)),
    ("0 0 0 1 * *", utc(2026, 11, 30, 23, 59, 0), utc(2026, 12, 1)),
    ("0 0 0 * * *", utc(2026, 12, 31, 23, 59, 30), utc(2027, 1, 1)),
])
def test_the_timer_fires_each_due_time_once_across_boundaries(make, schedule, start, due):
    s = make(schedule, start)
    assert s.run().action == "started"          # first sight: nothing in the past is fired
    assert s.run(due - timedelta(seconds=1)).action == "idle"
    fired = s.run(due + timedelta(seconds=0.4))  # the timer runs a moment after the due time
    assert fired.action == "fired" and fired.due_at == iso(due)
    assert s.run(due + timedelta(seconds=30)).action == "idle"  # same due time: never twice
    [job] = s.jobs()
    assert job.dataset == "sales" and job.job_id == fired.job_id
    row = s.app.outcomes.get(fired.job_id)
    assert row["trigger"] == "schedule" and row["status"] == "Queued" and row["requested_by"] == ["schedule"]
    pending = s.app.states.pending("sales")
    assert pending.scheduled_for == iso(due) and pending.objects() is None  # the whole model
    assert parse_iso(pending.due_at) == due + timedelta(seconds=0.4)  # due at once, no debounce


def test_first_run_does_not_fire_the_past_and_a_changed_schedule_starts_over(make):
    s = make("0 0 * * * *", utc(2026, 11, 21, 12, 0, 0, 200000))  # exactly at a due time, first sight
    assert s.run().action == "started" and s.jobs() == []
    assert s.run(utc(2026, 11, 21, 13, 0, 1)).action == "fired"
    s.app.__dict__["config"] = parse_config(config("0 */5 * * * *"), "<test>")
    assert s.run(utc(2026, 11, 21, 13, 3)).action == "started"   # new expression: no backlog
    again = s.run(utc(2026, 11, 21, 13, 5, 2))
    # the 13:00 job has not run yet (nothing pumps the queue here): the 13:05 one joins it
    assert again.action == "joined" and again.due_at == "2026-11-21T13:05:00.000Z"
    assert len(s.jobs()) == 1 and len(s.app.states.pending("sales").reasons) == 2


def test_through_the_registered_entry_point(make, registered):
    s = make("0 */15 * * * *", utc(2026, 11, 21, 12, 1))
    set_app(s.app)
    try:
        registered["run_schedules"](TimerRequest(past_due=False))
        s.clock.set(utc(2026, 11, 21, 12, 15, 1))
        registered["run_schedules"](TimerRequest(past_due=True))
    finally:
        set_app(None)
    [job] = s.jobs()
    assert s.app.states.pending("sales").scheduled_for == "2026-11-21T12:15:00.000Z"
    assert tables.value(s.mark(), "last_due") == "2026-11-21T12:15:00.000Z"
    assert tables.value(s.mark(), "last_job_id") == job.job_id


# --------------------------------------------------------------------------------------------------
# several instances


class _Rendezvous:
    """A state table whose schedule-mark reads wait for each other: both instances see the same mark."""

    def __init__(self, real, barrier: threading.Barrier) -> None:
        self.real = real
        self.barrier = barrier

    def get_entity(self, pk, rk, **kwargs):
        entity = self.real.get_entity(pk, rk, **kwargs)
        if pk == PK_SCHEDULE:
            self.barrier.wait(timeout=10)
        return entity

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_two_instances_firing_the_same_minute_make_one_job(azurite, unique):
    clock = FakeClock(utc(2026, 11, 21, 11, 59, 30))
    apps = [make_app(azurite.connection_string, config("0 0 12 * * *"), token=unique, clock=clock)
            for _ in range(2)]  # same tables and queue, separate clients: two instances
    assert run_schedules(apps[0])[0].action == "started"
    barrier = threading.Barrier(2)
    for app in apps:
        app.__dict__["state_table"] = _Rendezvous(app.state_table, barrier)
    clock.set(utc(2026, 11, 21, 12, 0, 0, 300000))
    results: list = [None, None]

    def fire(i: int) -> None:
        results[i] = run_schedules(apps[i])[0]

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.action for r in results) == ["fired", "lost-race"]
    sent = list(apps[0].queue.peek_messages(max_messages=32))
    assert len(sent) == 1
    rows = apps[0].outcomes.history("sales")
    assert len(rows) == 1 and rows[0]["trigger"] == "schedule"
    # the loser's next run finds the due time handled
    apps[1].__dict__["state_table"] = apps[1].state_table.real
    assert run_schedules(apps[1])[0].action == "idle"


# --------------------------------------------------------------------------------------------------
# missed runs


def test_a_missed_due_time_is_skipped_and_recorded_not_fired_late(make):
    s = make("0 30 6 * * *", utc(2026, 11, 21, 6, 0))
    s.run()
    result = s.run(utc(2026, 11, 21, 7, 0))  # the timer did not run for 30 minutes past the due time
    assert result.action == "missed" and result.missed == 1 and s.jobs() == []
    [row] = s.rows()
    assert row["status"] == "Skipped" and row["error_code"] == "Missed" and row["trigger"] == "schedule"
    assert row["scheduled_for"] == "2026-11-21T06:30:00.000Z"
    assert "SCHEDULE_MISSED_GRACE_SECONDS=300" in row["detail"] and "1 due time(s) missed" in row["detail"]
    # the next day fires normally, even a little late but within the grace
    result = s.run(utc(2026, 11, 22, 6, 33))
    assert result.action == "fired" and result.due_at == "2026-11-22T06:30:00.000Z" and len(s.jobs()) == 1


def test_a_long_outage_records_the_latest_misses_and_fires_once(make):
    s = make("0 * * * * *", utc(2026, 11, 21, 12, 0, 30), SCHEDULE_MISSED_GRACE_SECONDS="120")
    s.run()
    result = s.run(utc(2026, 11, 21, 15, 0, 5))  # three hours without the timer
    # due times within the last 120 s fire once (coalesced), the 178 older ones are recorded as missed
    assert result.action == "fired" and result.due_at == "2026-11-21T15:00:00.000Z"
    assert result.coalesced == 2 and result.missed == 178  # 14:59 and 15:00 on time; 12:01 to 14:58 missed
    assert len(s.jobs()) == 1
    skipped = [r for r in s.rows() if r["status"] == "Skipped"]
    assert len(skipped) == MAX_RECORDED_MISSES
    assert {r["scheduled_for"] for r in skipped} == {iso(utc(2026, 11, 21, 14, 58) - timedelta(minutes=i))
                                                     for i in range(10)}
    assert all("178 due time(s) missed in total; the latest 10 are recorded" in r["detail"] for r in skipped)
    pending = s.app.states.pending("sales")
    assert pending.reasons == ["schedule 0 * * * * * due at 2026-11-21T15:00:00.000Z (1 earlier due time(s) "
                               "coalesced)"]


def test_grace_setting_is_validated():
    from refresh.core.settings import Settings, SettingsError

    assert Settings.from_env({}).schedule_missed_grace == 300
    assert Settings.from_env({"SCHEDULE_MISSED_GRACE_SECONDS": "900"}).schedule_missed_grace == 900
    for bad in ("soon", "10", "-5"):
        with pytest.raises(SettingsError, match="SCHEDULE_MISSED_GRACE_SECONDS"):
            Settings.from_env({"SCHEDULE_MISSED_GRACE_SECONDS": bad})


# --------------------------------------------------------------------------------------------------
# skip if unchanged, and joining commit-driven jobs


@pytest.fixture
def pumped(make, sim, powerbi_identity, registered):
    finance = sim.add_workspace("Finance Analytics", dedicated=True)
    sim.add_dataset(finance, "Sales Model")

    def build(schedule: str, start: datetime, skip: bool = False) -> tuple[Sched, Pump]:
        s = make(schedule, start, skip=skip, POWERBI_API_URL=sim.base_url)
        set_app(s.app)
        return s, Pump(s.app.queue, registered["run_refresh_job"], advance=[sim.advance])

    yield build
    set_app(None)


def _commit(s: Sched, version: int):
    return s.app.states.record("sales", Change(trigger="commit", table="sales/fact_orders", versions=(version,),
                                               model_tables=None, debounce_seconds=60, max_delay_seconds=900))


def test_skip_if_unchanged(pumped, sim):
    s, pump = pumped("0 0 6 * * *", utc(2026, 11, 20, 5, 0), skip=True)
    s.run()
    # never refreshed by this app: nothing is known, so the first due time refreshes
    first = s.run(utc(2026, 11, 20, 6, 0, 1))
    assert first.action == "fired"
    pump.run()
    assert s.app.outcomes.get(first.job_id)["status"] == "Completed"
    # nothing new since: skipped, and the skip is an outcome row
    skipped = s.run(utc(2026, 11, 21, 6, 0, 1))
    assert skipped.action == "skipped-unchanged" and pump.pending() == 0
    row = s.app.outcomes.get(skipped.job_id)
    assert row["status"] == "Skipped" and row["detail"] == UNCHANGED_DETAIL and row["trigger"] == "schedule"
    assert row["scheduled_for"] == "2026-11-21T06:00:00.000Z"
    # a commit that was already refreshed does not count as new
    _commit(s, 1)
    pump.run()
    assert s.run(utc(2026, 11, 22, 6, 0, 1)).action == "skipped-unchanged"
    # a commit still pending does: the schedule joins its job, which becomes due at once
    commit = _commit(s, 2)
    joined = s.run(utc(2026, 11, 23, 6, 0, 1))
    assert joined.action == "joined" and joined.job_id == commit.job_id
    pump.run()
    row = s.app.outcomes.get(commit.job_id)
    assert row["status"] == "Completed" and row["triggers"] == ["commit", "schedule"]
    assert parse_iso(row["started_at"]) == utc(2026, 11, 23, 6, 0, 1)  # not after the commit's debounce
    assert len([r for r in sim.requests if r.method == "POST"]) == 3


def test_without_skip_an_unchanged_dataset_is_refreshed_on_schedule(pumped):
    s, pump = pumped("0 0 6 * * *", utc(2026, 11, 20, 5, 0))
    s.run()
    for day in (20, 21):
        assert s.run(utc(2026, 11, day, 6, 0, 1)).action == "fired"
        pump.run()
    assert [r["status"] for r in s.rows()] == ["Completed", "Completed"]
