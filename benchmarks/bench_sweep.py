"""Benchmark: a sweep over 1,000 configured gold tables with no new commits, against Azurite.

Prints storage requests per table (goal: at most 1) and wall time. Run:
    .venv/bin/python benchmarks/bench_sweep.py [--tables 1000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from refresh.detection.deltalog import commit_file_name
from refresh.detection.sweep import sweep
from refresh.dev.testing.azurite import Azurite
from refresh.dev.testing.harness import make_app


class Counter:
    """raw_request_hook: counts every storage request by service and method."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __call__(self, request) -> None:
        http = request.http_request
        port = http.url.split("://", 1)[1].split("/", 1)[0]
        key = f"{http.method} {port}"
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--datasets", type=int, default=10)
    args = parser.parse_args()
    names = [f"domain{i % 20}/table_{i:04d}" for i in range(args.tables)]
    per = max(1, len(names) // args.datasets)
    config = {"datasets": {
        f"ds{d}": {"workspace": "W", "dataset": f"Model {d}",
                   "sources": [{"table": t} for t in names[d * per:(d + 1) * per]]}
        for d in range(args.datasets)
    }}
    commit = "\n".join(json.dumps(x) for x in (
        {"commitInfo": {"timestamp": 1, "operation": "CREATE TABLE"}},
        {"add": {"path": "a.parquet", "partitionValues": {}, "size": 1, "modificationTime": 1, "dataChange": True}},
    )).encode()
    with Azurite() as azurite:
        counter = Counter()
        app = make_app(azurite.connection_string, config, client_kwargs={"raw_request_hook": counter})
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda t: app.lake.upload_blob(f"{t}/_delta_log/{commit_file_name(0)}", commit), names))
        _ = app.states, app.watermarks  # create table and queue before counting
        counter.reset()
        start = time.perf_counter()
        first = sweep(app.detector, app.watermarks, app.lake, app.states, app.settings.sweep_concurrency)
        first_time, first_requests = time.perf_counter() - start, counter.total()
        results = []
        for _ in range(3):
            counter.reset()
            start = time.perf_counter()
            res = sweep(app.detector, app.watermarks, app.lake, app.states, app.settings.sweep_concurrency)
            results.append((time.perf_counter() - start, counter.total(), dict(counter.counts), res))
        best = min(results, key=lambda r: r[0])
        print(f"tables: {len(names)} in {args.datasets} datasets; sweep concurrency "
              f"{app.settings.sweep_concurrency}")
        print(f"first sweep (tables seen for the first time): {first_time:.2f} s, {first_requests} requests "
              f"({first_requests / len(names):.3f} per table), new commits {first.new_commits}")
        for wall, total, counts, res in results:
            assert res.new_commits == 0 and not res.errors
            print(f"steady sweep, no new commits: {wall:.2f} s, {total} requests = "
                  f"{total / len(names):.3f} per table  {counts}")
        print(f"RESULT requests_per_table={best[1] / len(names):.3f} wall_seconds={best[0]:.2f} "
              f"tables_per_second={len(names) / best[0]:.0f}")


if __name__ == "__main__":
    main()
