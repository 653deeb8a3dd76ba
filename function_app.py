"""Azure Functions entry point: binds triggers only; every body calls into the ``refresh`` package.

Nothing here reads a setting or builds a client at import time, so the host always sees every
function; configuration problems surface on first use with a message naming the setting.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

from refresh.surfaces import function_bodies as functions

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


# BlobCreated of a commit (delta-rs and other PUT-style writers; the Event Grid subscription
# <app>-commit-created). SDK type binding (azurefunctions-extensions-bindings-blob): the function gets
# an azure.storage.blob.BlobClient for the commit, so nothing is downloaded; the code needs its name only.
@app.function_name("on_delta_commit")
@app.blob_trigger(arg_name="blob", path="%GOLD_CONTAINER%/{name}", connection="LAKE_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def on_delta_commit(blob: blob.BlobClient) -> None:
    """A commit blob was created in the gold container."""
    functions.on_delta_commit(blob)


# BlobRenamed of a commit (Spark and Databricks commit by renaming; the subscription <app>-commit-renamed).
@app.function_name("on_lake_event")
@app.event_grid_trigger(arg_name="event")
def on_lake_event(event: func.EventGridEvent) -> None:
    """BlobRenamed from the lake (BlobCreated, if ever delivered here, is handled the same way)."""
    functions.on_lake_event(event)


@app.function_name("sweep_delta_logs")
@app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
def sweep_delta_logs(timer: func.TimerRequest) -> None:
    """Safety net: find commits that no event announced."""
    functions.sweep_delta_logs(timer)


@app.function_name("run_refresh_job")
@app.queue_trigger(arg_name="msg", queue_name="%REFRESH_QUEUE%", connection="AzureWebJobsStorage")
def run_refresh_job(msg: func.QueueMessage) -> None:
    """Start a due refresh job, or follow a running refresh (never waits in the function)."""
    functions.run_refresh_job(msg)


@app.function_name("on_refresh_poison")
@app.queue_trigger(arg_name="msg", queue_name="%REFRESH_QUEUE%-poison", connection="AzureWebJobsStorage")
def on_refresh_poison(msg: func.QueueMessage) -> None:
    """Record jobs whose messages failed maxDequeueCount times."""
    functions.on_refresh_poison(msg)


# HTTP API (refresh/surfaces/http_api.py; the README documents it). Every route takes every method so that a wrong one
# gets the app's own JSON 405 instead of the host's bare 404.
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@app.function_name("request_refresh")
@app.route(route="refreshes", methods=HTTP_METHODS, auth_level=func.AuthLevel.FUNCTION)
def request_refresh(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/refreshes: refresh a configured dataset, or any dataset by workspace and name, now."""
    return functions.request_refresh(req)


@app.function_name("get_refresh")
@app.route(route="refreshes/{job_id}", methods=HTTP_METHODS, auth_level=func.AuthLevel.FUNCTION)
def get_refresh(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/refreshes/{job_id}: the job's outcome row."""
    return functions.get_refresh(req)


@app.function_name("list_datasets")
@app.route(route="datasets", methods=HTTP_METHODS, auth_level=func.AuthLevel.FUNCTION)
def list_datasets(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/datasets: every configured dataset with its last outcome, pending work and limit use."""
    return functions.list_datasets(req)


@app.function_name("dataset_history")
@app.route(route="datasets/{key}/history", methods=HTTP_METHODS, auth_level=func.AuthLevel.FUNCTION)
def dataset_history(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/datasets/{key}/history?top=N: outcome rows, newest first."""
    return functions.dataset_history(req)


@app.function_name("health")
@app.route(route="health", methods=HTTP_METHODS, auth_level=func.AuthLevel.FUNCTION)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health: config, storage and Power BI token; 200 or 503."""
    return functions.health(req)


@app.function_name("status_page")
@app.route(route="status", methods=HTTP_METHODS, auth_level=func.AuthLevel.FUNCTION)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/status: the HTML status page (?dataset=<key> for one dataset's history)."""
    return functions.status_page(req)


@app.function_name("run_schedules")
@app.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False, use_monitor=True)
def run_schedules(timer: func.TimerRequest) -> None:
    """Every minute: enqueue each due scheduled refresh exactly once (refresh/jobs/schedules.py)."""
    functions.run_schedules(timer)
