"""Event Grid storage events shaped as Azure sends them (schema: Microsoft.Storage blob events).

Azurite emits no events, so the tests and the local runtime build them here from the documented
schema: BlobCreated from a PUT (PutBlob / PutBlockList), BlobCreated from an ADLS Gen2 write
(CreateFile then FlushWithClose), and BlobRenamed (Spark's rename of a temp commit).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

TOPIC = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/lake/providers/" \
        "Microsoft.Storage/storageAccounts/lake"


def blob_url(base: str, container: str, name: str) -> str:
    """``base`` like ``https://lake.blob.core.windows.net`` or ``http://127.0.0.1:p/devstoreaccount1``."""
    return f"{base.rstrip('/')}/{container}/{quote(name)}"


def subject(container: str, name: str) -> str:
    return f"/blobServices/default/containers/{container}/blobs/{quote(name)}"


def blob_created(base: str, container: str, name: str, *, api: str = "PutBlob", etag: str = "0x8DCAFE",
                 length: int = 512) -> dict[str, Any]:
    """A ``Microsoft.Storage.BlobCreated`` event (Event Grid schema) as a dict."""
    data: dict[str, Any] = {
        "api": api,
        "clientRequestId": str(uuid.uuid4()),
        "requestId": str(uuid.uuid4()),
        "eTag": etag,
        "contentType": "application/json",
        "contentLength": length,
        "blobType": "BlockBlob",
        "url": blob_url(base, container, name),
        "sequencer": f"{uuid.uuid4().int % 10**32:032d}",
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }
    if api in ("FlushWithClose", "CreateFile"):
        data["contentOffset"] = 0
    return _event("Microsoft.Storage.BlobCreated", subject(container, name), data)


def blob_renamed(base: str, container: str, source: str, destination: str) -> dict[str, Any]:
    """A ``Microsoft.Storage.BlobRenamed`` event (ADLS Gen2 ``RenameFile``)."""
    data = {
        "api": "RenameFile",
        "clientRequestId": str(uuid.uuid4()),
        "requestId": str(uuid.uuid4()),
        "eTag": "0x8DCAFE",
        "contentType": "application/octet-stream",
        "contentLength": 0,
        "blobType": "BlockBlob",
        "sourceUrl": blob_url(base.replace(".blob.", ".dfs."), container, source),
        "destinationUrl": blob_url(base.replace(".blob.", ".dfs."), container, destination),
        "sequencer": f"{uuid.uuid4().int % 10**32:032d}",
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }
    return _event("Microsoft.Storage.BlobRenamed", subject(container, destination), data)


def _event(event_type: str, subj: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "topic": TOPIC,
        "subject": subj,
        "eventType": event_type,
        "id": str(uuid.uuid4()),
        "data": data,
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


def to_function_event(event: dict[str, Any]) -> Any:
    """The ``azure.functions.EventGridEvent`` the Python worker builds from ``event``."""
    import azure.functions as func

    when = datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00"))
    return func.EventGridEvent(id=event["id"], data=event["data"], topic=event["topic"],
                               subject=event["subject"], event_type=event["eventType"], event_time=when,
                               data_version=event.get("dataVersion", ""))
