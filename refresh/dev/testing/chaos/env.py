"""The chaos environment: Azurite, the Power BI simulator behind a :class:`FaultProxy`, a Delta lake
written with ``deltalake``, and ``python -m refresh local`` runtimes as subprocesses (dev only).

Everything the app is driven with is what it gets in production: Delta commits in its lake, its
queue messages (the documented format of refresh/messages.py, sent with the storage SDK), Event
Grid events through the local runtime's webhook, and Power BI answers. What it did is read from the
outside: the simulator's own record of refreshes, and the app's tables in storage.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from refresh.core.settings import APP_ROOT, SETTINGS
from refresh.dev.testing.azurite import Azurite, free_port
from refresh.dev.testing.chaos.proxy import FaultProxy

WORKSPACE = "Chaos"
CONTAINER = "gold"
QUEUE = "chaos-jobs"
STATE_TABLE = "ChaosState"
OUTCOMES_TABLE = "ChaosOutcomes"
END_STATES = frozenset({"Completed", "Failed", "Cancelled", "TimedOut", "Disabled", "NotRefreshable", "Skipped",
                        "Rejected"})
AZURITE_URL = "AZURITE_BLOB_STORAGE_URL"
_SCRUB_PREFIXES = ("AzureWebJobsStorage", "LAKE_STORAGE", "POWERBI_", "AZURE_", "IDENTITY_", "MSI_")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the routing config: its key and the tables (or globs) it listens to."""

    key: str
    tables: tuple[str, ...]
    debounce_seconds: int = 1
    max_delay_seconds: int = 5


@dataclass(frozen=True)
class Commit:
    """A Delta commit the chaos wrote, and when it existed (``at``: epoch seconds, after the write)."""

    table: str
    version: int
    at: float
    scenario: str


@dataclass
class EnvOptions:
    refresh_seconds: float = 2.0  # how long a refresh runs in the simulator
    message_lock: float = 10.0  # --message-lock of the runtime (a killed runtime's messages reappear then)
    sweep_schedule: str = "*/10 * * * * *"
    token_lifetime: float = 3600.0
    verbose: bool = False


class Runtime:
    """One ``python -m refresh local`` subprocess, its output appended to ``<workdir>/<name>.log``."""

    def __init__(self, env: ChaosEnv, name: str) -> None:
        self.env = env
        self.name = name
        self.port = free_port()
        self.state_file = env.workdir / f"{name}.json"
        self.log_path = env.workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self.http: str | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 90.0) -> Runtime:
        self.starts += 1
        self.state_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "refresh", "local", "--settings", str(self.env.settings_file),
                   "--port", str(self.port), "--state-file", str(self.state_file),
                   "--message-lock", f"{self.env.options.message_lock:g}"]
        if self.env.options.verbose:
            command.append("-v")
        with self.log_path.open("a") as out:
            out.write(f"\n===== start {self.starts} at {datetime.now(UTC).isoformat()}\n")
            self.process = subprocess.Popen(command, cwd=APP_ROOT, env=self.env.child_env(), stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime {self.name} exited ({self.process.returncode}) at start; "
                                   f"see {self.log_path}")
            with contextlib.suppress(OSError, ValueError):
                self.http = json.loads(self.state_file.read_text())["http"]
                return self
            time.sleep(0.1)
        raise RuntimeError(f"runtime {self.name} did not get ready within {timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (its in-flight messages reappear after the message lock)."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)
            self.kills += 1

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class ChaosEnv:
    """Storage, Power BI and the app's runtimes for one chaos run, all on loopback."""

    workdir: Path
    datasets: list[DatasetSpec]
    options: EnvOptions = field(default_factory=EnvOptions)
    say: Callable[[str], None] = print
    azurite: Azurite | None = None
    sim: Any = None
    proxy: FaultProxy | None = None
    dataset_ids: dict[str, str] = field(default_factory=dict)  # key -> simulator dataset id
    commits: list[Commit] = field(default_factory=list)
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _versions: dict[str, int] = field(default_factory=dict)
    _table_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _saved_url: str | None = None

    # setup -------------------------------------------------------------------------------------
    def start(self) -> ChaosEnv:
        from azure.storage.blob import BlobServiceClient

        from refresh.dev.powerbi_sim.simulator import PowerBISimulator

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._saved_url = os.environ.get(AZURITE_URL)  # Azurite.start() points deltalake at itself
        self.azurite = Azurite().start()
        BlobServiceClient.from_connection_string(self.azurite.connection_string).create_container(CONTAINER)
        self.sim = PowerBISimulator(refresh_duration=self.options.refresh_seconds,
                                    token_lifetime=self.options.token_lifetime, daily_limit=10**6).start()
        workspace = self.sim.add_workspace(WORKSPACE, dedicated=True)
        for spec in self.datasets:
            self.dataset_ids[spec.key] = self.sim.add_dataset(workspace, f"{spec.key} model")
        self.proxy = FaultProxy(self.sim.root_url).start()
        config = {"datasets": {
            s.key: {"workspace": WORKSPACE, "dataset": f"{s.key} model", "sources": [{"table": t} for t in s.tables],
                    "debounce_seconds": s.debounce_seconds, "max_delay_seconds": s.max_delay_seconds}
            for s in self.datasets}}
        (self.workdir / "refresh-config.json").write_text(json.dumps(config, indent=2))
        values = {
            "AzureWebJobsStorage": self.azurite.connection_string, "LAKE_STORAGE": self.azurite.connection_string,
            "GOLD_CONTAINER": CONTAINER, "REFRESH_QUEUE": QUEUE, "STATE_TABLE": STATE_TABLE,
            "OUTCOMES_TABLE": OUTCOMES_TABLE, "REFRESH_CONFIG": str(self.workdir / "refresh-config.json"),
            "SWEEP_SCHEDULE": self.options.sweep_schedule,
            "POWERBI_API_URL": self.proxy.root_url + "/v1.0/myorg",
            "IDENTITY_ENDPOINT": self.proxy.root_url + "/msi/token", "IDENTITY_HEADER": self.sim.identity_header,
            "POWERBI_TIMEOUT_SECONDS": "10",
        }
        self.settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2))
        return self

    @property
    def settings_file(self) -> Path:
        return self.workdir / "local.settings.json"

    def child_env(self) -> dict[str, str]:
        names = {s.name for s in SETTINGS}
        env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(_SCRUB_PREFIXES)}
        env.update({"PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        return env

    def runtime(self, name: str = "main") -> Runtime:
        if name not in self.runtimes:
            self.runtimes[name] = Runtime(self, name)
        return self.runtimes[name]

    def stop(self) -> None:
        for runtime in self.runtimes.values():
            with contextlib.suppress(Exception):
                runtime.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.sim is not None:
            self.sim.stop()
        if self.azurite is not None:
            self.azurite.stop()
            if self._saved_url is None:
                os.environ.pop(AZURITE_URL, None)
            else:
                os.environ[AZURITE_URL] = self._saved_url

    # the lake ----------------------------------------------------------------------------------
    def commit(self, table: str, scenario: str) -> Commit:
        """Append one row to ``table`` (created on first use) with ``deltalake``; records the commit."""
        import pyarrow as pa
        from deltalake import write_deltalake

        assert self.azurite is not None
        with self._lock:
            lock = self._table_locks.setdefault(table, threading.Lock())
        with lock:  # one writer per table: the version count stays exact
            version = self._versions.get(table, -1) + 1
            rows = pa.table({"id": [version], "at": [datetime.now(UTC).isoformat()]})
            write_deltalake(f"az://{CONTAINER}/{table}", rows, mode="append",
                            storage_options=self.azurite.deltalake_options())
            self._versions[table] = version
        done = Commit(table, version, time.time(), scenario)
        with self._lock:
            self.commits.append(done)
        return done

    def optimize(self, table: str) -> int:
        """OPTIMIZE (compact) ``table``: a commit that changes no data, so it needs no refresh; its version."""
        from deltalake import DeltaTable

        assert self.azurite is not None
        with self._lock:
            lock = self._table_locks.setdefault(table, threading.Lock())
        with lock:
            delta = DeltaTable(f"az://{CONTAINER}/{table}", storage_options=self.azurite.deltalake_options())
            delta.optimize.compact()
            self._versions[table] = delta.version()
            return self._versions[table]

    def commit_blob(self, table: str, version: int) -> str:
        return f"{table}/_delta_log/{version:020d}.json"

    # events and messages -----------------------------------------------------------------------
    def blob_created_event(self, table: str, version: int) -> dict[str, Any]:
        from refresh.dev.testing.events import blob_created

        assert self.azurite is not None
        return blob_created(f"{self.azurite.blob_url}/devstoreaccount1", CONTAINER, self.commit_blob(table, version))

    def post_events(self, events: list[dict[str, Any]], runtime: str = "main") -> int:
        """Deliver Event Grid events to ``on_lake_event`` through the runtime's webhook; the HTTP status."""
        http = self.runtime(runtime).http
        status, _ = request("POST", f"{http}/runtime/webhooks/EventGrid?functionName=on_lake_event", events,
                            headers={"aeg-event-type": "Notification"})
        return status

    def post_blob_events(self, events: list[dict[str, Any]], runtime: str = "main") -> int:
        """Deliver the same events to the blob trigger (``on_delta_commit``, source EventGrid)."""
        http = self.runtime(runtime).http
        status, _ = request("POST", f"{http}/runtime/webhooks/blobs?functionName=Host.Functions.on_delta_commit",
                            events, headers={"aeg-event-type": "Notification"})
        return status

    def queue(self) -> Any:
        from azure.storage.queue import QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        assert self.azurite is not None
        service = QueueServiceClient.from_connection_string(self.azurite.connection_string)
        return service.get_queue_client(QUEUE, message_encode_policy=TextBase64EncodePolicy(),
                                        message_decode_policy=TextBase64DecodePolicy())

    def job_message(self, kind: str, dataset: str, job_id: str, sent_at: str | None = None) -> str:
        """A queue message in the format refresh/messages.py documents."""
        stamp = sent_at or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps({"v": 1, "type": kind, "dataset": dataset, "job_id": job_id, "sent_at": stamp,
                           "attempt": 0}, separators=(",", ":"))

    # reading the truth -------------------------------------------------------------------------
    def table(self, name: str) -> Any:
        from azure.data.tables import TableServiceClient

        assert self.azurite is not None
        return TableServiceClient.from_connection_string(self.azurite.connection_string).get_table_client(name)

    def outcome_rows(self) -> list[dict[str, Any]]:
        with contextlib.suppress(Exception):
            return [dict(e) for e in self.table(OUTCOMES_TABLE).list_entities()]
        return []

    def dataset_states(self) -> dict[str, dict[str, Any]]:
        """``{dataset key: {"pending": ..., "running": ...}}`` from the app's state table."""
        from refresh.core import storage as tables

        out: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(Exception):
            for entity in self.table(STATE_TABLE).query_entities("PartitionKey eq 'dataset'"):
                key = tables.from_row_key(entity["RowKey"])
                out[key] = {"pending": tables.get_json(entity, "pending"),
                            "running": tables.get_json(entity, "running")}
        return out

    def simulator_refreshes(self) -> dict[str, list[dict[str, Any]]]:
        """``{dataset key: [history entry, ...]}`` oldest first, from the simulator (the truth)."""
        return {key: list(reversed(self.sim.refreshes(ds))) for key, ds in self.dataset_ids.items()}

    def running_jobs(self, keys: list[str]) -> dict[str, str]:
        """``{dataset key: job id}`` of the jobs the app has running or pending now (from its state table)."""
        out: dict[str, str] = {}
        for key, state in self.dataset_states().items():
            if key not in keys:
                continue
            for part in ("running", "pending"):
                job = state.get(part)
                if isinstance(job, dict) and job.get("job_id"):
                    out[key] = job["job_id"]
                    break
        return out


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 30) -> tuple[int, Any]:
    """One loopback HTTP call; ``(status, parsed JSON or text)``, status 0 when nothing answered."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
        raise ValueError(f"only loopback http URLs are used here, not {url!r}")
    data = None if body is None else json.dumps(body).encode()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw, status = response.read(), response.status
    except OSError:
        return 0, None
    finally:
        connection.close()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")
