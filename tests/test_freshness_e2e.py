"""Issue 12, end to end: lake commits -> detection -> refresh jobs on the Power BI simulator -> freshness
and alert transitions -> alert messages on the refresh queue -> the webhook sink on loopback.

Everything goes through the functions registered in function_app.py (blob trigger, queue trigger,
the every-minute schedules timer that also checks freshness), on Azurite, in virtual time (the Pump
plays the host's queue listener and moves the app's and the simulator's clocks).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import azure.functions.blob as fb
import azure.functions.timer as ft
import pytest

from refresh.core.clock import parse_iso
from refresh.core.context import set_app
from refresh.detection.deltalog import commit_file_name
from refresh.dev.powerbi_sim.extras import align_wall
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.dev.testing.webhook_sink import WebhookSink
from refresh.monitoring import metrics as app_metrics
from refresh.monitoring.freshness import FreshnessRecord, freshness_of

TABLE = "sales/fact_orders"
SLO_MINUTES = 10
CONFIG = {
    "datasets": {
        "sales": {
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": TABLE}], "debounce_seconds": 0, "max_delay_seconds": 0,
            "freshness_slo_minutes": SLO_MINUTES,
        },
    }
}
PBI_ERROR = "The credentials provided for the Sql source are invalid. (Source at sqlprod.database.windows.net;gold.)"


class Rig:
    def __init__(self, azurite, sim, registered, token: str, sink: WebhookSink) -> None:
        self.sim, self.fn, self.sink = sim, registered, sink
        ws = sim.add_workspace("Finance Analytics", dedicated=True)
        self.dataset_id = sim.add_dataset(ws, "Sales Model")
        self.app = make_app(azurite.connection_string, CONFIG, token=token, POWERBI_API_URL=sim.base_url,
                            ALERT_WEBHOOK_URL=sink.url, ALERT_STATUS_BASE_URL="https://refresh.example.net")
        self.clock = self.app.clock
        align_wall(sim, self.clock.now())
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)
        self.metrics, self.reader = app_metrics.in_memory()
        self.app.__dict__["metrics"] = self.metrics
        set_app(self.app)
        self.pump = Pump(self.app.queue, registered["run_refresh_job"], advance=[sim.advance],
                         poison=registered["on_refresh_poison"])
        self.version = -1

    def commit(self) -> int:
        """A data-changing commit written now (its commitInfo.timestamp is the app's now), announced by the
        blob trigger."""
        self.version += 1
        stamp = int(self.clock.now().timestamp() * 1000)
        lines = [{"commitInfo": {"timestamp": stamp, "operation": "WRITE"}},
                 {"add": {"path": f"part-{self.version}.parquet", "partitionValues": {}, "size": 10,
                          "modificationTime": stamp, "dataChange": True}}]
        name = f"{TABLE}/_delta_log/{commit_file_name(self.version)}"
        self.app.lake.upload_blob(name, "\n".join(json.dumps(x) for x in lines).encode(), overwrite=True)
        container = self.app.settings.gold_container
        self.fn["on_delta_commit"](fb.InputStream(data=b"{}", name=f"{container}/{name}", length=2))
        return self.version

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.sim.advance(seconds)

    def minute_timer(self) -> None:
        self.fn["run_schedules"](ft.TimerRequest(past_due=False))

    def events(self) -> list[dict]:
        return [r.body for r in self.sink.accepted()]

    def freshness(self):
        state = self.app.states.get("sales")
        return freshness_of(FreshnessRecord.from_entity(state), SLO_MINUTES * 60, self.clock.now())


@pytest.fixture
def sink():
    with WebhookSink() as s:
        yield s


@pytest.fixture
def rig(azurite, sim, powerbi_identity, registered, unique, sink):
    r = Rig(azurite, sim, registered, unique, sink)
    yield r
    set_app(None)


def test_failing_refreshes_alert_once_breach_once_and_recover_once_through_a_flaky_webhook(rig):
    rig.sink.script([500, 500, 503])  # the webhook is down for the first three POSTs
    committed_at = rig.clock.now()

    # 1. a refresh fails: exactly one refresh_failed, with Power BI's own words
    rig.sim.fail_refresh(rig.dataset_id, {"errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
                                          "errorDescription": PBI_ERROR})
    rig.commit()
    rig.pump.run()
    failed = [e for e in rig.events() if e["event"] == "refresh_failed"]
    assert len(failed) == 1
    assert PBI_ERROR in failed[0]["error_message"]
    assert failed[0]["status"] == "Failed" and failed[0]["dataset"] == "sales"
    assert failed[0]["workspace"] == "Finance Analytics" and failed[0]["dataset_name"] == "Sales Model"
    assert failed[0]["job_id"] and failed[0]["slo_seconds"] == SLO_MINUTES * 60
    assert [r.answered for r in rig.sink.received][:3] == [500, 500, 503]  # retried until it recovered
    view = rig.freshness()  # what GET /api/datasets computes from the same entity
    assert view.state == "catching_up" and view.tables[TABLE].unincluded_versions == (0, 0)
    assert view.lag_seconds == pytest.approx((rig.clock.now() - committed_at).total_seconds(), abs=1)

    # 2. the refreshes keep failing; the SLO passes while nothing else happens: one freshness_breached,
    #    found by the every-minute timer, never repeated while the breach lasts
    rig.advance(60)
    rig.sim.fail_refresh(rig.dataset_id, {"errorCode": "ModelRefreshFailed", "errorDescription": PBI_ERROR})
    rig.commit()
    rig.pump.run()
    assert rig.freshness().lag_seconds < SLO_MINUTES * 60  # the webhook's retries took a few minutes
    assert not [e for e in rig.events() if e["event"] == "freshness_breached"]
    minutes = 0
    while minutes < SLO_MINUTES + 3:  # nothing but the every-minute timer from here
        rig.advance(60)
        minutes += 1
        rig.minute_timer()
        rig.pump.run()
        if rig.freshness().breached and not [e for e in rig.events() if e["event"] == "freshness_breached"]:
            pytest.fail("the breach was not announced by the timer run that saw it")
    breached = [e for e in rig.events() if e["event"] == "freshness_breached"]
    assert len(breached) == 1
    assert breached[0]["lag_seconds"] > SLO_MINUTES * 60 and breached[0]["error_message"]
    # the breach starts when the oldest missing commit is SLO old (to the millisecond of the commit)
    assert abs(parse_iso(breached[0]["occurred_at"]) - (committed_at + timedelta(minutes=SLO_MINUTES))) \
        < timedelta(seconds=1)
    assert rig.freshness().breached

    # 3. a Completed refresh: one freshness_recovered (and one refresh_recovered)
    rig.commit()
    rig.pump.run()
    rig.minute_timer()
    rig.pump.run()
    counts = Counter(e["event"] for e in rig.events())
    assert counts == {"refresh_failed": 2, "freshness_breached": 1, "freshness_recovered": 1,
                      "refresh_recovered": 1}
    ids = [e["id"] for e in rig.events()]
    assert len(ids) == len(set(ids))  # each event delivered once, the failed POSTs included
    view = rig.freshness()
    assert view.state == "up_to_date" and view.lag_seconds == 0 and not view.breached
    assert view.tables[TABLE].included_version == rig.version

    # metrics on the in-memory reader: outcomes by status, commit-to-start, the lag gauge
    points = app_metrics.read_points(rig.reader)
    outcomes = Counter({a["status"]: p.value for a, p in points[app_metrics.REFRESH_OUTCOMES]})
    assert outcomes == {"Failed": 2, "Completed": 1}
    assert points[app_metrics.COMMIT_TO_START]
    [(attrs, lag)] = points[app_metrics.FRESHNESS_LAG]
    assert attrs == {"dataset": "sales", "breached": False} and lag.value == 0


def test_a_redelivered_job_end_alerts_once(rig):
    """A second pass over a job that already ended (a redelivered message) sends nothing new."""
    rig.sim.fail_refresh(rig.dataset_id, {"errorCode": "X", "errorDescription": PBI_ERROR})
    rig.commit()
    rig.pump.run()
    [row] = rig.app.outcomes.history("sales")
    rig.app.worker._finish_row("sales", row["job_id"], row["status"], rig.clock.now())
    rig.minute_timer()
    rig.pump.run()
    assert [e["event"] for e in rig.events()] == ["refresh_failed"]


def test_explain_dataset_answers_why_it_is_stale_as_a_chain(rig):
    from refresh.surfaces.explain_dataset import dataset_lines, explain_dataset

    rig.sim.fail_refresh(rig.dataset_id, {"errorCode": "ModelRefreshFailed", "errorDescription": PBI_ERROR})
    rig.commit()
    rig.pump.run()
    rig.commit()  # detected, its job not run yet
    chain = explain_dataset(rig.app, "sales")
    [table] = chain["commits"]
    assert table["table"] == TABLE and table["included_version"] is None
    assert [s["versions"] for s in table["not_included"]] == [[0, 0], [1, 1]]
    assert table["detected_up_to"] == 1
    [job] = chain["jobs"]
    assert job["state"] == "pending" and job["sources"] == {TABLE: [1, 1]} and job["status"] == "Queued"
    assert chain["last_end"]["status"] == "Failed" and PBI_ERROR in chain["last_end"]["error_message"]
    assert chain["freshness"]["state"] == "catching_up" and chain["freshness"]["slo_seconds"] == SLO_MINUTES * 60
    text = "\n".join(dataset_lines(chain))
    assert "not in the model: v0, oldest" in text and "not in the model: v1, oldest" in text
    assert f"pending job {job['job_id']}" in text
    assert PBI_ERROR in text and "catching up" in text
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        explain_dataset(rig.app, "nope")


# -- the wiring's edges ------------------------------------------------------------------------------------


def test_power_bi_pushback_is_counted_as_throttling(rig):
    rig.sim.busy_next()
    rig.sim.fail_next(429, retry_after=5, method="POST", path_contains="/refreshes")
    rig.commit()
    rig.pump.run()
    points = app_metrics.read_points(rig.reader)
    kinds = Counter({a["kind"]: p.value for a, p in points[app_metrics.POWERBI_THROTTLED]})
    assert kinds == {"busy": 1, "429": 1}
    [(attrs, outcome)] = points[app_metrics.REFRESH_OUTCOMES]
    assert attrs["status"] == "Completed" and outcome.value == 1


def test_a_commit_without_its_own_timestamp_gets_the_blob_last_modified_time(rig):
    rig.version += 1
    name = f"{TABLE}/_delta_log/{commit_file_name(rig.version)}"
    line = {"add": {"path": "p.parquet", "partitionValues": {}, "size": 1, "modificationTime": 1, "dataChange": True}}
    rig.app.lake.upload_blob(name, json.dumps(line).encode(), overwrite=True)
    modified = rig.app.lake.get_blob_client(name).get_blob_properties().last_modified
    rig.fn["on_delta_commit"](fb.InputStream(data=b"{}", name=f"{rig.app.settings.gold_container}/{name}", length=2))
    record = FreshnessRecord.from_entity(rig.app.states.get("sales"))
    [span] = record.tables[TABLE].unincluded
    assert parse_iso(span.oldest) == modified and not record.tables[TABLE].approximate


def test_an_alert_message_in_the_poison_queue_is_recorded_as_failed(rig):
    import azure.functions.queue as fq

    from refresh.monitoring.alerts import AlertMessage
    from refresh.monitoring.freshness import AlertEvent

    event = AlertEvent(id="a" * 32, event="refresh_failed", dataset="sales", workspace=None, dataset_name=None,
                       status="Failed", error_code=None, error_message=None, job_id=None, lag_seconds=0,
                       slo_seconds=None, occurred_at="2026-01-01T00:00:00Z")
    rig.app.alerter.store.create(event, "retrying", rig.clock.now())
    body = AlertMessage(event.id, "sales", 3).encode()
    import base64

    rig.fn["on_refresh_poison"](fq.QueueMessage(id="m1", body=base64.b64encode(body.encode()), dequeue_count=5))
    row = rig.app.alerter.store.get(event.id)
    assert row["status"] == "failed" and "poison queue after 5 deliveries" in row["last_error"]
    assert rig.app.outcomes.history("_rejected") == []  # not mistaken for a bad job message


def test_the_minute_timer_runs_the_schedules_even_when_the_freshness_check_fails(rig, monkeypatch, caplog):
    ran = []
    monkeypatch.setattr("refresh.jobs.schedules.run_schedules", lambda app: ran.append(app))

    def broken():
        raise ConnectionError("table service unreachable")

    monkeypatch.setattr(rig.app.freshness, "tick", broken)
    rig.minute_timer()  # does not raise
    assert ran == [rig.app]
    assert "freshness check failed (ConnectionError: table service unreachable)" in caplog.text


def test_the_sweep_prunes_old_finished_alert_rows(rig):
    from refresh.monitoring.freshness import AlertEvent

    def event(i: str) -> AlertEvent:
        return AlertEvent(id=i * 32, event="refresh_failed", dataset="sales", workspace=None, dataset_name=None,
                          status="Failed", error_code=None, error_message=None, job_id=None, lag_seconds=0,
                          slo_seconds=None, occurred_at="2026-01-01T00:00:00Z")

    rig.app.alerter.store.create(event("b"), "delivered", rig.clock.now() - timedelta(days=31))
    rig.app.alerter.store.create(event("c"), "delivered", rig.clock.now() - timedelta(days=2))
    rig.fn["sweep_delta_logs"](ft.TimerRequest(past_due=False))
    assert rig.app.alerter.store.get("b" * 32) is None and rig.app.alerter.store.get("c" * 32) is not None
