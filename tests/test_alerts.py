"""Alerts: bodies, settings, queue messages, and delivery to a real loopback webhook over Azurite's queue
and tables; the freshness tracker end to end (commits, outcomes, the timer) with the same parts."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta

import pytest

from refresh.core.clock import FakeClock, iso
from refresh.core.routing import parse_config
from refresh.core.settings import SettingsError
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.dev.testing.webhook_sink import WebhookSink
from refresh.jobs import messages
from refresh.jobs.pending import DatasetStates
from refresh.monitoring import alert_formats, alerts, freshness
from refresh.monitoring.alerts import Alerter, AlertMessage, AlertSettings, AlertStore
from refresh.monitoring.freshness import AlertEvent, CommitTime, RefreshResult
from refresh.monitoring.freshness_tracker import FreshnessTracker

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PBI_ERROR = ("DataSource.Error: Microsoft SQL: Login failed for user 'svc-powerbi'. "
             "The credentials provided for the SQL source are invalid.")


def event(name: str = "refresh_failed", **over) -> AlertEvent:
    base = dict(id=freshness.event_id("sales", name, "job1"), event=name, dataset="sales", workspace="Finance",
                dataset_name="Sales Model", status="Failed", error_code="ModelRefreshFailed",
                error_message=PBI_ERROR, job_id="0" * 32, lag_seconds=4000.0, slo_seconds=3600,
                occurred_at="2026-11-21T12:00:00.000Z")
    base.update(over)
    return AlertEvent(**base)


# -- bodies -------------------------------------------------------------------------------------------


def test_json_body_has_every_documented_field():
    body = alert_formats.json_body(event(), "https://app.example.net")
    for key in ("event", "dataset", "workspace", "dataset_name", "status", "error_code", "error_message", "job_id",
                "lag_seconds", "slo_seconds", "occurred_at", "status_url", "id"):
        assert key in body, key
    assert body["error_message"] == PBI_ERROR
    assert body["status_url"] == f"https://app.example.net/api/refreshes/{'0' * 32}"
    assert body["summary"] == "Refresh of Sales Model in Finance ended Failed: ModelRefreshFailed"
    breach = alert_formats.json_body(event("freshness_breached"), "https://app.example.net/")
    assert breach["status_url"] == "https://app.example.net/api/status?dataset=sales"
    assert alert_formats.json_body(event(), None)["status_url"] is None


def test_teams_body_is_a_message_with_one_adaptive_card_carrying_the_same_facts():
    body = alert_formats.teams_body(event(), "https://app.example.net")
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["Event"] == "refresh_failed" and facts["Workspace"] == "Finance"
    assert facts["Error code"] == "ModelRefreshFailed" and facts["Lag"] == "1 h 6 min"
    assert facts["Alert id"] == event().id and facts["Job"] == "0" * 32
    texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]
    assert texts[0] == "Refresh failed" and PBI_ERROR in texts
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open status",
                                "url": f"https://app.example.net/api/refreshes/{'0' * 32}"}]
    long = alert_formats.teams_body(event(error_message="x" * 50_000), None)
    assert len(json.dumps(long)) < 28_000 and "actions" not in long["attachments"][0]["content"]


# -- settings and messages --------------------------------------------------------------------------------


def test_settings_default_off_and_validate_without_echoing_the_secret_url():
    assert not AlertSettings.from_env({}).enabled
    s = AlertSettings.from_env({"ALERT_WEBHOOK_URL": "https://x.example/hook?sig=abc", "ALERT_WEBHOOK_FORMAT": "Teams",
                                "WEBSITE_HOSTNAME": "app.azurewebsites.net"})
    assert (s.enabled, s.format, s.base_url) == (True, "teams", "https://app.azurewebsites.net")
    with pytest.raises(SettingsError) as info:
        AlertSettings.from_env({"ALERT_WEBHOOK_URL": "http://hooks.example/x?sig=TOPSECRET"})
    assert info.value.setting == "ALERT_WEBHOOK_URL" and "TOPSECRET" not in str(info.value)
    with pytest.raises(SettingsError, match="ALERT_WEBHOOK_FORMAT: 'slack' is not one of json, teams"):
        AlertSettings.from_env({"ALERT_WEBHOOK_FORMAT": "slack"})
    with pytest.raises(SettingsError, match="ALERT_WEBHOOK_TIMEOUT_SECONDS"):
        AlertSettings.from_env({"ALERT_WEBHOOK_TIMEOUT_SECONDS": "0"})
    names = {s.name for s in alerts.ALERT_SETTINGS}
    assert names == {"ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_FORMAT", "ALERT_WEBHOOK_TIMEOUT_SECONDS",
                     "ALERT_STATUS_BASE_URL"}


def test_alert_messages_round_trip_and_are_told_apart_from_job_messages():
    msg = AlertMessage("a" * 32, "sales", 3, "2026-11-21T12:00:00.000Z")
    assert alerts.is_alert_message(msg.encode()) and alerts.decode_alert(msg.encode().encode()) == msg
    job = messages.JobMessage.new("job", "sales", "b" * 32, T0).encode()
    assert not alerts.is_alert_message(job) and not alerts.is_alert_message("not json")
    with pytest.raises(messages.BadMessage, match="id: must be 32 lowercase hex digits"):
        alerts.decode_alert('{"v":1,"type":"alert","id":"x","dataset":"sales"}')
    with pytest.raises(messages.BadMessage, match="unsupported alert message version 2"):
        alerts.decode_alert(json.dumps({"v": 2, "type": "alert", "id": "a" * 32, "dataset": "sales"}))


# -- delivery over Azurite ----------------------------------------------------------------------------------


class Rig:
    """Azurite tables and queue, a virtual-time pump and an alerter pointed at ``url``."""

    def __init__(self, azurite, unique: str, url: str, fmt: str = "json", metrics=None, **config) -> None:
        from azure.data.tables import TableServiceClient
        from azure.storage.queue import QueueServiceClient

        from refresh.core import storage as tables

        self.clock = FakeClock(T0)
        self.requests: list[str] = []

        def count(request) -> None:
            self.requests.append(f"{request.http_request.method} {request.http_request.url.split('?')[0]}")

        service = TableServiceClient.from_connection_string(azurite.connection_string, raw_request_hook=count)
        self.table = tables.ensure_table(service, f"Alerts{unique}")
        queues = QueueServiceClient.from_connection_string(azurite.connection_string, raw_request_hook=count)
        real = messages.queue_client(queues, f"alerts-{unique}")
        real.create_queue()
        self.queue = VirtualQueue(real, self.clock)
        env = {"ALERT_WEBHOOK_URL": url, "ALERT_WEBHOOK_FORMAT": fmt,
               "ALERT_STATUS_BASE_URL": "https://app.example.net"}
        self.store = AlertStore(self.table)
        self.alerter = Alerter(self.store, self.queue, AlertSettings.from_env(env), self.clock,
                               rng=random.Random(7))
        self.outcomes: list[str] = []

        def handler(msg) -> None:
            body = msg.get_body()
            assert alerts.is_alert_message(body)
            self.outcomes.append(self.alerter.handle(body))

        self.pump = Pump(self.queue, handler)
        if config:
            cfg = parse_config({"datasets": config}, "<test>")
            self.states = DatasetStates(self.table, self.queue, self.clock)
            self.tracker = FreshnessTracker(self.states, cfg, self.clock, alerter=self.alerter, metrics=metrics)


def delays(rig: Rig) -> list[float]:
    return [d for content, d in rig.queue.delays if alerts.is_alert_message(content)]


def test_a_webhook_that_answers_500_at_first_gets_the_event_exactly_once_after_it_recovers(azurite, unique, caplog):
    with WebhookSink(answers=[500, 500, 503]) as sink:
        rig = Rig(azurite, unique, sink.url)
        with caplog.at_level(logging.INFO, logger="refresh.alert"):
            assert rig.alerter.enqueue([event()]) == [event().id]
            rig.pump.run()
        assert rig.outcomes == ["retry", "retry", "retry", "delivered"]
        [got] = sink.accepted()
        assert [r.answered for r in sink.received] == [500, 500, 503, 200]
    assert got.body["id"] == event().id and got.body["error_message"] == PBI_ERROR
    assert got.headers["X-Alert-Id"] == event().id
    # back-off: each retry waits longer (30 s, 60 s, 120 s, +-20 %), time passed only in the queue
    waits = delays(rig)[1:]
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2] and 24 <= waits[0] <= 36 and 96 <= waits[2] <= 144
    row = rig.store.get(event().id)
    assert (row["status"], row["attempts"], row["http_status"]) == ("delivered", 4, 200)
    lines = [r.getMessage() for r in caplog.records if r.name == "refresh.alert"]
    assert len(lines) == 4 and "outcome=retry" in lines[0] and "http_status=500" in lines[0]
    assert "outcome=delivered" in lines[-1]
    assert rig.store.problems() == []


def test_the_same_event_queued_twice_is_delivered_once(azurite, unique):
    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url)
        rig.alerter.enqueue([event()])
        rig.alerter.enqueue([event()])  # e.g. the outbox flushed again after a crash
        rig.pump.run()
        assert len(sink.received) == 1
    assert sorted(rig.outcomes) == ["delivered", "duplicate"]
    rig.alerter.enqueue([event()])  # already delivered: not even queued again
    assert rig.pump.pending() == 0


def test_a_delivery_in_progress_elsewhere_is_looked_at_again_after_its_lease(azurite, unique):
    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url)
        rig.alerter.enqueue([event()])
        rig.store.update(event().id, lambda row: {"status": "sending",
                                                  "sending_until": iso(T0 + timedelta(seconds=50))})
        rig.pump.step()
        assert rig.outcomes == ["busy"] and sink.received == []
        rig.pump.run()  # that other instance died: after the lease this one sends it
        assert rig.outcomes == ["busy", "delivered"] and len(sink.received) == 1


def test_a_client_error_fails_at_once_and_shows_on_the_status_page(azurite, unique):
    with WebhookSink(answers=[400]) as sink:
        rig = Rig(azurite, unique, sink.url, fmt="teams")
        rig.alerter.enqueue([event()])
        rig.pump.run()
        assert sink.received[0].body["type"] == "message"
    assert rig.outcomes == ["failed"]
    [problem] = rig.store.problems()
    assert problem["status"] == "failed" and problem["http_status"] == 400
    assert problem["last_error"].startswith("HTTP 400")
    assert problem["event_body"]["error_message"] == PBI_ERROR


def test_retries_stop_after_the_last_attempt(azurite, unique):
    with WebhookSink(default=502) as sink:
        rig = Rig(azurite, unique, sink.url)
        rig.alerter.enqueue([event()])
        rig.pump.run()
        assert len(sink.received) == alerts.MAX_ATTEMPTS
    assert rig.outcomes[-1] == "failed" and rig.outcomes.count("retry") == alerts.MAX_ATTEMPTS - 1
    assert max(delays(rig)) <= alerts.MAX_RETRY_SECONDS * 1.2
    row = rig.store.get(event().id)
    assert row["status"] == "failed" and row["last_error"].startswith(f"gave up after {alerts.MAX_ATTEMPTS} attempts")


def test_retry_after_of_a_429_is_honoured(azurite, unique):
    with WebhookSink(answers=[429]) as sink:
        sink.headers_for[429] = {"Retry-After": "600"}
        rig = Rig(azurite, unique, sink.url)
        rig.alerter.enqueue([event()])
        rig.pump.run()
    assert rig.outcomes == ["retry", "delivered"] and delays(rig)[1] == 600


def test_an_unreachable_webhook_is_retried_and_its_secret_url_never_logged_or_stored(azurite, unique, caplog):
    from refresh.dev.testing.azurite import free_port

    url = f"http://127.0.0.1:{free_port()}/hook?sig=TOPSECRET"
    rig = Rig(azurite, unique, url)
    with caplog.at_level(logging.DEBUG):
        rig.alerter.enqueue([event()])
        rig.pump.step()
    assert rig.outcomes == ["retry"]
    row = rig.store.get(event().id)
    assert row["last_error"] == "connection failed (ConnectionRefusedError)"
    assert "TOPSECRET" not in caplog.text and "TOPSECRET" not in json.dumps(dict(row), default=str)


def test_with_no_webhook_alerts_are_recorded_as_off_and_nothing_is_queued(azurite, unique, caplog):
    rig = Rig(azurite, unique, "")
    with caplog.at_level(logging.INFO, logger="refresh.alert"):
        rig.alerter.enqueue([event()])
    assert rig.pump.pending() == 0
    assert rig.store.get(event().id)["status"] == "off"
    assert "outcome=off" in caplog.text
    assert rig.store.recent()[0]["id"] == event().id


def test_prune_removes_only_old_finished_rows(azurite, unique):
    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url)
        rig.alerter.enqueue([event()])
        rig.pump.run()
        rig.clock.advance(3600)
        rig.alerter.enqueue([event("refresh_failed", id="b" * 32)])  # newer, still queued
    assert rig.store.prune(T0 + timedelta(minutes=30)) == 1
    assert rig.store.get(event().id) is None and rig.store.get("b" * 32) is not None


# -- the tracker end to end ------------------------------------------------------------------------------------

SALES = {"workspace": "Finance", "dataset": "Sales Model", "sources": [{"table": "sales/orders"}],
         "freshness_slo_minutes": 60}


def failed(job: str, at: datetime) -> RefreshResult:
    return RefreshResult(job_id=job, status="Failed", ended_at=at, error_code="ModelRefreshFailed",
                         error_message=PBI_ERROR, workspace_name="Finance", dataset_name="Sales Model")


def test_failing_refreshes_breach_the_slo_once_and_a_completed_refresh_recovers(azurite, unique):
    with WebhookSink(answers=[500]) as sink:
        rig = Rig(azurite, unique, sink.url, sales=SALES)
        tracker, clock = rig.tracker, rig.clock
        tracker.record_commits("sales", "sales/orders", [CommitTime(7, T0 - timedelta(minutes=2))])
        for i in range(8):  # a refresh fails every 10 minutes; the timer runs every minute
            clock.set(T0 + timedelta(minutes=10 * i + 5))
            tracker.record_outcome("sales", failed(f"{i:032x}", clock.now()))
            tracker.record_outcome("sales", failed(f"{i:032x}", clock.now()))  # redelivered end: nothing new
            for _ in range(10):
                clock.advance(60)
                tracker.tick()
        # a second instance (or a restart) evaluating the same state adds nothing
        FreshnessTracker(rig.states, tracker.config, clock, alerter=rig.alerter).tick()
        clock.advance(60)
        tracker.record_outcome("sales", RefreshResult(job_id="f" * 32, status="Completed", ended_at=clock.now(),
                                                      started_at=clock.now() - timedelta(minutes=3),
                                                      included={"sales/orders": 7}))
        tracker.tick()
        rig.pump.run()
        got = [r.body for r in sink.accepted()]
    kinds = [b["event"] for b in got]
    assert kinds.count("refresh_failed") == 8
    assert kinds.count("freshness_breached") == 1 and kinds.count("freshness_recovered") == 1
    assert kinds.count("refresh_recovered") == 1 and len(kinds) == 11
    assert len({b["id"] for b in got}) == 11
    breach = next(b for b in got if b["event"] == "freshness_breached")
    assert breach["occurred_at"] == iso(T0 + timedelta(minutes=58))  # commit at -2 min + 60 min objective
    assert breach["slo_seconds"] == 3600 and breach["status"] == "Failed" and breach["error_message"] == PBI_ERROR
    assert breach["workspace"] == "Finance" and breach["dataset_name"] == "Sales Model"
    assert all(b["error_message"] == PBI_ERROR for b in got if b["event"] == "refresh_failed")
    view = tracker.view("sales")
    assert (view.state, view.lag_seconds, view.tables["sales/orders"].included_version) == ("up_to_date", 0, 7)
    assert freshness.FreshnessRecord.from_entity(rig.states.get("sales")).state.outbox == []


def test_the_timer_finds_a_breach_when_nothing_happens_and_on_time(azurite, unique):
    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url, sales=SALES)
        rig.tracker.record_commits("sales", "sales/orders", [CommitTime(1, T0)])
        rig.clock.set(T0 + timedelta(minutes=59, seconds=59))
        report = rig.tracker.tick()
        assert report.events == [] and report.writes == 0 and report.lags == {"sales": 3599.0}
        rig.clock.set(T0 + timedelta(minutes=60, seconds=59))
        report = rig.tracker.tick()
        assert [e.event for e in report.events] == ["freshness_breached"] and report.writes == 1
        rig.pump.run()
        [got] = sink.accepted()
    assert got.body["lag_seconds"] == 3659.0 and got.body["occurred_at"] == iso(T0 + timedelta(minutes=60))


def test_an_event_left_in_the_outbox_by_a_crash_is_sent_by_the_next_timer_run(azurite, unique):
    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url, sales=SALES)
        crashed = FreshnessTracker(rig.states, rig.tracker.config, rig.clock, alerter=None)  # never flushes
        crashed.record_outcome("sales", failed("a" * 32, T0))
        assert len(freshness.FreshnessRecord.from_entity(rig.states.get("sales")).state.outbox) == 1
        report = rig.tracker.tick()
        assert report.flushed == 1 and report.events == []
        rig.pump.run()
        assert [r.body["event"] for r in sink.accepted()] == ["refresh_failed"]
    assert freshness.FreshnessRecord.from_entity(rig.states.get("sales")).state.outbox == []


def test_two_instances_deciding_on_the_same_entity_announce_the_breach_once(azurite, unique):
    rig = Rig(azurite, unique, "", sales=SALES)
    rig.tracker.record_commits("sales", "sales/orders", [CommitTime(1, T0)])
    stale = rig.states.get("sales")  # instance A read the entity ...
    rig.clock.set(T0 + timedelta(hours=2))
    other = FreshnessTracker(rig.states, rig.tracker.config, rig.clock, alerter=None)
    assert [e.event for e in other.tick().events] == ["freshness_breached"]  # ... B decided first
    # A writes with the ETag it read: conflict; decided again on what is stored now: nothing
    assert rig.tracker._transition("sales", stale, rig.clock.now()) == ([], None)
    state = freshness.FreshnessRecord.from_entity(rig.states.get("sales")).state
    assert [e["event"] for e in state.outbox] == ["freshness_breached"]


def test_a_poisoned_alert_message_is_recorded_as_failed(azurite, unique):
    rig = Rig(azurite, unique, "http://127.0.0.1:9/hook")
    rig.alerter.enqueue([event()])
    body = AlertMessage(event().id, "sales", 2).encode()
    rig.alerter.give_up(body, "gave up after 5 deliveries: ServiceRequestError")
    [problem] = rig.store.problems()
    assert problem["status"] == "failed" and problem["last_error"].startswith("gave up after 5 deliveries")
    rig.alerter.give_up("garbage", "x")  # not an alert message: logged, nothing raised


def test_the_tracker_feeds_the_lag_gauge(azurite, unique):
    from refresh.monitoring import metrics as m

    metrics, reader = m.in_memory()
    rig = Rig(azurite, unique, "", metrics=metrics, sales=SALES)
    rig.tracker.record_commits("sales", "sales/orders", [CommitTime(1, T0)])
    rig.clock.set(T0 + timedelta(minutes=90))
    rig.tracker.tick()
    [(attrs, point)] = m.read_points(reader)[m.FRESHNESS_LAG]
    assert attrs == {"dataset": "sales", "breached": True} and point.value == 5400.0
    rig.tracker.record_outcome("sales", RefreshResult(job_id="c" * 32, status="Completed", ended_at=rig.clock.now(),
                                                      included={"sales/orders": 1}))
    [(attrs, point)] = m.read_points(reader)[m.FRESHNESS_LAG]
    assert attrs == {"dataset": "sales", "breached": False} and point.value == 0.0


def test_storage_requests_that_freshness_tracking_costs(azurite, unique):
    """The figures for docs/performance.md: requests per detection batch, per job end and per timer run."""
    rig = Rig(azurite, unique, "", sales=SALES, hr={**SALES, "dataset": "HR Model"})

    def measure(action) -> list[str]:
        rig.requests.clear()
        action()
        return list(rig.requests)

    commits = measure(lambda: rig.tracker.record_commits("sales", "sales/orders", [CommitTime(1, T0)]))
    assert len(commits) == 2                                   # read + create/replace of the state entity
    quiet_tick = measure(rig.tracker.tick)
    assert len(quiet_tick) == 1                                # one query for every dataset, no write
    ok_end = measure(lambda: rig.tracker.record_outcome("sales", RefreshResult(
        job_id="1" * 32, status="Completed", ended_at=T0, included={"sales/orders": 1})))
    assert len(ok_end) == 2                                    # read + replace, no event
    failed_end = measure(lambda: rig.tracker.record_outcome("sales", failed("2" * 32, T0)))
    # read + replace; then alert row insert (webhook off: no queue message), read + replace emptying the outbox
    assert len(failed_end) == 5
    rig.tracker.record_commits("sales", "sales/orders", [CommitTime(2, T0)])
    rig.clock.set(T0 + timedelta(hours=2))
    breach_tick = measure(rig.tracker.tick)
    # query + replace (ETag, the entity from the query) + alert row insert + read + replace of the outbox
    assert len(breach_tick) == 5


def test_unusable_settings_record_each_alert_as_failed_with_the_problem_and_send_nothing(azurite, unique, caplog):
    rig = Rig(azurite, unique, "")
    rig.alerter.settings = AlertSettings.load({"ALERT_WEBHOOK_URL": "@Microsoft.KeyVault(SecretUri=https://kv/x)"})
    assert rig.alerter.settings.problem.startswith("setting ALERT_WEBHOOK_URL: the value must be an https URL")
    rig.alerter.enqueue([event()])
    assert rig.pump.pending() == 0
    [problem] = rig.store.problems()
    assert problem["status"] == "failed" and problem["last_error"] == rig.alerter.settings.problem


def test_a_queue_outage_never_fails_the_job_end_and_the_timer_sends_later(azurite, unique):
    from azure.storage.queue import QueueServiceClient

    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url, sales=SALES)
        queues = QueueServiceClient.from_connection_string(azurite.connection_string)
        missing = messages.queue_client(queues, f"missing-{unique}")
        rig.alerter.queue = missing  # sending fails (the queue does not exist)
        events = rig.tracker.record_outcome("sales", failed("d" * 32, T0))
        assert [e.event for e in events] == ["refresh_failed"]
        assert len(freshness.FreshnessRecord.from_entity(rig.states.get("sales")).state.outbox) == 1
        rig.alerter.queue = rig.queue
        assert rig.tracker.tick().flushed == 1
        rig.pump.run()
        assert [r.body["job_id"] for r in sink.accepted()] == ["d" * 32]


def test_the_timer_also_flushes_the_outbox_of_an_unconfigured_key(azurite, unique):
    with WebhookSink() as sink:
        rig = Rig(azurite, unique, sink.url, sales=SALES)
        crashed = FreshnessTracker(rig.states, rig.tracker.config, rig.clock, alerter=None)
        crashed.record_outcome("_rejected", RefreshResult(job_id="e" * 32, status="Rejected", ended_at=T0,
                                                          error_code="BadMessage", error_message="v: unsupported"))
        assert rig.tracker.tick().flushed == 1
        rig.pump.run()
        [got] = sink.accepted()
    assert (got.body["dataset"], got.body["status"], got.body["error_message"]) == ("_rejected", "Rejected",
                                                                                    "v: unsupported")
