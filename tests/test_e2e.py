"""End to end: ``python -m refresh local`` as a subprocess, exactly as the README runs it.

1. Configured services (nothing embedded): the test's Azurite and Power BI simulator are handed to
   the runtime through ``local.settings.json``. Delta commits written with ``deltalake`` become
   the expected refreshes (datasets, model tables; none for an OPTIMIZE), a manual refresh goes
   through ``POST /api/refreshes`` over real HTTP, and the runtime is SIGKILLed while a refresh
   POST is in flight, then restarted: every job still completes, with exactly one POST each.
2. Embedded defaults: ``--demo`` with nothing configured starts its own Azurite and simulator,
   shows the refreshes, and stops cleanly on Ctrl-C (SIGINT), Azurite included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from refresh.core import storage as tables
from refresh.core.context import App
from refresh.core.settings import SETTINGS
from refresh.dev.testing.azurite import free_port

ROOT = Path(__file__).resolve().parent.parent
END = {"Completed", "Failed", "Cancelled", "TimedOut", "Disabled", "NotRefreshable", "Skipped", "Rejected"}
_SCRUB_PREFIXES = ("AzureWebJobsStorage", "LAKE_STORAGE", "POWERBI_", "AZURE_", "IDENTITY_", "MSI_")


def wait_for(what: str, condition: Callable[[], Any], timeout: float, runtime: Runtime | None = None,
             step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if runtime is not None and runtime.process is not None and runtime.process.poll() is not None:
            raise AssertionError(f"the runtime exited ({runtime.process.returncode}) while waiting for {what}:\n"
                                 f"{runtime.tail()}")
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f"\n{runtime.tail()}" if runtime else ""))


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status, kind = response.read(), response.status, response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind and raw else raw.decode("utf-8", "replace")


def clean_env() -> dict[str, str]:
    """The test's environment without any app setting or credential (the settings file decides)."""
    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(_SCRUB_PREFIXES)}
    env.update({"PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    return env


class Runtime:
    """``python -m refresh local`` in a subprocess, its output in a file."""

    def __init__(self, tmp: Path, *args: str, readme_command: bool = False) -> None:
        self.tmp = tmp
        self.args = list(args)
        # readme_command: start it exactly as the README says (./scripts/run-local.sh, which sets up and
        # then execs `python -m refresh local`), else `python -m refresh local` directly
        self.prefix = [str(ROOT / "scripts" / "run-local.sh")] if readme_command \
            else [sys.executable, "-m", "refresh", "local"]
        self.state_file = tmp / "runtime.json"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = tmp / "runtime.log"
        self.runs = 0

    def start(self) -> dict[str, Any]:
        self.runs += 1
        self.state_file.unlink(missing_ok=True)  # a killed run leaves its state file behind
        command = [*self.prefix, *self.args, "--port", str(self.port),
                   "--state-file", str(self.state_file)]
        with self.log.open("a") as out:
            out.write(f"\n===== run {self.runs}: {' '.join(command[1:])}\n")
            self.process = subprocess.Popen(command, cwd=ROOT, env=clean_env(), stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return wait_for("the state file", lambda: self._state(), 60, self)

    def _state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"the runtime did not stop within {timeout} s:\n{self.tail()}") from None


CONFIG = {
    "datasets": {
        "sales": {"workspace": "Finance Analytics", "dataset": "Sales Model",
                  "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]},
                              {"table": "sales/dim_customer", "model_tables": ["Customers"]}],
                  "debounce_seconds": 0, "max_delay_seconds": 0},
        "ops": {"workspace": "Ops", "dataset": "Ops Model", "sources": [{"table": "sales/fact_orders"}],
                "debounce_seconds": 0, "max_delay_seconds": 0},
        "ledger": {"workspace": "Finance Analytics", "dataset": "Ledger Model",
                   "sources": [{"table": "finance/gl", "model_tables": ["GL"]}],
                   "debounce_seconds": 0, "max_delay_seconds": 0},
    }
}


class Lake:
    def __init__(self, azurite, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.azurite = azurite
        self.container = container
        BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)

    def uri(self, table: str) -> str:
        return f"az://{self.container}/{table}"

    def write(self, table: str, rows: dict, **kwargs: Any) -> int:
        write_deltalake(self.uri(table), pa.table(rows), storage_options=self.azurite.deltalake_options(), **kwargs)
        return self.table(table).version()

    def table(self, table: str) -> DeltaTable:
        return DeltaTable(self.uri(table), storage_options=self.azurite.deltalake_options())


def posts(sim, dataset_id: str) -> list[Any]:
    suffix = f"/datasets/{dataset_id}/refreshes"
    return [r for r in list(sim.requests) if r.method == "POST" and r.path.endswith(suffix)]


def test_commits_manual_refresh_and_a_crash_in_the_middle_of_a_job(azurite, sim, tmp_path, unique):
    finance = sim.add_workspace("Finance Analytics", dedicated=True)
    sales_ds = sim.add_dataset(finance, "Sales Model")
    ledger_ds = sim.add_dataset(finance, "Ledger Model")
    ops_ds = sim.add_dataset(sim.add_workspace("Ops", dedicated=False), "Ops Model")
    sim.refresh_duration = 3

    lake = Lake(azurite, f"gold{unique}")
    day = ["2026-11-20", "2026-11-21"]
    lake.write("sales/fact_orders", {"id": [1, 2], "amount": [10.0, 20.0], "order_date": day},
               partition_by=["order_date"])
    lake.write("sales/dim_customer", {"customer_id": [1, 2], "name": ["a", "b"]})
    lake.write("finance/gl", {"entry": [1], "amount": [5.0]})

    settings = {
        "AzureWebJobsStorage": azurite.connection_string, "LAKE_STORAGE": azurite.connection_string,
        "GOLD_CONTAINER": lake.container, "REFRESH_QUEUE": f"jobs-{unique}", "STATE_TABLE": f"State{unique}",
        "OUTCOMES_TABLE": f"Outcomes{unique}", "REFRESH_CONFIG": str(tmp_path / "refresh-config.json"),
        "POWERBI_API_URL": sim.base_url, "IDENTITY_ENDPOINT": sim.identity_endpoint,
        "IDENTITY_HEADER": sim.identity_header,
    }
    (tmp_path / "refresh-config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
    app = App(env=settings)
    runtime = Runtime(tmp_path, "--settings", str(tmp_path / "local.settings.json"), "--message-lock", "5")
    try:
        state = runtime.start()
        assert state["azurite"] is None and state["simulator"] is None  # configured: nothing started
        assert state["storage"] == {"AzureWebJobsStorage": "configured", "LAKE_STORAGE": "configured"}
        api = state["api"]

        # an append: both datasets listening to the fact table refresh, each with its model tables
        assert lake.write("sales/fact_orders", {"id": [3], "amount": [30.0], "order_date": day[:1]},
                          mode="append", partition_by=["order_date"]) == 1
        wait_for("the POSTs of the append", lambda: posts(sim, sales_ds) and posts(sim, ops_ds), 30, runtime)
        assert posts(sim, sales_ds)[0].body["objects"] == [{"table": "Orders"}]
        assert posts(sim, ops_ds)[0].body == {"notifyOption": "NoNotification"}

        # an OPTIMIZE: detected, and no dataset gets a job for it
        metrics = lake.table("sales/fact_orders").optimize.compact()
        assert metrics["numFilesRemoved"] > 0 and lake.table("sales/fact_orders").version() == 2
        wait_for("the OPTIMIZE to be detected",
                 lambda: (app.watermarks.get("sales/fact_orders") or _NoMark).version == 2, 30, runtime)
        covered = {k: tables.get_json(app.states.get(k), "covered")["sales/fact_orders"] for k in ("sales", "ops")}
        assert covered == {"sales": 1, "ops": 1}  # v1 (the append) is in a job; v2 (the OPTIMIZE) in none

        # a merge into the dimension: sales only, model table Customers, after the running refresh
        dim = lake.table("sales/dim_customer")
        (dim.merge(pa.table({"customer_id": [2, 3], "name": ["B", "c"]}), predicate="t.customer_id = s.customer_id",
                   source_alias="s", target_alias="t").when_matched_update_all().when_not_matched_insert_all()
         .execute())

        # a manual refresh over real HTTP
        status, answer = http("POST", f"{api}/refreshes", {"dataset": "ledger", "reason": "e2e"})
        assert status == 202, answer
        manual_job = answer["job_id"]
        wait_for("the manual refresh POST", lambda: posts(sim, ledger_ds), 30, runtime)

        # the next sales POST (the merge's follow-up, once the first refresh ends) hangs: kill the runtime then
        sim.slow_next(3.0, method="POST", path_contains=f"/datasets/{sales_ds}/refreshes")
        wait_for("the follow-up POST of sales", lambda: len(posts(sim, sales_ds)) == 2, 60, runtime, step=0.02)
        runtime.kill()
        assert posts(sim, sales_ds)[1].body["objects"] == [{"table": "Customers"}]
        runtime.start()

        def settled() -> bool:
            rows = {k: app.outcomes.history(k, top=10) for k in CONFIG["datasets"]}
            return all(rows.values()) and all(r["status"] in END for rs in rows.values() for r in rs) and \
                len(rows["sales"]) == 2

        wait_for("every job to end", settled, 90, runtime, step=0.5)
        sales_rows = sorted(app.outcomes.history("sales"), key=lambda r: r["queued_at"])
        assert [r["status"] for r in sales_rows] == ["Completed", "Completed"], sales_rows
        assert [r["model_tables"] for r in sales_rows] == [["Orders"], ["Customers"]]
        assert sales_rows[0]["sources"] == {"sales/fact_orders": {"first_version": 1, "last_version": 1,
                                                                  "commits": 1}}
        assert sales_rows[1]["sources"] == {"sales/dim_customer": {"first_version": 1, "last_version": 1,
                                                                   "commits": 1}}
        [ops_row] = app.outcomes.history("ops")
        assert ops_row["status"] == "Completed" and ops_row["refresh_type"] == "standard"
        assert ops_row["sources"] == sales_rows[0]["sources"]
        status, job = http("GET", f"{api}/refreshes/{manual_job}")
        assert status == 200 and job["status"] == "Completed" and job["trigger"] == "manual", job

        # nothing lost, nothing doubled: one POST per job, one Power BI refresh per POST, and the job whose
        # POST was cut off by the kill recorded the refresh that POST started (found again after the restart)
        assert len(posts(sim, sales_ds)) == 2 and len(sim.refreshes(sales_ds)) == 2
        assert sales_rows[1]["request_id"] == sim.refreshes(sales_ds)[0]["requestId"]
        assert len(posts(sim, ops_ds)) == 1 and len(posts(sim, ledger_ds)) == 1
        output = runtime.output()
        assert "operation=OPTIMIZE data_change=False" in output
        assert "run_refresh_job" in output and "on_delta_commit" in output and "on_lake_event" in output
        assert runtime.stop() == 0
    finally:
        if runtime.process is not None and runtime.process.poll() is None:
            runtime.kill()


class _NoMark:
    version = -1


def test_demo_with_embedded_azurite_and_simulator_then_ctrl_c(tmp_path):
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))  # nothing configured
    runtime = Runtime(tmp_path, "--demo", "--settings", str(settings), readme_command=True)
    try:
        state = runtime.start()
        assert state["azurite"]["pid"] and state["simulator"]["admin_url"]
        assert state["storage"] == {"AzureWebJobsStorage": "embedded Azurite", "LAKE_STORAGE": "embedded Azurite"}
        wait_for("the demo to finish", lambda: "demo: done." in runtime.output(), 90, runtime, step=0.5)
        output = runtime.output()
        assert output.count("refreshes go to the local Power BI SIMULATOR") == 1
        assert "operation=OPTIMIZE data_change=False" in output and "job coalesced for dataset sales" in output
        # issue 12: where alerts would go, and each dataset's freshness after its refresh
        assert "demo: alerts go nowhere: ALERT_WEBHOOK_URL is empty" in output
        assert "demo: sales freshness: up to date" in output and "demo: regional freshness: up to date" in output

        _, requests = http("GET", f"{state['simulator']['admin_url']}/requests")
        refresh_posts = [r for r in requests["value"] if r["method"] == "POST" and r["path"].endswith("/refreshes")]
        bodies = sorted(json.dumps(r["body"], sort_keys=True) for r in refresh_posts)
        assert len(refresh_posts) == 2, bodies  # one per dataset: the OPTIMIZE refreshed nothing
        assert any('"objects": [{"table": "Customer"}, {"table": "Sales"}]' in b for b in bodies)
        assert any(b == '{"notifyOption": "NoNotification"}' for b in bodies)
        status, page = http("GET", state["status_page"])
        assert status == 200 and "<html" in page.lower()

        azurite_pid = state["azurite"]["pid"]
        assert runtime.stop(signal.SIGINT) == 0
        assert not runtime.state_file.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(azurite_pid, 0)
    finally:
        if runtime.process is not None and runtime.process.poll() is None:
            runtime.kill()
