"""Texts from Power BI answers are valid Unicode before anything stores them (issue 9 item 11):
JSON may carry a lone surrogate (``"\\ud800"``), which Table Storage, logs and the status page cannot
encode. models.py (and the error-body parser) replace each one with U+FFFD."""

from __future__ import annotations

import json

import pytest

from refresh.powerbi.errors import PowerBIError
from refresh.powerbi.models import dataset_from_api, refresh_from_details, refresh_from_history_entry

LONE = "\ud800"


def _valid(text: str | None) -> bool:
    if text is None:
        return True
    text.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    return True


def test_clean_text_replaces_lone_surrogates_and_keeps_the_rest():
    from refresh.powerbi.models import clean_text

    assert clean_text(f"a{LONE}b\udfff") == "a\ufffdb\ufffd"
    assert clean_text("Ünïcødé 😀") == "Ünïcødé 😀"


def test_history_entry_texts_are_valid_unicode():
    exception = json.dumps({"errorCode": f"Code{LONE}", "errorDescription": f"bad {LONE} source"})
    entry = json.loads(json.dumps({"requestId": f"id{LONE}", "status": "Failed", "refreshType": "ViaApi",
                                   "serviceExceptionJson": exception}))
    status = refresh_from_history_entry(entry)
    for text in (status.request_id, status.error_code, status.error_message, status.refresh_type):
        assert _valid(text)
    assert status.error_message == "bad \ufffd source"


def test_details_messages_are_valid_unicode():
    payload = {"status": "Failed", "extendedStatus": "Failed",
               "messages": [{"code": "0x1", "message": f"engine {LONE} said no", "type": "Error",
                             f"key{LONE}": [LONE]}]}
    status = refresh_from_details(payload, "rid")
    json.dumps(status.messages, ensure_ascii=False).encode("utf-8")
    assert status.error_message == "engine \ufffd said no"


def test_dataset_and_workspace_names_are_valid_unicode():
    dataset = dataset_from_api({"id": "d", "name": f"Sales{LONE}"})
    assert dataset.name == "Sales\ufffd"


@pytest.mark.invalid_requests(0)
def test_a_failed_refresh_read_through_the_client_has_valid_texts(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.fail_refresh(dataset, service_exception={"errorCode": "X", "errorDescription": f"oops {LONE}"},
                     messages=[{"code": "0x2", "message": f"bad {LONE}", "type": "Error"}])
    sim.refresh_duration = 1
    refresh_id = client.start_refresh(workspace, dataset, {"type": "Full"})
    sim.advance(5)
    details = client.get_refresh(workspace, dataset, refresh_id)
    history = client.find_refresh(workspace, dataset, refresh_id)
    assert details.error_message == "bad \ufffd" and _valid(details.error_message)
    assert history is not None and history.error_message == "oops \ufffd"


def test_error_bodies_are_valid_unicode(sim, client, dedicated):
    workspace, dataset = dedicated
    sim.fail_next(400, body={"error": {"code": f"Bad{LONE}", "message": f"no {LONE} way"}}, method="POST")
    with pytest.raises(PowerBIError) as caught:
        client.start_refresh(workspace, dataset, {"type": "Full"})
    assert caught.value.code == "Bad\ufffd" and "no \ufffd way" in caught.value.message
