"""The bodies of the functions bound in ``function_app.py``: a few lines each, calling into the package."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from refresh.core.context import get_app
from refresh.detection import lake_events as events

if TYPE_CHECKING:
    import azure.functions as func

log = logging.getLogger(__name__)


# Event Grid waits 30 s for the webhook's answer, then redelivers. The Functions host answers when
# on_lake_event returns, and its own overhead (a cold start included) comes on top: the detection
# inside the call gets at most this long for all of its storage calls (connections.budget).
EVENT_GRID_BUDGET_SECONDS = 15.0


def _blob_path(blob: Any) -> str:
    """``<container>/<blob name>`` of what the blob trigger passed: an ``azure.storage.blob.BlobClient``
    (the SDK-type binding, azurefunctions-extensions-bindings-blob), or an ``InputStream`` (``.name``)."""
    container, name = getattr(blob, "container_name", None), getattr(blob, "blob_name", None)
    if isinstance(container, str) and isinstance(name, str):
        return f"{container}/{name}"
    return getattr(blob, "name", None) or ""


def on_delta_commit(blob: Any) -> None:
    """Blob trigger (BlobCreated of a commit): only the blob's name is used; nothing is downloaded."""
    app = get_app()
    path = _blob_path(blob)
    hint = events.hint_from_blob_path(path, app.settings.gold_container)
    if hint is None:
        log.info("blob %s is not a Delta commit; ignored", _shown(path))
        return
    app.detector.process(hint.table, hint.version)


def on_lake_event(event: Any) -> None:
    """Event Grid trigger (BlobRenamed of a commit), answered within Event Grid's 30 s.

    The detection runs inside the webhook call under a storage budget: if storage is too slow to
    finish it in EVENT_GRID_BUDGET_SECONDS, the call fails fast and Event Grid redelivers the event
    later (the detection is idempotent, and the timer sweep would find the commit anyway)."""
    from refresh.core import connections

    app = get_app()
    try:
        data = event.get_json()
    except ValueError:
        data = None
    event_type, subject = getattr(event, "event_type", None), getattr(event, "subject", None)
    hint = events.hint_from_event(event_type, subject, data, app.settings.gold_container)
    if hint is None:
        log.info("event %s ignored: %s", _shown(getattr(event, "id", None)),
                 events.ignored_because(event_type, subject, data, app.settings.gold_container))
        return
    try:
        with connections.budget(EVENT_GRID_BUDGET_SECONDS, f"event {_shown(getattr(event, 'id', None))}"):
            app.detector.process(hint.table, hint.version)
    except connections.BudgetExceeded as exc:
        log.warning("event %s: %s v%s not processed in time (%s); Event Grid will redeliver it",
                    _shown(getattr(event, "id", None)), hint.table, hint.version, exc)
        raise


def _shown(value: Any) -> str:
    from refresh.core.validation import shown

    return shown(value) if isinstance(value, str) else repr(value)


def sweep_delta_logs(timer: Any) -> None:
    """Timer: probe every configured table for commits the events missed."""
    from azure.core.exceptions import ResourceNotFoundError

    from refresh.detection.sweep import sweep

    app = get_app()
    if getattr(timer, "past_due", False):
        log.info("sweep is running late (past due)")
    try:
        sweep(app.detector, app.watermarks, app.lake, app.states, app.settings.sweep_concurrency)
    except ResourceNotFoundError as exc:
        if getattr(exc, "error_code", None) == "ContainerNotFound":
            raise RuntimeError(f"the gold container {app.settings.gold_container!r} does not exist in the "
                               "LAKE_STORAGE account (check GOLD_CONTAINER and LAKE_STORAGE)") from None
        raise
    finally:
        prune_alerts(app)


ALERT_RETENTION_DAYS = 30


def prune_alerts(app: Any) -> None:
    """Delete alert rows that are done and older than ALERT_RETENTION_DAYS (never raises)."""
    from datetime import timedelta

    try:
        removed = app.alerter.store.prune(app.clock.now() - timedelta(days=ALERT_RETENTION_DAYS))
    except Exception as exc:
        log.warning("alert rows not pruned (%s); the next sweep tries again", type(exc).__name__)
        return
    if removed:
        log.info("pruned %s alert row(s) older than %s days", removed, ALERT_RETENTION_DAYS)


@lru_cache(maxsize=1)
def _max_dequeue_count() -> int:
    """host.json's extensions.queues.maxDequeueCount (5 if absent), read once per process."""
    from refresh.core.settings import APP_ROOT

    try:
        host = json.loads((APP_ROOT / "host.json").read_text())
        return int(host["extensions"]["queues"]["maxDequeueCount"])
    except (OSError, KeyError, ValueError):
        return 5


def _unwrapped(worker: Any, msg: Any) -> bytes | None:
    """The message's document (host.json hands the base64 text over as it is: refresh/jobs/messages.py), or
    None after recording a message that is not base64 as ``Rejected``."""
    from refresh.jobs import messages

    try:
        return messages.unwrap(msg.get_body())
    except messages.BadMessage as exc:
        worker._reject(str(exc), msg.get_body(), msg.id)  # the outcome row every unreadable message gets
        return None


def run_refresh_job(msg: Any) -> None:
    """Queue trigger: one step of a refresh job (start it, or check on it), or one alert delivery."""
    from refresh.monitoring.alerts import is_alert_message

    app = get_app()
    worker = app.worker
    body = _unwrapped(worker, msg)
    if body is None:
        return
    if is_alert_message(body):
        app.alerter.handle(body)
        return
    worker.handle(body, dequeue_count=msg.dequeue_count or 1, max_dequeue_count=_max_dequeue_count(),
                  message_id=msg.id)


def on_refresh_poison(msg: Any) -> None:
    """Queue trigger on the poison queue: record whatever still lands there."""
    from refresh.jobs import messages
    from refresh.monitoring.alerts import is_alert_message

    app = get_app()
    worker = app.worker
    body = _unwrapped(worker, msg)
    if body is None:
        return
    if is_alert_message(body):
        app.alerter.give_up(body, f"message moved to the poison queue after {msg.dequeue_count or '?'} deliveries")
        return
    try:
        job = messages.decode(body)
    except messages.BadMessage as exc:
        worker.handle(body, message_id=msg.id)  # records it as rejected
        log.error("poison message %s could not be parsed: %s", msg.id, exc)
        return
    worker.give_up(job, f"message moved to the poison queue after {msg.dequeue_count or '?'} deliveries")


def run_schedules(timer: Any) -> None:
    """Timer (every minute): enqueue each due scheduled refresh once (refresh/jobs/schedules.py)."""
    from refresh.jobs.schedules import run_schedules as run

    if getattr(timer, "past_due", False):
        log.info("schedule timer is running late (past due)")
    app = get_app()
    try:
        run(app)
    finally:
        freshness_tick(app)


def freshness_tick(app: Any) -> None:
    """Breaches found although nothing happens (issue 12): every dataset's freshness, once a minute.
    Never raises: a storage hiccup here must not fail the schedules that share the timer."""
    try:
        report = app.freshness.tick()
    except Exception as exc:
        log.error("freshness check failed (%s: %s); the next minute tries again", type(exc).__name__,
                  str(exc).split("\n")[0][:300])
        return
    if report.events or report.flushed:
        log.info("freshness check: %s dataset(s), %s event(s), %s alert(s) queued", report.datasets,
                 len(report.events), report.flushed)


def request_refresh(req: func.HttpRequest) -> func.HttpResponse:
    """HTTP POST /api/refreshes (refresh/surfaces/http_api.py)."""
    from refresh.surfaces import http_api as api

    return api.request_refresh(req)


def get_refresh(req: func.HttpRequest) -> func.HttpResponse:
    """HTTP GET /api/refreshes/{job_id}."""
    from refresh.surfaces import http_api as api

    return api.get_refresh(req)


def list_datasets(req: func.HttpRequest) -> func.HttpResponse:
    """HTTP GET /api/datasets."""
    from refresh.surfaces import http_api as api

    return api.list_datasets(req)


def dataset_history(req: func.HttpRequest) -> func.HttpResponse:
    """HTTP GET /api/datasets/{key}/history."""
    from refresh.surfaces import http_api as api

    return api.dataset_history(req)


def health(req: func.HttpRequest) -> func.HttpResponse:
    """HTTP GET /api/health."""
    from refresh.surfaces import http_api as api

    return api.health(req)


def status_page(req: func.HttpRequest) -> func.HttpResponse:
    """HTTP GET /api/status (HTML)."""
    from refresh.surfaces import http_api as api

    return api.status_page(req)
