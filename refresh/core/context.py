"""The process-wide wiring: settings, routing config, storage clients and services, built lazily.

Nothing is built at import time, so ``function_app`` always imports (the host lists every function)
and a missing or wrong setting fails the first invocation with a message naming it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from refresh.core import connections
from refresh.core import storage as tables
from refresh.core.clock import Clock, SystemClock
from refresh.core.routing import RoutingConfig, load_config
from refresh.core.settings import HOST_STORAGE, LAKE_STORAGE, Settings
from refresh.jobs import messages


class App:
    """Everything a function needs, created on first use and then reused by the warm instance."""

    def __init__(self, settings: Settings | None = None, *, env: Mapping[str, str] | None = None,
                 clock: Clock | None = None, config: RoutingConfig | None = None,
                 credential: Any = None, client_kwargs: dict[str, Any] | None = None) -> None:
        self.env = env
        self.settings = settings or Settings.from_env(env)
        self.clock = clock or SystemClock()
        self.client_kwargs = client_kwargs or {}  # e.g. raw_request_hook to count storage requests
        if config is not None:
            self.__dict__["config"] = config
        if credential is not None:
            self.__dict__["credential"] = credential

    @cached_property
    def config(self) -> RoutingConfig:
        return load_config(self.settings.refresh_config)

    # storage -----------------------------------------------------------------------------------
    @cached_property
    def lake(self) -> Any:
        """ContainerClient of the gold container (connection LAKE_STORAGE)."""
        service = connections.blob_service(LAKE_STORAGE, self.settings.storage_timeout, self.env,
                                           **self.client_kwargs)
        return service.get_container_client(self.settings.gold_container)

    @cached_property
    def _tables(self) -> Any:
        return connections.table_service(HOST_STORAGE, self.settings.storage_timeout, self.env,
                                         **self.client_kwargs)

    @cached_property
    def state_table(self) -> Any:
        return tables.ensure_table(self._tables, self.settings.state_table)

    @cached_property
    def outcomes_table(self) -> Any:
        return tables.ensure_table(self._tables, self.settings.outcomes_table)

    @cached_property
    def queue_service(self) -> Any:
        return connections.queue_service(HOST_STORAGE, self.settings.storage_timeout, self.env,
                                         **self.client_kwargs)

    @cached_property
    def queue(self) -> Any:
        from azure.core.exceptions import ResourceExistsError

        client = messages.queue_client(self.queue_service, self.settings.refresh_queue)
        try:
            client.create_queue()
        except ResourceExistsError:
            pass
        return client

    # services ----------------------------------------------------------------------------------
    @cached_property
    def watermarks(self) -> Any:
        from refresh.detection.watermarks import Watermarks

        return Watermarks(self.state_table)

    @cached_property
    def outcomes(self) -> Any:
        from refresh.jobs.outcomes import Outcomes

        return Outcomes(self.outcomes_table, self.state_table)

    @cached_property
    def states(self) -> Any:
        from refresh.jobs import outcomes as outcome_rows
        from refresh.jobs.outcomes import END_STATES
        from refresh.jobs.pending import DatasetStates

        outcomes = self.outcomes

        def joined(key: str, job: Any) -> None:
            def merged(row: dict[str, Any]) -> dict[str, Any] | None:
                if row.get("status") in END_STATES:
                    return None
                return {"triggers": job.triggers, "requested_by": job.requested_by, "reasons": job.reasons,
                        "due_at": job.due_at, "model_tables": job.objects() or []}

            outcomes.update(key, job.job_id, merged)

        return DatasetStates(self.state_table, self.queue, self.clock,
                             on_created=lambda key, job: outcomes.create(key, job.job_id, self.clock.now(),
                                                                         outcome_rows.queued_fields(job)),
                             on_joined=joined)

    @cached_property
    def credential(self) -> Any:
        """azure-identity credential for Power BI: managed identity in Azure, a service principal from
        AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or az login on a laptop."""
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    @cached_property
    def powerbi(self) -> Any:
        from refresh.powerbi.client import PowerBIClient

        return PowerBIClient(self.settings.powerbi_api_url, self.settings.powerbi_scope, self.credential,
                             timeout=self.settings.powerbi_timeout)

    @cached_property
    def worker(self) -> Any:
        from refresh.jobs.worker import Worker

        worker = Worker(config=self.config, states=self.states, outcomes=self.outcomes, queue=self.queue,
                        powerbi=self.powerbi, clock=self.clock, max_retry_after=self.settings.max_retry_after)
        worker.freshness = self.freshness
        worker.metrics = self.metrics
        worker.catch_up = lambda tables: int(self.detector.catch_up(tables))  # the lake, once more, when due
        return worker

    # monitoring --------------------------------------------------------------------------------
    @cached_property
    def metrics(self) -> Any:
        """OpenTelemetry instruments (refresh/monitoring/metrics.py; the Azure Monitor distro when configured)."""
        from refresh.monitoring.metrics import get_metrics

        return get_metrics()

    @cached_property
    def alert_settings(self) -> Any:
        import os

        from refresh.monitoring.alerts import AlertSettings

        return AlertSettings.load(os.environ if self.env is None else self.env)

    @cached_property
    def alerter(self) -> Any:
        """Queues alert events and delivers them to ALERT_WEBHOOK_URL (refresh/monitoring/alerts.py)."""
        from refresh.monitoring.alerts import Alerter, AlertStore

        return Alerter(AlertStore(self.state_table), self.queue, self.alert_settings, self.clock)

    @cached_property
    def freshness(self) -> Any:
        """Freshness records, breach transitions and their alerts (refresh/monitoring/freshness_tracker.py)."""
        from refresh.monitoring.freshness_tracker import FreshnessTracker

        return FreshnessTracker(self.states, self.config, self.clock, alerter=self.alerter, metrics=self.metrics)

    @cached_property
    def detector(self) -> Any:
        from refresh.detection.deltalog import BlobLogReader
        from refresh.detection.detector import Detector

        lake = self.lake
        return Detector(self.config, self.watermarks, self.states, lambda t: BlobLogReader(lake, t), self.clock)


_app: App | None = None
_app_lock = threading.Lock()


def get_app() -> App:
    """The process's :class:`App` (created on first call)."""
    global _app
    with _app_lock:
        if _app is None:
            _app = App()
        return _app


def set_app(app: App | None) -> None:
    """Replace the process's App (tests and the local runtime)."""
    global _app
    with _app_lock:
        _app = app
