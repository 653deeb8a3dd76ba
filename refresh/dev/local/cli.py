"""``python -m refresh local``: run the function app on this machine (the README, "Running locally", documents it).

Settings: ``local.settings.json`` ``Values`` (``--settings``, default ``local.settings.json`` in the
app root if present), under the environment, plus the app's declared defaults
(:mod:`refresh.dev.local.settings`).

Embedded defaults:

* **Storage.** ``AzureWebJobsStorage`` and ``LAKE_STORAGE`` that are not configured (neither a
  connection string nor identity-based ``<NAME>__...`` settings), or set to
  ``UseDevelopmentStorage=true``, get the project's pinned Azurite, started in memory on free
  ports (``UseDevelopmentStorage=true`` would mean ports 10000-10002, which another emulator may
  hold). Configured connections are used as they are and nothing is started.
* **Power BI.** With no ``POWERBI_API_URL``, no service principal (``AZURE_CLIENT_ID``,
  ``AZURE_TENANT_ID`` and ``AZURE_CLIENT_SECRET`` or ``AZURE_CLIENT_CERTIFICATE_PATH``) and no
  managed-identity endpoint (``IDENTITY_ENDPOINT``/``MSI_ENDPOINT``), the Power BI simulator is
  started, seeded with the workspaces and datasets the routing config names, and the app gets
  ``POWERBI_API_URL``, ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` pointing at it. Said once,
  clearly, at start. ``--no-simulator`` uses the real service with ``DefaultAzureCredential``.

The state file (``--state-file``, default ``.local/runtime.json``) holds the resolved endpoints
(HTTP base URL, embedded Azurite connection string, simulator URLs) for another terminal or a
test; it is written when the runtime is ready and removed when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refresh.core.settings import APP_ROOT, HOST_STORAGE, LAKE_STORAGE
from refresh.dev.local.host import LocalHost, current_function
from refresh.dev.local.settings import SOURCE_DEFAULT, SOURCE_ENVIRONMENT, SOURCE_FILE, AppSettings, LocalSettingsError

log = logging.getLogger("refresh.dev.local")

DEFAULT_PORT = 7071
DEFAULT_STATE_FILE = Path(".local") / "runtime.json"
EMBEDDED_AZURITE = "embedded Azurite"
SIMULATOR = "Power BI simulator"
DEMO = "--demo"
_SP_SECRETS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class StartupError(RuntimeError):
    """The runtime cannot start; the message says why and what to do."""


# ------------------------------------------------------------------------------------------- logging


class _SourceFilter(logging.Filter):
    """Adds ``source`` (the running function, else a short logger name) and ``mark`` (level) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        function = current_function.get()
        if function:
            record.source = function
        elif record.name.startswith("refresh.dev.local.demo"):
            record.source = "demo"
        elif record.name.startswith("refresh.dev.local"):
            record.source = "runtime"
        elif record.name.startswith("refresh.dev.powerbi_sim.simulator"):
            record.source = "simulator"
        else:
            record.source = record.name.removeprefix("refresh.")
        record.mark = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return True


def configure_logging(verbose: bool = False) -> None:
    """Readable terminal lines: ``14:02:03.120 on_delta_commit   sales/fact_orders v3``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_SourceFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(source)-17s %(mark)s%(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("refresh").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("azure", "urllib3", "msal", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refresh local",
        description="Run the function app on this machine: queue, blob, Event Grid, timer and HTTP triggers, "
                    "with Azurite and the Power BI simulator started when nothing else is configured.")
    parser.add_argument("--demo", action="store_true",
                        help="create a small gold layer and routing config, then write a few commits to watch")
    parser.add_argument("--run-timers-now", action="store_true", help="fire every timer function once at start")
    parser.add_argument("--port", type=int, default=None,
                        help=f"HTTP port on 127.0.0.1 (default: Host.LocalHttpPort or {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--settings", type=Path, default=None, metavar="FILE",
                        help="local.settings.json to read (default: local.settings.json in the app root, if present)")
    parser.add_argument("--no-simulator", action="store_true",
                        help="never start the Power BI simulator (use Power BI with DefaultAzureCredential)")
    parser.add_argument("--state-file", type=Path, default=None, metavar="PATH",
                        help=f"where to write the resolved endpoints (default: {DEFAULT_STATE_FILE} in the app root)")
    parser.add_argument("--replay-existing", action="store_true",
                        help="deliver BlobCreated for the commits already in the lake at start "
                             "(default: new ones only)")
    parser.add_argument("--lake-poll", type=float, default=0.25, metavar="SECONDS",
                        help="how often the lake watcher lists the container (default 0.25)")
    parser.add_argument("--message-lock", type=float, default=60.0, metavar="SECONDS",
                        help="how long a received queue message stays locked, renewed while its function runs; "
                             "after a crash it reappears this much later (default 60; the host uses 10 minutes)")
    parser.add_argument("--strict-polling", action="store_true",
                        help="poll queues only on host.json's back-off (by default they are also polled right after "
                             "any function ran, which may have queued work)")
    parser.add_argument("--sim-refresh-seconds", type=float, default=10.0, metavar="SECONDS",
                        help="how long a refresh takes in the Power BI simulator (default 10)")
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="append one JSON line per invocation (timings; used by benchmarks/bench_latency.py)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging for the app and the runtime")
    return parser


# ------------------------------------------------------------------------------------------- the runtime


def needs_embedded_storage(name: str, values: dict[str, str]) -> bool:
    """True when connection ``name`` is not configured or is ``UseDevelopmentStorage=true``."""
    from refresh.core.connections import is_configured

    value = (values.get(name) or "").replace(" ", "").lower()
    if value.startswith("usedevelopmentstorage=true"):
        return True
    return not is_configured(name, values)


def powerbi_configuration(settings: AppSettings) -> str | None:
    """What configures Power BI access, or None (then the simulator stands in)."""
    values, sources = settings.values, settings.sources
    if values.get("POWERBI_API_URL") and sources.get("POWERBI_API_URL") != SOURCE_DEFAULT:
        return f"POWERBI_API_URL={values['POWERBI_API_URL']}"
    if values.get("AZURE_CLIENT_ID") and values.get("AZURE_TENANT_ID") and any(values.get(s) for s in _SP_SECRETS):
        return "a service principal (AZURE_CLIENT_ID, AZURE_TENANT_ID and a secret or certificate)"
    for name in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        if values.get(name):
            return f"a managed-identity endpoint ({name})"
    return None


def seed_simulator(simulator: Any, config: Any) -> int:
    """Add the workspaces and datasets the routing config names; returns how many datasets were added."""
    def _is_guid(value: str) -> bool:
        return bool(_GUID.match(value))

    workspaces: dict[str, str] = {}
    dedicated: dict[str, bool] = {}
    for cfg in config.datasets.values():  # a workspace is on dedicated capacity if any dataset says so
        dedicated[cfg.workspace] = dedicated.get(cfg.workspace, False) or bool(cfg.dedicated_capacity)
    added = 0
    for cfg in config.datasets.values():
        if cfg.workspace not in workspaces:
            guid = _is_guid(cfg.workspace)
            workspaces[cfg.workspace] = simulator.add_workspace(
                f"Workspace {cfg.workspace[:8]}" if guid else cfg.workspace, dedicated=dedicated[cfg.workspace],
                id=cfg.workspace if guid else None)
        guid = _is_guid(cfg.dataset)
        simulator.add_dataset(workspaces[cfg.workspace], f"Dataset {cfg.dataset[:8]}" if guid else cfg.dataset,
                              id=cfg.dataset if guid else None)
        added += 1
    return added


class LocalRuntime:
    """Settings, embedded services, the host and the demo, started and stopped together."""

    def __init__(self, args: argparse.Namespace, app_root: Path = APP_ROOT) -> None:
        self.args = args
        self.app_root = app_root
        self.azurite: Any = None
        self.simulator: Any = None
        self.host: LocalHost | None = None
        self.demo: Any = None
        self.settings: AppSettings | None = None
        self.stop_requested = threading.Event()
        self.state_file = self._path(args.state_file or DEFAULT_STATE_FILE)
        self.status_url: str | None = None

    def _path(self, path: Path) -> Path:
        return path if path.is_absolute() else (Path.cwd() / path if self.args.state_file else self.app_root / path)

    # start --------------------------------------------------------------------------------------
    def start(self) -> None:
        from refresh.core.context import set_app
        from refresh.core.settings import reset_settings
        from refresh.dev.local.settings import load_host_json, resolve_app_settings

        _reap_stale(self.state_file)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        settings_file = self.args.settings
        if settings_file is None and (self.app_root / "local.settings.json").exists():
            settings_file = self.app_root / "local.settings.json"
        try:
            settings = resolve_app_settings(settings_file)
            host_config = load_host_json(self.app_root / "host.json")
        except LocalSettingsError as exc:
            raise StartupError(str(exc)) from None
        self.settings = settings
        self._report_settings(settings)
        self._storage(settings)
        self._powerbi(settings)
        if self.args.demo:
            self._prepare_demo(settings)
        self._apply(settings)
        reset_settings()
        set_app(None)
        config = self._validate()
        if self.simulator is not None:
            if self.args.demo:
                from refresh.dev.local.demo import Demo

                Demo.seed(self.simulator)
            else:
                count = seed_simulator(self.simulator, config)
                log.info("Power BI simulator: seeded with the %s datasets of the routing config", count)
        host = self._start_host(settings, host_config)
        for watcher in host.watchers.values():  # "ready" = the lake's baseline is taken: new commits count
            if not watcher.ready.wait(timeout=30):
                log.warning("the lake watcher of %s has no baseline yet (storage unreachable?)",
                            watcher.container_name)
        self._write_state()
        self._banner()
        if self.demo is not None:
            from refresh.core.context import get_app

            self.demo.start(self.stop_requested, self.status_url, outcomes=lambda: get_app().outcomes)

    def _report_settings(self, settings: AppSettings) -> None:
        if settings.settings_file is not None:
            log.info("settings: %s values from %s", settings.count(SOURCE_FILE), settings.settings_file)
        else:
            log.info("settings: no local.settings.json; environment and defaults only")
        for name in settings.skipped:
            log.info("settings: %s from the environment (the local.settings.json value is skipped)", name)
        defaults = [n for n in settings.names_from(SOURCE_DEFAULT) if n not in ("POWERBI_API_URL",)]
        if defaults:
            log.info("settings: defaults for %s", ", ".join(defaults))

    def _storage(self, settings: AppSettings) -> None:
        embedded = [n for n in (HOST_STORAGE, LAKE_STORAGE) if needs_embedded_storage(n, settings.values)]
        if not embedded:
            log.info("storage: %s and %s as configured (nothing started)", HOST_STORAGE, LAKE_STORAGE)
            return
        from refresh.dev.testing.azurite import Azurite, AzuriteError

        dev = [n for n in embedded if settings.values.get(n)]
        try:
            self.azurite = Azurite().start()
        except AzuriteError as exc:
            raise StartupError(f"{' and '.join(embedded)} not configured and Azurite cannot start: {exc}") from None
        for name in embedded:
            settings.set(name, self.azurite.connection_string, EMBEDDED_AZURITE)
        why = "set to UseDevelopmentStorage=true" if dev else "not configured"
        if LAKE_STORAGE in embedded:  # an empty lake: the gold container exists, as it does in Azure
            from azure.storage.blob import BlobServiceClient

            container = settings.values.get("GOLD_CONTAINER") or "gold"
            with contextlib.suppress(Exception):
                BlobServiceClient.from_connection_string(self.azurite.connection_string).create_container(container)
        log.info("storage: %s %s: started the project's Azurite (in memory) on blob %s, queue %s, table %s",
                 " and ".join(embedded), why, self.azurite.blob_port, self.azurite.queue_port, self.azurite.table_port)

    def _powerbi(self, settings: AppSettings) -> None:
        configured = powerbi_configuration(settings)
        if configured and self.args.demo:
            raise StartupError(f"--demo refreshes the demo's datasets in the Power BI simulator, but Power BI is "
                               f"configured through {configured}; unset it or run without --demo")
        if configured:
            url = settings.values.get("POWERBI_API_URL")
            log.info("Power BI: %s through %s (no simulator)", url, configured)
            return
        if self.args.no_simulator:
            log.info("Power BI: %s with DefaultAzureCredential (az login); --no-simulator",
                     settings.values.get("POWERBI_API_URL"))
            return
        from refresh.dev.powerbi_sim.simulator import PowerBISimulator

        self.simulator = PowerBISimulator(refresh_duration=self.args.sim_refresh_seconds).start()
        settings.set("POWERBI_API_URL", self.simulator.base_url, SIMULATOR)
        settings.set("IDENTITY_ENDPOINT", self.simulator.identity_endpoint, SIMULATOR)
        settings.set("IDENTITY_HEADER", self.simulator.identity_header, SIMULATOR)
        log.warning("Power BI is not configured (no POWERBI_API_URL, AZURE_CLIENT_ID/AZURE_TENANT_ID/"
                    "AZURE_CLIENT_SECRET or IDENTITY_ENDPOINT): refreshes go to the local Power BI SIMULATOR at %s, "
                    "not to Power BI. Its state: %s/state", self.simulator.base_url, self.simulator.admin_url)

    def _prepare_demo(self, settings: AppSettings) -> None:
        from refresh.dev.local.demo import Demo, DemoError

        lake = settings.values.get(LAKE_STORAGE, "")
        try:
            self.demo = Demo(lake, settings.values.get("GOLD_CONTAINER", "gold"), self.state_file.parent / "demo")
            path = self.demo.write_config()
            settings.set("REFRESH_CONFIG", str(path), DEMO)
            self.demo.create_tables()
        except DemoError as exc:
            raise StartupError(str(exc)) from None
        except Exception as exc:
            raise StartupError(f"--demo could not create its gold layer: {type(exc).__name__}: {exc}") from None
        log.info("demo: routing config %s (REFRESH_CONFIG)", path)
        from refresh.dev.local.demo import alert_destination

        log.info("demo: alerts go %s", alert_destination(settings.values))

    @staticmethod
    def _apply(settings: AppSettings) -> None:
        for name, value in settings.values.items():  # what the environment had is there already
            if settings.sources.get(name) != SOURCE_ENVIRONMENT and os.environ.get(name) != value:
                os.environ[name] = value
        loopback = "127.0.0.1,localhost"
        for name in ("NO_PROXY", "no_proxy"):
            current = os.environ.get(name, "")
            if "127.0.0.1" not in current:
                os.environ[name] = f"{current},{loopback}" if current else loopback

    @staticmethod
    def _validate() -> Any:
        from refresh.core.routing import ConfigError, load_config
        from refresh.core.settings import SettingsError, get_settings

        try:
            app_settings = get_settings()
        except SettingsError as exc:
            raise StartupError(str(exc)) from None
        try:
            config = load_config(app_settings.refresh_config)
        except ConfigError as exc:
            raise StartupError(f"routing config (REFRESH_CONFIG):\n{exc}") from None
        except OSError as exc:
            raise StartupError(f"routing config {app_settings.refresh_config}: {exc.strerror} (REFRESH_CONFIG)") \
                from None
        log.info("routing config: %s datasets from %s", len(config.datasets), app_settings.refresh_config)
        return config

    def _start_host(self, settings: AppSettings, host_config: Any) -> LocalHost:
        from refresh.core.settings import get_settings
        from refresh.dev.local.host import HostOptions, functions_from_app, load_app

        port = self.args.port
        if port is None:
            configured = str(settings.host_section.get("LocalHttpPort") or "")
            port = int(configured) if configured.isdigit() else DEFAULT_PORT
        app_settings = get_settings()
        options = HostOptions(
            port=port, lake_poll_seconds=max(0.05, self.args.lake_poll), message_lock_seconds=self.args.message_lock,
            replay_existing=self.args.replay_existing, run_timers_now=self.args.run_timers_now,
            strict_polling=self.args.strict_polling, trace_path=self.args.trace, app_root=self.app_root,
            storage_timeout=app_settings.storage_timeout,
            event_sources=[(LAKE_STORAGE, app_settings.gold_container)],
        )
        try:
            specs = functions_from_app(load_app(self.app_root))
        except Exception as exc:
            raise StartupError(f"function_app.py cannot be indexed: {type(exc).__name__}: {exc}") from None
        self.host = LocalHost(specs, os.environ, host_config, options)
        try:
            self.host.build()
            self.host.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --port") from None
        routes = {r.template.lower(): r for r in self.host.http.routes}
        if "status" in routes:
            self.status_url = f"{self.host.http_url}/status"
        return self.host

    def _banner(self) -> None:
        assert self.host is not None
        log.info("functions:")
        for line in self.host.descriptions:
            log.info("  %s", line)
        for name, reason in self.host.disabled.items():
            log.info("  %s: DISABLED: %s", name, reason)
        log.info("HTTP auth level FUNCTION is not enforced locally (no keys needed, as with func start)")
        if self.status_url:
            log.info("status page: %s", self.status_url)
        log.info("ready: %s (state in %s); Ctrl-C to stop", self.host.http_url, self.state_file)

    def _write_state(self) -> None:
        assert self.host is not None and self.settings is not None
        values = self.settings.values
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "http": self.host.http.root_url,
            "api": self.host.http_url,
            "status_page": self.status_url,
            "settings_file": str(self.settings.settings_file) if self.settings.settings_file else None,
            "azurite": None if self.azurite is None else {
                "pid": self.azurite.process.pid if self.azurite.process else None,
                "connection_string": self.azurite.connection_string, "blob_url": self.azurite.blob_url,
                "blob_port": self.azurite.blob_port, "queue_port": self.azurite.queue_port,
                "table_port": self.azurite.table_port, "deltalake_options": self.azurite.deltalake_options()},
            "simulator": None if self.simulator is None else {
                "base_url": self.simulator.base_url, "admin_url": self.simulator.admin_url,
                "identity_endpoint": self.simulator.identity_endpoint,
                "identity_header": self.simulator.identity_header},
            "storage": {n: EMBEDDED_AZURITE if self.settings.sources.get(n) == EMBEDDED_AZURITE else "configured"
                        for n in (HOST_STORAGE, LAKE_STORAGE)},
            "app": {n: values.get(n) for n in ("GOLD_CONTAINER", "REFRESH_QUEUE", "STATE_TABLE", "OUTCOMES_TABLE",
                                               "REFRESH_CONFIG", "SWEEP_SCHEDULE")},
            "functions": sorted(s.name for s in self.host.specs),
            "disabled": self.host.disabled,
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.state_file)

    # run and stop -------------------------------------------------------------------------------
    def wait(self) -> None:
        while not self.stop_requested.wait(0.5):
            pass

    def stop(self) -> None:
        """Stop everything this runtime started, in reverse order."""
        self.stop_requested.set()
        if self.host is not None:
            log.info("stopping: triggers, HTTP server, running invocations")
            self.host.stop()
        if self.demo is not None and self.demo.thread is not None:
            self.demo.thread.join(timeout=10)
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None
        if self.azurite is not None:
            log.info("stopping Azurite")
            self.azurite.stop()
            self.azurite = None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        from refresh.core.context import set_app

        set_app(None)

    def force_stop(self) -> None:
        """Second Ctrl-C: stop the embedded Azurite (its own process group) and leave now."""
        if self.azurite is not None and self.azurite.process is not None:
            with contextlib.suppress(OSError):
                self.azurite.process.kill()
        with contextlib.suppress(OSError):
            self.state_file.unlink()
        os._exit(130)


def _reap_stale(state_file: Path) -> None:
    """Stop the Azurite a killed runtime left behind (its pid is in the state file it did not remove)."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    owner = state.get("pid")
    azurite = (state.get("azurite") or {}).get("pid")
    if not isinstance(azurite, int) or (isinstance(owner, int) and _alive(owner)):
        return
    try:
        command = Path(f"/proc/{azurite}/cmdline").read_bytes()
    except OSError:
        return
    if b"azurite" in command and b"--inMemoryPersistence" in command:
        log.info("stopping the Azurite (pid %s) left by a runtime that did not stop cleanly", azurite)
        with contextlib.suppress(OSError):
            os.kill(azurite, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m refresh local``; returns the exit code (0 after Ctrl-C or SIGTERM)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    runtime = LocalRuntime(args)
    presses = {"count": 0}

    def on_signal(signum: int, frame: Any) -> None:
        presses["count"] += 1
        if presses["count"] > 1:
            runtime.force_stop()
        log.info("%s received: stopping (Ctrl-C again to force)", signal.Signals(signum).name)
        runtime.stop_requested.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    code = 0
    started = time.monotonic()
    try:
        runtime.start()
        if not runtime.stop_requested.is_set():
            runtime.wait()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        code = 1
    finally:
        runtime.stop()
    if code == 0:
        log.info("stopped after %.0f s", time.monotonic() - started)
    return code
