"""refresh/core/storage.py: the one ETag-guarded read-modify-write, on real Azurite."""

from __future__ import annotations

import pytest
from azure.data.tables import TableServiceClient

from refresh.core import storage as tables


@pytest.fixture
def table(azurite, unique):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    return tables.ensure_table(service, f"Store{unique}")


def test_update_changes_a_copy_and_writes_it_guarded(table):
    assert tables.update(table, "p", "r", lambda d: d.update(n=1) is None) is None  # missing, not created
    created = tables.update(table, "p", "r", lambda d: d.update(n=1) is None, create=True)
    assert created["n"] == 1 and tables.get_entity(table, "p", "r")["n"] == 1
    unchanged = tables.update(table, "p", "r", lambda d: False)
    assert unchanged["n"] == 1 and unchanged.metadata["etag"]  # as read


def test_update_reads_again_when_someone_wrote_in_between(table):
    tables.update(table, "p", "r", lambda d: d.update(n=0) is None, create=True)
    seen: list[int] = []

    def bump(data: dict) -> bool:
        seen.append(data["n"])
        if len(seen) == 1:  # another writer gets in between our read and our write
            tables.update(table, "p", "r", lambda d: d.update(n=d["n"] + 10) is None)
        data["n"] += 1
        return True

    assert tables.update(table, "p", "r", bump)["n"] == 11
    assert seen == [0, 10] and tables.get_entity(table, "p", "r")["n"] == 11  # no update lost


def test_update_gives_up_naming_what_kept_changing(table):
    tables.update(table, "p", "r", lambda d: d.update(n=0) is None, create=True)

    def always_beaten(data: dict) -> bool:
        tables.update(table, "p", "r", lambda d: d.update(n=d["n"] + 1) is None)
        return True

    with pytest.raises(tables.Conflict, match="dataset x: state kept changing under 3 attempts"):
        tables.update(table, "p", "r", always_beaten, attempts=3, what="dataset x: state")
