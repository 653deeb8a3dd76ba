"""Benchmark: sweeps over a ``gold/**`` glob with 2,000 nested tables and over 10,000 explicit tables.

Against Azurite, counting every storage request of the app's clients (``raw_request_hook``).
Glob part: ``gold/d00..d19/s0..s9/t0..t9`` (221 folders that are not tables), each table with one
commit and data files (3 files at its root and 3 in a partition folder), one dataset listening to
``gold/**``. Explicit part: ``domainNN/table_NNNNN`` in 10 datasets. For each: the first sweep
(tables seen for the first time), then 3 sweeps with nothing new; printed with their floor (one
request per table: the probe of the commit after its watermark) and the process's peak memory.
Run: ``.venv/bin/python benchmarks/bench_glob_sweep.py [--nested 2000] [--explicit 10000]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh.detection.deltalog import commit_file_name  # noqa: E402 - after the path set-up
from refresh.detection.sweep import sweep  # noqa: E402
from refresh.dev.testing.azurite import Azurite  # noqa: E402
from refresh.dev.testing.harness import make_app  # noqa: E402

COMMIT = "\n".join(json.dumps(x) for x in (
    {"commitInfo": {"timestamp": 1, "operation": "CREATE TABLE"}},
    {"add": {"path": "a.parquet", "partitionValues": {}, "size": 1, "modificationTime": 1, "dataChange": True}},
)).encode()


class Counter:
    """raw_request_hook: counts every storage request by method."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __call__(self, request) -> None:
        http = request.http_request
        kind = "list" if "comp=list" in http.url else http.method
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(label: str, azurite: Azurite, config: dict, blobs: list[str], tables: int) -> dict:
    counter = Counter()
    app = make_app(azurite.connection_string, config, token=uuid.uuid4().hex[:8],
                   client_kwargs={"raw_request_hook": counter})
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda b: app.lake.upload_blob(b, COMMIT if "_delta_log/" in b else b"x"), blobs))
    print(f"{label}: {len(blobs)} blobs written in {time.perf_counter() - start:.1f} s", flush=True)
    _ = app.states, app.watermarks
    counter.reset()
    start = time.perf_counter()
    first = sweep(app.detector, app.watermarks, app.lake, app.states, app.settings.sweep_concurrency)
    first_time, first_requests = time.perf_counter() - start, counter.total()
    assert first.tables == tables and not first.errors, (first.tables, tables, first.errors)
    print(f"  first sweep (tables seen for the first time): {first_time:.2f} s, {first_requests} requests "
          f"({first_requests / tables:.3f} per table) {dict(counter.counts)}", flush=True)
    runs = []
    for _ in range(3):
        counter.reset()
        start = time.perf_counter()
        res = sweep(app.detector, app.watermarks, app.lake, app.states, app.settings.sweep_concurrency)
        wall = time.perf_counter() - start
        assert res.new_commits == 0 and not res.errors and res.tables == tables
        runs.append((wall, counter.total(), dict(counter.counts)))
        print(f"  steady sweep: {wall:.2f} s, {counter.total()} requests = {counter.total() / tables:.3f} per table "
              f"(floor 1.000) {dict(counter.counts)}", flush=True)
    best = min(runs)
    print(f"RESULT {label} tables={tables} requests_per_table={best[1] / tables:.3f} wall_seconds={best[0]:.2f} "
          f"first_sweep_seconds={first_time:.2f} peak_rss_mb={peak_mb():.0f}", flush=True)
    return {"label": label, "wall": best[0], "per_table": best[1] / tables}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nested", type=int, default=2000, help="tables under gold/** (multiple of 100)")
    parser.add_argument("--explicit", type=int, default=10000, help="explicit tables (0: skip)")
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"peak RSS before: {peak_mb():.0f} MB")
    with Azurite() as azurite:
        if args.nested:
            nested = [f"gold/d{a:02d}/s{b}/t{c}" for a in range(args.nested // 100) for b in range(10)
                      for c in range(10)]
            blobs = []
            for t in nested:
                blobs.append(f"{t}/_delta_log/{commit_file_name(0)}")
                blobs += [f"{t}/part-{i:05d}.parquet" for i in range(3)]
                blobs += [f"{t}/day=2026-01-01/part-{i:05d}.parquet" for i in range(3)]
            config = {"datasets": {"gold": {"workspace": "W", "dataset": "Gold", "sources": [{"table": "gold/**"}]}}}
            measure("glob gold/**", azurite, config, blobs, len(nested))
        if args.explicit:
            names = [f"domain{i % 20:02d}/table_{i:05d}" for i in range(args.explicit)]
            per = max(1, len(names) // 10)
            config = {"datasets": {
                f"ds{d}": {"workspace": "W", "dataset": f"Model {d}",
                           "sources": [{"table": t} for t in names[d * per:(d + 1) * per]]}
                for d in range(10)}}
            measure("explicit", azurite, config, [f"{t}/_delta_log/{commit_file_name(0)}" for t in names],
                    len(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
