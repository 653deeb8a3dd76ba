"""Event Grid events that are not usable commits: refused or ignored with a clear reason, never a crash
(issue 9 item 10)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func
import pytest

from refresh.core.context import set_app
from refresh.detection.lake_events import event_problem, hint_from_event, ignored_because
from refresh.dev.testing import events as ev
from refresh.dev.testing.harness import make_app

CONFIG = {"datasets": {"sales": {"workspace": "W", "dataset": "D", "sources": [{"table": "sales/fact"}]}}}
COMMIT = "sales/fact/_delta_log/00000000000000000001.json"


@pytest.fixture
def app(azurite, unique):
    app = make_app(azurite.connection_string, CONFIG, token=unique)
    set_app(app)
    yield app
    set_app(None)


def grid_event(event_type, subject, data) -> func.EventGridEvent:
    return func.EventGridEvent(id="e-1", data=data, topic="t", subject=subject, event_type=event_type,
                               event_time=datetime.now(UTC), data_version="")


def test_event_problem_names_what_breaks_the_event_grid_schema():
    good = ev.blob_created("https://lake.blob.core.windows.net", "gold", COMMIT)
    assert event_problem(good) is None
    assert event_problem(7) == "an event must be a JSON object, got a number"
    assert event_problem({k: v for k, v in good.items() if k != "subject"}) == "subject is missing"
    assert event_problem({**good, "eventType": 3}) == "eventType must be a non-empty string, got a number"
    assert event_problem({**good, "id": ""}) == "id must be a non-empty string, got a string"
    assert event_problem({**good, "data": "x"}) == "data must be an object, got a string"
    assert "not valid Unicode" in event_problem({**good, "data": {**good["data"], "url": "\ud800"}})
    assert "not valid Unicode" in event_problem({**good, "eventType": "\udfff"})


def test_malformed_events_are_ignored_with_a_clear_reason_in_the_log(app, registered, caplog):
    caplog.set_level(logging.INFO)
    url = f"https://lake.blob.core.windows.net/{app.settings.gold_container}/{COMMIT}"
    cases = [
        (None, None, None, "the event has no eventType"),
        ("Microsoft.Storage.BlobDeleted", "/x", {"url": url}, "is neither Microsoft.Storage.BlobCreated"),
        ("Microsoft.Storage.BlobCreated", None, [1, 2],
         "its data is an array, not an object"),
        ("Microsoft.Storage.BlobCreated", None, 5, "its data is a number, not an object"),
        ("Microsoft.Storage.BlobCreated", None, {"api": "PutBlob"}, "data.url is missing or not a blob URL"),
        ("Microsoft.Storage.BlobCreated", None, {"url": url + "\ud800"}, "data.url is not valid Unicode"),
        ("Microsoft.Storage.BlobRenamed", None, {"url": url}, "data.destinationUrl is missing"),
    ]
    for event_type, subject, data, reason in cases:
        caplog.clear()
        registered["on_lake_event"](grid_event(event_type, subject, data))  # never raises
        lines = [r.getMessage() for r in caplog.records if r.name == "refresh.surfaces.function_bodies"]
        assert any("event e-1 ignored: " in line and reason in line for line in lines), (reason, lines)
    assert not list(app.state_table.query_entities("PartitionKey eq 'dataset'"))


def test_a_good_event_still_gives_its_hint():
    url = f"https://lake.blob.core.windows.net/gold/{COMMIT}"
    hint = hint_from_event("Microsoft.Storage.BlobCreated", None, {"url": url}, "gold")
    assert hint is not None and hint.table == "sales/fact" and hint.version == 1
    assert "not a Delta commit" in ignored_because("Microsoft.Storage.BlobCreated", None, {"url": url + ".crc"},
                                                   "gold")
