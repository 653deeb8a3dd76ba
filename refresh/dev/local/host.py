"""The hosting core: load the function app once, build one runner per trigger, invoke functions.

Functions come from the app's own registry (``app.get_functions()``, called once per process as
the Python worker does), so the runtime follows whatever ``function_app.py`` declares: a queue
name, a blob path, a schedule or a route is read from the binding JSON the host would receive, with
``%SETTING%`` expressions resolved from the app settings.

Supported triggers: ``queueTrigger`` (:mod:`.queues`), ``blobTrigger`` and ``eventGridTrigger``
(the lake watcher, :mod:`.blobs`), ``timerTrigger`` (:mod:`.timers`) and ``httpTrigger``
(:mod:`.http`, with its ``$return`` http output). A function with any other binding is reported
and not run.


The function specs, the invocation pools and the scheduler are in :mod:`.invoke`; the runners get
them from the host as arguments.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refresh.dev.local.blobs import BlobTarget, EventTarget, LakeWatcher
from refresh.dev.local.http import HttpServer, Route
from refresh.dev.local.invoke import (  # noqa: F401  (re-exported: the host's names for them)
    TRIGGERS,
    FunctionSpec,
    Invoker,
    Outcome,
    Scheduler,
    current_function,
    functions_from_app,
    load_app,
    pool_of,
    resolve_binding,
)
from refresh.dev.local.queues import QueueRunner
from refresh.dev.local.settings import HostConfig, LocalSettingsError
from refresh.dev.local.timers import BlobScheduleMonitor, TimerRunner

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- the host

#: Retries of the runtime's own storage calls (polling, listing). The SDK's default waits 15 s before
#: its first retry, so one dropped keep-alive connection would stall a poller for 15 s.
QUICK_RETRY = {"initial_backoff": 0.5, "increment_base": 2, "random_jitter_range": 0.2, "retry_total": 3}


def storage_client(service: str, connection: str, settings: Mapping[str, str], timeout: float = 30.0) -> Any:
    """A blob or queue service client for a Functions connection setting (as refresh/core/connections.py reads
    it), with :data:`QUICK_RETRY`."""
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    from refresh.core import connections

    cls: Any = BlobServiceClient if service == "blob" else QueueServiceClient  # same constructors
    kwargs: dict[str, Any] = {"connection_timeout": timeout, "read_timeout": timeout, **QUICK_RETRY}
    value = settings.get(connection)
    if value:
        return cls.from_connection_string(value, **kwargs)
    url = connections.service_url(connection, service, settings)
    assert url is not None, "service_url returns None only when the connection string setting is set"
    return cls(url, credential=connections.credential_for(connection, settings), **kwargs)



@dataclass
class HostOptions:
    """How the local runtime runs the triggers (the CLI's options)."""

    http_host: str = "127.0.0.1"
    port: int = 7071
    lake_poll_seconds: float = 0.25
    lake_rescan_seconds: float = 0.25
    message_lock_seconds: float = 60.0
    replay_existing: bool = False
    run_timers_now: bool = False
    strict_polling: bool = False
    trace_path: Path | None = None
    host_id: str = "localruntime"
    storage_timeout: float = 30.0
    app_root: Path = field(default_factory=Path.cwd)
    event_sources: list[tuple[str, str]] = field(default_factory=list)  # (connection, container)


class LocalHost:
    """The running triggers of one function app."""

    def __init__(self, specs: Iterable[FunctionSpec], settings: Mapping[str, str], config: HostConfig,
                 options: HostOptions) -> None:
        self.specs = list(specs)
        self.settings = settings
        self.config = config
        self.options = options
        self.invoker = Invoker(trace_path=options.trace_path, app_root=options.app_root)
        self.scheduler = Scheduler()
        self.stop_event = threading.Event()
        self.queue_runners: list[Any] = []
        self.timer_runners: list[Any] = []
        self.watchers: dict[tuple[str, str], Any] = {}
        self.http: Any = None
        self.disabled: dict[str, str] = {}
        self.descriptions: list[str] = []
        self._blob_services: dict[str, Any] = {}
        self._queue_services: dict[str, Any] = {}

    # clients ------------------------------------------------------------------------------------
    def blob_service(self, connection: str) -> Any:
        if connection not in self._blob_services:
            self._blob_services[connection] = storage_client("blob", connection, self.settings,
                                                             self.options.storage_timeout)
        return self._blob_services[connection]

    def queue_service(self, connection: str) -> Any:
        if connection not in self._queue_services:
            self._queue_services[connection] = storage_client("queue", connection, self.settings,
                                                              self.options.storage_timeout)
        return self._queue_services[connection]

    # lifecycle ----------------------------------------------------------------------------------
    def build(self) -> None:
        """Create a runner for every function (nothing runs yet)."""

        routes: list[Route] = []
        blob_targets: list[BlobTarget] = []
        event_targets: list[EventTarget] = []
        for spec in self.specs:
            if spec.error:
                self._disable(spec, spec.error)
                continue
            try:
                trigger = resolve_binding(spec.trigger, self.settings)
            except LocalSettingsError as exc:
                self._disable(spec, str(exc))
                continue
            kind = trigger["type"]
            try:
                if kind == "queueTrigger":
                    connection = trigger.get("connection") or "AzureWebJobsStorage"
                    runner = QueueRunner(spec, trigger, self.queue_service(connection), self.config.queues,
                                         self.invoker, self.stop_event,
                                         message_lock=self.options.message_lock_seconds)
                    self.queue_runners.append(runner)
                    self.descriptions.append(f"{spec.name}: queueTrigger {runner.queue_name} ({connection})")
                elif kind == "blobTrigger":
                    target = BlobTarget.from_binding(spec, trigger)
                    blob_targets.append(target)
                    self.descriptions.append(
                        f"{spec.name}: blobTrigger {trigger['path']} ({target.connection}; source "
                        f"{trigger.get('source') or 'LogsAndContainerScan'}: the local lake watcher; binds "
                        f"{'InputStream' if target.kind == 'stream' else target.kind})")
                elif kind == "eventGridTrigger":
                    event_targets.append(EventTarget(spec, trigger["name"]))
                    self.descriptions.append(f"{spec.name}: eventGridTrigger (BlobRenamed, and BlobCreated no blob "
                                             "trigger takes; POST /runtime/webhooks/EventGrid)")
                elif kind == "timerTrigger":
                    timer = TimerRunner(spec, trigger, self.invoker, self.stop_event,
                                        run_now=self.options.run_timers_now, monitor=self._timer_monitor())
                    self.timer_runners.append(timer)
                    self.descriptions.append(f"{spec.name}: timerTrigger {timer.schedule}")
                elif kind == "httpTrigger":
                    route = Route.from_binding(spec, trigger)
                    routes.append(route)
            except (LocalSettingsError, ValueError) as exc:
                self._disable(spec, str(exc))

        if self.timer_runners:
            self.invoker.set_pool_size("timer", len(self.timer_runners))  # each timer runs once at a time
        sources = list(self.options.event_sources)
        for target in blob_targets:
            if (target.connection, target.container) not in sources:
                sources.append((target.connection, target.container))
        for connection, container in sources:
            targets = [t for t in blob_targets if (t.connection, t.container) == (connection, container)]
            if not targets and not event_targets:
                continue
            watcher = LakeWatcher(
                self.blob_service(connection).get_container_client(container), container, targets, event_targets,
                self.invoker, self.scheduler, self.stop_event, poll_seconds=self.options.lake_poll_seconds,
                rescan_seconds=max(self.options.lake_rescan_seconds, self.options.lake_poll_seconds),
                replay_existing=self.options.replay_existing,
                queues=self.config.queues, blob_parallelism=self.config.blob_parallelism,
                poison=self._blob_poison_sender(),
            )
            self.watchers[(connection, container)] = watcher
        self.http = HttpServer(routes, self.invoker, self.specs, self.config.route_prefix,
                               host=self.options.http_host, port=self.options.port,
                               event_targets=event_targets, blob_targets=blob_targets, watchers=self.watchers)
        if not self.options.strict_polling:
            self.invoker.add_listener(self._wake_queues)

    def start(self) -> None:
        """Start every runner: the HTTP server first (it may fail on a busy port), then the triggers."""
        if self.http is None:
            self.build()
        self.http.start()
        for route in self.http.routes:
            methods = "ANY" if not route.methods or len(route.methods) >= 7 else ",".join(route.methods)
            self.descriptions.append(f"{route.spec.name}: [{methods}] {self.http.base_url}/{route.display}")
        for watcher in self.watchers.values():
            watcher.start()
        for runner in self.queue_runners:
            runner.start()
        for runner in self.timer_runners:
            runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the triggers, the HTTP server, then wait for running invocations."""
        self.stop_event.set()
        for runner in self.queue_runners:
            runner.wake()
        for runner in [*self.watchers.values(), *self.queue_runners, *self.timer_runners]:
            runner.join(timeout=5)
        if self.http is not None:
            self.http.stop()
        self.scheduler.stop()
        self.invoker.shutdown(timeout)

    @property
    def http_url(self) -> str:
        return self.http.base_url if self.http is not None else ""

    def _disable(self, spec: FunctionSpec, reason: str) -> None:
        self.disabled[spec.name] = reason
        log.error("function %s is disabled: %s", spec.name, reason)

    def _wake_queues(self, spec: FunctionSpec) -> None:
        # A function that just ran may have queued work; the host does this for output bindings only.
        for runner in self.queue_runners:
            runner.wake()

    def _timer_monitor(self) -> Any:

        if not any(self.settings.get(k) for k in self.settings if k.startswith("AzureWebJobsStorage")):
            return None
        try:
            container = self.blob_service("AzureWebJobsStorage").get_container_client("azure-webjobs-hosts")
        except Exception as exc:  # a missing or unusable AzureWebJobsStorage: timers run without a monitor
            log.warning("timer schedule monitor off: %s", exc)
            return None
        return BlobScheduleMonitor(container, self.options.host_id)

    def _blob_poison_sender(self) -> Callable[[dict[str, Any]], None]:
        def send(message: dict[str, Any]) -> None:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import TextBase64EncodePolicy

            client = self.queue_service("AzureWebJobsStorage").get_queue_client(
                "webjobs-blobtrigger-poison", message_encode_policy=TextBase64EncodePolicy())
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            client.send_message(json.dumps(message))

        return send
