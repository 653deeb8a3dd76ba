"""Glob sources: the expansion is remembered between sweeps, walked in parallel, tables not re-listed."""

from __future__ import annotations

import json

import pytest

from refresh.detection.deltalog import commit_file_name
from refresh.detection.globs import PK_GLOB, expansion_of
from refresh.detection.sweep import sweep
from refresh.dev.testing.harness import make_app
from tests.storage_counter import Requests

CONFIG = {"datasets": {"gold": {"workspace": "W", "dataset": "Gold", "sources": [{"table": "gold/**"}]}}}
COMMIT = "\n".join(json.dumps(x) for x in (
    {"commitInfo": {"timestamp": 1, "operation": "CREATE TABLE"}},
    {"add": {"path": "a.parquet", "partitionValues": {}, "size": 1, "modificationTime": 1, "dataChange": True}},
)).encode()


@pytest.fixture
def world(azurite, unique):
    counter = Requests()
    app = make_app(azurite.connection_string, CONFIG, token=unique, client_kwargs=counter.kwargs())
    _ = app.states, app.watermarks, app.queue
    return app, counter


def make_table(app, table: str, data_files: int = 2) -> None:
    app.lake.upload_blob(f"{table}/_delta_log/{commit_file_name(0)}", COMMIT)
    for i in range(data_files):  # data files and a partition folder, which the walk must not list
        app.lake.upload_blob(f"{table}/part-{i:05d}.parquet", b"x")
        app.lake.upload_blob(f"{table}/day=2026-01-0{i % 9 + 1}/part-{i:05d}.parquet", b"x")


def run(app):
    return sweep(app.detector, app.watermarks, app.lake, app.states, 8)


def names(n: int) -> list[str]:
    return [f"gold/d{a}/s{b}/t{c}" for a in range(n) for b in range(n) for c in range(n)]


def test_a_second_sweep_lists_only_folders_that_are_not_tables(world):
    app, counter = world
    tables = names(3)  # 27 tables under 1 + 3 + 9 folders
    for t in tables:
        make_table(app, t)
    app.lake.upload_blob("gold/d0/readme.txt", b"not a table")
    first = run(app)
    assert first.tables == 27 and not first.errors
    stored = [e for e in app.state_table.query_entities(f"PartitionKey eq '{PK_GLOB}'")]
    assert len(stored) == 1 and expansion_of(stored[0]).tables == set(tables)

    counter.reset()
    second = run(app)

    assert second.tables == 27 and second.new_commits == 0 and not second.errors
    listed = counter.listings()
    assert sorted(listed) == sorted(["gold/"] + [f"gold/d{a}/" for a in range(3)]
                                    + [f"gold/d{a}/s{b}/" for a in range(3) for b in range(3)])
    assert len(counter.log) <= 27 + 13 + 1   # a probe per table, a listing per folder, one query
    assert not [m for m, _, p, _ in counter.log if m in ("PUT", "POST", "MERGE") and PK_GLOB in p]


def test_new_and_removed_tables_are_picked_up_incrementally(world):
    app, counter = world
    for t in names(2):
        make_table(app, t)
    run(app)
    make_table(app, "gold/d1/s0/new_table")
    make_table(app, "gold/d2/s0/t0")  # a new folder tree
    for blob in app.lake.list_blobs(name_starts_with="gold/d0/s1/t1/"):
        app.lake.delete_blob(blob.name)

    counter.reset()
    result = run(app)

    expected = (set(names(2)) - {"gold/d0/s1/t1"}) | {"gold/d1/s0/new_table", "gold/d2/s0/t0"}
    assert result.tables == len(expected)
    stored = expansion_of(next(iter(app.state_table.query_entities(f"PartitionKey eq '{PK_GLOB}'"))))
    assert stored.tables == expected
    # the two new tables were listed once each (to learn they are tables); known ones were not
    tables_listed = [p for p in counter.listings() if p.count("/") == 4]
    assert sorted(tables_listed) == ["gold/d1/s0/new_table/", "gold/d2/s0/t0/"]


def test_a_table_listing_stops_at_its_delta_log(world):
    app, counter = world
    make_table(app, "gold/big", data_files=0)
    for i in range(12):
        app.lake.upload_blob(f"gold/big/part-{i:05d}.parquet", b"x")
    # the walker's page size is the SDK's; a page of 5 makes "stops at the first page" observable
    from refresh.detection.globs import GlobWalker

    class Paged:
        def __init__(self, container):
            self.container = container

        def walk_blobs(self, **kw):
            return self.container.walk_blobs(results_per_page=5, **kw)

    counter.reset()
    assert GlobWalker(Paged(app.lake)).expand("gold/**") == ["gold/big"]
    assert counter.listings() == ["gold/", "gold/big/"]   # one page each, not 3 for the table


def test_walk_runs_in_parallel(world):
    app, counter = world
    for t in names(3):
        make_table(app, t, data_files=0)
    from refresh.detection.globs import GlobWalker

    counter.reset()
    found = GlobWalker(app.lake, concurrency=8).expand("gold/*/*/t1")
    assert found == sorted(t for t in names(3) if t.endswith("/t1"))
    assert counter.max_in_flight > 1
