"""Issue 12 under ``python -m refresh local`` (a subprocess, real time, real queue polling): a Delta commit whose
refresh fails in Power BI reaches the webhook sink on loopback exactly once, with Power BI's error text; the
next Completed refresh sends ``refresh_recovered``; ``GET /api/datasets``' state entity carries the freshness.

The time-driven parts (a breach found by the minute timer, a webhook down for a while) run in virtual time in
tests/test_freshness_e2e.py through the same registered functions.
"""

from __future__ import annotations

import json
from collections import Counter

from test_e2e import Lake, Runtime, wait_for

from refresh.core.clock import SystemClock
from refresh.core.context import App
from refresh.dev.testing.webhook_sink import WebhookSink
from refresh.monitoring.freshness import FreshnessRecord, freshness_of

PBI_ERROR = "Data source error: The credentials provided for the SQL source are invalid. (sqlprod.example.net;gold)"
CONFIG = {"datasets": {"sales": {"workspace": "Finance Analytics", "dataset": "Sales Model",
                                 "sources": [{"table": "sales/fact_orders"}], "debounce_seconds": 0,
                                 "max_delay_seconds": 0, "freshness_slo_minutes": 60}}}


def test_a_failing_refresh_alerts_once_with_power_bis_words_under_the_local_runtime(azurite, sim, tmp_path, unique):
    ds = sim.add_dataset(sim.add_workspace("Finance Analytics", dedicated=False), "Sales Model")
    sim.refresh_duration = 2
    lake = Lake(azurite, f"gold{unique}")
    lake.write("sales/fact_orders", {"id": [1], "amount": [10.0]})
    with WebhookSink() as sink:
        settings = {
            "AzureWebJobsStorage": azurite.connection_string, "LAKE_STORAGE": azurite.connection_string,
            "GOLD_CONTAINER": lake.container, "REFRESH_QUEUE": f"jobs-{unique}", "STATE_TABLE": f"State{unique}",
            "OUTCOMES_TABLE": f"Outcomes{unique}", "REFRESH_CONFIG": str(tmp_path / "refresh-config.json"),
            "POWERBI_API_URL": sim.base_url, "IDENTITY_ENDPOINT": sim.identity_endpoint,
            "IDENTITY_HEADER": sim.identity_header, "ALERT_WEBHOOK_URL": sink.url,
        }
        (tmp_path / "refresh-config.json").write_text(json.dumps(CONFIG))
        (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
        runtime = Runtime(tmp_path, "--settings", str(tmp_path / "local.settings.json"))
        try:
            runtime.start()
            sim.fail_refresh(ds, {"errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
                                  "errorDescription": PBI_ERROR})
            lake.write("sales/fact_orders", {"id": [2], "amount": [20.0]}, mode="append")
            wait_for("the refresh_failed alert", lambda: sink.accepted(), 45, runtime, step=0.2)
            lake.write("sales/fact_orders", {"id": [3], "amount": [30.0]}, mode="append")
            wait_for("the refresh_recovered alert", lambda: len(sink.accepted()) >= 2, 45, runtime, step=0.2)
            events = [r.body for r in sink.accepted()]
            assert Counter(e["event"] for e in events) == {"refresh_failed": 1, "refresh_recovered": 1}
            failed = next(e for e in events if e["event"] == "refresh_failed")
            assert PBI_ERROR in failed["error_message"] and failed["status"] == "Failed"
            assert failed["dataset"] == "sales" and failed["slo_seconds"] == 3600
            assert "alert delivery: id=" in runtime.output() and "outcome=delivered" in runtime.output()

            app = App(env=settings)
            view = freshness_of(FreshnessRecord.from_entity(app.states.get("sales")), 3600, SystemClock().now())
            assert view.state == "up_to_date" and view.tables["sales/fact_orders"].included_version == 2
            assert runtime.stop() == 0
        finally:
            if runtime.process is not None and runtime.process.poll() is None:
                runtime.kill()
