"""The two lake event paths as the Functions host drives them, against Azurite.

* Blob trigger (``on_delta_commit``, BlobCreated): bound to the SDK type ``BlobClient``
  (azurefunctions-extensions-bindings-blob). The worker asks the host for deferred binding and builds
  the client from the host's model binding data; the function uses the name only, so the commit is
  never downloaded for it.
* Event Grid trigger (``on_lake_event``, BlobRenamed): its work runs inside the webhook call, which
  Event Grid abandons after 30 s. Every storage call is bounded by a budget
  (``connections.budget``): slow storage makes the call fail fast, and the redelivery is harmless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from refresh.core import connections
from refresh.core.context import set_app
from refresh.detection.deltalog import commit_file_name
from refresh.dev.testing import events as ev
from refresh.dev.testing.harness import make_app
from refresh.jobs.pending import pending_of
from refresh.surfaces import function_bodies as functions

ROOT = Path(__file__).resolve().parent.parent
TABLE = "sales/fact_orders"
CONFIG = {"datasets": {"sales": {"workspace": "Finance Analytics", "dataset": "Sales Model",
                                 "sources": [{"table": TABLE}], "debounce_seconds": 0, "max_delay_seconds": 0}}}


class FakeTimer:
    """connections.Timer stand-in: time moves only when the code waits or a request 'takes' time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def timer(monkeypatch) -> FakeTimer:
    fake = FakeTimer()
    monkeypatch.setattr(connections, "DEFAULT_TIMER", connections.Timer(fake.monotonic, fake.sleep))
    return fake


def _app(azurite, unique, **kwargs):
    app = make_app(azurite.connection_string, CONFIG, token=unique, **kwargs)
    set_app(app)
    return app


def _write(azurite, app, version_rows: int) -> int:
    from deltalake import DeltaTable

    uri = f"az://{app.settings.gold_container}/{TABLE}"
    for i in range(version_rows):
        write_deltalake(uri, pa.table({"id": [i]}), mode="append", storage_options=azurite.deltalake_options())
    return DeltaTable(uri, storage_options=azurite.deltalake_options()).version()


def _renamed_event(azurite, app, version: int):
    base = f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"
    commit = f"{TABLE}/_delta_log/{commit_file_name(version)}"
    tmp = f"{TABLE}/_delta_log/.{commit_file_name(version)}.3f1c2a.tmp"
    return ev.to_function_event(ev.blob_renamed(base, app.settings.gold_container, tmp, commit))


def _pending(app):
    return pending_of(app.states.get("sales"))


# ------------------------------------------------------------------------------------------------
# Blob trigger: SDK type, nothing downloaded
# ------------------------------------------------------------------------------------------------

def test_worker_indexes_the_blob_trigger_as_an_sdk_type_binding():
    """What the Python worker sends the host for function_app.py: still the 12 functions, and the blob
    trigger flagged for deferred binding (the host then sends model binding data, not the blob)."""
    code = """
import inspect, json
from types import SimpleNamespace
import function_app
from azurefunctions.extensions.base import meta
import azurefunctions.extensions.bindings.blob as blob
out = {}
for f in function_app.app.get_functions():
    params = inspect.signature(f.get_user_function()).parameters
    types = {name: SimpleNamespace(pytype=p.annotation) for name, p in params.items()}
    raw, logs = meta._ConverterMeta.get_raw_bindings(f, types)
    sdk = any(meta._ConverterMeta.check_supported_type(t.pytype) for t in types.values())
    out[f.get_function_name()] = {"bindings": [json.loads(b) for b in raw], "sdk": sdk,
                                  "blob_client": any(t.pytype is blob.BlobClient for t in types.values())}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AzureWebJobs", "LAKE_", "PYTHON_ENABLE"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    functions_ = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(functions_) == 12
    trigger = functions_["on_delta_commit"]
    assert trigger["blob_client"] and trigger["sdk"]
    assert trigger["bindings"] == [{"direction": "IN", "type": "blobTrigger", "name": "blob",
                                    "path": "%GOLD_CONTAINER%/{name}", "connection": "LAKE_STORAGE",
                                    "source": "EventGrid", "properties": {"SupportsDeferredBinding": True}}]
    # Nothing else changes type: only the blob trigger is an SDK-type binding.
    assert [name for name, f in functions_.items() if f["sdk"]] == ["on_delta_commit"]


def test_blob_trigger_gets_a_blob_client_and_downloads_nothing(azurite, unique, registered, monkeypatch):
    app = _app(azurite, unique)
    version = _write(azurite, app, 2)
    # The worker builds the BlobClient from the host's model binding data and the connection's app
    # settings. Point that connection at a closed port: any download through it would fail, so a
    # processed commit proves the function used the client's name only.
    monkeypatch.setenv("LAKE_STORAGE", "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                       "AccountKey=" + "A" * 88 + ";BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")
    from azurefunctions.extensions.base import Datum
    from azurefunctions.extensions.bindings.blob import BlobClient
    from azurefunctions.extensions.bindings.blob.blobClientConverter import BlobClientConverter

    content = {"Connection": "LAKE_STORAGE", "ContainerName": app.settings.gold_container,
               "BlobName": f"{TABLE}/_delta_log/{commit_file_name(version)}"}
    data = SimpleNamespace(version="1.0", source="AzureStorageBlobs", content_type="application/json",
                           content=json.dumps(content))
    client = BlobClientConverter.decode(Datum(data, "model_binding_data"), trigger_metadata={}, pytype=BlobClient)
    from azure.storage.blob import BlobClient as StorageBlobClient

    assert isinstance(client, StorageBlobClient)
    registered["on_delta_commit"](client)
    job = _pending(app)
    assert job is not None and job.sources[TABLE].last_version == version


def test_blob_trigger_ignores_what_is_not_a_commit(azurite, unique, registered):
    app = _app(azurite, unique)
    _write(azurite, app, 1)
    from azure.storage.blob import BlobClient

    for name in (f"{TABLE}/part-0001.parquet", f"{TABLE}/_delta_log/00000000000000000000.checkpoint.parquet"):
        registered["on_delta_commit"](BlobClient("http://127.0.0.1:9/devstoreaccount1",
                                                 app.settings.gold_container, name))
    assert _pending(app) is None


# ------------------------------------------------------------------------------------------------
# Event Grid trigger: bounded work inside the webhook call
# ------------------------------------------------------------------------------------------------

def test_event_grid_path_completes_within_its_budget(azurite, unique, registered, timer):
    app = _app(azurite, unique)
    version = _write(azurite, app, 2)
    registered["on_lake_event"](_renamed_event(azurite, app, version))
    job = _pending(app)
    assert job is not None and job.sources[TABLE].last_version == version
    assert timer.slept == []


def test_slow_storage_ends_the_event_grid_call_within_budget_and_redelivery_is_harmless(
        azurite, unique, registered, timer):
    """Each storage request 'takes' 4 s: the call stops before the budget is overrun (no request starts
    after it), fails so that Event Grid redelivers, and the redelivery creates the job exactly once."""
    sent: list[float] = []

    def slow(request) -> None:  # runs just before each attempt is handed to the transport
        timer.now += 4.0
        sent.append(timer.now)

    app = _app(azurite, unique, client_kwargs={"raw_request_hook": slow})
    version = _write(azurite, app, 2)
    event = _renamed_event(azurite, app, version)
    start, sent[:] = timer.now, []
    with pytest.raises(connections.BudgetExceeded, match=r"15 s budget is spent"):
        registered["on_lake_event"](event)
    elapsed = [t - start for t in sent]
    budget = functions.EVENT_GRID_BUDGET_SECONDS
    # Requests went out while the budget lasted; the first one due after it was not sent, and the
    # call ended there (one request's worth past the deadline at most).
    assert len(elapsed) >= 2 and all(t < budget for t in elapsed[:-1]) and elapsed[-1] >= budget
    assert timer.now - start < budget + 4.0

    # Redelivery (storage fast again): the same event gives one job, and once more changes nothing.
    fast = _app(azurite, unique)
    registered["on_lake_event"](event)
    job = _pending(fast)
    assert job is not None and job.sources[TABLE].last_version == version
    registered["on_lake_event"](event)
    assert _pending(fast).job_id == job.job_id
    assert fast.queue.get_queue_properties().approximate_message_count == 1


_CLOSED = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + "A" * 88 +
           ";BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
           "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;")


def test_unreachable_lake_ends_the_event_grid_call_within_budget(azurite, unique, registered, timer):
    """Connection refused on the lake: the blob retry policy (1, 3, 5, 9, 17 s plus jitter, about 35 s)
    waits only while another attempt still fits, through the budget's timer (never for real here);
    the call then fails (the budget, or the storage error once the connect retries are used up)."""
    from azure.core.exceptions import AzureError

    from refresh.core.context import App
    from refresh.core.routing import parse_config
    from refresh.dev.testing.harness import storage_env

    app = _app(azurite, unique)
    version = _write(azurite, app, 1)
    event = _renamed_event(azurite, app, version)
    set_app(App(env=storage_env(azurite.connection_string, unique, LAKE_STORAGE=_CLOSED), clock=app.clock,
                config=parse_config(CONFIG, "<test>")))
    with pytest.raises((connections.BudgetExceeded, AzureError)):
        registered["on_lake_event"](event)
    assert timer.slept, "the retry policy waited through the budget's timer"
    assert timer.now < functions.EVENT_GRID_BUDGET_SECONDS
    assert connections._BUDGET.get() is None  # the budget ends with the call


@pytest.mark.parametrize("service", ["blob", "queue", "table"])
def test_every_storage_client_retries_within_the_budget(service, timer):
    """blob, queue and table clients made by refresh.core.connections all wait between retries through the
    active budget and stop when the next wait would not fit."""
    from azure.core.exceptions import AzureError

    client = getattr(connections, f"{service}_service")("X", 30, {"X": _CLOSED})
    call = {"blob": lambda: client.get_container_client("c").get_container_properties(),
            "queue": lambda: client.get_queue_client("q").get_queue_properties(),
            "table": lambda: client.get_table_client("T").get_entity("p", "r")}[service]
    with pytest.raises((connections.BudgetExceeded, AzureError)), connections.budget(8.0, f"{service} test"):
        call()
    # The first blob/queue wait is 0-6 s (3 s plus jitter), the table ones 1.6 s and 3.2 s: at least one fits.
    assert timer.slept and sum(timer.slept) < 8.0


def test_outside_a_budget_clients_keep_their_own_retries(azurite, unique):
    """Only the Event Grid path is budgeted: the queue worker and timers keep the SDK retries."""
    app = _app(azurite, unique)
    assert connections._BUDGET.get() is None
    assert app.lake.get_container_properties() is not None  # plain requests pass through untouched
