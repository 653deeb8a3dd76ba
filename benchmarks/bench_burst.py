"""Benchmark: a burst of 5,000 Delta commits over 50 tables -> 20 datasets (debounce 10 s), local runtime.

Set-up: Azurite and the Power BI simulator in this process; ``python -m refresh local`` as a
subprocess (through benchmarks/counting_runtime.py, which counts the storage requests the function
app makes; the runtime's own lake watcher and queue pollers are not counted). Table ``t`` feeds
dataset ``t % 20`` (debounce 10 s, max delay 600 s). Each table is created once with ``deltalake``
(version 0) and seen once by a sweep run in this process before the runtime starts (so every
watermark exists). The burst: versions 1..100 of every table, written directly as
``_delta_log/NNNNNNNNNNNNNNNNNNNN.json`` blobs with the blob SDK (16 threads, version by version
so a table's versions land in order; each commit a valid small one: commitInfo WRITE + one add).

Printed per mode (default polling, ``--strict-polling``): last commit landed -> last refresh POST
(floor: the 10 s debounce), refresh POSTs per dataset (must be exactly 1), and the function app's
storage requests per commit (floor about 1: each commit read once). Run:
    .venv/bin/python benchmarks/bench_burst.py [--mode both] [--tables 50] [--versions 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh.dev.powerbi_sim.simulator import PowerBISimulator  # noqa: E402 - after the path set-up
from refresh.dev.testing.azurite import Azurite, free_port  # noqa: E402

DEBOUNCE = 10


class TimedSimulator(PowerBISimulator):
    """The simulator, noting when each refresh POST arrives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.post_times: list[tuple[str, float]] = []
        self._times_lock = threading.Lock()

    def _dispatch(self, handler: Any) -> None:
        if handler.command == "POST" and handler.path.split("?")[0].endswith("/refreshes"):
            with self._times_lock:
                self.post_times.append((handler.path, time.time()))
        super()._dispatch(handler)


def commit_body(version: int) -> bytes:
    lines = [
        {"commitInfo": {"timestamp": int(time.time() * 1000), "operation": "WRITE",
                        "operationParameters": {"mode": "Append"}}},
        {"add": {"path": f"part-{version:05d}.parquet", "partitionValues": {}, "size": 100,
                 "modificationTime": int(time.time() * 1000), "dataChange": True}},
    ]
    return "\n".join(json.dumps(x) for x in lines).encode()


def _write_tables(host: str, port: int, path: str, sas: str, tables: list[str], versions: int,
                  go: Any, done: Any) -> None:
    """One writer thread: ``tables`` (its own), version by version, each PUT after the previous one of its
    table was acknowledged (so a table's versions land in order). Bodies are built before ``go``."""
    import http.client

    from refresh.detection.deltalog import commit_file_name

    bodies = {v: commit_body(v) for v in range(1, versions + 1)}
    connection = http.client.HTTPConnection(host, port, timeout=60)
    go.wait()
    for v in range(1, versions + 1):
        for table in tables:
            body = bodies[v]
            connection.request("PUT", f"{path}/{table}/_delta_log/{commit_file_name(v)}?{sas}", body=body,
                               headers={"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06",
                                        "Content-Length": str(len(body)), "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 201:
                raise RuntimeError(f"PUT {table} v{v}: HTTP {response.status}")
    connection.close()
    done.put(time.time())


def _writer_process(host: str, port: int, path: str, sas: str, groups: list[list[str]], versions: int,
                    ready: Any, go: Any, done: Any) -> None:
    """One writer process: a thread per group of tables."""
    local_go = threading.Event()
    threads = [threading.Thread(target=_write_tables, args=(host, port, path, sas, g, versions, local_go, done))
               for g in groups]
    for t in threads:
        t.start()
    ready.put(1)
    go.wait()
    local_go.set()
    for t in threads:
        t.join()


def write_burst(azurite: Azurite, container: str, tables: list[str], versions: int,
                writers: tuple[int, int]) -> tuple[float, float]:
    """Write versions 1..``versions`` of every table as real Delta commit files, from ``writers`` = (processes,
    threads per process) raw HTTP writers (pre-built bodies, one SAS for all, keep-alive connections; each
    table owned by one thread, so its versions land in order). Returns (start, when the last PUT was acked)."""
    import multiprocessing
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from refresh.dev.testing.azurite import ACCOUNT, KEY

    sas = generate_container_sas(ACCOUNT, container, account_key=KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, create=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=2))
    processes, threads = writers
    lanes = processes * threads
    groups = [[t for i, t in enumerate(tables) if i % lanes == lane] for lane in range(lanes)]
    ctx = multiprocessing.get_context("spawn")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer_process, daemon=True,
                         args=("127.0.0.1", azurite.blob_port, f"/{ACCOUNT}/{container}", sas,
                               [g for g in groups[p * threads:(p + 1) * threads] if g], versions, ready, go, done))
             for p in range(processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    start = time.time()
    go.set()
    finished = [done.get(timeout=600) for g in groups if g]
    for proc in procs:
        proc.join(timeout=30)
        if proc.exitcode not in (0, None):
            raise RuntimeError(f"a writer process failed (exit code {proc.exitcode})")
    return start, max(finished)


def cpu_seconds(*pids: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process and its children still running."""
    tick = os.sysconf("SC_CLK_TCK")
    result = {}
    for pid in pids:
        total = 0.0
        for p in [pid, *_descendants(pid)]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                continue
        result[pid] = total
    return result


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    for c in list(found):
        found.extend(_descendants(c))
    return found


def read_counts(path: Path) -> dict[str, int]:
    for _ in range(20):
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    return {}


def run(mode: str, table_count: int, versions: int, datasets: int, azurite: Azurite, workdir: Path,
        profile: Path | None = None, writers: tuple[int, int] = (4, 12)) -> dict:
    import pyarrow as pa
    from azure.storage.blob import BlobServiceClient
    from deltalake import write_deltalake

    from refresh.core.context import App
    from refresh.detection.sweep import sweep

    token = uuid.uuid4().hex[:8]
    container = f"burst{token}"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(container)
    sim = TimedSimulator(refresh_duration=1.0).start()
    workspace = sim.add_workspace("Bench", dedicated=True)
    tables = [f"gold/t{i:02d}" for i in range(table_count)]
    ids = {f"d{d:02d}": sim.add_dataset(workspace, f"Model {d:02d}") for d in range(datasets)}
    config = {"datasets": {f"d{d:02d}": {
        "workspace": "Bench", "dataset": f"Model {d:02d}",
        "sources": [{"table": t} for i, t in enumerate(tables) if i % datasets == d],
        "debounce_seconds": DEBOUNCE, "max_delay_seconds": 600} for d in range(datasets)}}
    options = azurite.deltalake_options()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: write_deltalake(f"az://{container}/{t}", pa.table({"v": [0]}),
                                                storage_options=options), tables))
    settings = {
        "AzureWebJobsStorage": azurite.connection_string, "LAKE_STORAGE": azurite.connection_string,
        "GOLD_CONTAINER": container, "REFRESH_QUEUE": f"jobs-{token}", "STATE_TABLE": f"State{token}",
        "OUTCOMES_TABLE": f"Outcomes{token}", "REFRESH_CONFIG": str(workdir / f"config-{token}.json"),
        "POWERBI_API_URL": sim.base_url, "IDENTITY_ENDPOINT": sim.identity_endpoint,
        "IDENTITY_HEADER": sim.identity_header, "SWEEP_SCHEDULE": "0 0 0 1 1 *",
    }
    (workdir / f"config-{token}.json").write_text(json.dumps(config))
    (workdir / f"settings-{token}.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
    app = App(env=settings)
    first = sweep(app.detector, app.watermarks, app.lake, app.states)  # every table seen at version 0
    assert first.tables == table_count and not first.errors, first
    state = workdir / f"state-{token}.json"
    counts_file = workdir / f"counts-{token}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "POWERBI_"))}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1", "COUNT_FILE": str(counts_file)})
    command = [sys.executable, str(ROOT / "benchmarks" / "counting_runtime.py"), "local",
               "--settings", str(workdir / f"settings-{token}.json"), "--port", str(free_port()),
               "--state-file", str(state)]
    if mode == "strict":
        command.append("--strict-polling")
    if profile is not None:  # sample the runtime's CPU with py-spy (pip install py-spy into .venv)
        command = [str(Path(sys.executable).with_name("py-spy")), "record", "-f", "raw", "-r", "50", "-o",
                   str(profile / f"runtime-{mode}-{token}.txt"), "--", *command]
    log_path = workdir / f"runtime-{token}.log"
    with log_path.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not state.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the runtime did not start; see {log_path}")
            time.sleep(0.1)
        time.sleep(1.0)
        before = read_counts(counts_file)
        cpu_before = cpu_seconds(azurite.process.pid, process.pid)
        children_before = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        start, landed = write_burst(azurite, container, tables, versions, writers)
        writers_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - children_before
        commits = table_count * versions
        print(f"  {mode}: {commits} commits written in {landed - start:.1f} s", flush=True)
        # done when every table's watermark is at its last version, every dataset has had a POST
        # and nothing is pending or running anywhere; then watch one more debounce for another refresh
        # (checked every 0.5 s: the benchmark's own queries load the same Azurite)
        deadline = time.monotonic() + 600
        detected = None
        while True:
            posted = {k for k, i in ids.items() if any(i in p for p, _ in sim.post_times)}
            marks, _ = app.watermarks.all()
            caught_up = all(m.version >= versions for m in marks.values()) and len(marks) == table_count
            if caught_up and detected is None:
                detected = time.time()
            if caught_up and len(posted) == len(ids) and _idle(app, ids):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"not every dataset refreshed ({len(posted)}/{len(ids)}); see {log_path}")
            time.sleep(0.5)
        last_post = max(t for _, t in sim.post_times)
        cpu_after, idle_at = cpu_seconds(azurite.process.pid, process.pid), time.time()
        time.sleep(DEBOUNCE + 5)
        after = read_counts(counts_file)
    finally:
        process.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        sim.stop()
    per_dataset = {k: sum(1 for p, _ in sim.post_times if i in p) for k, i in ids.items()}
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    total = sum(n for k, n in delta.items() if not k.startswith("runtime "))
    cpu = {"azurite": cpu_after[azurite.process.pid] - cpu_before[azurite.process.pid],
           "runtime": cpu_after[process.pid] - cpu_before[process.pid],
           "writers": writers_cpu,
           "wall": idle_at - start}
    return {"mode": mode, "commits": commits, "write_seconds": landed - start,
            "last_commit_to_last_post": last_post - landed, "posts": per_dataset,
            "detected_after": (detected or last_post) - landed, "cpu": cpu,
            "requests": total, "per_commit": total / commits, "by_kind": delta,
            "ports": {"blob": azurite.blob_port, "queue": azurite.queue_port, "table": azurite.table_port}}


def _idle(app: Any, ids: dict[str, str]) -> bool:
    from refresh.core import storage as tbl

    for key in ids:
        entity = app.states.get(key)
        if entity is not None and (tbl.get_json(entity, "running") or tbl.get_json(entity, "pending")):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=("default", "strict", "both"), default="both")
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--versions", type=int, default=100, help="commits per table")
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--writers", default="4,12", help="writer processes,threads per process (default 4,12)")
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy samples of the runtime here")
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    modes = ["default", "strict"] if args.mode == "both" else [args.mode]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for mode in modes:  # a fresh Azurite each: its requests get slower as its blobs add up
            writers = tuple(int(x) for x in args.writers.split(","))
            with Azurite() as azurite:
                results.append(run(mode, args.tables, args.versions, args.datasets, azurite, workdir, args.profile,
                                   (writers[0], writers[1])))
    for r in results:
        ports = {str(v): k for k, v in r["ports"].items()}
        kinds = {f"{ports.get(k.split()[0], k.split()[0])} {k.split(' ', 1)[1]}": n
                 for k, n in sorted(r["by_kind"].items()) if not k.startswith("runtime ")}
        own = {f"{ports.get(k.split()[1], k.split()[1])} {k.split(' ', 2)[2]}": n
               for k, n in sorted(r["by_kind"].items()) if k.startswith("runtime ")}
        refreshes = sorted(set(r["posts"].values()))
        print(f"\n{r['mode']}: {r['commits']} commits over {args.tables} tables -> {args.datasets} datasets "
              f"(written in {r['write_seconds']:.1f} s)")
        print(f"  last commit -> last refresh POST: {r['last_commit_to_last_post']:.1f} s "
              f"(floor {DEBOUNCE} s = the debounce; goal <= 30 s)")
        print(f"  every commit detected (all watermarks at the last version) {r['detected_after']:.1f} s after "
              f"the last commit (seen every 0.5 s)")
        print(f"  refresh POSTs per dataset: {refreshes} (goal: exactly [1])")
        c = r["cpu"]
        print(f"  CPU seconds from the first commit until all was idle ({c['wall']:.1f} s on {os.cpu_count()} cores): "
              f"Azurite {c['azurite']:.1f}, runtime {c['runtime']:.1f}, writers {c['writers']:.1f}")
        print(f"  function storage requests: {r['requests']} = {r['per_commit']:.2f} per commit "
              f"(floor ~1; goal <= 2.5)  {kinds}")
        print(f"  the local runtime's own storage requests (Event Grid's and the host's part, not the app's): "
              f"{sum(own.values())} {own}")
        print(f"RESULT mode={r['mode']} last_commit_to_last_post_s={r['last_commit_to_last_post']:.1f} "
              f"requests_per_commit={r['per_commit']:.2f} posts_per_dataset={refreshes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
