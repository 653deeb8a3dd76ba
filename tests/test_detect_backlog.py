"""Debounce under a backlog of commit events (issue 13): a job does not fall due while detection is known
to run behind the lake, so one burst is one refresh even when its events are detected late.

Real parts: Azurite, the app's detector and dataset states. The commit blobs' last-modified times come from
Azurite's clock, which a test cannot move: a reader that reports them as if the commits had landed 10 s
apart stands for a burst written over a longer time (everything else it does is the real BlobLogReader).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from refresh.core.clock import FakeClock, parse_iso
from refresh.detection.deltalog import BlobLogReader, commit_file_name
from refresh.dev.testing.harness import make_app
from refresh.jobs.pending import Change, pending_of

CONFIG = {"datasets": {
    "d": {"workspace": "W", "dataset": "M", "sources": [{"table": "t/a"}, {"table": "t/b"}],
          "debounce_seconds": 10, "max_delay_seconds": 600},
    "now": {"workspace": "W", "dataset": "N", "sources": [{"table": "t/a"}],
            "debounce_seconds": 0, "max_delay_seconds": 0},
}}
LANDED = datetime(2026, 11, 21, 11, 0, tzinfo=UTC)


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class SpreadReader(BlobLogReader):
    """The real reader, reporting commit ``v`` as landed at ``LANDED + 10 s * v``."""

    def open_commit(self, version: int):
        lines = super().open_commit(version)
        if lines is not None:
            self.modified[version] = LANDED + timedelta(seconds=10 * version)
        return lines


@pytest.fixture
def app(azurite, unique):
    app = make_app(azurite.connection_string, CONFIG, token=unique, clock=FakeClock(_now()))
    lake = app.lake
    app.detector.reader_for = lambda table: SpreadReader(lake, table)
    for table in ("t/a", "t/b"):
        put(app, table, 0)
        app.detector.process(table)  # first sight: starts after version 0
    return app


def put(app, table: str, version: int) -> None:
    body = b'{"commitInfo":{"operation":"WRITE"}}\n{"add":{"path":"p%d","partitionValues":{},"size":1,' \
           b'"modificationTime":1,"dataChange":true}}' % version
    app.lake.upload_blob(f"{table}/_delta_log/{commit_file_name(version)}", body, overwrite=True)


def due_in(app, dataset: str) -> float:
    return (parse_iso(pending_of(app.states.get(dataset)).due_at) - app.clock.now()).total_seconds()


def test_a_late_event_that_finds_a_run_of_commits_waits_out_the_lag(app):
    """The event for version 1 is handled after versions 2-4 landed (30 s of commits by the lake's clock):
    events run at least 30 s behind, so the job waits 30 s, not the 10 s debounce."""
    for v in range(1, 5):
        put(app, "t/a", v)
    result = app.detector.process("t/a", 1)
    assert [c.version for c in result.commits] == [1, 2, 3, 4]
    assert due_in(app, "d") == 30
    assert due_in(app, "now") == 0  # a debounce of 0 refreshes every change, backlog or not


def test_a_prompt_event_for_one_commit_keeps_the_debounce(app):
    put(app, "t/a", 1)
    app.detector.process("t/a", 1)
    assert due_in(app, "d") == 10


def test_a_sweep_pass_keeps_the_debounce(app):
    """A sweep looks at every table itself: nothing of it is still on its way."""
    for v in range(1, 5):
        put(app, "t/a", v)
    app.detector.process("t/a")
    assert due_in(app, "d") == 10


def test_a_later_prompt_change_does_not_cut_the_backlog_wait_short(app):
    for v in range(1, 5):
        put(app, "t/a", v)
    app.detector.process("t/a", 1)
    app.clock.advance(5)
    put(app, "t/b", 1)
    app.detector.process("t/b", 1)  # one commit, no lag seen: the backlog may still hold t/a's and t/b's events
    assert due_in(app, "d") == 25
    app.clock.advance(20)
    put(app, "t/b", 2)
    app.detector.process("t/b", 2)
    assert due_in(app, "d") == 10  # past the backlog's wait: the debounce again


def test_the_backlog_wait_never_passes_the_max_delay(app):
    states = app.states
    first = Change(trigger="commit", table="t/a", versions=(1,), model_tables=None, debounce_seconds=10,
                   max_delay_seconds=60)
    created = states.record("d", first)
    app.clock.advance(40)
    later = Change(trigger="commit", table="t/b", versions=(1,), model_tables=None, debounce_seconds=10,
                   max_delay_seconds=60, detection_lag_seconds=300)
    states.record("d", later)
    job = pending_of(states.get("d"))
    assert job.job_id == created.job_id
    assert (parse_iso(job.due_at) - parse_iso(job.created_at)).total_seconds() == 60
