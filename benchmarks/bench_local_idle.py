"""Benchmark: what the local runtime itself costs when its functions are waiting and the lake is quiet.

Two measurements, each with ``LocalHost`` (the runtime behind ``python -m refresh local``) hosting a
small function app of this file against the pinned Azurite (in this process's care):

* **queue poller CPU**: 1,000 messages on one queue (host.json's batchSize 8 and
  newBatchThreshold 4), the function waits 0.5-2 s per message (a Power BI call, not CPU). The
  figure is the CPU time of this process over a fixed window, per second of wall time, and the
  messages completed in that window. A poller that spins while more than ``newBatchThreshold``
  messages are in flight shows up as CPU close to 1 s per second.
* **lake watcher listings**: 50 and 500 idle Delta tables (one commit and one data file each), a
  blob trigger on the container; the figure is listing requests (pages) per second over the window
  after the watcher took its baseline, and the CPU time of this process per second.

Run: ``.venv/bin/python benchmarks/bench_local_idle.py [--window 20] [--tables 50 500]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh.dev.testing.azurite import Azurite  # noqa: E402 - after the path set-up

LISTINGS = {"count": 0}


def _count_listings() -> None:
    """Count every listing request (each page) the blob SDK sends in this process."""
    from azure.storage.blob._generated.operations import _container_operations as ops

    for name in ("list_blob_flat_segment", "list_blob_hierarchy_segment"):
        original = getattr(ops.ContainerOperations, name)

        def counted(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            LISTINGS["count"] += 1
            return __original(self, *args, **kwargs)

        setattr(ops.ContainerOperations, name, counted)


def _app(queue: str | None, container: str | None, done: list[int]) -> Any:
    import azure.functions as func

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    if queue:
        @app.function_name("work")
        @app.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
        def work(msg: func.QueueMessage) -> None:
            time.sleep(random.uniform(0.5, 2.0))
            done.append(1)
    if container:
        @app.function_name("on_blob")
        @app.blob_trigger(arg_name="blob", path=f"{container}/{{name}}", connection="AzureWebJobsStorage",
                          source=func.BlobSource.EVENT_GRID)
        def on_blob(blob: func.InputStream) -> None:
            done.append(1)
    return app


def _host(app: Any, azurite: Azurite, **options: Any) -> Any:
    from refresh.dev.local.host import HostOptions, LocalHost, functions_from_app
    from refresh.dev.local.settings import load_host_json

    settings = {"AzureWebJobsStorage": azurite.connection_string}
    return LocalHost(functions_from_app(app), settings, load_host_json(ROOT / "host.json"),
                     HostOptions(port=0, app_root=ROOT, **options))


def queue_cpu(azurite: Azurite, window: float, messages: int = 1000) -> None:
    from azure.storage.queue import QueueServiceClient, TextBase64EncodePolicy

    name = f"idle-{uuid.uuid4().hex[:8]}"
    client = QueueServiceClient.from_connection_string(azurite.connection_string).get_queue_client(
        name, message_encode_policy=TextBase64EncodePolicy())
    client.create_queue()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.send_message(f'{{"n": {i}}}'), range(messages)))
    done: list[int] = []
    host = _host(_app(name, None, done), azurite)
    host.start()
    try:
        time.sleep(3)  # warm up: the first batches are in flight
        cpu, wall, before = time.process_time(), time.monotonic(), len(done)
        time.sleep(window)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        completed = len(done) - before
    finally:
        host.stop(timeout=5)
    print(f"queue poller, {messages} messages queued, function waits 0.5-2 s: CPU {cpu / wall:.3f} s per s "
          f"over {wall:.1f} s; {completed} messages completed ({completed / wall:.1f}/s); "
          f"threads at the end {threading.active_count()}")
    print(f"RESULT queue_cpu_per_second={cpu / wall:.3f} completed_per_second={completed / wall:.2f}")


def watcher_listings(azurite: Azurite, tables: int, window: float) -> None:
    from azure.storage.blob import BlobServiceClient

    container = f"idle{uuid.uuid4().hex[:8]}"
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    client.create_container()
    names = [f"gold/t{i:04d}/_delta_log/{0:020d}.json" for i in range(tables)]
    names += [f"gold/t{i:04d}/part-00000.parquet" for i in range(tables)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: client.upload_blob(n, b"{}"), names))
    done: list[int] = []
    host = _host(_app(None, container, done), azurite)
    host.start()
    try:
        for watcher in host.watchers.values():
            watcher.ready.wait(60)
        time.sleep(2)
        cpu, wall, before = time.process_time(), time.monotonic(), LISTINGS["count"]
        time.sleep(window)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        listings = LISTINGS["count"] - before
    finally:
        host.stop(timeout=5)
    print(f"lake watcher, {tables} idle tables: {listings / wall:.1f} listing requests per s, CPU {cpu / wall:.3f} s "
          f"per s over {wall:.1f} s (deliveries {len(done)})")
    print(f"RESULT tables={tables} listings_per_second={listings / wall:.2f} cpu_per_second={cpu / wall:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured (default 20)")
    parser.add_argument("--tables", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--skip-queue", action="store_true")
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    _count_listings()
    with Azurite() as azurite:
        if not args.skip_queue:
            queue_cpu(azurite, args.window)
        for count in args.tables:
            watcher_listings(azurite, count, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
