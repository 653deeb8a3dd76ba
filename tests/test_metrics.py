"""OpenTelemetry metrics (refresh/monitoring/metrics.py): values read back with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from refresh.monitoring import metrics as m


def points(reader, name):
    return m.read_points(reader).get(name, [])


def by_attrs(reader, name, key):
    return {tuple(sorted(a.items())): p for a, p in points(reader, name) if a.get("dataset") == key}


def test_outcomes_are_counted_by_status_and_durations_recorded():
    metrics, reader = m.in_memory()
    metrics.record_outcome("sales", "Completed", 120.0)
    metrics.record_outcome("sales", "Completed", 60.0)
    metrics.record_outcome("sales", "Failed", 5.5)
    metrics.record_outcome("hr", "Completed", None)  # duration unknown: counted, not timed
    counts = {(a["dataset"], a["status"]): p.value for a, p in points(reader, m.REFRESH_OUTCOMES)}
    assert counts == {("sales", "Completed"): 2, ("sales", "Failed"): 1, ("hr", "Completed"): 1}
    durations = {(a["dataset"], a["status"]): (p.count, p.sum, p.min, p.max)
                 for a, p in points(reader, m.REFRESH_DURATION)}
    assert durations == {("sales", "Completed"): (2, 180.0, 60.0, 120.0), ("sales", "Failed"): (1, 5.5, 5.5, 5.5)}


def test_throttling_and_commit_to_start_delay():
    metrics, reader = m.in_memory()
    metrics.record_throttled("sales", "429")
    metrics.record_throttled("sales", "429")
    metrics.record_throttled("sales", "busy")
    metrics.record_commit_to_start("sales", 95.0)
    metrics.record_commit_to_start("sales", 5.0)
    metrics.record_commit_to_start("sales", -1.0)  # clock skew: not a delay, not recorded
    throttled = {a["kind"]: p.value for a, p in points(reader, m.POWERBI_THROTTLED)}
    assert throttled == {"429": 2, "busy": 1}
    [(attrs, delay)] = points(reader, m.COMMIT_TO_START)
    assert attrs == {"dataset": "sales"} and (delay.count, delay.sum) == (2, 100.0)


def test_lag_gauge_reports_the_latest_value_per_dataset_until_it_goes_stale():
    now = [1000.0]
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics = m.Metrics(MeterProvider(metric_readers=[reader]), monotonic=lambda: now[0])
    metrics.set_lag("sales", 30.0)
    metrics.set_lag("sales", 4000.0, breached=True)
    metrics.set_lag("hr", 0.0)
    lags = {a["dataset"]: (p.value, a["breached"]) for a, p in points(reader, m.FRESHNESS_LAG)}
    assert lags == {"sales": (4000.0, True), "hr": (0.0, False)}
    now[0] += m.LAG_STALE_SECONDS + 1
    metrics.set_lag("hr", 10.0)
    lags = {a["dataset"]: p.value for a, p in points(reader, m.FRESHNESS_LAG)}
    assert lags == {"hr": 10.0}  # sales was not evaluated by this instance lately


def test_a_broken_provider_never_fails_the_caller_and_warns_once(caplog):
    class Broken:
        def get_meter(self, name):
            raise RuntimeError("exporter down")

    metrics = m.Metrics(Broken())
    with caplog.at_level(logging.WARNING, logger="refresh.monitoring.metrics"):
        metrics.record_outcome("sales", "Completed", 1.0)
        metrics.record_throttled("sales", "429")
        metrics.set_lag("sales", 1.0)
    warnings = [r for r in caplog.records if r.name == "refresh.monitoring.metrics"]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0].getMessage()


def test_without_a_connection_string_nothing_is_configured():
    called = []
    assert m.configure_from_env({}, configure=lambda **kw: called.append(kw)) is False
    assert m.configure_from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "},
                                configure=lambda **kw: called.append(kw)) is False
    assert called == []


def test_with_a_connection_string_the_distro_is_configured_for_metrics_only():
    called = []
    cs = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://example.invalid/"
    assert m.configure_from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": cs},
                                configure=lambda **kw: called.append(kw)) is True
    [kwargs] = called
    assert kwargs["connection_string"] == cs
    assert kwargs["enable_live_metrics"] is False and kwargs["disable_logging"] is True
    assert kwargs["logger_name"] == m.UNUSED_LOGGER
    assert all(not opts["enabled"] for opts in kwargs["instrumentation_options"].values())
    assert "requests" in kwargs["instrumentation_options"] and "azure_sdk" in kwargs["instrumentation_options"]
    assert "credential" not in kwargs


def test_entra_authentication_string_gives_a_managed_identity_credential():
    from azure.identity import ManagedIdentityCredential

    called = []
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x",
           "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=11111111-2222-3333-4444-555555555555;"
                                                        "Authorization=AAD"}
    assert m.configure_from_env(env, configure=lambda **kw: called.append(kw)) is True
    assert isinstance(called[0]["credential"], ManagedIdentityCredential)


def test_a_failing_distro_setup_is_logged_not_raised(caplog):
    def boom(**kwargs):
        raise ValueError("Invalid instrumentation key\nmore")

    with caplog.at_level(logging.WARNING, logger="refresh.monitoring.metrics"):
        assert m.configure_from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": "bad"}, configure=boom) is False
    assert "ValueError: Invalid instrumentation key" in caplog.text and "more" not in caplog.text


def test_get_metrics_is_lazy_and_replaceable(monkeypatch):
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    m.set_metrics(None)
    try:
        first = m.get_metrics()
        assert m.get_metrics() is first
        first.record_outcome("sales", "Completed", 1.0)   # the global no-op provider: nothing breaks
        mine, reader = m.in_memory()
        m.set_metrics(mine)
        m.get_metrics().record_outcome("sales", "Failed", 2.0)
        assert [a for a, _ in points(reader, m.REFRESH_OUTCOMES)] == [{"dataset": "sales", "status": "Failed"}]
    finally:
        m.set_metrics(None)


@pytest.mark.parametrize("module", ["refresh.monitoring.metrics", "refresh.monitoring.alerts",
                                    "refresh.monitoring.freshness_tracker"])
def test_importing_needs_no_setting_and_loads_no_telemetry_sdk(module):
    code = (f"import sys, {module}; "
            "loaded = [n for n in sys.modules if n.startswith(('opentelemetry', 'azure.monitor'))]; "
            "print(loaded); assert not loaded")
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=str(m.__file__).rsplit("/refresh/", 1)[0])
    assert done.returncode == 0, done.stdout + done.stderr
