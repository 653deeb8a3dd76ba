"""Issue 12's proof under ``python -m refresh local`` (a subprocess, real time, real queue polling, the webhook
sink on loopback, the Power BI simulator, Azurite):

1. a Delta commit whose refresh fails in Power BI reaches the webhook exactly once, with Power BI's error
   text; the next Completed refresh sends ``refresh_recovered``; the state entity carries the freshness;
2. refreshes that fail while the data is older than the dataset's objective: exactly one ``refresh_failed``
   and one ``freshness_breached``, then after a Completed refresh one ``refresh_recovered`` and one
   ``freshness_recovered``; ``GET /api/datasets`` shows the dataset breached, then up to date; the webhook
   answers 500, 500, 503 first and still gets every event exactly once. The breach is real, without waiting
   minutes: the commit carries its own time (Delta's ``commitInfo.timestamp``), written minutes in the past
   (see the test's docstring).

The same story minute by minute (a breach found by the timer while nothing else happens, the webhook
down for minutes) runs in virtual time in tests/test_freshness_e2e.py through the same registered functions.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from azure.storage.blob import BlobServiceClient
from deltalake import write_deltalake
from test_e2e import END, Lake, Runtime, http, wait_for

from refresh.core.clock import SystemClock, iso
from refresh.core.context import App
from refresh.dev.testing.webhook_sink import WebhookSink
from refresh.monitoring.freshness import FreshnessRecord, freshness_of

PBI_ERROR = "Data source error: The credentials provided for the SQL source are invalid. (sqlprod.example.net;gold)"
TABLE = "sales/fact_orders"
CONFIG = {"datasets": {"sales": {"workspace": "Finance Analytics", "dataset": "Sales Model",
                                 "sources": [{"table": TABLE}], "debounce_seconds": 0,
                                 "max_delay_seconds": 0, "freshness_slo_minutes": 60}}}


def _settings(azurite, sim, lake: Lake, unique: str, tmp_path: Path, sink: WebhookSink, **more: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string, "LAKE_STORAGE": azurite.connection_string,
        "GOLD_CONTAINER": lake.container, "REFRESH_QUEUE": f"jobs-{unique}", "STATE_TABLE": f"State{unique}",
        "OUTCOMES_TABLE": f"Outcomes{unique}", "REFRESH_CONFIG": str(tmp_path / "refresh-config.json"),
        "POWERBI_API_URL": sim.base_url, "IDENTITY_ENDPOINT": sim.identity_endpoint,
        "IDENTITY_HEADER": sim.identity_header, "ALERT_WEBHOOK_URL": sink.url, **more,
    }


def test_a_failing_refresh_alerts_once_with_power_bis_words_under_the_local_runtime(azurite, sim, tmp_path, unique):
    ds = sim.add_dataset(sim.add_workspace("Finance Analytics", dedicated=False), "Sales Model")
    sim.refresh_duration = 2
    lake = Lake(azurite, f"gold{unique}")
    lake.write(TABLE, {"id": [1], "amount": [10.0]})
    with WebhookSink() as sink:
        settings = _settings(azurite, sim, lake, unique, tmp_path, sink)
        (tmp_path / "refresh-config.json").write_text(json.dumps(CONFIG))
        (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
        runtime = Runtime(tmp_path, "--settings", str(tmp_path / "local.settings.json"))
        try:
            runtime.start()
            sim.fail_refresh(ds, {"errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
                                  "errorDescription": PBI_ERROR})
            lake.write(TABLE, {"id": [2], "amount": [20.0]}, mode="append")
            wait_for("the refresh_failed alert", lambda: sink.accepted(), 45, runtime, step=0.2)
            lake.write(TABLE, {"id": [3], "amount": [30.0]}, mode="append")
            wait_for("the refresh_recovered alert", lambda: len(sink.accepted()) >= 2, 45, runtime, step=0.2)
            events = [r.body for r in sink.accepted()]
            assert Counter(e["event"] for e in events) == {"refresh_failed": 1, "refresh_recovered": 1}
            failed = next(e for e in events if e["event"] == "refresh_failed")
            assert PBI_ERROR in failed["error_message"] and failed["status"] == "Failed"
            assert failed["dataset"] == "sales" and failed["slo_seconds"] == 3600
            assert "alert delivery: id=" in runtime.output() and "outcome=delivered" in runtime.output()

            app = App(env=settings)
            view = freshness_of(FreshnessRecord.from_entity(app.states.get("sales")), 3600, SystemClock().now())
            assert view.state == "up_to_date" and view.tables[TABLE].included_version == 2
            assert runtime.stop() == 0
        finally:
            if runtime.process is not None and runtime.process.poll() is None:
                runtime.kill()


def _backdate(log_file: Path, when: datetime) -> None:
    """Give a commit written by deltalake its time ``when``: ``commitInfo.timestamp`` and the ``add`` actions'
    ``modificationTime`` (milliseconds). Every other action is kept as written, so it stays a valid Delta commit."""
    millis = int(when.timestamp() * 1000)
    actions = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    for action in actions:
        if "commitInfo" in action:
            action["commitInfo"]["timestamp"] = millis
        if "add" in action:
            action["add"]["modificationTime"] = millis
    log_file.write_text("".join(json.dumps(a, separators=(",", ":")) + "\n" for a in actions))


def _upload_version(container: Any, local: Path, table: str, version: int, uploaded: set[str]) -> None:
    """Upload version ``version`` of the local table: its data files first, then its commit (as a writer does)."""
    for path in sorted(p for p in local.rglob("*") if p.is_file() and "_delta_log" not in p.parts):
        name = path.relative_to(local).as_posix()
        if name not in uploaded:
            container.upload_blob(f"{table}/{name}", path.read_bytes())
            uploaded.add(name)
    commit = f"_delta_log/{version:020d}.json"
    container.upload_blob(f"{table}/{commit}", (local / commit).read_bytes())


def test_refreshes_that_keep_failing_breach_once_and_recover_once_through_a_flaky_webhook(
        azurite, sim, tmp_path, unique):
    """A failing refresh, a breach of the 1-minute objective, a recovery, with the webhook down at first.

    Why the failing commit is old: the objective is whole minutes and the breach timer runs every minute;
    rather than wait minutes of real time (or give the runtime a virtual clock), the commit carries its own
    time, as Delta defines it: lag is measured from ``commitInfo.timestamp``. The table's versions 0 and 1
    are built with ``deltalake`` in a local folder and dated 10 and 5 minutes ago (a writer that committed
    then and whose commit reached the lake only now). Version 0 is there before the runtime starts and is
    seen by the sweep (every 2 s here) as history: no refresh. Version 1 is uploaded after that, so it is a
    new version (not first-sight history), and is already 4 minutes past the objective when it is detected.
    Its refresh fails: one ``refresh_failed`` with Power BI's words and one ``freshness_breached`` (at the
    job's end, or by the minute timer if it runs first). Version 2 is a plain ``deltalake`` append on the
    lake (proving the hand-written commit is a valid one); its Completed refresh includes versions 1 and 2:
    one ``refresh_recovered`` and one ``freshness_recovered``. The webhook answers 500, 500, 503 first; every
    event still arrives, once.
    """
    ds = sim.add_dataset(sim.add_workspace("Finance Analytics", dedicated=False), "Sales Model")
    sim.refresh_duration = 2
    lake = Lake(azurite, f"gold{unique}")
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        lake.container)
    local = tmp_path / "fact_orders"
    now = datetime.now(UTC)
    made = {0: now - timedelta(minutes=10), 1: now - timedelta(minutes=5)}
    write_deltalake(str(local), pa.table({"id": [1], "amount": [10.0]}))
    _backdate(local / "_delta_log" / f"{0:020d}.json", made[0])
    uploaded: set[str] = set()
    _upload_version(container, local, TABLE, 0, uploaded)
    write_deltalake(str(local), pa.table({"id": [2], "amount": [20.0]}), mode="append")
    _backdate(local / "_delta_log" / f"{1:020d}.json", made[1])

    config = {"datasets": {"sales": {**CONFIG["datasets"]["sales"], "freshness_slo_minutes": 1}}}
    with WebhookSink() as sink:
        sink.script([500, 500, 503])  # the webhook is down for its first three POSTs
        settings = _settings(azurite, sim, lake, unique, tmp_path, sink, SWEEP_SCHEDULE="*/2 * * * * *")
        (tmp_path / "refresh-config.json").write_text(json.dumps(config))
        (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
        app = App(env=settings)
        runtime = Runtime(tmp_path, "--settings", str(tmp_path / "local.settings.json"))
        try:
            api = runtime.start()["api"]
            mark = wait_for("the sweep to see the table", lambda: app.watermarks.get(TABLE), 30, runtime, step=0.2)
            assert mark.version == 0 and not app.outcomes.history("sales")  # version 0 is history: no job

            # 1. version 1, committed 5 minutes ago, lands now; its refresh fails
            sim.fail_refresh(ds, {"errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
                                  "errorDescription": PBI_ERROR})
            _upload_version(container, local, TABLE, 1, uploaded)
            [failed_row] = wait_for("the failed refresh", lambda: _ended(app), 45, runtime, step=0.2)
            assert failed_row["status"] == "Failed" and failed_row["sources"][TABLE]["last_version"] == 1
            breached = wait_for("the breach to be recorded", lambda: _freshness(api, "breached"), 70, runtime,
                                step=0.5)
            assert breached["breached"] and breached["lag_seconds"] > 240 and breached["slo_seconds"] == 60
            assert breached["tables"][TABLE]["unincluded_versions"] == [1, 1]
            assert breached["breach_starts_at"] == iso(_ms(made[1]) + timedelta(minutes=1))
            wait_for("the freshness_breached alert (sent while breached)",
                     lambda: any(r.body["event"] == "freshness_breached" for r in sink.received), 70, runtime,
                     step=0.2)

            # 2. a plain deltalake append on the lake: its refresh completes and includes versions 1 and 2
            assert lake.write(TABLE, {"id": [3], "amount": [30.0]}, mode="append") == 2
            wait_for("the Completed refresh", lambda: len(_ended(app)) == 2, 45, runtime, step=0.2)
            recovered = wait_for("up to date", lambda: _freshness(api, "up_to_date"), 10, runtime, step=0.2)
            assert recovered["lag_seconds"] == 0 and recovered["tables"][TABLE]["included_version"] == 2

            # 3. the webhook came back: every event arrives (the retries wait 30 s +-20 % after a 500)
            wait_for("every alert to be delivered", lambda: len(sink.accepted()) >= 4, 150, runtime, step=0.5)
            assert [r.answered for r in sink.received][:3] == [500, 500, 503]
            events = [r.body for r in sink.accepted()]
            assert Counter(e["event"] for e in events) == {"refresh_failed": 1, "freshness_breached": 1,
                                                          "refresh_recovered": 1, "freshness_recovered": 1}
            ids = [e["id"] for e in events]
            assert len(set(ids)) == 4  # each event delivered once
            assert {r.body["id"] for r in sink.received} == set(ids)  # the failed POSTs were these events
            by_name = {e["event"]: e for e in events}
            assert PBI_ERROR in by_name["refresh_failed"]["error_message"]
            assert by_name["refresh_failed"]["status"] == "Failed"
            assert by_name["freshness_breached"]["lag_seconds"] > 240
            assert by_name["freshness_breached"]["occurred_at"] == breached["breach_starts_at"]
            assert by_name["freshness_recovered"]["lag_seconds"] == 0
            assert by_name["freshness_recovered"]["job_id"] == by_name["refresh_recovered"]["job_id"]
            assert sorted(lake.table(TABLE).to_pyarrow_table()["id"].to_pylist()) == [1, 2, 3]
            output = runtime.output()
            assert output.count("outcome=retry") == 3 and output.count("outcome=delivered") == 4
            assert runtime.stop() == 0
        finally:
            if runtime.process is not None and runtime.process.poll() is None:
                runtime.kill()


def _ms(when: datetime) -> datetime:
    return datetime.fromtimestamp(int(when.timestamp() * 1000) / 1000, UTC)


def _ended(app: App) -> list[dict[str, Any]]:
    rows = [r for r in app.outcomes.history("sales") if r["status"] in END]
    return sorted(rows, key=lambda r: r["queued_at"])


def _freshness(api: str, state: str) -> dict[str, Any] | None:
    status, body = http("GET", f"{api}/datasets")
    assert status == 200, body
    [sales] = [d for d in body["datasets"] if d["key"] == "sales"]
    return sales["freshness"] if sales["freshness"]["state"] == state else None
