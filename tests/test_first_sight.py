"""refresh/detection/first_sight.py: where a table seen for the first time starts (issue 9 item 9).

Local logs in a temporary folder for the rule; Azurite for the "watching since" marker and for the
Blob reader's last-modified fallback.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refresh.core import storage as tables
from refresh.core.clock import FakeClock
from refresh.detection import first_sight
from refresh.detection.deltafiles import commit_file_name
from refresh.detection.deltalog import BlobLogReader, LocalLogReader

SINCE = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def write_commit(root: Path, version: int, when: datetime | None, *, in_commit: datetime | None = None) -> None:
    """One commit file; ``when`` its commitInfo timestamp (None: no commitInfo, the file time says it)."""
    log = root / "_delta_log"
    log.mkdir(parents=True, exist_ok=True)
    lines = [{"add": {"path": f"p{version}", "partitionValues": {}, "size": 1, "modificationTime": 1,
                      "dataChange": True}}]
    if when is not None or in_commit is not None:
        info: dict = {"operation": "WRITE"}
        if when is not None:
            info["timestamp"] = _ms(when)
        if in_commit is not None:
            info["inCommitTimestamp"] = _ms(in_commit)
        lines.insert(0, {"commitInfo": info})
    path = log / commit_file_name(version)
    path.write_text("\n".join(json.dumps(x) for x in lines))
    if when is None:  # the file's own time
        stamp = (in_commit or SINCE).timestamp()
        os.utime(path, (stamp, stamp))


def at(seconds: float) -> datetime:
    return SINCE + timedelta(seconds=seconds)


def test_commits_after_the_app_started_watching_are_new_older_ones_are_history(tmp_path):
    for version, offset in enumerate((-300, -60, -1, 1, 30)):
        write_commit(tmp_path, version, at(offset))
    start = first_sight.starting_point(LocalLogReader(tmp_path), SINCE)
    assert start == first_sight.Start(version=2, gap="", new_commits=2)  # versions 3 and 4 are new


def test_a_table_made_entirely_while_watching_starts_before_its_first_commit(tmp_path):
    for version in range(3):
        write_commit(tmp_path, version, at(10 + version))
    assert first_sight.starting_point(LocalLogReader(tmp_path), SINCE).version == -1


def test_a_table_older_than_the_app_starts_at_its_newest_commit(tmp_path):
    for version in range(3):
        write_commit(tmp_path, version, at(-100 + version))
    assert first_sight.starting_point(LocalLogReader(tmp_path), SINCE).version == 2
    assert first_sight.starting_point(LocalLogReader(tmp_path / "none"), SINCE) is None


def test_hints_never_move_the_start_past_what_exists_and_an_existing_one_gets_the_newest_handled(tmp_path):
    for version in range(3):
        write_commit(tmp_path, version, at(-100 + version))
    reader = LocalLogReader(tmp_path)
    assert first_sight.starting_point(reader, SINCE, hint_version=2147483647).version == 2
    assert first_sight.starting_point(reader, SINCE, hint_version=0).version == 1  # the event: the newest


def test_in_commit_timestamp_wins_and_the_file_time_is_the_fallback(tmp_path):
    write_commit(tmp_path, 0, None, in_commit=at(-50))            # no commitInfo: file time, before
    write_commit(tmp_path, 1, at(-50), in_commit=at(5))           # inCommitTimestamp says after
    write_commit(tmp_path, 2, None, in_commit=at(20))             # no commitInfo: file time, after
    reader = LocalLogReader(tmp_path)
    assert first_sight.commit_time(reader, 0) == at(-50)
    assert first_sight.commit_time(reader, 1) == at(5)
    assert first_sight.starting_point(reader, SINCE).version == 0


def test_more_new_commits_than_the_lookback_start_there_and_say_so(tmp_path):
    for version in range(8):
        write_commit(tmp_path, version, at(1 + version))
    start = first_sight.starting_point(LocalLogReader(tmp_path), SINCE, lookback=3)
    assert start.version == 4 and start.new_commits == 3
    assert "more than 3 commits" in start.gap and "started after 4" in start.gap
    # exactly the lookback, and the log has nothing older: from the first commit, no note
    assert first_sight.starting_point(LocalLogReader(tmp_path), SINCE, lookback=8) == first_sight.Start(-1, "", 8)


def test_a_log_cleaned_up_below_its_new_commits_starts_at_its_oldest_commit(tmp_path):
    for version in (5, 6, 7):
        write_commit(tmp_path, version, at(version))
    assert first_sight.starting_point(LocalLogReader(tmp_path), SINCE).version == 4


def test_a_commit_info_without_a_usable_timestamp_falls_back_to_the_file_time(tmp_path):
    write_commit(tmp_path, 0, at(-10))
    (tmp_path / "_delta_log" / commit_file_name(1)).write_text('{"commitInfo": {"timestamp": "soon"}}\n{"add": [')
    os.utime(tmp_path / "_delta_log" / commit_file_name(1), (at(-5).timestamp(), at(-5).timestamp()))
    write_commit(tmp_path, 2, at(10))
    assert first_sight.starting_point(LocalLogReader(tmp_path), SINCE).version == 1


# --------------------------------------------------------------------------------------- on Azurite


@pytest.fixture
def state(azurite, unique):
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(azurite.connection_string)
    return tables.ensure_table(service, f"First{unique}")


def test_watching_is_recorded_once_by_whichever_instance_is_first(state):
    clocks = [FakeClock(SINCE + timedelta(seconds=i)) for i in range(6)]
    instances = [first_sight.Watching(state, clock) for clock in clocks]
    seen: list[datetime] = []
    threads = [threading.Thread(target=lambda w=w: seen.append(w.since())) for w in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and seen[0] in {c.now() for c in clocks}
    entity = tables.get_entity(state, "app", "watching")
    assert entity["since"] == seen[0].isoformat(timespec="milliseconds").replace("+00:00", "Z")
    later = first_sight.Watching(state, FakeClock(SINCE + timedelta(days=3)))  # a restart, days later
    assert later.since() == seen[0]


def test_an_unreadable_marker_is_named(state):
    tables.write(state, {"PartitionKey": "app", "RowKey": "watching", "since": 5}, None)
    with pytest.raises(ValueError, match="app/watching entity has no readable 'since'"):
        first_sight.Watching(state, FakeClock()).since()


def test_the_blob_reader_falls_back_to_the_log_file_last_modified(azurite, unique):
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(azurite.connection_string).create_container(f"fs{unique}")
    container.upload_blob(f"t/_delta_log/{commit_file_name(0)}", b'{"add": {"path": "a", "dataChange": true}}\n')
    reader = BlobLogReader(container, "t")
    made = first_sight.commit_time(reader, 0)
    assert made is not None and abs((made - datetime.now(UTC)).total_seconds()) < 120
    assert first_sight.commit_time(reader, 1) is None  # absent
    assert first_sight.starting_point(reader, made - timedelta(seconds=1)).version == -1
    assert first_sight.starting_point(reader, made).version == 0
