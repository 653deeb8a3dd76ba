"""``python -m refresh local --demo``: a small gold layer, a routing config and a few commits to watch.

Before the triggers start, the demo writes (with ``deltalake``, into the lake the runtime uses):

* ``demo/fact_sales``: a fact table partitioned by ``region``;
* ``demo/dim_customer``: a dimension table;
* ``.local/demo/refresh-config.json`` (``demo/`` beside the state file): two datasets, with
  ``REFRESH_CONFIG`` pointed at it:

  - ``sales`` ("Sales Model" in workspace "Demo Sales (Premium)", dedicated capacity: enhanced
    refreshes of model tables ``Sales`` and ``Customer``), debounce 8 s, so commits that land
    close together are coalesced into one refresh;
  - ``regional`` ("Regional Ops" in workspace "Demo Operations", shared capacity: standard
    refreshes of the whole model), listening to the fact table only, debounce 0.

The Power BI simulator is seeded with those workspaces and datasets. Once the lake watcher has its
baseline, the demo writes three commits, a couple of seconds apart: an append to the fact table
(both datasets get a job), an OPTIMIZE of the fact table (no data change: nothing is refreshed),
and a merge into the dimension (coalesced into the pending ``sales`` job). Then it waits for the
outcomes and prints them, each dataset's freshness (objectives 15 and 60 minutes) and the status page
URL; at start it says where alerts would go (ALERT_WEBHOOK_URL set or not, and the format). Everything
fits in about half a minute.

Tables that already exist (a lake that persists between runs) are reused: the commits are added.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

FACT = "demo/fact_sales"
DIM = "demo/dim_customer"
SALES_WORKSPACE = "Demo Sales (Premium)"
OPS_WORKSPACE = "Demo Operations"
CONFIG: dict[str, Any] = {
    "datasets": {
        "sales": {
            "workspace": SALES_WORKSPACE, "dataset": "Sales Model",
            "sources": [{"table": FACT, "model_tables": ["Sales"]}, {"table": DIM, "model_tables": ["Customer"]}],
            "debounce_seconds": 8, "max_delay_seconds": 60, "timeout_minutes": 30,
            "freshness_slo_minutes": 15,
        },
        "regional": {
            "workspace": OPS_WORKSPACE, "dataset": "Regional Ops",
            "sources": [{"table": FACT}],
            "debounce_seconds": 0, "max_delay_seconds": 0, "timeout_minutes": 30,
            "freshness_slo_minutes": 60,
        },
    }
}
END_STATES = ("Completed", "Failed", "Cancelled", "TimedOut", "Disabled", "NotRefreshable", "Skipped")


class DemoError(RuntimeError):
    """The demo cannot run with this setup; the message says why and what to do."""


def deltalake_options(connection_string: str) -> dict[str, str]:
    """``deltalake`` storage options for a storage connection string (Azurite or an account key).

    For an emulator endpoint on loopback this sets ``AZURITE_BLOB_STORAGE_URL`` (delta-rs reads the
    emulator's address only from there; an explicit endpoint breaks its appends).
    """
    parts = {}
    for item in connection_string.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    account = parts.get("accountname")
    if not account:
        raise DemoError("--demo writes the gold layer with deltalake and needs LAKE_STORAGE as a connection string "
                        "with AccountName and AccountKey (identity-based settings are not supported by the demo)")
    endpoint = parts.get("blobendpoint", "")
    host = urlsplit(endpoint).hostname if endpoint else None
    if host in ("127.0.0.1", "localhost", "::1"):
        split = urlsplit(endpoint)
        os.environ["AZURITE_BLOB_STORAGE_URL"] = f"{split.scheme}://{split.netloc}"
        return {"account_name": account, "use_emulator": "true", "allow_http": "true"}
    if not parts.get("accountkey"):
        raise DemoError("--demo needs an AccountKey in the LAKE_STORAGE connection string")
    return {"account_name": account, "account_key": parts["accountkey"]}


class Demo:
    """The demo's gold layer, routing config and commits."""

    def __init__(self, lake_connection: str, container: str, directory: Path) -> None:
        self.container = container
        self.directory = directory
        self.options = deltalake_options(lake_connection)
        self.lake_connection = lake_connection
        self.versions: dict[str, int] = {}
        self.thread: threading.Thread | None = None

    def uri(self, table: str) -> str:
        return f"az://{self.container}/{table}"

    # preparing ----------------------------------------------------------------------------------
    def write_config(self) -> Path:
        """Write the routing config; returns its path (for ``REFRESH_CONFIG``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "refresh-config.json"
        path.write_text(json.dumps(CONFIG, indent=2) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def seed(simulator: Any) -> None:
        """Add the demo's workspaces and datasets to the Power BI simulator."""
        sales = simulator.add_workspace(SALES_WORKSPACE, dedicated=True)
        simulator.add_dataset(sales, "Sales Model")
        ops = simulator.add_workspace(OPS_WORKSPACE, dedicated=False)
        simulator.add_dataset(ops, "Regional Ops")

    def create_tables(self) -> None:
        """Create the container and the two tables (version 0) unless they exist."""
        try:
            import pyarrow as pa
            from deltalake import DeltaTable, write_deltalake
            from deltalake.exceptions import TableNotFoundError
        except ImportError as exc:
            raise DemoError(f"--demo needs deltalake and pyarrow ({exc}); install the dev extras: "
                            ".venv/bin/pip install -e '.[dev]'") from None
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        try:
            BlobServiceClient.from_connection_string(self.lake_connection).create_container(self.container)
        except ResourceExistsError:
            pass
        tables = {
            FACT: (pa.table({"order_id": pa.array([1, 2, 3, 4], pa.int64()),
                             "customer_id": pa.array([10, 11, 10, 12], pa.int64()),
                             "region": ["east", "east", "west", "west"],
                             "amount": [120.0, 75.5, 310.0, 42.25]}), ["region"]),
            DIM: (pa.table({"customer_id": pa.array([10, 11, 12], pa.int64()),
                            "name": ["Contoso", "Fabrikam", "Northwind"],
                            "segment": ["Enterprise", "SMB", "SMB"]}), None),
        }
        for table, (rows, partitions) in tables.items():
            try:
                self.versions[table] = DeltaTable(self.uri(table), storage_options=self.options).version()
                log.info("demo: table %s exists (version %s); adding commits to it", table, self.versions[table])
            except TableNotFoundError:
                write_deltalake(self.uri(table), rows, partition_by=partitions, storage_options=self.options)
                self.versions[table] = 0
                log.info("demo: created table %s%s", table, " (partitioned by region)" if partitions else "")

    # playing ------------------------------------------------------------------------------------
    def start(self, stop: threading.Event, status_url: str | None, outcomes: Any = None) -> None:
        """Write the commits (and follow the outcomes) on a background thread."""
        self.thread = threading.Thread(target=self.play, args=(stop, status_url, outcomes), name="demo", daemon=True)
        self.thread.start()

    def play(self, stop: threading.Event, status_url: str | None, outcomes: Any = None, pause: float = 2.0) -> None:
        """Append, OPTIMIZE, merge; then wait for the two datasets' outcomes."""
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake

        try:
            if stop.wait(1.0):
                return
            write_deltalake(self.uri(FACT), pa.table({
                "order_id": pa.array([5, 6, 7], pa.int64()), "customer_id": pa.array([11, 13, 12], pa.int64()),
                "region": ["east", "west", "west"], "amount": [99.0, 18.5, 260.0]}),
                mode="append", partition_by=["region"], storage_options=self.options)
            fact = DeltaTable(self.uri(FACT), storage_options=self.options)
            log.info("demo: commit 1/3: appended 3 orders to %s (version %s): refreshes sales (Sales) and regional",
                     FACT, fact.version())
            if stop.wait(pause):
                return
            metrics = fact.optimize.compact()
            fact = DeltaTable(self.uri(FACT), storage_options=self.options)
            log.info("demo: commit 2/3: OPTIMIZE of %s (version %s, %s files compacted): no data change, must not "
                     "refresh", FACT, fact.version(), metrics.get("numFilesRemoved", "?"))
            if stop.wait(pause):
                return
            dim = DeltaTable(self.uri(DIM), storage_options=self.options)
            source = pa.table({"customer_id": pa.array([12, 13], pa.int64()), "name": ["Northwind Traders", "Tailspin"],
                               "segment": ["Enterprise", "SMB"]})
            (dim.merge(source, predicate="t.customer_id = s.customer_id", source_alias="s", target_alias="t")
                .when_matched_update_all().when_not_matched_insert_all().execute())
            dim = DeltaTable(self.uri(DIM), storage_options=self.options)
            log.info("demo: commit 3/3: merged 2 customers into %s (version %s): joins the pending sales job",
                     DIM, dim.version())
            log.info("demo: all commits written; refreshes follow (sales after its 8 s debounce). Status page: %s",
                     status_url or "(no status route in this app)")
        except Exception as exc:
            log.error("demo: writing the commits failed: %s: %s", type(exc).__name__, exc)
            return
        if outcomes is not None:
            self._follow(stop, status_url, outcomes)

    @staticmethod
    def _follow(stop: threading.Event, status_url: str | None, outcomes: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and not stop.wait(2.0):
            try:
                for key in CONFIG["datasets"]:
                    rows = outcomes().history(key, top=5)
                    done = [r for r in rows if r.get("status") in END_STATES and r.get("trigger") == "commit"]
                    if done:
                        seen[key] = done[0]
            except Exception as exc:  # storage hiccup: try again
                log.debug("demo: reading outcomes failed: %s", exc)
                continue
            if len(seen) == len(CONFIG["datasets"]):
                for key, row in sorted(seen.items()):
                    log.info("demo: %s -> %s (%s refresh of %s, versions %s)", key, row.get("status"),
                             row.get("refresh_type"), ",".join(row.get("model_tables") or []) or "the whole model",
                             _versions(row.get("sources")))
                _log_freshness()
                log.info("demo: done. Open the status page: %s", status_url or "(no status route in this app)")
                return
        if not stop.is_set():
            log.warning("demo: not every refresh finished within %.0f s; see the lines above", timeout)


def _log_freshness() -> None:
    """Each demo dataset's freshness, as GET /api/datasets and the status page show it."""
    from refresh.core.context import get_app

    try:
        freshness = get_app().freshness
        for key in CONFIG["datasets"]:
            view = freshness.view(key).to_json()
            log.info("demo: %s freshness: %s; data as of %s", key, view["text"],
                     view["data_as_of"]["overall"] or "unknown")
    except Exception as exc:  # the demo's summary only
        log.warning("demo: freshness not read: %s", type(exc).__name__)


def alert_destination(env: Any) -> str:
    """Where alerts would go, without the webhook URL itself (a secret: a Teams URL carries its signature)."""
    from urllib.parse import urlsplit

    from refresh.monitoring.alerts import AlertSettings

    settings = AlertSettings.load(env)
    if settings.problem:
        return f"nowhere: {settings.problem} (each alert is recorded as failed on the status page)"
    if not settings.enabled:
        return ("nowhere: ALERT_WEBHOOK_URL is empty; each alert is recorded (status 'off') and not sent. "
                "Set ALERT_WEBHOOK_URL (ALERT_WEBHOOK_FORMAT=json|teams) in local.settings.json to send them")
    return f"POST to the webhook on {urlsplit(settings.webhook_url).hostname} as {settings.format} " \
           f"(through the refresh queue, retried with back-off)"


def _versions(sources: Any) -> str:
    if not isinstance(sources, dict):
        return "-"
    return "; ".join(f"{t} v{s.get('first_version')}..{s.get('last_version')}" for t, s in sorted(sources.items()))
