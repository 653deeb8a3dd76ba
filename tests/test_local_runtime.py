"""The local runtime's trigger runners against Azurite, driven by a small FunctionApp of test functions.

Each test builds its own ``func.FunctionApp`` (``get_functions()`` works once per app object), so
the runners are exercised exactly as they read a real app: from the binding JSON.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueServiceClient, TextBase64EncodePolicy

from refresh.dev.local.blobs import BlobTarget, EventTarget, LakeWatcher, wanted
from refresh.dev.local.cli import needs_embedded_storage, powerbi_configuration, seed_simulator
from refresh.dev.local.host import HostOptions, Invoker, LocalHost, Scheduler, functions_from_app
from refresh.dev.local.http import HttpServer, Route, compile_route
from refresh.dev.local.queues import QueueRunner
from refresh.dev.local.settings import (
    AppSettings,
    LocalSettingsError,
    QueueOptions,
    load_host_json,
    parse_timespan,
    resolve_app_settings,
    resolve_expression,
)
from refresh.dev.local.timers import BlobScheduleMonitor, TimerRunner

ROOT = Path(__file__).resolve().parent.parent
FAST = QueueOptions(batch_size=4, new_batch_threshold=2, max_polling_interval=0.5, visibility_timeout=0.0,
                    max_dequeue_count=3, message_encoding="base64")


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def peek(client: Any) -> list[Any]:
    """The visible messages of a queue; none while it does not exist."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(client.peek_messages(max_messages=32))
    except ResourceNotFoundError:
        return []


class Recorder:
    """Calls of the test functions, and how they should behave."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = defaultdict(list)
        self.fail: set[str] = set()
        self.sleep = 0.0
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def record(self, name: str, value: Any) -> None:
        with self.lock:
            self.calls[name].append(value)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if self.sleep:
                time.sleep(self.sleep)
            if name in self.fail:
                raise RuntimeError(f"{name} was told to fail")
        finally:
            with self.lock:
                self.running -= 1


def build_app(rec: Recorder) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("work")
    @app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage) -> None:
        rec.record("work", msg)

    @app.function_name("on_blob")
    @app.blob_trigger(arg_name="blob", path="%TEST_CONTAINER%/{name}", connection="AzureWebJobsStorage",
                      source=func.BlobSource.EVENT_GRID)
    def on_blob(blob: func.InputStream) -> None:
        rec.record("on_blob", blob)

    @app.function_name("on_event")
    @app.event_grid_trigger(arg_name="event")
    def on_event(event: func.EventGridEvent) -> None:
        rec.record("on_event", event)

    @app.function_name("tick")
    @app.timer_trigger(arg_name="timer", schedule="%TEST_SCHEDULE%", run_on_startup=False, use_monitor=False)
    def tick(timer: func.TimerRequest) -> None:
        rec.record("tick", timer)

    @app.function_name("get_item")
    @app.route(route="items/{item_id:int}", methods=["GET"])
    def get_item(req: func.HttpRequest) -> func.HttpResponse:
        rec.record("get_item", req)
        if req.route_params["item_id"] == "500":
            raise RuntimeError("boom")
        return func.HttpResponse(json.dumps({"id": int(req.route_params["item_id"]), "q": req.params.get("q"),
                                             "h": req.headers.get("x-test"), "url": req.url}),
                                 status_code=200, mimetype="application/json", headers={"X-Served": "local"})

    @app.function_name("items_special")
    @app.route(route="items/special", methods=["GET"])
    def items_special(req: func.HttpRequest) -> str:
        return "special"

    @app.function_name("echo")
    @app.route(route="echo/{*rest}", methods=["POST", "PUT"])
    def echo(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(req.get_body(), status_code=201, headers={"X-Rest": req.route_params.get("rest", "")})

    @app.function_name("unsupported")
    @app.queue_trigger(arg_name="msg", queue_name="other", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="other2", connection="AzureWebJobsStorage")
    def unsupported(msg: func.QueueMessage, out: func.Out[str]) -> None:
        pass

    return app


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def specs(rec):
    return {s.name: s for s in functions_from_app(build_app(rec))}


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


# ------------------------------------------------------------------------------------------- settings


def test_local_settings_file_values_yield_to_non_empty_environment_values(tmp_path):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "file", "B": "file", "C": "file"},
                                "Host": {"LocalHttpPort": 7072}}))
    settings = resolve_app_settings(path, {"A": "env", "B": "", "PATH": "/bin"})
    assert settings.values["A"] == "env" and settings.sources["A"] == "environment"
    assert settings.values["B"] == "file" and settings.values["C"] == "file"  # empty in the env: the file wins
    assert settings.skipped == ["A"]
    assert settings.values["REFRESH_QUEUE"] == "refresh-jobs" and settings.sources["REFRESH_QUEUE"] == "default"
    assert settings.host_section == {"LocalHttpPort": 7072}


def test_encrypted_or_broken_settings_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "local.settings.json"
    path.write_text('{"IsEncrypted": true, "Values": {}}')
    with pytest.raises(LocalSettingsError, match="IsEncrypted"):
        resolve_app_settings(path, {})
    path.write_text("{nope")
    with pytest.raises(LocalSettingsError, match=r"local\.settings\.json: not valid JSON"):
        resolve_app_settings(path, {})


def test_binding_expressions_resolve_from_app_settings():
    assert resolve_expression("%Q%-poison", {"Q": "jobs"}) == "jobs-poison"
    assert resolve_expression("plain", {}) == "plain"
    with pytest.raises(LocalSettingsError, match="'%MISSING%' does not resolve to a value"):
        resolve_expression("%MISSING%/x", {})


def test_host_json_of_the_project_is_read_with_its_queue_settings():
    config = load_host_json(ROOT / "host.json")
    q = config.queues
    assert (q.batch_size, q.new_batch_threshold, q.max_polling_interval, q.visibility_timeout,
            q.max_dequeue_count, q.message_encoding) == (8, 4, 2.0, 30.0, 5, "none")
    assert config.route_prefix == "api" and config.function_timeout == 300 and config.blob_parallelism == 4
    assert parse_timespan("1.00:00:01.5") == 86401.5
    with pytest.raises(LocalSettingsError):
        parse_timespan("soon")


def test_embedded_defaults_decisions():
    assert needs_embedded_storage("AzureWebJobsStorage", {})
    assert needs_embedded_storage("AzureWebJobsStorage", {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert not needs_embedded_storage("LAKE_STORAGE", {"LAKE_STORAGE": "DefaultEndpointsProtocol=https;AccountName=a"})
    assert not needs_embedded_storage("LAKE_STORAGE", {"LAKE_STORAGE__blobServiceUri": "https://a.blob.core.windows.net"})

    def configured(values: dict[str, str], sources: dict[str, str] | None = None) -> str | None:
        return powerbi_configuration(AppSettings(values, sources or dict.fromkeys(values, "environment")))

    assert configured({"POWERBI_API_URL": "https://api.powerbi.com/v1.0/myorg"},
                      {"POWERBI_API_URL": "default"}) is None  # the app's default is not a configuration
    assert configured({"POWERBI_API_URL": "http://127.0.0.1:9/v1.0/myorg"}).startswith("POWERBI_API_URL")
    assert "service principal" in configured({"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t",
                                              "AZURE_CLIENT_SECRET": "s"})
    assert configured({"AZURE_CLIENT_ID": "c"}) is None
    assert "IDENTITY_ENDPOINT" in configured({"IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi/token"})


def test_simulator_is_seeded_with_what_the_routing_config_names():
    from refresh.core.routing import load_config
    from refresh.dev.powerbi_sim.simulator import PowerBISimulator

    config = load_config(ROOT / "refresh-config.json")
    sim = PowerBISimulator()
    assert seed_simulator(sim, config) == len(config.datasets)
    state = {w.name: w for w in sim._workspaces.values()}
    assert state["Supply Chain"].dedicated and not state["Finance Analytics"].dedicated
    assert {d.name for d in sim._datasets.values()} == {"Sales Model", "Inventory Model"}


# ------------------------------------------------------------------------------------------- queues


def _queue(azurite, name: str) -> Any:
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_queue_client(name, message_encode_policy=TextBase64EncodePolicy())
    client.create_queue()
    return service, client


def _runner(spec, service, name, invoker, stop, options=FAST, lock=30.0) -> QueueRunner:
    trigger = dict(spec.trigger, queueName=name)
    runner = QueueRunner(spec, trigger, service, options, invoker, stop, message_lock=lock)
    runner.start()
    return runner


def test_queue_message_is_handed_over_with_its_metadata_and_deleted_on_success(azurite, specs, rec, invoker, stop,
                                                                                unique):
    service, client = _queue(azurite, f"q-{unique}")
    client.send_message('{"hello": "world"}')
    _runner(specs["work"], service, f"q-{unique}", invoker, stop)
    [msg] = wait_for(lambda: rec.calls["work"])
    assert msg.get_body() == b'{"hello": "world"}' and msg.get_json() == {"hello": "world"}
    assert msg.dequeue_count == 1 and msg.id and msg.pop_receipt
    assert msg.insertion_time is not None and msg.expiration_time is not None
    wait_for(lambda: client.get_queue_properties().approximate_message_count == 0)


def test_failed_message_is_redelivered_then_moved_to_the_poison_queue(azurite, specs, rec, invoker, stop, unique):
    service, client = _queue(azurite, f"q-{unique}")
    rec.fail.add("work")
    client.send_message("payload")
    _runner(specs["work"], service, f"q-{unique}", invoker, stop)
    wait_for(lambda: len(rec.calls["work"]) == 3)
    assert [m.dequeue_count for m in rec.calls["work"]] == [1, 2, 3]
    poison = service.get_queue_client(f"q-{unique}-poison")
    [moved] = wait_for(lambda: peek(poison))
    assert base64.b64decode(moved.content) == b"payload"  # the same encoded text as the original
    wait_for(lambda: client.get_queue_properties().approximate_message_count == 0)
    time.sleep(0.5)
    assert len(rec.calls["work"]) == 3


def test_message_that_is_not_base64_never_runs_and_ends_in_the_poison_queue(azurite, specs, rec, invoker, stop,
                                                                             unique):
    service, _ = _queue(azurite, f"q-{unique}")
    service.get_queue_client(f"q-{unique}").send_message("not base64 !")  # no encode policy: raw text
    _runner(specs["work"], service, f"q-{unique}", invoker, stop)
    poison = service.get_queue_client(f"q-{unique}-poison")
    [moved] = wait_for(lambda: peek(poison))
    assert moved.content == "not base64 !" and not rec.calls["work"]


def test_batch_size_and_new_batch_threshold_bound_concurrency(azurite, specs, rec, invoker, stop, unique):
    service, client = _queue(azurite, f"q-{unique}")
    rec.sleep = 0.4
    for i in range(8):
        client.send_message(f"m{i}")
    options = QueueOptions(batch_size=2, new_batch_threshold=1, max_polling_interval=0.5, max_dequeue_count=3)
    _runner(specs["work"], service, f"q-{unique}", invoker, stop, options=options)
    wait_for(lambda: len(rec.calls["work"]) == 8, timeout=30)
    assert 2 <= rec.peak <= 3
    assert sorted(m.get_body().decode() for m in rec.calls["work"]) == [f"m{i}" for i in range(8)]


def test_lock_is_renewed_while_a_slow_function_runs(azurite, specs, rec, invoker, stop, unique):
    service, client = _queue(azurite, f"q-{unique}")
    rec.sleep = 3.5
    client.send_message("slow")
    _runner(specs["work"], service, f"q-{unique}", invoker, stop, lock=2)
    wait_for(lambda: client.get_queue_properties().approximate_message_count == 0, timeout=20)
    assert len(rec.calls["work"]) == 1  # never redelivered although it ran longer than the lock


def test_a_queue_that_does_not_exist_yet_is_polled_as_empty(azurite, specs, rec, invoker, stop, unique):
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    runner = _runner(specs["work"], service, f"late-{unique}", invoker, stop)
    time.sleep(0.5)
    client = service.get_queue_client(f"late-{unique}", message_encode_policy=TextBase64EncodePolicy())
    client.create_queue()
    client.send_message("finally")
    runner.wake()
    [msg] = wait_for(lambda: rec.calls["work"])
    assert msg.get_body() == b"finally"


# ------------------------------------------------------------------------------------------- lake watcher


class LakeFixture:
    def __init__(self, azurite, specs, invoker, stop, unique, **kwargs: Any) -> None:
        from azure.storage.blob import BlobServiceClient

        self.name = f"lake{unique}"
        self.container = BlobServiceClient.from_connection_string(azurite.connection_string) \
            .get_container_client(self.name)
        self.container.create_container()
        trigger = dict(specs["on_blob"].trigger, path=f"{self.name}/{{name}}")
        self.scheduler = Scheduler()
        self.poisoned: list[dict] = []
        self.watcher = LakeWatcher(self.container, self.name, [BlobTarget.from_binding(specs["on_blob"], trigger)],
                                   [EventTarget(specs["on_event"], "event")], invoker, self.scheduler, stop,
                                   queues=FAST, poison=self.poisoned.append, **kwargs)
        self.invoker = invoker

    def commit(self, table: str, version: int, body: bytes = b'{"commitInfo":{}}') -> str:
        name = f"{table}/_delta_log/{version:020d}.json"
        self.container.upload_blob(name, body, overwrite=True)
        return name

    def cycle(self) -> None:
        self.watcher.rescan()
        self.watcher.poll()
        assert self.invoker.wait_idle(10)


def test_watcher_delivers_a_new_commit_to_the_blob_trigger_only(azurite, specs, rec, invoker, stop, unique):
    lake = LakeFixture(azurite, specs, invoker, stop, unique)
    lake.commit("sales/orders", 0)
    lake.container.upload_blob("sales/orders/part-0.parquet", b"PAR1")
    assert lake.watcher.rescan(initial=True) == ["sales/orders"]
    lake.cycle()
    assert not rec.calls["on_blob"] and not rec.calls["on_event"]  # existing at start: no event, as in Azure

    name = lake.commit("sales/orders", 1, b'{"add":{}}')
    lake.container.upload_blob("sales/orders/part-1.parquet", b"PAR1")
    lake.container.upload_blob("sales/orders/_delta_log/00000000000000000001.crc", b"{}")
    lake.cycle()
    lake.cycle()
    [blob] = rec.calls["on_blob"]
    assert blob.name == f"{lake.name}/{name}" and blob.read() == b'{"add":{}}' and blob.length == 10
    assert blob.uri.endswith(f"/{lake.name}/{name}")
    assert not rec.calls["on_event"]  # BlobCreated has one consumer: the blob trigger


def test_blob_created_goes_to_the_event_grid_trigger_when_no_blob_trigger_takes_it(azurite, specs, rec, invoker,
                                                                                   stop, unique):
    lake = LakeFixture(azurite, specs, invoker, stop, unique)
    lake.watcher.blob_targets = []
    lake.watcher.rescan(initial=True)
    name = lake.commit("sales/orders", 0, b'{"add":{}}')
    lake.cycle()
    [event] = rec.calls["on_event"]
    assert event.event_type == "Microsoft.Storage.BlobCreated"
    assert event.subject == f"/blobServices/default/containers/{lake.name}/blobs/{name}"
    data = event.get_json()
    etag = lake.container.get_blob_client(name).get_blob_properties().etag
    assert data["url"].endswith(f"/{lake.name}/{name}") and data["blobType"] == "BlockBlob"
    assert data["eTag"] == etag and data["contentLength"] == 10


def test_watcher_crosses_decades_and_never_delivers_a_blob_twice(azurite, specs, rec, invoker, stop, unique):
    lake = LakeFixture(azurite, specs, invoker, stop, unique)
    lake.commit("t", 0)
    lake.watcher.rescan(initial=True)
    lake.commit("t", 1)
    lake.watcher.rescan()  # found by the container scan: the table is hot from now on
    for version in range(2, 23):
        lake.commit("t", version)
    lake.container.upload_blob("t/_delta_log/00000000000000000010.checkpoint.parquet", b"PAR1")
    lake.container.upload_blob("t/_delta_log/_last_checkpoint", b"{}")
    assert lake.watcher.poll() == 21  # the hot table's probes cross the decades
    assert lake.watcher.poll() == 0
    lake.cycle()
    assert invoker.wait_idle(10)
    names = sorted(b.name for b in rec.calls["on_blob"])
    assert names == [f"{lake.name}/t/_delta_log/{v:020d}.json" for v in range(1, 23)]
    assert not rec.calls["on_event"]
    assert lake.watcher.tables["t"].frontier == 22


def test_tables_created_after_start_are_delivered_from_their_first_commit(azurite, specs, rec, invoker, stop,
                                                                           unique):
    lake = LakeFixture(azurite, specs, invoker, stop, unique)
    assert lake.watcher.rescan(initial=True) == []
    lake.commit("gold/new_table", 0)
    lake.commit("gold/new_table", 1)
    assert lake.watcher.rescan() == ["gold/new_table"]
    assert invoker.wait_idle(10)
    assert sorted(b.name.rsplit("/", 1)[1] for b in rec.calls["on_blob"]) == [f"{v:020d}.json" for v in (0, 1)]


def test_replay_existing_delivers_what_was_there_at_start(azurite, specs, rec, invoker, stop, unique):
    lake = LakeFixture(azurite, specs, invoker, stop, unique, replay_existing=True)
    lake.commit("t", 0)
    lake.watcher.rescan(initial=True)
    assert invoker.wait_idle(10)
    assert len(rec.calls["on_blob"]) == 1 and not rec.calls["on_event"]


def test_failing_blob_trigger_is_retried_then_poisoned(azurite, specs, rec, invoker, stop, unique):
    lake = LakeFixture(azurite, specs, invoker, stop, unique)
    lake.watcher.rescan(initial=True)
    rec.fail.add("on_blob")
    lake.commit("t", 0)
    lake.watcher.rescan()
    wait_for(lambda: len(rec.calls["on_blob"]) == 3 and lake.poisoned)
    name = "t/_delta_log/00000000000000000000.json"
    assert lake.poisoned == [{"FunctionId": "Host.Functions.on_blob", "BlobType": "BlockBlob",
                              "ContainerName": lake.name, "BlobName": name,
                              "ETag": lake.container.get_blob_client(name).get_blob_properties().etag}]
    assert not rec.calls["on_event"]
    lake.scheduler.stop()


def test_subscription_filter_matches_the_infra_filters():
    assert wanted("a/_delta_log/00000000000000000001.json")
    assert wanted("a/b/_delta_log/_commits/00000000000000000001.uuid.json")
    assert not wanted("a/_delta_log/00000000000000000001.checkpoint.parquet")
    assert not wanted("a/_delta_log/.00000000000000000001.json.tmp")
    assert not wanted("a/part-0.json")


# ------------------------------------------------------------------------------------------- timers


class MemoryMonitor:
    def __init__(self, status: dict[str, str] | None = None) -> None:
        self.status = status
        self.saved: list[dict[str, str]] = []

    def load(self, function: str) -> dict[str, str] | None:
        return self.status

    def save(self, function: str, status: dict[str, str]) -> None:
        self.saved.append(dict(status))


def test_timer_fires_on_its_schedule_with_a_timer_request(specs, rec, invoker, stop):
    trigger = dict(specs["tick"].trigger, schedule="* * * * * *")
    runner = TimerRunner(specs["tick"], trigger, invoker, stop)
    runner.start()
    wait_for(lambda: len(rec.calls["tick"]) >= 2, timeout=10)
    first = rec.calls["tick"][0]
    assert first.past_due is False
    assert set(first.schedule_status) == {"Last", "Next", "LastUpdated"} and first.schedule == {"AdjustForDST": False}


def test_run_now_fires_at_start_and_a_missed_occurrence_fires_past_due(specs, rec, invoker, stop):
    hourly = dict(specs["tick"].trigger, schedule="0 0 * * * *", useMonitor=True)
    TimerRunner(specs["tick"], hourly, invoker, stop, run_now=True).start()
    wait_for(lambda: len(rec.calls["tick"]) == 1)
    assert rec.calls["tick"][0].past_due is False

    missed = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    monitor = MemoryMonitor({"Last": missed, "Next": missed, "LastUpdated": missed})
    TimerRunner(specs["tick"], hourly, invoker, stop, monitor=monitor).start()
    wait_for(lambda: len(rec.calls["tick"]) == 2)
    assert rec.calls["tick"][1].past_due is True
    assert monitor.saved and monitor.saved[-1]["Next"] > monitor.saved[-1]["Last"]


def test_an_occurrence_is_skipped_while_the_previous_run_still_runs(specs, rec, invoker, stop):
    rec.sleep = 1.0
    runner = TimerRunner(specs["tick"], dict(specs["tick"].trigger, schedule="0 0 * * * *"), invoker, stop)
    now = datetime.now(UTC)
    assert runner.fire(now) is True
    assert runner.fire(now) is False
    assert invoker.wait_idle(5)
    assert runner.fire(now) is True


def test_schedule_monitor_keeps_status_in_host_storage(azurite, unique):
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(f"h{unique}")
    monitor = BlobScheduleMonitor(container, "testhost")
    assert monitor.load("tick") is None
    monitor.save("tick", {"Last": "a", "Next": "b", "LastUpdated": "c"})
    assert monitor.load("tick") == {"Last": "a", "Next": "b", "LastUpdated": "c"}
    assert [b.name for b in container.list_blobs()] == ["timers/testhost/Host.Functions.tick/status"]


# ------------------------------------------------------------------------------------------- HTTP


def test_route_templates_compile_like_the_host():
    regex, literals, catch_all = compile_route("refreshes/{job_id}")
    assert regex.match("refreshes/abc").groupdict() == {"job_id": "abc"} and literals == 1 and not catch_all
    assert regex.match("REFRESHES/abc") and not regex.match("refreshes") and not regex.match("refreshes/a/b")
    regex, _, _ = compile_route("items/{id:int}")
    assert regex.match("items/42") and not regex.match("items/x")
    regex, _, _ = compile_route("datasets/{key?}")
    assert regex.match("datasets").groupdict() == {"key": None} and regex.match("datasets/k")["key"] == "k"
    regex, _, catch_all = compile_route("files/{*path}")
    assert regex.match("files/a/b/c")["path"] == "a/b/c" and catch_all
    regex, _, _ = compile_route("report.{ext}")
    assert regex.match("report.csv")["ext"] == "csv"


def _request(url: str, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", **(headers or {})} if method == "POST" else headers or {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def http(specs, invoker):
    routes = [Route.from_binding(specs[n], specs[n].trigger) for n in ("get_item", "items_special", "echo")]
    server = HttpServer(routes, invoker, list(specs.values()), "api", port=0)
    server.start()
    yield server
    server.stop()


def test_http_request_and_response_objects_as_the_host_builds_them(http, rec):
    status, headers, body = _request(f"{http.base_url}/items/7?q=a&q=b", headers={"X-Test": "yes"})
    assert status == 200 and headers["X-Served"] == "local"
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data == {"id": 7, "q": "a,b", "h": "yes", "url": f"{http.root_url}/api/items/7?q=a&q=b"}
    [req] = rec.calls["get_item"]
    assert req.method == "GET" and req.route_params == {"item_id": "7"}


def test_http_routing_precedence_methods_errors_and_bodies(http):
    assert _request(f"{http.base_url}/items/special")[2] == b"special"  # literal beats {item_id:int}
    assert _request(f"{http.base_url}/items/special")[1]["content-type"] == "text/plain; charset=utf-8"
    assert _request(f"{http.base_url}/items/x")[0] == 404       # int constraint
    assert _request(f"{http.base_url}/items/7", "POST", b"")[0] == 404  # method not bound
    status, _, body = _request(f"{http.base_url}/items/500")
    assert (status, body) == (500, b"")  # the function raised: an empty 500, as on the host
    status, headers, body = _request(f"{http.base_url}/echo/a/b", "PUT", b"\x00binary")
    assert (status, headers["X-Rest"], body) == (201, "a/b", b"\x00binary")
    assert _request(f"{http.root_url}/nothing")[0] == 404


def test_admin_manual_run_and_event_grid_webhook(http, rec, invoker):
    status, _, _ = _request(f"{http.root_url}/admin/functions/work", "POST", b'{"input": "by hand"}')
    assert status == 202
    wait_for(lambda: rec.calls["work"])
    assert rec.calls["work"][0].get_body() == b"by hand"
    assert _request(f"{http.root_url}/admin/functions/nope", "POST", b"{}")[0] == 404


def test_event_grid_webhook_delivers_events_and_answers_validation(specs, rec, invoker):
    from refresh.dev.testing import events as ev

    server = HttpServer([], invoker, list(specs.values()), "api", port=0,
                        event_targets=[EventTarget(specs["on_event"], "event")])
    server.start()
    try:
        renamed = ev.blob_renamed("https://lake.blob.core.windows.net", "gold", "t/_delta_log/.00000000000000000003."
                                  "json.tmp", "t/_delta_log/00000000000000000003.json")
        status, _, _ = _request(f"{server.root_url}/runtime/webhooks/EventGrid?functionName=on_event", "POST",
                                json.dumps([renamed]).encode(), {"aeg-event-type": "Notification"})
        assert status == 200
        [event] = rec.calls["on_event"]
        assert event.event_type == "Microsoft.Storage.BlobRenamed" and event.id == renamed["id"]
        validation = [{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                       "data": {"validationCode": "abc"}}]
        status, _, body = _request(f"{server.root_url}/runtime/webhooks/EventGrid?functionName=on_event", "POST",
                                   json.dumps(validation).encode(), {"aeg-event-type": "SubscriptionValidation"})
        assert status == 200 and json.loads(body) == {"validationResponse": "abc"}
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- the host


def test_host_follows_the_bindings_and_disables_what_it_cannot_run(azurite, rec, unique, caplog):
    env = {"AzureWebJobsStorage": azurite.connection_string, "TEST_QUEUE": f"hq-{unique}",
           "TEST_CONTAINER": f"hc{unique}"}
    host = LocalHost(functions_from_app(build_app(rec)), env, load_host_json(ROOT / "host.json"),
                     HostOptions(port=0, lake_poll_seconds=0.1))
    host.build()
    try:
        assert "TEST_SCHEDULE" in host.disabled["tick"]  # '%TEST_SCHEDULE%' does not resolve
        assert "not supported" in host.disabled["unsupported"]
        assert [r.queue_name for r in host.queue_runners] == [f"hq-{unique}"]
        assert list(host.watchers) == [("AzureWebJobsStorage", f"hc{unique}")]
        host.start()
        assert any("items/{item_id:int}" in line for line in host.descriptions)
        _, client = _queue(azurite, f"hq-{unique}")
        client.send_message("via host")
        wait_for(lambda: rec.calls["work"])
        status, _, _ = _request(f"{host.http_url}/items/3")
        assert status == 200
    finally:
        host.stop()


def test_a_function_that_raises_is_reported_and_the_runtime_goes_on(specs, rec, invoker, caplog):
    rec.fail.add("tick")
    import azure.functions.timer as ft

    outcome = invoker.call(specs["tick"], {"timer": ft.TimerRequest(past_due=False)}, "timer (test)")
    assert not outcome.ok and isinstance(outcome.error, RuntimeError)
    assert any("failed after" in r.getMessage() and r.exc_info for r in caplog.records)
    rec.fail.clear()
    assert invoker.call(specs["tick"], {"timer": ft.TimerRequest(past_due=False)}, "timer (test)").ok


# ------------------------------------------------------------------------------------------- the CLI


def test_cli_refuses_to_start_with_a_message_naming_the_problem(tmp_path):
    import subprocess
    import sys

    settings = tmp_path / "local.settings.json"
    settings.write_text('{"IsEncrypted": true, "Values": {}}')
    done = subprocess.run([sys.executable, "-m", "refresh", "local", "--settings", str(settings), "--port", "0",
                           "--state-file", str(tmp_path / "state.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "cannot start" in done.stdout and "IsEncrypted is true" in done.stdout
    assert not (tmp_path / "state.json").exists()


def test_a_killed_runtimes_azurite_is_stopped_at_the_next_start(tmp_path, monkeypatch):
    import os
    import subprocess

    from refresh.dev.local.cli import _reap_stale
    from refresh.dev.testing.azurite import Azurite

    dead_owner = 2**22 + 12345
    state = tmp_path / "runtime.json"
    other = subprocess.Popen(["sleep", "30"])  # a pid that is not an Azurite: never touched
    state.write_text(json.dumps({"pid": dead_owner, "azurite": {"pid": other.pid}}))
    _reap_stale(state)
    assert other.poll() is None
    other.kill()
    other.wait()

    if "AZURITE_BLOB_STORAGE_URL" in os.environ:  # Azurite.start() points it at the new one: undone at teardown
        monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", os.environ["AZURITE_BLOB_STORAGE_URL"])
    else:
        monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", "")
        monkeypatch.delenv("AZURITE_BLOB_STORAGE_URL")
    orphan = Azurite().start()
    try:
        state.write_text(json.dumps({"pid": dead_owner, "azurite": {"pid": orphan.process.pid}}))
        _reap_stale(state)
        orphan.process.wait(timeout=10)
    finally:
        orphan.stop()
