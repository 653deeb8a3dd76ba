"""The refresh worker through run_refresh_job's entry point: real Azurite queue and tables, the Power BI
simulator, azure-identity's real ManagedIdentityCredential, virtual time (no real waiting)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from refresh.core import storage as tables
from refresh.core.clock import parse_iso
from refresh.core.context import set_app
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs import messages
from refresh.jobs.pending import Change

CONFIG = {
    "datasets": {
        "sales": {  # dedicated capacity: enhanced refreshes
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]}, {"table": "sales/dim_*"}],
            "debounce_seconds": 60, "max_delay_seconds": 900, "timeout_minutes": 30,
            "refresh": {"type": "Full", "commit_mode": "Transactional", "max_parallelism": 4, "retry_count": 1,
                        "timeout": "01:00:00"},
        },
        "ops": {  # shared capacity: standard refreshes, daily limit 8
            "workspace": "Ops", "dataset": "Ops Model",
            "sources": [{"table": "ops/**"}], "debounce_seconds": 0, "max_delay_seconds": 0,
            "timeout_minutes": 120,
        },
    }
}


class World:
    def __init__(self, azurite, sim, registered, token, **settings):
        self.sim = sim
        self.fn = registered
        self.finance = sim.add_workspace("Finance Analytics", dedicated=True)
        self.sales_ds = sim.add_dataset(self.finance, "Sales Model")
        self.ops_ws = sim.add_workspace("Ops", dedicated=False)
        self.ops_ds = sim.add_dataset(self.ops_ws, "Ops Model")
        self.app = make_app(azurite.connection_string, CONFIG, token=token, POWERBI_API_URL=sim.base_url,
                            **settings)
        self.clock = self.app.clock
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)
        set_app(self.app)
        self.pump = Pump(self.app.queue, registered["run_refresh_job"], advance=[sim.advance],
                         poison=registered["on_refresh_poison"])

    def commit(self, dataset="sales", table="sales/fact_orders", versions=(1,), model_tables=frozenset({"Orders"})):
        cfg = self.app.config.datasets[dataset]
        return self.app.states.record(dataset, Change(
            trigger="commit", table=table, versions=tuple(versions), model_tables=model_tables,
            debounce_seconds=cfg.debounce_seconds, max_delay_seconds=cfg.max_delay_seconds))

    def row(self, job_id):
        return self.app.outcomes.get(job_id)

    def posts(self, dataset_id=None):
        return [r for r in self.sim.requests if r.method == "POST" and r.path.endswith("/refreshes")
                and (dataset_id is None or dataset_id in r.path)]

    def state(self, dataset):
        return self.app.states.get(dataset)


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = World(azurite, sim, registered, unique)
    yield w
    set_app(None)


def test_enhanced_refresh_of_the_model_tables_followed_to_completion(world, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="refresh.outcome")
    world.sim.refresh_duration = 300
    job = world.commit()
    start = world.clock.now()
    world.pump.run()
    [post] = world.posts()
    assert post.body == {"type": "Full", "commitMode": "Transactional", "maxParallelism": 4, "retryCount": 1,
                         "timeout": "01:00:00", "objects": [{"table": "Orders"}]}
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["refresh_type"] == "enhanced"
    assert row["workspace_name"] == "Finance Analytics" and row["dataset_id"] == world.sales_ds
    assert row["sources"] == {"sales/fact_orders": {"first_version": 1, "last_version": 1, "commits": 1}}
    assert row["model_tables"] == ["Orders"] and row["trigger"] == "commit"
    assert row["request_id"] and row["error_code"] is None
    # debounce respected: the POST went out 60 s after the commit, never before
    assert parse_iso(row["started_at"]) - start == timedelta(seconds=60)
    assert 300 <= row["duration_seconds"] <= 400
    detail_gets = [r for r in world.sim.requests if r.method == "GET" and "/refreshes/" in r.path]
    assert detail_gets and all(r.path.endswith(row["request_id"]) for r in detail_gets)
    state = world.state("sales")
    assert tables.get_json(state, "running") is None and tables.get_json(state, "pending") is None
    [line] = [r for r in caplog.records if r.name == "refresh.outcome"]  # one structured line per job
    assert line.refresh_outcome["status"] == "Completed" and line.refresh_outcome["job_id"] == job.job_id
    assert line.refresh_outcome["request_id"] == row["request_id"] and "Bearer" not in line.getMessage()


def test_second_job_uses_recent_durations_for_its_first_check(world):
    world.sim.refresh_duration = 600
    world.commit()
    world.pump.run()
    first_checks = sum(1 for r in world.sim.requests if r.method == "GET" and "/refreshes/" in r.path)
    world.sim.clear_requests()
    job = world.commit(versions=(2,))
    world.pump.run()
    checks = [r for r in world.sim.requests if r.method == "GET" and "/refreshes/" in r.path]
    assert world.row(job.job_id)["status"] == "Completed"
    assert len(checks) <= 2 < first_checks  # the estimate lands the first check near the end


def test_standard_refresh_on_shared_capacity_matches_its_request_id_in_history(world):
    world.sim.history_lag = 20  # not in the history yet for a while: normal
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)
    world.pump.run()
    [post] = world.posts(world.ops_ds)
    assert post.body == {"notifyOption": "NoNotification"}
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["refresh_type"] == "standard"
    history_gets = [r for r in world.sim.requests if r.method == "GET" and r.path.endswith("/refreshes")]
    assert history_gets and all(r.query.get("$top") for r in history_gets)
    assert not any(r.method == "GET" and "/refreshes/" in r.path for r in world.sim.requests)


def test_failed_refresh_keeps_power_bi_words(world):
    world.sim.fail_refresh(world.sales_ds,
                           service_exception={"errorCode": "ModelRefreshFailed_CredentialsNotSpecified"},
                           messages=[{"code": "0xC112001A", "message": "The credentials provided for the SQL source "
                                      "are invalid.", "type": "Error"}])
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Failed"
    assert "credentials provided for the SQL source are invalid" in row["error_message"]
    assert row["messages"] and row["messages"][0]["code"] == "0xC112001A"
    assert len(world.posts()) == 1  # a failed refresh is an outcome, not a retry loop


def test_busy_dataset_waits_and_merges_into_one_follow_up(world):
    world.sim.busy_next(times=2, status=409)
    job = world.commit(versions=(1,))
    world.pump.step()  # the start: answered busy (updated for issue 9 item 2: it used to wait a flat minute)
    assert world.row(job.job_id)["status"] == "Waiting"
    assert "already executing" in world.row(job.job_id)["detail"]
    assert "posting again in" in world.row(job.job_id)["detail"]
    newer = world.commit(table="sales/dim_store", versions=(7,), model_tables=None)  # arrives meanwhile
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Completed"
    assert set(row["sources"]) == {"sales/fact_orders", "sales/dim_store"}
    assert row["model_tables"] == []  # a dimension without model tables: whole model
    assert newer.job_id == job.job_id and not newer.created  # merged into the waiting job
    assert sum(1 for p in world.posts() if p.status == 202) == 1


def test_job_arriving_during_a_refresh_becomes_one_follow_up(world):
    world.sim.refresh_duration = 600
    first = world.commit(versions=(1,))
    world.pump.run(until=world.clock.now() + timedelta(seconds=120))
    assert world.row(first.job_id)["status"] == "Running"
    later = [world.commit(versions=(v,)) for v in (2, 3, 4)]
    assert len({r.job_id for r in later}) == 1  # coalesced while the refresh runs
    world.pump.run()
    assert world.row(first.job_id)["status"] == "Completed"
    follow = world.row(later[0].job_id)
    assert follow["status"] == "Completed"
    assert follow["sources"]["sales/fact_orders"] == {"first_version": 2, "last_version": 4, "commits": 3}
    assert parse_iso(follow["started_at"]) >= parse_iso(world.row(first.job_id)["ended_at"])
    assert len(world.posts()) == 2


def test_429_with_a_long_retry_after_requeues_instead_of_sleeping(world):
    world.sim.fail_next(429, retry_after=3000, method="POST")
    job = world.commit()
    world.pump.run()
    assert world.row(job.job_id)["status"] == "Completed"
    posts = world.posts()
    assert [p.status for p in posts] == [429, 202]
    waited = parse_iso(world.row(job.job_id)["started_at"]) - parse_iso(world.row(job.job_id)["queued_at"])
    assert waited >= timedelta(seconds=3060)


def test_retry_after_is_capped_by_the_setting(azurite, sim, powerbi_identity, registered, unique):
    w = World(azurite, sim, registered, unique, MAX_RETRY_AFTER_SECONDS="600")
    try:
        sim.fail_next(429, retry_after=50000, method="POST")
        w.commit()
        w.pump.run()
        delays = [d for content, d in w.app.queue.delays if messages.decode(content).type == "job"]
        assert max(delays) == 600
    finally:
        set_app(None)


def test_server_errors_are_retried_with_backoff_then_succeed(world):
    world.sim.fail_next(503, times=2, method="POST")
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Completed"
    assert [p.status for p in world.posts()] == [503, 503, 202]


def test_server_errors_give_up_after_bounded_retries(world):
    world.sim.fail_next(500, times=50, method="POST")
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Failed" and "HTTP 500" in row["error_message"]
    assert len(world.posts()) == 5
    assert tables.get_json(world.state("sales"), "running") is None


def test_dropped_connection_on_post_does_not_start_a_second_refresh(world):
    world.sim.drop_next_connection(method="POST")
    job = world.commit()
    world.pump.run()
    assert world.row(job.job_id)["status"] == "Completed"
    assert len(world.sim.refreshes(world.sales_ds)) == 1


def test_daily_limit_on_shared_capacity_waits_for_the_next_slot(world):
    start = world.clock.now()
    jobs = []
    for v in range(1, 10):
        jobs.append(world.commit(dataset="ops", table="ops/a", versions=(v,), model_tables=None))
        world.pump.run(until=world.clock.now() + timedelta(minutes=30))
        world.clock.advance(3600)
        world.sim.advance(3600)
    statuses = [world.row(j.job_id)["status"] for j in jobs]
    assert statuses[:8] == ["Completed"] * 8
    ninth = world.row(jobs[8].job_id)
    assert ninth["status"] == "Waiting" and "daily limit of 8" in ninth["detail"]
    assert sum(p.status == 202 for p in world.posts(world.ops_ds)) == 8  # never exceeded
    world.pump.run()
    ninth = world.row(jobs[8].job_id)
    assert ninth["status"] == "Completed"
    assert parse_iso(ninth["started_at"]) >= start + timedelta(hours=24)


def test_enhanced_refresh_past_its_timeout_is_cancelled(world):
    world.sim.refresh_duration = 7200  # timeout_minutes is 30
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "TimedOut" and "cancelled" in row["error_message"]
    assert [r for r in world.sim.requests if r.method == "DELETE"]
    assert world.sim.refreshes(world.sales_ds)[0]["status"] == "Cancelled"


def test_standard_refresh_past_its_timeout_is_recorded_while_power_bi_runs_it(world):
    world.sim.refresh_duration = 4 * 3600  # timeout_minutes is 120
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "TimedOut" and "may still be running" in row["error_message"]
    assert not [r for r in world.sim.requests if r.method == "DELETE"]


def test_a_refresh_cancelled_in_power_bi_is_recorded_as_cancelled(world):
    world.sim.refresh_duration = 900
    job = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=200))
    row = world.row(job.job_id)
    world.app.powerbi.cancel_refresh(row["workspace_id"], row["dataset_id"], row["request_id"])
    world.pump.run()
    assert world.row(job.job_id)["status"] == "Cancelled"


def test_refresh_longer_than_the_token_lifetime(world):
    world.sim.token_lifetime = 600
    world.sim.refresh_duration = 100 * 60  # ten token lifetimes; "ops" allows 120 minutes
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)
    world.pump.run()
    assert world.row(job.job_id)["status"] == "Completed"
    statuses = [r.status for r in world.sim.requests]
    assert 403 in statuses  # tokens expired on the way and were renewed
    assert len(world.sim.identity_requests) >= 2


def test_dataset_that_is_not_refreshable_is_an_outcome_not_a_retry_loop(world):
    ws = world.sim.add_workspace("Direct", dedicated=True)
    world.sim.add_dataset(ws, "Live Model", refreshable=False)
    config = {"datasets": {**CONFIG["datasets"], "live": {"workspace": "Direct", "dataset": "Live Model",
                                                          "sources": [{"table": "live/t"}],
                                                          "debounce_seconds": 0}}}
    from refresh.core.routing import parse_config

    world.app.__dict__["config"] = parse_config(config)
    world.app.__dict__.pop("worker", None)
    job = world.commit(dataset="live", table="live/t", model_tables=None)
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "NotRefreshable" and "not refreshable" in row["error_message"]
    assert not world.posts()


def test_two_workers_racing_for_one_dataset_start_one_refresh(world, azurite, registered, sim):
    job = world.commit(dataset="ops", table="ops/a", model_tables=None)
    body = messages.JobMessage.new("job", "ops", job.job_id, world.clock.now()).encode()
    other = make_app(azurite.connection_string, CONFIG, token=None, POWERBI_API_URL=sim.base_url,
                     **{k: v for k, v in world.app.env.items() if k in ("GOLD_CONTAINER", "REFRESH_QUEUE",
                                                                         "STATE_TABLE", "OUTCOMES_TABLE")})
    other.__dict__["clock"] = world.clock
    other.__dict__["queue"] = world.app.queue
    barrier = threading.Barrier(2)
    results = []

    def run(app):
        barrier.wait()
        results.append(app.worker.handle(body))

    threads = [threading.Thread(target=run, args=(a,)) for a in (world.app, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) in (["stale", "started"], ["started", "waiting-for-lease"])
    world.pump.run()
    assert len(world.posts(world.ops_ds)) == 1
    assert world.row(job.job_id)["status"] == "Completed"


def test_crash_after_the_post_before_recording_it(world, monkeypatch):
    from refresh.jobs.worker import Worker

    real = Worker._started
    calls = {"n": 0}

    def crash_once(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("instance died right after the POST")
        return real(self, *a, **k)

    monkeypatch.setattr(Worker, "_started", crash_once)
    job = world.commit()
    world.pump.run()
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["adopted"] is True  # found its own POST in the history
    assert len(world.sim.refreshes(world.sales_ds)) == 1
    assert [d.error is not None for d in world.pump.deliveries].count(True) == 1


def test_redelivered_message_after_the_end_is_stale(world):
    job = world.commit()
    world.pump.run()
    body = messages.JobMessage.new("job", "sales", job.job_id, world.clock.now()).encode()
    assert world.app.worker.handle(body) == "stale"
    assert len(world.posts()) == 1


def test_unparseable_message_is_rejected_and_removed(world):
    world.app.queue.send_message('{"v": 1, "type": "explode"}')
    world.app.queue.send_message("not json at all")
    world.pump.run()
    assert all(d.error is None for d in world.pump.deliveries)
    rows = world.app.outcomes.history("_rejected")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"Rejected"}
    assert any("type: must be one of" in r["error_message"] for r in rows)
    assert any("not JSON" in r["error_message"] for r in rows)
    assert world.pump.pending() == 0


def test_a_job_failing_max_dequeue_count_times_is_recorded_and_poisoned(world, monkeypatch):
    from refresh.jobs.worker import Worker

    def broken(self, msg):
        raise RuntimeError("storage outage")

    monkeypatch.setattr(Worker, "_on_job", broken)
    job = world.commit()
    world.pump.run()
    assert len(world.pump.deliveries) == 5
    row = world.row(job.job_id)
    assert row["status"] == "Failed" and "gave up after 5 deliveries" in row["error_message"]
    assert world.app.states.pending("sales") is None


def test_lease_of_a_vanished_instance_expires(world):
    world.sim.refresh_duration = 60
    first = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=61))  # started; its check is queued
    assert world.row(first.job_id)["status"] == "Running"
    world.app.queue.real.clear_messages()  # the instance and its check message are gone for good
    world.pump._held.clear()
    later = world.commit(versions=(2,))
    world.pump.run(until=world.clock.now() + timedelta(minutes=30))
    assert world.row(later.job_id)["status"] in ("Queued", "Waiting")  # the lease still holds
    world.pump.run()  # ... until it expires (timeout_minutes 30 + 15)
    old = world.row(first.job_id)
    ids = {r["requestId"] for r in world.sim.refreshes(world.sales_ds)}
    # the truth about the abandoned job's refresh, asked of Power BI once: it completed long ago
    assert old["status"] == "Completed" and not old["error_code"]
    assert world.row(later.job_id)["status"] == "Completed"
    assert {old["request_id"], world.row(later.job_id)["request_id"]} == ids and len(ids) == 2
    assert parse_iso(world.row(later.job_id)["started_at"]) >= parse_iso(old["queued_at"]) + timedelta(minutes=45)


def test_poison_queue_function_records_what_lands_there(world):
    import azure.functions.queue as fq

    world.sim.refresh_duration = 600
    job = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=100))
    assert world.row(job.job_id)["status"] == "Running"
    body = messages.JobMessage.new("check", "sales", job.job_id, world.clock.now()).encode()
    world.fn["on_refresh_poison"](fq.QueueMessage(id="poisoned-1", body=body.encode(), dequeue_count=5))
    assert world.row(job.job_id)["status"] == "Running"  # its refresh still runs: followed by a new check
    world.pump.run()
    [refresh] = world.sim.refreshes(world.sales_ds)
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["request_id"] == refresh["requestId"]
    assert tables.get_json(world.state("sales"), "running") is None  # the dataset is free again
    world.fn["on_refresh_poison"](fq.QueueMessage(id="poisoned-2", body=b"\xff\xfe garbage", dequeue_count=5))
    assert any("not UTF-8" in r["error_message"] for r in world.app.outcomes.history("_rejected"))


def _poison(world, job_id: str, name: str = "poisoned") -> None:
    import azure.functions.queue as fq

    body = messages.JobMessage.new("check", "sales", job_id, world.clock.now()).encode()
    world.fn["on_refresh_poison"](fq.QueueMessage(id=name, body=body.encode(), dequeue_count=5))


def test_a_poisoned_job_whose_refresh_completed_is_recorded_completed_not_failed(world):
    world.sim.refresh_duration = 30
    job = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=61))
    world.app.queue.real.clear_messages()  # its check chain is gone ...
    world.pump._held.clear()
    world.clock.advance(60)  # ... and Power BI finished the refresh meanwhile
    world.sim.advance(60)
    _poison(world, job.job_id)
    [refresh] = world.sim.refreshes(world.sales_ds)
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and row["request_id"] == refresh["requestId"] and not row["error_code"]
    assert tables.get_json(world.state("sales"), "running") is None


def test_a_poisoned_job_whose_refresh_cannot_be_read_says_its_end_is_unknown(world):
    world.sim.refresh_duration = 30
    job = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=61))
    world.sim.fail_next(503, times=20, method="GET", path_contains="/refreshes")
    _poison(world, job.job_id)
    row = world.row(job.job_id)
    assert row["status"] == "Failed" and row["error_code"] == "GaveUp"
    assert "poison queue" in row["error_message"] and "whether it completed is unknown" in row["error_message"]
    assert world.sim.refreshes(world.sales_ds)[0]["requestId"] in row["error_message"]


def test_a_vanished_instance_whose_refresh_outlives_its_timeout_is_recorded_timed_out(world):
    world.sim.refresh_duration = 4 * 3600
    first = world.commit()
    world.pump.run(until=world.clock.now() + timedelta(seconds=61))
    world.app.queue.real.clear_messages()
    world.pump._held.clear()
    later = world.commit(versions=(2,))
    world.pump.run(until=world.clock.now() + timedelta(minutes=50))  # past the lease (timeout 30 + 15 minutes)
    old = world.row(first.job_id)
    assert old["status"] == "TimedOut" and "cancelled" in old["error_message"]  # enhanced: cancelled, as a check would
    assert world.row(later.job_id)["status"] in ("Running", "Completed", "Waiting")


def test_change_arriving_while_claimed_then_busy_is_merged_into_the_claimed_job(world):
    real_start = world.app.powerbi.start_refresh
    arrived = []

    def commit_lands_during_the_post(*args, **kwargs):
        if not arrived:  # a new job is created: the claimed job is no longer "pending"
            arrived.append(world.commit(table="sales/dim_store", versions=(5,), model_tables=None))
            world.sim.busy_next()
        return real_start(*args, **kwargs)

    world.app.powerbi.start_refresh = commit_lands_during_the_post
    job = world.commit()
    world.pump.run()
    newer = arrived[0]
    assert newer.created and newer.job_id != job.job_id
    merged = world.row(newer.job_id)
    assert merged["status"] == "Skipped" and job.job_id in merged["error_message"]
    row = world.row(job.job_id)
    assert row["status"] == "Completed" and set(row["sources"]) == {"sales/fact_orders", "sales/dim_store"}
    assert row["model_tables"] == []  # the dimension asks for the whole model
    assert sum(p.status == 202 for p in world.posts()) == 1

