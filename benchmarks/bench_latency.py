"""Benchmark: time from a Delta commit landing to the refresh POST, in the local runtime, debounce 0.

Set-up: Azurite (the pinned one) and the Power BI simulator run in this process;
``python -m refresh local`` runs as a subprocess with ``--trace`` (one JSON line per invocation)
and is given both through ``local.settings.json`` (nothing embedded). The routing config has one
dataset per table (``bench/t00``..``bench/tNN``, debounce 0, max delay 0) so that a sample never
waits for another sample's refresh lease. For each sample a row is appended with ``deltalake`` to
the next table, after a random pause (``--gap``, default 0.5-5 s: commits land at random phases
of the pollers, sometimes after the queue poller has backed off all the way), and the sample ends
when the simulator receives that dataset's refresh POST.

Times (wall clock, one machine):

* ``landed``: when ``write_deltalake`` returned (the commit blob's PUT is its last request);
* ``seen``: when the lake watcher's listing that found the commit returned (trace ``noticed``);
* ``enqueued``: the earlier of the first detection invocation's end and the queue receive;
* ``received``: when the queue poller received the job message (trace ``noticed``);
* ``post``: when the simulator received the POST (recorded by a subclass, server side).

Split: *polling wait* = (seen - landed) + (received - enqueued); *processing* = (enqueued - seen)
+ (post - received). Two runs: the default runtime (queues are also polled right after any
function ran) and ``--strict-polling`` (only host.json's back-off, 100 ms doubling to
``maxPollingInterval`` = 2 s, which is how the queue wait behaves on the Functions host).

Run: ``.venv/bin/python benchmarks/bench_latency.py [--samples 40] [--tables 12] [--mode both]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh.dev.powerbi_sim.simulator import PowerBISimulator  # noqa: E402 - after the path set-up
from refresh.dev.testing.azurite import Azurite, free_port  # noqa: E402


class TimedSimulator(PowerBISimulator):
    """The simulator, noting when each refresh POST arrives (before it is handled)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.post_times: list[tuple[str, float]] = []
        self._times_lock = threading.Lock()

    def _dispatch(self, handler: Any) -> None:
        if handler.command == "POST" and handler.path.split("?")[0].endswith("/refreshes"):
            with self._times_lock:
                self.post_times.append((handler.path, time.time()))
        super()._dispatch(handler)


@dataclass
class Sample:
    table: str
    version: int
    landed: float
    post: float
    seen: float | None = None
    enqueued: float | None = None
    received: float | None = None

    @property
    def total(self) -> float:
        return self.post - self.landed

    @property
    def lake_wait(self) -> float:
        return (self.seen or self.landed) - self.landed

    @property
    def detection(self) -> float:
        return (self.enqueued or self.post) - (self.seen or self.landed)

    @property
    def queue_wait(self) -> float:
        return max(0.0, (self.received or self.post) - (self.enqueued or self.post))

    @property
    def worker(self) -> float:
        return self.post - (self.received or self.post)

    @property
    def processing(self) -> float:
        return self.detection + self.worker

    @property
    def polling(self) -> float:
        return self.lake_wait + self.queue_wait


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def run(mode: str, samples: int, table_count: int, azurite: Azurite, workdir: Path,
        gap: tuple[float, float] = (0.5, 5.0)) -> list[Sample]:
    import pyarrow as pa
    from deltalake import write_deltalake

    from refresh.core.context import App

    token = uuid.uuid4().hex[:8]
    container = f"bench{token}"
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    sim = TimedSimulator(refresh_duration=1.0).start()
    workspace = sim.add_workspace("Bench", dedicated=True)
    tables = [f"bench/t{i:02d}" for i in range(table_count)]
    dataset_ids = {f"d{i:02d}": sim.add_dataset(workspace, f"Model {i:02d}") for i in range(table_count)}
    config = {"datasets": {f"d{i:02d}": {"workspace": "Bench", "dataset": f"Model {i:02d}",
                                         "sources": [{"table": t, "model_tables": ["Fact"]}],
                                         "debounce_seconds": 0, "max_delay_seconds": 0}
                           for i, t in enumerate(tables)}}
    options = azurite.deltalake_options()
    for table in tables:
        write_deltalake(f"az://{container}/{table}", pa.table({"v": [0]}), storage_options=options)
    settings = {
        "AzureWebJobsStorage": azurite.connection_string, "LAKE_STORAGE": azurite.connection_string,
        "GOLD_CONTAINER": container, "REFRESH_QUEUE": f"jobs-{token}", "STATE_TABLE": f"State{token}",
        "OUTCOMES_TABLE": f"Outcomes{token}", "REFRESH_CONFIG": str(workdir / f"config-{token}.json"),
        "POWERBI_API_URL": sim.base_url, "IDENTITY_ENDPOINT": sim.identity_endpoint,
        "IDENTITY_HEADER": sim.identity_header, "SWEEP_SCHEDULE": "0 0 0 1 1 *",
    }
    (workdir / f"config-{token}.json").write_text(json.dumps(config))
    (workdir / f"settings-{token}.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
    trace = workdir / f"trace-{token}.jsonl"
    state = workdir / f"state-{token}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "POWERBI_"))}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"})
    command = [sys.executable, "-m", "refresh", "local", "--settings", str(workdir / f"settings-{token}.json"),
               "--port", str(free_port()), "--state-file", str(state), "--trace", str(trace)]
    if mode == "strict":
        command.append("--strict-polling")
    log_path = workdir / f"runtime-{token}.log"
    with log_path.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    app = App(env=settings)
    results: list[Sample] = []
    try:
        deadline = time.monotonic() + 60
        while not state.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the runtime did not start; see {log_path}")
            time.sleep(0.1)
        rng = random.Random(7)
        versions = dict.fromkeys(tables, 0)
        for i in range(samples):
            key = f"d{i % table_count:02d}"
            table = tables[i % table_count]
            _wait_idle(app, key)  # the previous job of this dataset ended (its lease is free)
            time.sleep(rng.uniform(*gap))
            before = len([p for p, _ in sim.post_times if dataset_ids[key] in p])
            write_deltalake(f"az://{container}/{table}", pa.table({"v": [i + 1]}), mode="append",
                            storage_options=options)
            landed = time.time()
            versions[table] += 1
            deadline = time.monotonic() + 30
            while True:
                mine = [t for p, t in sim.post_times if dataset_ids[key] in p]
                if len(mine) > before:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no POST for {table} v{versions[table]}; see {log_path}")
                time.sleep(0.005)
            results.append(Sample(table, versions[table], landed, mine[before]))
            print(f"  {mode:7} sample {i + 1:3}/{samples}: {table} v{versions[table]} "
                  f"{(mine[before] - landed) * 1000:6.0f} ms", flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        sim.stop()
    _attach_trace(results, trace)
    return results


def _wait_idle(app: Any, key: str, timeout: float = 60) -> None:
    from refresh.core import storage as tbl

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entity = app.states.get(key)
        if entity is None or (not tbl.get_json(entity, "running") and not tbl.get_json(entity, "pending")):
            return
        time.sleep(0.2)
    raise RuntimeError(f"dataset {key} stayed busy for {timeout} s")


def _message_text(body: str) -> str:
    """A queue message's text as the app reads it: host.json hands the base64 text over as it is
    (``messageEncoding`` none) and the app decodes it (refresh/jobs/messages.py)."""
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error and UnicodeDecodeError are ValueErrors): plain JSON
        return body


def _attach_trace(samples: list[Sample], trace: Path) -> None:
    records = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    for r in records:
        if r["trigger"] == "queueTrigger" and "body" in r["detail"]:
            r["detail"]["body"] = _message_text(r["detail"]["body"])
    for sample in samples:
        tag = f"{sample.table} v{sample.version}"
        detection = [r for r in records if r["trigger"] in ("blobTrigger", "eventGridTrigger")
                     and r["summary"].endswith(tag)]
        if not detection:
            continue
        sample.seen = min(r["noticed"] for r in detection)
        first_end = min(r["end"] for r in detection)
        dataset = f"d{int(sample.table.rsplit('t', 1)[1]):02d}"
        jobs = [r for r in records if r["trigger"] == "queueTrigger" and r["detail"].get("dequeue_count") == 1
                and '"type":"job"' in r["detail"].get("body", "") and f'"dataset":"{dataset}"' in
                r["detail"].get("body", "") and sample.seen <= r["noticed"] <= sample.post]
        if jobs:
            sample.received = min(r["noticed"] for r in jobs)
            sample.enqueued = min(first_end, sample.received)


def report(mode: str, samples: list[Sample]) -> None:
    def row(name: str, values: list[float]) -> str:
        return (f"  {name:28} p50 {percentile(values, 50) * 1000:6.0f} ms   p95 {percentile(values, 95) * 1000:6.0f} ms"
                f"   max {max(values) * 1000:6.0f} ms")

    print(f"\n{mode}: {len(samples)} commits")
    print(row("commit -> POST (total)", [s.total for s in samples]))
    print(row("polling wait", [s.polling for s in samples]))
    print(row("  lake watcher (seen)", [s.lake_wait for s in samples]))
    print(row("  queue poller (received)", [s.queue_wait for s in samples]))
    print(row("processing", [s.processing for s in samples]))
    print(row("  detection (its trigger)", [s.detection for s in samples]))
    print(row("  worker (receive -> POST)", [s.worker for s in samples]))
    missing = sum(1 for s in samples if s.seen is None or s.received is None)
    if missing:
        print(f"  ({missing} samples without a complete trace: split estimated)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--tables", type=int, default=10)
    parser.add_argument("--gap", type=float, nargs=2, default=(0.5, 5.0), metavar=("MIN", "MAX"),
                        help="random pause before each commit, in seconds (default 0.5 5.0)")
    parser.add_argument("--mode", choices=("default", "strict", "both"), default="both")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the runtime logs, traces and configs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    modes = ["default", "strict"] if args.mode == "both" else [args.mode]
    with Azurite() as azurite, tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        found = {mode: run(mode, args.samples, args.tables, azurite, workdir, tuple(args.gap)) for mode in modes}
    for mode, samples in found.items():
        report(mode, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
