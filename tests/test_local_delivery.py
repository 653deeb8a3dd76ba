"""The local runtime delivers each Delta commit to exactly one function, as the lake's subscriptions do, with the
binding the function declares; it stays cheap when idle and keeps each trigger kind on its own pool.

Real parts: Azurite, ``deltalake`` writing PUT-style commits, ``azure.storage.blob`` clients. Rename-style
commits cannot happen in Azurite (no hierarchical namespace): their events are built from the documented
schema (``refresh.dev.testing.events``).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.blob import BlobClient, BlobServiceClient
from azure.storage.queue import QueueServiceClient, TextBase64EncodePolicy

from refresh.dev.local.blobs import BlobTarget, EventTarget, LakeWatcher, NewBlob, binding_kind
from refresh.dev.local.host import HostOptions, Invoker, LocalHost, Scheduler, functions_from_app
from refresh.dev.local.queues import QueueRunner
from refresh.dev.local.settings import QueueOptions, load_host_json
from refresh.dev.testing import events as ev

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


#: Stands for ``azurefunctions.extensions.bindings.blob.BlobClient`` (not a dependency of this branch): the
#: runtime recognises the SDK type by its class name and module.
ExtensionBlobClient = type("BlobClient", (), {"__module__": "azurefunctions.extensions.bindings.blob.blobClient"})


class Calls:
    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def record(self, name: str, value: Any) -> None:
        with self.lock:
            self.calls[name].append(value)


def build_app(calls: Calls, container: str, queue: str = "unused") -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("on_commit")
    @app.blob_trigger(arg_name="blob", path=f"{container}/{{name}}", connection="LAKE",
                      source=func.BlobSource.EVENT_GRID)
    def on_commit(blob: BlobClient) -> None:
        calls.record("on_commit", blob)
        calls.gate.wait(30)

    @app.function_name("on_event")
    @app.event_grid_trigger(arg_name="event")
    def on_event(event: func.EventGridEvent) -> None:
        calls.record("on_event", event)

    @app.function_name("work")
    @app.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage) -> None:
        calls.record("work", msg)

    return app


class Requests:
    """Every request a client sends (``raw_request_hook``)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, request: Any) -> None:
        self.seen.append((request.http_request.method, request.http_request.url))

    def listings(self) -> int:
        return sum(1 for _, url in self.seen if "comp=list" in url)


@pytest.fixture
def invoker():
    inv = Invoker(max_workers=8)
    yield inv
    inv.shutdown(5)


@pytest.fixture
def stop():
    event = threading.Event()
    yield event
    event.set()


def _watcher(azurite, calls: Calls, name: str, invoker: Invoker, stop: threading.Event,
             requests: Requests | None = None) -> LakeWatcher:
    service = BlobServiceClient.from_connection_string(azurite.connection_string,
                                                       raw_request_hook=requests or (lambda r: None))
    container = service.get_container_client(name)
    container.create_container()
    specs = {s.name: s for s in functions_from_app(build_app(calls, name))}
    return LakeWatcher(container, name, [BlobTarget.from_binding(specs["on_commit"], specs["on_commit"].trigger)],
                       [EventTarget(specs["on_event"], "event")], invoker, Scheduler(), stop)


def test_each_commit_goes_to_exactly_one_function(azurite, invoker, stop, unique):
    import pyarrow as pa
    from deltalake import write_deltalake

    calls = Calls()
    requests = Requests()
    watcher = _watcher(azurite, calls, f"lake{unique}", invoker, stop, requests)
    uri = f"az://lake{unique}/sales/orders"
    write_deltalake(uri, pa.table({"v": [0]}), storage_options=azurite.deltalake_options())
    watcher.rescan(initial=True)
    for value in (1, 2):  # PUT-style commits (delta-rs): BlobCreated -> the blob trigger only
        write_deltalake(uri, pa.table({"v": [value]}), mode="append", storage_options=azurite.deltalake_options())
    watcher.rescan()
    watcher.poll()
    assert invoker.wait_idle(10)
    commits = [f"sales/orders/_delta_log/{v:020d}.json" for v in (1, 2)]
    assert sorted(c.blob_name for c in calls.calls["on_commit"]) == commits
    assert not calls.calls["on_event"]

    # the blob trigger got a real BlobClient of the LAKE connection; the runtime downloaded nothing
    client = calls.calls["on_commit"][0]
    assert isinstance(client, BlobClient) and client.container_name == f"lake{unique}"
    downloads = [(m, url) for m, url in requests.seen if m == "GET" and "_delta_log/0000" in url and "comp=" not in url]
    assert downloads == []
    assert b'"commitInfo"' in client.download_blob().readall()

    # rename-style commit (Spark on ADLS Gen2): BlobRenamed -> the Event Grid trigger only
    base = watcher.base_url
    renamed = ev.blob_renamed(base, f"lake{unique}", "sales/orders/_delta_log/.00000000000000000003.json.tmp",
                              "sales/orders/_delta_log/00000000000000000003.json")
    assert watcher.route(renamed) == 1
    assert invoker.wait_idle(10)
    [event] = calls.calls["on_event"]
    assert event.event_type == "Microsoft.Storage.BlobRenamed" and event.id == renamed["id"]
    assert len(calls.calls["on_commit"]) == 2

    # a BlobCreated event of a commit goes to the blob trigger only
    created = ev.blob_created(base, f"lake{unique}", commits[0])
    assert watcher.route(created) == 1
    assert invoker.wait_idle(10)
    assert len(calls.calls["on_commit"]) == 3 and len(calls.calls["on_event"]) == 1


def test_the_binding_follows_the_declared_parameter_type():
    import azure.storage.blob as sdk

    def stream(blob: func.InputStream) -> None: ...
    def client(blob: sdk.BlobClient) -> None: ...
    def container(blob: sdk.ContainerClient) -> None: ...
    def untyped(blob) -> None: ...
    def written(blob: blob.BlobClient) -> None: ...  # noqa: F821 - the extension is not imported here

    def bound(blob: ExtensionBlobClient) -> None: ...

    assert [binding_kind(f, "blob") for f in (stream, client, container, untyped, written, bound)] == \
        ["stream", "client", "container", "stream", "client", "client"]


def test_an_idle_watcher_lists_once_per_scan_and_never_per_poll_whatever_the_table_count(azurite, invoker, stop,
                                                                                           unique):
    per_count = {}
    for count in (3, 40):
        calls, requests = Calls(), Requests()
        watcher = _watcher(azurite, calls, f"idle{count}{unique}", invoker, stop, requests)
        for i in range(count):
            watcher.container.upload_blob(f"gold/t{i:03d}/_delta_log/{0:020d}.json", b"{}")
            watcher.container.upload_blob(f"gold/t{i:03d}/part-0.parquet", b"PAR1")
        assert len(watcher.rescan(initial=True)) == count
        before = requests.listings()
        for _ in range(3):
            watcher.rescan()
            for _ in range(4):
                watcher.poll()
        per_count[count] = requests.listings() - before
        assert not calls.calls["on_commit"]
    assert per_count == {3: 3, 40: 3}  # one listing per scan, none per poll


def test_a_table_that_committed_is_probed_each_poll_with_one_listing(azurite, invoker, stop, unique):
    calls, requests = Calls(), Requests()
    watcher = _watcher(azurite, calls, f"hot{unique}", invoker, stop, requests)
    for i in range(20):
        watcher.container.upload_blob(f"gold/t{i:02d}/_delta_log/{0:020d}.json", b"{}")
    watcher.rescan(initial=True)
    watcher.container.upload_blob(f"gold/t07/_delta_log/{1:020d}.json", b"{}")
    watcher.rescan()
    watcher.container.upload_blob(f"gold/t07/_delta_log/{2:020d}.json", b"{}")
    before = requests.listings()
    assert watcher.poll() == 1
    assert requests.listings() - before == 1  # only the hot table, only the decade of its next version
    assert invoker.wait_idle(10)
    assert sorted(c.blob_name for c in calls.calls["on_commit"]) == [f"gold/t07/_delta_log/{v:020d}.json"
                                                                     for v in (1, 2)]


def test_a_burst_over_many_hot_tables_costs_a_bounded_number_of_listings_a_poll(azurite, invoker, stop, unique):
    """20 tables committing at once: each poll probes at most 4 of them (the least recently probed first), so
    the listing rate does not grow with the number of tables, and every table's new commit is found in turn."""
    calls, requests = Calls(), Requests()
    watcher = _watcher(azurite, calls, f"burst{unique}", invoker, stop, requests)
    tables = [f"gold/t{i:02d}" for i in range(20)]
    for table in tables:
        watcher.container.upload_blob(f"{table}/_delta_log/{0:020d}.json", b"{}")
    watcher.rescan(initial=True)
    for table in tables:
        watcher.container.upload_blob(f"{table}/_delta_log/{1:020d}.json", b"{}")
    watcher.rescan()  # every table is hot now
    for table in tables:
        watcher.container.upload_blob(f"{table}/_delta_log/{2:020d}.json", b"{}")
    listings, found = [], []
    for _ in range(5):
        before = requests.listings()
        found.append(watcher.poll())
        listings.append(requests.listings() - before)
    assert listings == [4, 4, 4, 4, 4]
    assert found == [4, 4, 4, 4, 4]
    assert invoker.wait_idle(10)
    assert sorted(c.blob_name for c in calls.calls["on_commit"]) == sorted(
        f"{t}/_delta_log/{v:020d}.json" for t in tables for v in (1, 2))


def test_a_container_scan_interleaves_the_tables_that_committed_together(azurite, invoker, stop, unique):
    """Event Grid sends events about in the order the blobs were written: commits found by one scan go out
    version by version across the tables (each table's in order), not one whole table after another."""
    calls = Calls()
    watcher = _watcher(azurite, calls, f"order{unique}", invoker, stop)
    watcher.rescan(initial=True)
    for v in range(3):
        for table in ("a", "b", "c"):
            watcher.container.upload_blob(f"{table}/_delta_log/{v:020d}.json", b"{}")
    order: list[str] = []
    deliver = watcher.deliver
    watcher.deliver = lambda blob: order.append(blob.name) or deliver(blob)
    watcher.rescan()
    assert order == [f"{t}/_delta_log/{v:020d}.json" for v in range(3) for t in ("a", "b", "c")]
    assert invoker.wait_idle(10)


def test_a_deleted_and_rewritten_commit_is_delivered_again(azurite, invoker, stop, unique):
    calls = Calls()
    watcher = _watcher(azurite, calls, f"re{unique}", invoker, stop)
    watcher.rescan(initial=True)
    name = f"t/_delta_log/{0:020d}.json"
    watcher.container.upload_blob(name, b"{}")
    watcher.rescan()
    assert invoker.wait_idle(10)
    watcher.container.delete_blob(name)
    watcher.rescan()
    watcher.container.upload_blob(name, b"{}")
    watcher.rescan()
    assert invoker.wait_idle(10)
    assert [c.blob_name for c in calls.calls["on_commit"]] == [name, name]


def test_a_job_message_runs_while_1000_commit_deliveries_are_queued(azurite, unique):
    calls = Calls()
    calls.gate.clear()  # every blob trigger invocation waits: the blob pool is full, 1,000 deliveries queue
    container, queue = f"busy{unique}", f"jobs-{unique}"
    settings = {"AzureWebJobsStorage": azurite.connection_string, "LAKE": azurite.connection_string}
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    host = LocalHost(functions_from_app(build_app(calls, container, queue)), settings,
                     load_host_json(ROOT / "host.json"),
                     HostOptions(port=0, lake_poll_seconds=0.1, app_root=ROOT))
    host.build()
    watcher = host.watchers[("LAKE", container)]
    name = f"t/_delta_log/{0:020d}.json"
    watcher.container.upload_blob(name, b"{}")
    try:
        host.start()
        for _ in range(1000):
            watcher.deliver(NewBlob(name, "", 0, 0.0))
        wait_for(lambda: len(calls.calls["on_commit"]) >= 4)
        client = QueueServiceClient.from_connection_string(azurite.connection_string).get_queue_client(
            queue, message_encode_policy=TextBase64EncodePolicy())
        client.create_queue()
        client.send_message('{"type": "job"}')
        [msg] = wait_for(lambda: calls.calls["work"])
        # host.json's messageEncoding is "none": the function gets the base64 text as sent (messages.unwrap)
        assert base64.b64decode(msg.get_body()) == b'{"type": "job"}'
        assert len(calls.calls["on_commit"]) < 1000  # the deliveries were still queued
    finally:
        calls.gate.set()
        host.stop(timeout=20)


def test_the_queue_poller_waits_for_room_instead_of_looping(azurite, unique):
    """More than newBatchThreshold messages in flight: no new poll and no busy loop until one completes."""
    calls = Calls()
    held = threading.Event()
    invoker = Invoker(max_workers=8)
    stop = threading.Event()
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("slow")
    @app.queue_trigger(arg_name="msg", queue_name=f"room-{unique}", connection="AzureWebJobsStorage")
    def slow(msg: func.QueueMessage) -> None:
        calls.record("slow", msg)
        if msg.get_body() != b"quick":
            held.wait(30)

    [spec] = functions_from_app(app)
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_queue_client(f"room-{unique}", message_encode_policy=TextBase64EncodePolicy())
    client.create_queue()
    client.send_message("quick")
    for i in range(5):
        client.send_message(f"held {i}")
    options = QueueOptions(batch_size=8, new_batch_threshold=2, max_polling_interval=0.5, max_dequeue_count=3)
    runner = QueueRunner(spec, dict(spec.trigger), service, options, invoker, stop, message_lock=30)
    loops = {"renewals": 0}
    renew = runner._renew_locks

    def counted() -> None:
        loops["renewals"] += 1
        renew()

    runner._renew_locks = counted
    try:
        runner.start()
        wait_for(lambda: len(calls.calls["slow"]) == 6)
        wait_for(lambda: runner.in_flight == 5)  # "quick" completed and woke the poller; 5 > threshold 2
        polls, renewals = runner.polls, loops["renewals"]
        for _ in range(20):  # time passes (storage round trips) and other functions wake the poller
            runner.wake()
            client.get_queue_properties()
        assert runner.polls == polls
        assert loops["renewals"] - renewals <= 1  # at most a lock renewal (every 10 s), no loop
    finally:
        held.set()
        wait_for(lambda: runner.in_flight == 0)
        stop.set()
        runner.wake()
        invoker.shutdown(5)


def test_a_wake_polls_no_sooner_than_the_wake_interval_after_the_previous_poll(azurite, unique):
    """Default polling wakes the queue pollers after every invocation: a burst of invocations must not turn
    into a poll per invocation. A wake waits out the rest of the interval since the previous poll."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("work")
    @app.queue_trigger(arg_name="msg", queue_name=f"paced-{unique}", connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage) -> None:
        pass

    [spec] = functions_from_app(app)
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            now[0] += timeout or 0.0
            return False

    now = [100.0]
    invoker = Invoker(max_workers=2)
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    runner = QueueRunner(spec, dict(spec.trigger), service, QueueOptions(), invoker, Stop(), message_lock=30)
    runner.monotonic = lambda: now[0]
    try:
        assert runner._poll(1) == 0  # the queue does not exist yet: polled as empty
        now[0] += 0.03
        runner._pace()  # woken 30 ms after that poll: waits the other 70 ms
        assert len(waits) == 1 and abs(waits[0] - (runner.wake_interval - 0.03)) < 1e-9
        runner._poll(1)
        now[0] += runner.wake_interval + 0.01
        runner._pace()  # long enough since: at once
        assert len(waits) == 1
    finally:
        invoker.shutdown(5)
