"""Detection end to end: Delta commits in Azurite -> functions' entry points -> pending jobs + queue."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from refresh.core import storage as tables
from refresh.core.clock import FakeClock
from refresh.core.context import set_app
from refresh.detection.deltalog import commit_file_name
from refresh.dev.testing import events as ev
from refresh.dev.testing.harness import make_app
from refresh.jobs import messages
from refresh.jobs.pending import pending_of

CONFIG = {
    "datasets": {
        "sales": {
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]},
                        {"table": "sales/dim_*"}],
            "debounce_seconds": 60, "max_delay_seconds": 900,
        },
        "ops": {
            "workspace": "Ops", "dataset": "Ops Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders", "Backlog"]},
                        {"table": "ops/**", "model_tables": ["Ops"]}],
            "debounce_seconds": 0, "max_delay_seconds": 0,
        },
    }
}


def _now() -> datetime:
    now = datetime.now(UTC)  # in whole milliseconds, as timestamps are stored
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Lake:
    """One test's lake + app, with helpers to write commits and deliver events."""

    def __init__(self, azurite, registered, token: str) -> None:
        self.azurite = azurite
        self.fn = registered
        # the app's clock starts at the real time: delta-rs stamps commits with the real time, and where a
        # table seen for the first time starts depends on when the app started watching (first_sight.py)
        self.app = make_app(azurite.connection_string, CONFIG, token=token, clock=FakeClock(_now()))
        self.container = self.app.settings.gold_container
        self.base = f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"
        set_app(self.app)

    # writing ------------------------------------------------------------------------------------
    def uri(self, table: str) -> str:
        return f"az://{self.container}/{table}"

    def write(self, table: str, rows: dict, mode: str = "append", **kw) -> int:
        write_deltalake(self.uri(table), pa.table(rows), mode=mode,
                        storage_options=self.azurite.deltalake_options(), **kw)
        self.catch_up()
        return self.dt(table).version()

    def catch_up(self) -> None:
        """The app's clock is not behind the commits just written (time goes on for the app too)."""
        self.app.clock.set(max(self.app.clock.now(), _now() + timedelta(milliseconds=1)))

    def dt(self, table: str) -> DeltaTable:
        return DeltaTable(self.uri(table), storage_options=self.azurite.deltalake_options())

    def put_raw(self, table: str, version: int, lines: list[dict] | bytes) -> None:
        body = lines if isinstance(lines, bytes) else "\n".join(json.dumps(x) for x in lines).encode()
        self.app.lake.upload_blob(f"{table}/_delta_log/{commit_file_name(version)}", body, overwrite=True)

    # delivering ---------------------------------------------------------------------------------
    def blob_trigger(self, table: str, version: int) -> None:
        import azure.functions.blob as fb

        name = f"{self.container}/{table}/_delta_log/{commit_file_name(version)}"
        self.fn["on_delta_commit"](fb.InputStream(data=b"{}", name=name, length=2,
                                                  uri=f"{self.base}/{name}"))

    def event(self, event: dict) -> None:
        self.fn["on_lake_event"](ev.to_function_event(event))

    def created(self, table: str, version: int, api: str = "PutBlob") -> None:
        self.event(ev.blob_created(self.base, self.container, f"{table}/_delta_log/{commit_file_name(version)}",
                                   api=api))

    def sweep(self) -> None:
        import azure.functions.timer as ft

        self.fn["sweep_delta_logs"](ft.TimerRequest(past_due=False))

    # reading ------------------------------------------------------------------------------------
    def pending(self, dataset: str):
        return pending_of(self.app.states.get(dataset))

    def queued(self) -> int:
        return self.app.queue.get_queue_properties().approximate_message_count

    def visible_messages(self) -> list[messages.JobMessage]:
        return [messages.decode(m.content) for m in self.app.queue.receive_messages(max_messages=32)]

    def watermark(self, table: str):
        return self.app.watermarks.get(table)


@pytest.fixture
def lake(azurite, registered, unique):
    yield Lake(azurite, registered, unique)
    set_app(None)


def add_line(path: str, data_change: bool = True, pv: dict | None = None) -> dict:
    return {"add": {"path": path, "partitionValues": pv or {}, "size": 10, "modificationTime": 1,
                    "dataChange": data_change}}


def info(op: str = "WRITE") -> dict:
    return {"commitInfo": {"timestamp": 1_700_000_000_000, "operation": op}}


def test_delta_rs_append_creates_one_job_per_listening_dataset(lake):
    assert lake.write("sales/fact_orders", {"id": [1], "amount": [10.0]}) == 0
    lake.sweep()  # first sight: starts at the latest version, no replay of history
    assert lake.pending("sales") is None and lake.pending("ops") is None
    v = lake.write("sales/fact_orders", {"id": [2], "amount": [20.0]})
    lake.blob_trigger("sales/fact_orders", v)

    sales, ops = lake.pending("sales"), lake.pending("ops")
    assert sales.model_tables == ["Orders"] and not sales.whole_model
    assert ops.model_tables == ["Backlog", "Orders"]
    assert sales.sources["sales/fact_orders"].first_version == v == sales.sources["sales/fact_orders"].last_version
    assert sales.trigger == "commit"
    assert lake.queued() == 2
    # ops has no debounce: its message is visible now; sales waits 60 s
    visible = lake.visible_messages()
    assert [(m.type, m.dataset, m.job_id) for m in visible] == [("job", "ops", ops.job_id)]
    assert lake.watermark("sales/fact_orders").version == v


def test_first_sight_through_an_event_processes_the_announced_commit(lake):
    for i in range(3):
        lake.write("sales/fact_orders", {"id": [i], "amount": [1.0]})
    lake.created("sales/fact_orders", 2)
    job = lake.pending("sales")
    assert job is not None and job.sources["sales/fact_orders"].first_version == 2
    assert job.sources["sales/fact_orders"].commits == 1


def test_optimize_vacuum_and_properties_do_not_refresh(lake):
    for i in range(4):
        lake.write("sales/fact_orders", {"id": [i], "amount": [1.0]})
    lake.sweep()
    start = lake.watermark("sales/fact_orders").version
    dt = lake.dt("sales/fact_orders")
    dt.optimize.compact()
    dt = lake.dt("sales/fact_orders")
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    dt = lake.dt("sales/fact_orders")
    dt.alter.set_table_properties({"delta.logRetentionDuration": "interval 30 days"})
    dt.create_checkpoint()
    end = lake.dt("sales/fact_orders").version()
    assert end >= start + 3
    for v in range(start + 1, end + 1):
        lake.blob_trigger("sales/fact_orders", v)
    assert lake.pending("sales") is None and lake.queued() == 0
    assert lake.watermark("sales/fact_orders").version == end


def test_merge_delete_and_overwrite_refresh(lake):
    lake.write("sales/dim_customer", {"id": [1, 2], "name": ["a", "b"]})
    lake.sweep()
    dt = lake.dt("sales/dim_customer")
    (dt.merge(pa.table({"id": [2, 3], "name": ["B", "c"]}), "s.id = t.id", source_alias="s", target_alias="t")
       .when_matched_update_all().when_not_matched_insert_all().execute())
    lake.dt("sales/dim_customer").delete("id = 1")
    lake.write("sales/dim_customer", {"id": [9], "name": ["z"]}, mode="overwrite")
    lake.sweep()
    job = lake.pending("sales")
    assert job.whole_model  # dim_* names no model tables
    assert job.sources["sales/dim_customer"].commits == 3
    assert lake.pending("ops") is None  # ops does not listen to dimensions


def test_events_for_non_commits_are_ignored(lake):
    lake.write("sales/fact_orders", {"id": [1], "amount": [1.0]})
    lake.sweep()
    names = [
        "sales/fact_orders/_delta_log/00000000000000000001.checkpoint.parquet",
        "sales/fact_orders/_delta_log/_last_checkpoint",
        "sales/fact_orders/_delta_log/.00000000000000000001.json.8a1b.tmp",
        "sales/fact_orders/_delta_log/_commit_5f2e.json.tmp",
        "sales/fact_orders/_delta_log/00000000000000000001.crc",
        "sales/fact_orders/_delta_log/_staged_commits/00000000000000000001.abc.json",
        "sales/fact_orders/part-0001.parquet",
    ]
    for name in names:
        lake.event(ev.blob_created(lake.base, lake.container, name))
    lake.event(ev.blob_created(lake.base, "silver", "sales/fact_orders/_delta_log/00000000000000000001.json"))
    assert lake.pending("sales") is None and lake.queued() == 0


def test_flush_with_close_and_spark_rename_events(lake):
    lake.write("ops/area/backlog", {"id": [1]})
    lake.sweep()
    v1 = lake.write("ops/area/backlog", {"id": [2]})
    lake.created("ops/area/backlog", v1, api="FlushWithClose")
    job = lake.pending("ops")
    assert job.sources["ops/area/backlog"].last_version == v1 and job.model_tables == ["Ops"]
    v2 = lake.write("ops/area/backlog", {"id": [3]})
    tmp = f"ops/area/backlog/_delta_log/.{commit_file_name(v2)}.{uuid.uuid4()}.tmp"
    lake.event(ev.blob_created(lake.base, lake.container, tmp, api="FlushWithClose"))  # the temp file: ignored
    assert lake.pending("ops").sources["ops/area/backlog"].last_version == v1
    lake.event(ev.blob_renamed("https://lake.blob.core.windows.net", lake.container, tmp,
                               f"ops/area/backlog/_delta_log/{commit_file_name(v2)}"))
    assert lake.pending("ops").sources["ops/area/backlog"].last_version == v2


def test_url_encoded_names_in_events(lake):
    table = "ops/my area/back log"
    lake.write(table, {"id": [1]})
    lake.sweep()
    v = lake.write(table, {"id": [2]})
    lake.created(table, v)
    assert lake.pending("ops").sources[table].last_version == v


def test_duplicate_and_reordered_events_give_each_version_once(lake):
    lake.put_raw("sales/fact_orders", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    for v in range(1, 6):
        lake.put_raw("sales/fact_orders", v, [info(), add_line(f"p{v}")])
    for v in (3, 5, 1, 3, 2, 5, 4, 1):
        lake.created("sales/fact_orders", v)
    src = lake.pending("sales").sources["sales/fact_orders"]
    assert (src.first_version, src.last_version, src.commits) == (1, 5, 5)
    assert lake.queued() == 2  # one job message per dataset, however many events


def test_burst_of_1000_commits_yields_one_job_per_dataset(lake):
    lake.put_raw("sales/fact_orders", 0, [info("CREATE TABLE"), add_line("a")])
    lake.put_raw("sales/dim_store", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    for v in range(1, 501):
        lake.put_raw("sales/fact_orders", v, [info(), add_line(f"f{v}")])
        lake.put_raw("sales/dim_store", v, [info(), add_line(f"d{v}")])
    for v in range(1, 501, 7):  # some events arrive, most are lost
        lake.created("sales/fact_orders", v)
    lake.sweep()
    job = lake.pending("sales")
    assert job.sources["sales/fact_orders"].commits == 500
    assert job.sources["sales/dim_store"].commits == 500
    assert job.whole_model
    assert lake.queued() == 2
    assert lake.watermark("sales/dim_store").version == 500


def test_two_sweeps_racing_record_each_commit_once(lake):
    lake.put_raw("ops/a/t1", 0, [info("CREATE TABLE"), add_line("a")])
    lake.put_raw("ops/b/t2", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    for v in range(1, 41):
        lake.put_raw("ops/a/t1", v, [info(), add_line(f"x{v}")])
        lake.put_raw("ops/b/t2", v, [info(), add_line(f"y{v}")])
    barrier = threading.Barrier(4)

    def run():
        barrier.wait()
        lake.sweep()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = lake.pending("ops")
    assert job.sources["ops/a/t1"].commits == 40 and job.sources["ops/b/t2"].commits == 40
    assert lake.queued() == 1


def test_crash_between_recording_and_moving_the_watermark(lake, monkeypatch):
    lake.put_raw("sales/fact_orders", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    for v in (1, 2):
        lake.put_raw("sales/fact_orders", v, [info(), add_line(f"p{v}")])
    real_save = lake.app.watermarks.save

    def crash(mark):
        raise RuntimeError("instance died")

    monkeypatch.setattr(lake.app.watermarks, "save", crash)
    with pytest.raises(RuntimeError):
        lake.created("sales/fact_orders", 2)
    assert lake.pending("sales").sources["sales/fact_orders"].commits == 2
    assert lake.watermark("sales/fact_orders").version == 0
    # the worker takes the job before detection re-runs
    def worker_takes_job(entity: dict) -> bool:
        tables.put_json(entity, "pending", None)
        return True

    lake.app.states.update("sales", worker_takes_job)
    monkeypatch.setattr(lake.app.watermarks, "save", real_save)
    lake.created("sales/fact_orders", 2)  # redelivered event
    assert lake.pending("sales") is None  # nothing doubled
    assert lake.watermark("sales/fact_orders").version == 2
    lake.put_raw("sales/fact_orders", 3, [info(), add_line("p3")])
    lake.created("sales/fact_orders", 3)
    assert lake.pending("sales").sources["sales/fact_orders"].first_version == 3


def test_crash_before_the_queue_message_is_repaired_by_the_sweep(lake, monkeypatch):
    lake.put_raw("sales/fact_orders", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    lake.put_raw("sales/fact_orders", 1, [info(), add_line("b")])
    real_send = messages.send
    monkeypatch.setattr(messages, "send", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("died")))
    with pytest.raises(RuntimeError):
        lake.created("sales/fact_orders", 1)  # routes go in key order: "ops" is recorded, its send dies
    assert lake.queued() == 0
    assert tables.value(lake.app.states.get("ops"), "enqueued") is False
    monkeypatch.setattr(messages, "send", real_send)
    lake.sweep()  # re-reads version 1: "sales" gets its job now; "ops" is too fresh to repair
    assert lake.queued() == 1
    assert lake.pending("ops").sources["sales/fact_orders"].commits == 1
    lake.app.clock.advance(61)
    lake.sweep()
    assert lake.queued() == 2
    assert tables.value(lake.app.states.get("ops"), "enqueued") is True
    lake.sweep()
    assert lake.queued() == 2


def test_malformed_commit_is_recorded_retried_and_others_carry_on(lake):
    for t in ("sales/fact_orders", "sales/dim_store"):
        lake.put_raw(t, 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    lake.put_raw("sales/fact_orders", 1, [info(), add_line("b")])
    lake.put_raw("sales/fact_orders", 2, b'{"commitInfo":{}}\n{"add": {"path": "x", "dataChange": tru')
    lake.put_raw("sales/dim_store", 1, [info(), add_line("c")])
    lake.sweep()
    mark = lake.watermark("sales/fact_orders")
    assert mark.version == 1 and mark.error_version == 2
    assert "sales/fact_orders" in mark.error and "version 2" in mark.error and "line 2" in mark.error
    assert lake.pending("sales").sources["sales/dim_store"].commits == 1
    lake.sweep()  # retried, still broken, not advanced
    assert lake.watermark("sales/fact_orders").version == 1
    lake.put_raw("sales/fact_orders", 2, [info(), add_line("fixed")])
    lake.sweep()
    mark = lake.watermark("sales/fact_orders")
    assert mark.version == 2 and mark.error == ""
    assert lake.pending("sales").sources["sales/fact_orders"].last_version == 2


def test_version_gap_is_skipped_once_and_recorded(lake):
    lake.put_raw("sales/fact_orders", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    lake.put_raw("sales/fact_orders", 9999, [info(), add_line("z")])
    lake.sweep()  # no hint: version 1 is absent, nothing to do, no loop
    assert lake.watermark("sales/fact_orders").version == 0
    lake.created("sales/fact_orders", 9999)
    mark = lake.watermark("sales/fact_orders")
    assert mark.version == 9999 and "1..9998" in mark.gap
    assert lake.pending("sales").sources["sales/fact_orders"].first_version == 9999


def test_debounce_and_max_delay(lake):
    lake.put_raw("sales/fact_orders", 0, [info("CREATE TABLE"), add_line("a")])
    lake.sweep()
    clock = lake.app.clock
    start = clock.now()
    for v in range(1, 18):  # a commit every 50 s, from t=0 to t=800
        lake.put_raw("sales/fact_orders", v, [info(), add_line(f"p{v}")])
        lake.created("sales/fact_orders", v)
        if v == 5:  # t=200: due one debounce (60 s) after the latest commit
            assert (ev_time(lake.pending("sales").due_at) - start).total_seconds() == 260
        clock.advance(50)
    job = lake.pending("sales")
    # latest commit at t=800 would make it t=860; at t=850 another one: capped at 900 after the first
    lake.put_raw("sales/fact_orders", 18, [info(), add_line("p18")])
    lake.created("sales/fact_orders", 18)
    job = lake.pending("sales")
    assert (ev_time(job.due_at) - start).total_seconds() == 900
    assert (ev_time(job.created_at) - start).total_seconds() == 0
    assert job.sources["sales/fact_orders"].commits == 18


def ev_time(text):
    from refresh.core.clock import parse_iso

    return parse_iso(text)


def test_tables_no_dataset_listens_to_are_not_tracked(lake):
    lake.put_raw("finance/other", 0, [info("CREATE TABLE"), add_line("a")])
    lake.created("finance/other", 0)
    assert lake.watermark("finance/other") is None


def test_partitioned_table_with_schema_change_and_checkpoint_in_azurite(lake, caplog):
    import logging

    table = "ops/eu/orders"
    lake.write(table, {"id": [1, 2], "region": ["eu", None]}, partition_by=["region"])
    lake.sweep()
    v1 = lake.write(table, {"id": [3], "region": ["us"], "note": ["new column"]}, partition_by=["region"],
                    schema_mode="merge")
    lake.dt(table).create_checkpoint()
    caplog.set_level(logging.INFO, logger="refresh.detection.detector")
    lake.created(table, v1)
    job = lake.pending("ops")
    assert job.sources[table].last_version == v1 and job.model_tables == ["Ops"]
    detected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("commit detected")]
    assert len(detected) == 1 and "partitions=region=us" in detected[0] and "datasets=ops" in detected[0]


# --------------------------------------------------------------------------------------------------
# first sight comes from the log; a hinted version is only a hint (issue 9, items 9 and 13)


def test_first_sight_event_for_a_version_not_written_yet_loses_no_commit(lake):
    table = "sales/fact_orders"
    assert lake.write(table, {"id": [0], "amount": [1.0]}) == 0
    assert lake.write(table, {"id": [1], "amount": [1.0]}) == 1
    lake.created(table, 5)  # early (or reordered) event: version 5 does not exist yet
    assert lake.watermark(table).version == 1  # the log's newest, not "just before 5"
    assert lake.pending("sales") is None  # nothing announced exists: nothing to refresh yet
    for i in range(2, 6):
        assert lake.write(table, {"id": [i], "amount": [1.0]}) == i
    lake.created(table, 3)  # the event of an earlier version, after the one of version 5
    lake.sweep()
    src = lake.pending("sales").sources[table]
    assert (src.first_version, src.last_version, src.commits) == (2, 5, 4)
    assert lake.watermark(table).version == 5


def test_first_sight_event_for_an_old_version_does_not_replay_history(lake):
    table = "sales/fact_orders"
    for i in range(4):
        lake.write(table, {"id": [i], "amount": [1.0]})
    lake.created(table, 0)  # a late event of the table's first commit
    src = lake.pending("sales").sources[table]
    assert (src.first_version, src.last_version, src.commits) == (3, 3, 1)  # only the newest commit
    assert lake.watermark(table).version == 3


@pytest.mark.parametrize("deliver", ["event", "blob_trigger"])
def test_bogus_version_cannot_silence_an_unseen_table(lake, deliver):
    table = "sales/fact_orders"
    lake.write(table, {"id": [0], "amount": [1.0]})
    if deliver == "event":
        lake.created(table, 2147483647)
    else:
        lake.blob_trigger(table, 2147483647)
    assert lake.watermark(table).version == 0
    assert lake.pending("sales") is None and lake.queued() == 0
    v1 = lake.write(table, {"id": [1], "amount": [1.0]})
    lake.blob_trigger(table, v1)
    assert lake.pending("sales").sources[table].last_version == v1
    v2 = lake.write(table, {"id": [2], "amount": [1.0]})
    lake.sweep()  # the safety net sees it too
    src = lake.pending("sales").sources[table]
    assert (src.first_version, src.last_version, src.commits) == (v1, v2, 2)


def test_bogus_version_for_a_seen_table_is_read_up_to_what_exists(lake):
    table = "sales/fact_orders"
    lake.write(table, {"id": [0], "amount": [1.0]})
    lake.sweep()
    v1 = lake.write(table, {"id": [1], "amount": [1.0]})
    for bogus in (2147483647, 10**20 - 1):
        lake.created(table, bogus)
        mark = lake.watermark(table)
        assert mark.version == v1 and mark.gap == "" and mark.error == ""
    v2 = lake.write(table, {"id": [2], "amount": [1.0]})
    lake.created(table, v2)
    src = lake.pending("sales").sources[table]
    assert (src.first_version, src.last_version, src.commits) == (v1, v2, 2)


def test_lone_surrogates_in_a_commit_are_malformed_and_others_carry_on(lake):
    table, other = "sales/fact_orders", "sales/dim_store"
    lake.write(table, {"id": [0], "region": ["eu"]}, partition_by=["region"])
    lake.write(other, {"id": [0]})
    lake.sweep()
    # version 1: a writer put a JSON "\udc00" escape into a partition value (no delta-rs writer can)
    lake.put_raw(table, 1, [info(), add_line("a", pv={"region": "eu"}), add_line("b", pv={"region": "x\udc00"})])
    lake.write(other, {"id": [1]})
    lake.sweep()
    mark = lake.watermark(table)
    assert (mark.version, mark.error_version) == (0, 1)
    assert mark.error.startswith(f"{table} version 1 line 3: partition value of 'region' is not valid Unicode")
    mark.error.encode("utf-8")  # what is stored is readable
    assert lake.pending("sales").sources == {other: lake.pending("sales").sources[other]}
    lake.put_raw(table, 1, [info(), add_line("a", pv={"region": "eu"})])  # repaired: read again
    lake.sweep()
    assert lake.watermark(table).error == "" and lake.pending("sales").sources[table].last_version == 1


def test_table_path_with_a_lone_surrogate_is_ignored(lake):
    event = ev.blob_created(lake.base, lake.container, "ops/xQy/_delta_log/00000000000000000000.json")
    event["subject"] = event["subject"].replace("xQy", "x\ud800y")  # a "\ud800" escape in the event's JSON
    event["data"]["url"] = event["data"]["url"].replace("xQy", "x\ud800y")
    lake.event(event)  # no exception, nothing stored
    assert lake.app.watermarks.all()[0] == {}
    assert lake.pending("ops") is None


def test_the_sweep_repairs_a_watermark_an_older_version_set_past_the_log(lake):
    good, bad = "sales/dim_store", "sales/fact_orders"
    for table in (good, bad):
        lake.write(table, {"id": [0]})
        lake.write(table, {"id": [1]})
    for table, version in ((good, 1), (bad, 2147483646)):  # as stored before watermarks were checked
        tables.write(lake.app.state_table, {"PartitionKey": "watermark", "RowKey": tables.row_key(table),
                                            "table": table, "version": version, "error": "", "error_version": -1,
                                            "gap": "", "colmap_n": 1, "colmap_0": "{}"}, None)
    lake.sweep()
    mark = lake.watermark(bad)
    assert mark.version == 1 and mark.checked and "2147483646" in mark.gap
    assert lake.pending("sales").sources == {bad: lake.pending("sales").sources[bad]}  # the newest commit
    assert lake.pending("sales").sources[bad].last_version == 1
    assert lake.watermark(good).version == 1 and lake.watermark(good).checked and lake.watermark(good).gap == ""
    v2 = lake.write(bad, {"id": [2]})
    lake.blob_trigger(bad, v2)  # events reach it again
    assert lake.pending("sales").sources[bad].last_version == v2


# batching: a run of new commits is read concurrently, classified in order, written once ------------
def counted_lake(azurite, unique):
    from tests.storage_counter import Requests

    counter = Requests()
    app = make_app(azurite.connection_string, CONFIG, token=unique, client_kwargs=counter.kwargs())
    _ = app.states, app.watermarks, app.queue  # create the table and queue before counting
    return app, counter


def raw(app, table: str, version: int, lines: list[dict]) -> None:
    body = "\n".join(json.dumps(x) for x in lines).encode()
    app.lake.upload_blob(f"{table}/_delta_log/{commit_file_name(version)}", body, overwrite=True)


def test_a_run_of_commits_is_read_concurrently_in_order_and_written_once(azurite, unique):
    app, counter = counted_lake(azurite, unique)
    table = "sales/fact_orders"
    raw(app, table, 0, [info("CREATE TABLE"), add_line("a")])
    assert app.detector.process(table).first_seen
    for v in range(1, 151):  # crosses a listing block (versions 100..199)
        raw(app, table, v, [info(), add_line(f"f{v}")])
    raw(app, table, 120, [info("OPTIMIZE"), add_line("o", data_change=False)])
    counter.reset()

    result = app.detector.process(table, hint_version=3)

    assert [c.version for c in result.commits] == list(range(1, 151))  # in version order
    assert [c.version for c in result.commits if not c.data_change] == [120]
    commit_reads = [p for m, _, p, q in counter.log if m == "GET" and "_delta_log/0" in p]
    assert len(commit_reads) == 150 and len(set(commit_reads)) == 150      # each commit read once
    assert len(counter.listings()) == 2                                    # one per block of 100 versions
    assert counter.max_in_flight > 1                                       # read concurrently
    watermark_writes = [p for m, _, p, _ in counter.log if m in ("PUT", "MERGE", "POST")
                        and "PartitionKey='watermark'" in p]
    assert len(watermark_writes) == 1                                      # once per batch
    for dataset in ("sales", "ops"):                                       # one job write per dataset
        job = pending_of(app.states.get(dataset))
        assert job.sources[table].commits == 149 and job.sources[table].last_version == 150
    state = f"/{app.state_table.account_name}/{app.state_table.table_name}"
    dataset_writes = [p for m, _, p, _ in counter.log
                      if (m == "PUT" and "PartitionKey='dataset'" in p) or (m == "POST" and p == state)]
    # per dataset a constant (the job, its outcome row, "enqueued" once sent), not one per commit
    assert len(dataset_writes) <= 6
    assert app.watermarks.get(table).version == 150


def test_a_hint_for_a_covered_version_costs_one_read(azurite, unique):
    app, counter = counted_lake(azurite, unique)
    table = "sales/fact_orders"
    raw(app, table, 0, [info("CREATE TABLE"), add_line("a")])
    app.detector.process(table)
    for v in range(1, 6):
        raw(app, table, v, [info(), add_line(f"f{v}")])
    app.detector.process(table, hint_version=1)  # reads all five
    counter.reset()
    for v in range(1, 6):  # in the process that handled them: nothing to read
        assert app.detector.process(table, hint_version=v).skipped == f"version {v} already handled"
    assert counter.log == []
    other, counter = counted_lake(azurite, unique)  # another instance: one read (its watermark) each
    counter.reset()
    for v in range(1, 6):
        assert other.detector.process(table, hint_version=v).skipped == f"version {v} already handled"
    watching = [p for _, _, p, _ in counter.log if "RowKey='watching'" in p]
    assert len(watching) == 1  # when the app started watching: read once per process (first_sight.py)
    assert len(counter.log) - len(watching) == 5


def test_a_malformed_commit_inside_a_concurrent_run_stops_the_run_there(azurite, unique):
    app, _ = counted_lake(azurite, unique)
    table = "sales/fact_orders"
    raw(app, table, 0, [info("CREATE TABLE"), add_line("a")])
    app.detector.process(table)
    for v in range(1, 40):
        raw(app, table, v, [info(), add_line(f"f{v}")])
    app.lake.upload_blob(f"{table}/_delta_log/{commit_file_name(17)}", b"{not json", overwrite=True)

    result = app.detector.process(table, hint_version=1)

    assert [c.version for c in result.commits] == list(range(1, 17))
    mark = app.watermarks.get(table)
    assert mark.version == 16 and mark.error_version == 17
    assert pending_of(app.states.get("sales")).sources[table].last_version == 16
    raw(app, table, 17, [info(), add_line("fixed")])
    again = app.detector.process(table)
    assert [c.version for c in again.commits] == list(range(17, 40))
    assert app.watermarks.get(table).error == "" and app.watermarks.get(table).version == 39


def test_concurrent_hints_for_one_table_read_each_commit_once(azurite, unique):
    from concurrent.futures import ThreadPoolExecutor

    app, counter = counted_lake(azurite, unique)
    table = "sales/fact_orders"
    raw(app, table, 0, [info("CREATE TABLE"), add_line("a")])
    app.detector.process(table)
    for v in range(1, 41):
        raw(app, table, v, [info(), add_line(f"f{v}")])
    counter.reset()

    with ThreadPoolExecutor(8) as pool:  # one event per commit, delivered at once (a burst)
        results = list(pool.map(lambda v: app.detector.process(table, hint_version=v), range(1, 41)))

    assert sorted(c.version for r in results for c in r.commits) == list(range(1, 41))
    commit_reads = [p for m, _, p, _ in counter.log if m == "GET" and "_delta_log/0" in p]
    assert len(commit_reads) == 40                       # each commit read once, by one pass
    assert sum(1 for r in results if r.commits) == 1     # the other hints waited and were covered
    job = pending_of(app.states.get("sales"))
    assert job.sources[table].commits == 40 and app.watermarks.get(table).version == 40


def test_a_gap_after_a_run_is_skipped_in_the_same_pass_when_hinted(azurite, unique):
    app, _ = counted_lake(azurite, unique)
    table = "sales/fact_orders"
    raw(app, table, 0, [info("CREATE TABLE"), add_line("a")])
    app.detector.process(table)
    for v in (1, 2, 3, 10, 11, 12):
        raw(app, table, v, [info(), add_line(f"f{v}")])

    result = app.detector.process(table, hint_version=12)

    assert [c.version for c in result.commits] == [1, 2, 3, 10, 11, 12]
    mark = app.watermarks.get(table)
    assert mark.version == 12 and "4..9" in mark.gap


# --------------------------------------------------------------------------------------------------
# first sight of a table created while the app watches (issue 9 item 9; refresh/detection/first_sight.py)


def test_a_table_created_while_the_app_watches_is_refreshed_from_its_first_commit(lake):
    lake.sweep()  # the first detection: the app watches from now on
    table = "ops/new/t1"
    appends = [lake.write(table, {"id": [i]}) for i in range(2)]
    lake.dt(table).optimize.compact()  # version 2: no data change
    lake.catch_up()
    for version in (2, *reversed(appends)):  # its events newest first
        lake.created(table, version)
    src = lake.pending("ops").sources[table]
    assert (src.first_version, src.last_version, src.commits) == (0, 1, 2)
    assert lake.watermark(table).version == 2 and lake.watermark(table).gap == ""


def test_first_sight_through_an_event_for_a_version_not_written_yet_reads_the_new_commits(lake):
    lake.sweep()
    table = "ops/new/t2"
    written = [lake.write(table, {"id": [i]}) for i in range(2)]
    lake.created(table, written[-1] + 2)  # early (or forged) event: that version does not exist
    src = lake.pending("ops").sources[table]
    assert (src.first_version, src.last_version, src.commits) == (0, 1, 2)
    assert lake.watermark(table).version == 1  # never past the newest version that exists


def test_the_sweep_sees_the_first_commits_of_a_new_table_too(lake):
    lake.sweep()
    table = "sales/dim_new"
    lake.write(table, {"id": [0]})
    lake.sweep()
    assert lake.pending("sales").sources[table].commits == 1
    assert lake.watermark(table).version == 0


def test_a_table_older_than_the_app_starts_at_its_newest_commit_while_a_newer_one_starts_at_its_first(lake):
    old, new = "ops/old/t", "ops/new/t"
    lake.write(old, {"id": [0]})
    lake.write(old, {"id": [1]})
    lake.sweep()  # the app starts watching after the old table's commits
    lake.write(new, {"id": [0]})
    lake.sweep()
    assert lake.watermark(old).version == 1 and old not in lake.pending("ops").sources
    assert lake.pending("ops").sources[new].first_version == 0


def test_a_sweep_that_finds_no_table_yet_still_starts_the_watch(azurite, unique):
    from refresh.detection.sweep import sweep

    config = {"datasets": {"g": {"workspace": "W", "dataset": "M", "sources": [{"table": "new/**"}]}}}
    app = make_app(azurite.connection_string, config, token=unique, clock=FakeClock(_now()))
    assert sweep(app.detector, app.watermarks, app.lake, app.states).tables == 0
    write_deltalake(f"az://{app.settings.gold_container}/new/t", pa.table({"id": [0]}),
                    storage_options=azurite.deltalake_options())
    app.clock.set(_now() + timedelta(seconds=1))  # time goes on for the app too
    sweep(app.detector, app.watermarks, app.lake, app.states)  # the table's first commit came after the watch began
    assert pending_of(app.states.get("g")).sources["new/t"].commits == 1
