"""Debounce under a backlog of commit events (issue 13): a pass reads every commit the log holds, so in a
burst it reads ahead of the events still queued for those commits. The burst is not over until they stop:
a late event for a commit already read keeps the job it went into from falling due (one refresh per burst,
not one mid-backlog and another after it).

Real parts: Azurite, deltalake-style commit files, the app's detector and dataset states; the hints are
what the blob trigger passes on (``Detector.process(table, version)``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from refresh.core.clock import FakeClock, parse_iso
from refresh.detection.deltalog import commit_file_name
from refresh.dev.testing.harness import make_app
from refresh.jobs.pending import Change, pending_of

CONFIG = {"datasets": {
    "d": {"workspace": "W", "dataset": "M", "sources": [{"table": "t/a"}, {"table": "t/b"}],
          "debounce_seconds": 10, "max_delay_seconds": 30},
    "now": {"workspace": "W", "dataset": "N", "sources": [{"table": "t/a"}],
            "debounce_seconds": 0, "max_delay_seconds": 0},
}}


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@pytest.fixture
def app(azurite, unique):
    app = make_app(azurite.connection_string, CONFIG, token=unique, clock=FakeClock(_now()))
    an_hour_ago = int(app.clock.now().timestamp() * 1000) - 3_600_000
    for table in ("t/a", "t/b"):
        put(app, table, 0, an_hour_ago)  # committed before the app watched: history, never a job
        app.detector.process(table)  # first sight: starts after version 0
    return app


def put(app, table: str, version: int, timestamp_ms: int | None = None) -> None:
    stamp = b',"timestamp":%d' % timestamp_ms if timestamp_ms is not None else b""
    body = b'{"commitInfo":{"operation":"WRITE"%s}}\n{"add":{"path":"p%d","partitionValues":{},"size":1,' \
           b'"modificationTime":1,"dataChange":true}}' % (stamp, version)
    app.lake.upload_blob(f"{table}/_delta_log/{commit_file_name(version)}", body, overwrite=True)


def due_in(app, dataset: str) -> float:
    return (parse_iso(pending_of(app.states.get(dataset)).due_at) - app.clock.now()).total_seconds()


def burst_read_ahead(app) -> None:
    """Versions 1-4 of t/a landed; the event of version 1 came first and its pass read all four."""
    for v in range(1, 5):
        put(app, "t/a", v)
    assert [c.version for c in app.detector.process("t/a", 1).commits] == [1, 2, 3, 4]
    assert due_in(app, "d") == 10


def test_late_events_of_commits_read_ahead_keep_the_job_from_falling_due(app):
    burst_read_ahead(app)
    job_id = pending_of(app.states.get("d")).job_id
    app.clock.advance(6)  # 4 s left
    app.detector.process("t/a", 2)  # its event arrives only now: the backlog is still being worked through
    assert due_in(app, "d") == 10
    app.clock.advance(6)
    app.detector.process("t/a", 4)
    assert due_in(app, "d") == 10
    assert pending_of(app.states.get("d")).job_id == job_id  # one job for the whole burst


def test_a_late_event_with_most_of_the_debounce_left_costs_nothing(app):
    burst_read_ahead(app)
    app.clock.advance(1)
    store = app.states
    calls = []
    original = store.postpone
    store.postpone = lambda *a, **k: calls.append(a) or original(*a, **k)
    app.detector.process("t/a", 2)
    assert calls == [] and due_in(app, "d") == 9


def test_late_events_never_push_a_job_past_its_max_delay(app):
    burst_read_ahead(app)
    for version in (2, 3, 4, 2, 3, 4):
        app.clock.advance(6)
        app.detector.process("t/a", version)
    job = pending_of(app.states.get("d"))
    assert (parse_iso(job.due_at) - parse_iso(job.created_at)).total_seconds() == 30


def test_late_events_never_delay_an_explicit_request_or_a_zero_debounce(app):
    burst_read_ahead(app)
    assert due_in(app, "now") == 0
    app.states.record("d", Change(trigger="manual", debounce_seconds=0, max_delay_seconds=0, model_tables=None,
                                  requested_by="someone"))
    assert due_in(app, "d") == 0  # the manual request made it due now
    app.clock.advance(1)
    app.detector.process("t/a", 3)
    assert due_in(app, "d") == -1 and due_in(app, "now") == -1


def test_a_late_event_after_the_job_started_makes_no_job(app):
    burst_read_ahead(app)
    app.clock.advance(11)

    def take(data):  # what the worker's claim does to the pending job
        from refresh.core import storage as tables
        tables.put_json(data, "pending", None)
        return True

    app.states.update("d", take)
    app.detector.process("t/a", 3)
    assert pending_of(app.states.get("d")) is None


def test_passes_over_different_tables_each_keep_their_whole_read_window(app):
    """A burst over many tables has several passes running at once (the blob trigger runs 4 at a time): each
    keeps its ``read_concurrency`` reads in flight instead of sharing one window between them all."""
    import itertools
    import threading

    from refresh.detection.deltalog import BlobLogReader

    window = app.detector.read_concurrency
    both = threading.Barrier(2 * window)  # only passes when both passes have their whole window in flight
    order = itertools.count()

    class Gated(BlobLogReader):
        def open_commit(self, version: int):
            if threading.current_thread().name.startswith("commit-read") and next(order) < 2 * window:
                both.wait(timeout=10)
            return super().open_commit(version)

    lake = app.lake
    app.detector.reader_for = lambda table: Gated(lake, table)
    for table in ("t/a", "t/b"):
        for v in range(1, window + 3):
            put(app, table, v)
    results: dict[str, object] = {}

    def run(table: str) -> None:
        try:
            results[table] = app.detector.process(table, 1)
        except Exception as exc:  # a broken barrier: the two windows were never in flight together
            results[table] = exc

    threads = [threading.Thread(target=run, args=(t,)) for t in ("t/a", "t/b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [len(getattr(results[t], "commits", [])) for t in ("t/a", "t/b")] == [window + 2, window + 2], results


def test_a_late_event_leaves_an_unreadable_pending_record_alone(app):
    burst_read_ahead(app)
    app.clock.advance(6)

    def corrupt(data):  # the stored JSON text of the pending job (kept in chunks) is broken
        data["pending_n"], data["pending_0"] = 1, "{not json"
        return True

    app.states.update("d", corrupt)
    result = app.detector.process("t/a", 2)  # must not fail the trigger (it would be retried for nothing)
    assert result.error is None and not result.commits
    assert app.states.get("d")["pending_0"] == "{not json"
