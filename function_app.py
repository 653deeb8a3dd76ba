"""Azure Functions entry point: binds triggers only; every body calls into the ``refresh`` package.

Nothing here reads a setting or builds a client at import time, so the host always sees every
function; configuration problems surface on first use with a message naming the setting.
"""

import azure.functions as func

from refresh import functions

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("on_delta_commit")
@app.blob_trigger(arg_name="blob", path="%GOLD_CONTAINER%/{name}", connection="LAKE_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def on_delta_commit(blob: func.InputStream) -> None:
    """A blob was created in the gold container (delta-rs and other PUT-style writers)."""
    functions.on_delta_commit(blob)


@app.function_name("on_lake_event")
@app.event_grid_trigger(arg_name="event")
def on_lake_event(event: func.EventGridEvent) -> None:
    """BlobCreated / BlobRenamed from the lake (Spark and Databricks commit by renaming)."""
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
