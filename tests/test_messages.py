"""Queue messages that cannot be read end in a ``Rejected`` outcome row, never silently in the poison
queue (issue 9 items 10 and 11)."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueServiceClient

from refresh.core.context import set_app
from refresh.dev.local.host import Invoker, functions_from_app
from refresh.dev.local.queues import QueueRunner
from refresh.dev.local.settings import load_host_json
from refresh.dev.testing.harness import make_app
from refresh.jobs import messages
from refresh.surfaces import function_bodies as functions

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"datasets": {"sales": {"workspace": "W", "dataset": "D", "sources": [{"table": "sales/fact"}]}}}
JOB = messages.JobMessage("job", "sales", "a" * 32, "2026-11-21T12:00:00.000Z")


def test_unwrap_takes_base64_or_the_document_itself_and_names_anything_else():
    document = JOB.encode().encode()
    assert messages.unwrap(base64.b64encode(document)) == document
    assert messages.unwrap(base64.b64encode(document).decode()) == document
    assert messages.unwrap(document) == document  # a manual run through /admin/functions
    assert messages.decode(messages.unwrap(base64.b64encode(document))) == JOB
    for garbage in (b"not base64 !", b"", b"abc", "\ud800", b"\xff\xfe"):
        with pytest.raises(messages.BadMessage, match="not base64"):
            messages.unwrap(garbage)


def test_text_that_is_not_valid_unicode_is_refused_naming_the_field():
    for field in ("sent_at", "type", "dataset"):
        body = JOB.encode().replace(f'"{field}":"', f'"{field}":"\\ud800', 1)
        with pytest.raises(messages.BadMessage, match=f"{field}"):
            messages.decode(body)
    with pytest.raises(messages.BadMessage, match="sent_at: is not valid Unicode"):
        messages.decode(JOB.encode().replace('"sent_at":"', '"sent_at":"\\udfff', 1))


def _app_with_queue_function() -> func.FunctionApp:
    """The binding of function_app.run_refresh_job (same queue, same body)."""
    app = func.FunctionApp()

    @app.function_name("run_refresh_job")
    @app.queue_trigger(arg_name="msg", queue_name="%REFRESH_QUEUE%", connection="AzureWebJobsStorage")
    def run_refresh_job(msg: func.QueueMessage) -> None:
        functions.run_refresh_job(msg)

    return app


def test_a_message_that_is_not_base64_gets_its_rejected_row_under_the_projects_host_json(azurite, unique):
    app = make_app(azurite.connection_string, CONFIG, token=unique)
    set_app(app)
    queue_name = app.settings.refresh_queue
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    raw_client = service.get_queue_client(queue_name)  # no encode policy: the text goes on the queue as is
    raw_client.create_queue()
    raw_client.send_message("not base64 !")
    options = load_host_json(ROOT / "host.json").queues  # the project's own messageEncoding
    options = type(options)(**{**vars(options), "visibility_timeout": 0.0, "max_polling_interval": 0.2})
    [spec] = functions_from_app(_app_with_queue_function())
    invoker, stop = Invoker(max_workers=2), threading.Event()
    runner = QueueRunner(spec, dict(spec.trigger, queueName=queue_name), service, options, invoker, stop,
                         message_lock=30)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        rows: list = []
        while time.monotonic() < deadline and not rows:
            rows = list(app.outcomes_table.query_entities("PartitionKey eq '_rejected'"))
            if not rows:
                stop.wait(0.1)
        assert rows, "no Rejected row for a message that is not base64"
        [row] = rows
        assert row["status"] == "Rejected" and "not base64" in row["error_message"]
        assert row["message_body"] == "not base64 !"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and raw_client.get_queue_properties().approximate_message_count:
            stop.wait(0.1)
        assert raw_client.get_queue_properties().approximate_message_count == 0  # handled, not left to retry
        try:
            poisoned = list(service.get_queue_client(f"{queue_name}-poison").peek_messages())
        except ResourceNotFoundError:
            poisoned = []
        assert poisoned == []
    finally:
        stop.set()
        invoker.shutdown(5)
        set_app(None)
