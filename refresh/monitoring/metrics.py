"""OpenTelemetry metrics of the app, exported to Application Insights in Azure.

Instruments (meter ``refresh``; attribute ``dataset`` is the dataset key everywhere):

===============================  ===========  ====  =====================================================
name                             kind         unit  attributes / meaning
===============================  ===========  ====  =====================================================
``refresh.duration``             histogram    s     ``status``: queue-to-end time of each finished job
``refresh.outcomes``             counter      1     ``status``: finished jobs by end status
``refresh.freshness.lag``        gauge        s     ``breached``: the dataset's lag (freshness.py)
``powerbi.throttled``            counter      1     ``kind`` (``429`` | ``busy``): Power BI pushed back
``refresh.commit_to_start``      histogram    s     oldest commit in the job -> refresh started
===============================  ===========  ====  =====================================================

In Azure: when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, the Azure Monitor OpenTelemetry
distro is configured on first use (``configure_azure_monitor``, as the Functions Python docs
describe), with Entra authentication when ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` says
``Authorization=AAD``. Logs and traces stay with the Functions host (which already sends them), so
the distro is asked for metrics only; a provider already installed (the Python worker's own
OpenTelemetry integration) is used as it is. Locally and in tests: :func:`in_memory` gives an
``InMemoryMetricReader`` to read the values back. Nothing happens at import time, and recording a
metric never raises into the caller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

METER_NAME = "refresh"
REFRESH_DURATION = "refresh.duration"
REFRESH_OUTCOMES = "refresh.outcomes"
FRESHNESS_LAG = "refresh.freshness.lag"
POWERBI_THROTTLED = "powerbi.throttled"
COMMIT_TO_START = "refresh.commit_to_start"
UNUSED_LOGGER = "refresh.monitoring.metrics.no-log-export"
_INSTRUMENTATIONS = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3",
                     "httpx")
LAG_STALE_SECONDS = 300.0
"""A lag value older than this is no longer reported by this instance (another one evaluates now)."""


class Metrics:
    """The app's instruments on one MeterProvider (the global one unless given)."""

    def __init__(self, meter_provider: Any = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._provider = meter_provider
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._instruments: dict[str, Any] | None = None
        self._lags: dict[str, tuple[float, bool, float]] = {}  # dataset -> (lag, breached, set at)
        self._warned = False

    def _get(self) -> dict[str, Any]:
        with self._lock:
            if self._instruments is None:
                from opentelemetry import metrics as otel

                meter = (self._provider or otel.get_meter_provider()).get_meter(METER_NAME)
                self._instruments = {
                    REFRESH_DURATION: meter.create_histogram(
                        REFRESH_DURATION, unit="s", description="Time from a job being queued to its end"),
                    REFRESH_OUTCOMES: meter.create_counter(
                        REFRESH_OUTCOMES, unit="1", description="Finished refresh jobs by end status"),
                    POWERBI_THROTTLED: meter.create_counter(
                        POWERBI_THROTTLED, unit="1", description="Power BI answered 429 or 'refresh busy'"),
                    COMMIT_TO_START: meter.create_histogram(
                        COMMIT_TO_START, unit="s", description="Oldest commit in a job to its refresh start"),
                    FRESHNESS_LAG: meter.create_observable_gauge(
                        FRESHNESS_LAG, callbacks=[self._observe_lag], unit="s",
                        description="Now minus the oldest commit no Completed refresh has included"),
                }
            return self._instruments

    def _safely(self, what: str, action: Callable[[dict[str, Any]], None]) -> None:
        try:
            action(self._get())
        except Exception as exc:  # metrics must never fail a refresh
            if not self._warned:
                self._warned = True
                log.warning("metrics: %s failed (%s); further failures are not logged", what, type(exc).__name__)

    # recording -------------------------------------------------------------------------------------
    def record_outcome(self, dataset: str, status: str, duration_seconds: float | None) -> None:
        """A job ended with ``status`` after ``duration_seconds`` (None: unknown, not recorded)."""
        def act(i: dict[str, Any]) -> None:
            attrs = {"dataset": dataset, "status": status}
            i[REFRESH_OUTCOMES].add(1, attrs)
            if duration_seconds is not None and duration_seconds >= 0:
                i[REFRESH_DURATION].record(float(duration_seconds), attrs)
        self._safely("record_outcome", act)

    def record_throttled(self, dataset: str, kind: str) -> None:
        """Power BI pushed back: ``kind`` is ``429`` (Too Many Requests) or ``busy`` (refresh in progress)."""
        self._safely("record_throttled", lambda i: i[POWERBI_THROTTLED].add(1, {"dataset": dataset, "kind": kind}))

    def record_commit_to_start(self, dataset: str, seconds: float) -> None:
        """Delay from the oldest commit in a job to the moment its refresh started."""
        if seconds >= 0:
            self._safely("record_commit_to_start",
                         lambda i: i[COMMIT_TO_START].record(float(seconds), {"dataset": dataset}))

    def set_lag(self, dataset: str, seconds: float, breached: bool = False) -> None:
        """The dataset's current lag, reported by the gauge until it goes stale."""
        with self._lock:
            self._lags[dataset] = (float(seconds), bool(breached), self._monotonic())
        self._safely("set_lag", lambda i: None)  # make sure the gauge exists

    def _observe_lag(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        now = self._monotonic()
        with self._lock:
            items = list(self._lags.items())
        return [Observation(lag, {"dataset": key, "breached": breached})
                for key, (lag, breached, at) in items if now - at <= LAG_STALE_SECONDS]


# -- process-wide setup ----------------------------------------------------------------------------------

_metrics: Metrics | None = None
_setup_lock = threading.Lock()


def configure_from_env(env: Mapping[str, str] | None = None,
                       configure: Callable[..., None] | None = None) -> bool:
    """Configure the Azure Monitor distro if ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set and no SDK
    MeterProvider is installed yet. Returns True if it configured. Never raises."""
    env = os.environ if env is None else env
    connection = (env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip()
    if not connection:
        return False
    try:
        from opentelemetry import metrics as otel
        from opentelemetry.sdk.metrics import MeterProvider

        if isinstance(otel.get_meter_provider(), MeterProvider):
            log.info("metrics: an OpenTelemetry MeterProvider is already installed; using it")
            return False
        kwargs: dict[str, Any] = {
            "connection_string": connection, "disable_logging": True, "disable_tracing": True,
            "enable_live_metrics": False, "enable_performance_counters": False,
            # distro 1.8 overrides disable_logging/disable_tracing from OTEL_LOGS_EXPORTER/OTEL_TRACES_EXPORTER;
            # so that the host's logs are not sent twice either way, the distro's log handler goes on a
            # logger nothing writes to, and no library is auto-instrumented
            "logger_name": UNUSED_LOGGER,
            "instrumentation_options": {name: {"enabled": False} for name in _INSTRUMENTATIONS},
        }
        credential = _credential(env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") or "")
        if credential is not None:
            kwargs["credential"] = credential
        if configure is None:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure = configure_azure_monitor
        configure(**kwargs)
        log.info("metrics: exporting to Application Insights%s", " (Entra ID auth)" if credential else "")
        return True
    except Exception as exc:
        log.warning("metrics: could not configure Azure Monitor (%s: %s); metrics are not exported",
                    type(exc).__name__, str(exc).split("\n")[0][:200])
        return False


def _credential(auth: str) -> Any:
    """A managed-identity credential when the authentication string asks for Entra ID (``Authorization=AAD``)."""
    parts = dict(p.split("=", 1) for p in auth.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = parts.get("ClientId") or None
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def get_metrics() -> Metrics:
    """The process's :class:`Metrics`, set up on first call (the distro in Azure, else the global provider)."""
    global _metrics
    with _setup_lock:
        if _metrics is None:
            configure_from_env()
            _metrics = Metrics()
        return _metrics


def set_metrics(metrics: Metrics | None) -> None:
    """Replace the process's Metrics (tests, the local runtime)."""
    global _metrics
    with _setup_lock:
        _metrics = metrics


def in_memory() -> tuple[Metrics, Any]:
    """Metrics on a private MeterProvider with an ``InMemoryMetricReader`` (local runs and tests)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    return Metrics(MeterProvider(metric_readers=[reader])), reader


def read_points(reader: Any) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """``{metric name: [(attributes, point), ...]}`` from an InMemoryMetricReader (collects now)."""
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    out.setdefault(metric.name, []).append((dict(point.attributes), point))
    return out
