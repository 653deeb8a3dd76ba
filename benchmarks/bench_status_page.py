"""Benchmark: the status views at 2, 50 and 300 configured datasets, each with 20 outcome rows, against Azurite.

For ``GET /api/status`` (the overview) and ``GET /api/datasets`` prints the median wall time of the
handler, the storage requests per view (counted by a pipeline policy on every SDK client of the app)
and the size of the answer, with the floors and goals of issue 13 (≤ 200 ms median, ≤ 5 requests per
view, page ≤ 400 KB). The data is seeded as the worker leaves it: outcome rows, the dataset state
entities (refreshes started in the last 24 h, last success; a few datasets with a pending job and a
freshness record) and, where the code has them (refresh/jobs/summaries.py), the per-dataset summaries
written at each job end. Runs on older commits too (then without summaries). Run:

    .venv/bin/python benchmarks/bench_status_page.py [--sizes 2,50,300] [--rows 20] [--repeat 9]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import azure.functions as func

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refresh.core import storage as tables
from refresh.core.clock import iso
from refresh.core.context import set_app
from refresh.dev.testing.azurite import Azurite
from refresh.dev.testing.harness import make_app
from refresh.surfaces import http_api

GOAL_MS, GOAL_REQUESTS, GOAL_BYTES = 200, 5, 400_000
STATUSES = ["Completed"] * 8 + ["Failed", "Skipped"]
PBI_ERROR = ("The credentials provided for the SQL source 'sqlsrv-finance' are invalid. "
             "Please update the data source credentials in the dataset settings and try again.")


class CountingPolicy:
    """Counts every request the storage clients send, retries included: the callable given to azure-core's
    ``CustomHookPolicy`` (``raw_request_hook``), which sits in each client's pipeline right before the transport
    (azure-data-tables builds its own policy list and ignores ``per_call_policies``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def __call__(self, request) -> None:
        with self.lock:
            self.count += 1


def _config(n: int) -> dict:
    return {"datasets": {
        f"ds{i:03d}": {"workspace": f"Workspace {i % 7}", "dataset": f"Model {i}",
                       "sources": [{"table": f"gold/domain{i % 9}/fact_{i:03d}"}, {"table": f"gold/dim_{i % 5}"}],
                       "freshness_slo_minutes": 60, **({"schedule": "0 0 6 * * *"} if i % 4 == 0 else {})}
        for i in range(n)}}


def _seed(app, n: int, rows: int) -> bool:
    """Outcome rows, state entities and (when the code has them) summaries; returns whether summaries exist."""
    try:
        summaries = importlib.import_module("refresh.jobs.summaries")
        from refresh.jobs.outcomes import to_public
    except ImportError:
        summaries = None
    now = app.clock.now()

    def one(i: int) -> None:
        key = f"ds{i:03d}"
        starts = []
        for r in range(rows):
            queued = now - timedelta(minutes=70 * (rows - r))
            status = STATUSES[(i + r) % len(STATUSES)]
            table = f"gold/domain{i % 9}/fact_{i:03d}"
            fields = {"status": status, "trigger": "commit", "triggers": ["commit"], "requested_by": [],
                      "reasons": [], "model_tables": [], "refresh_type": "enhanced",
                      "sources": {table: {"first_version": r * 3, "last_version": r * 3 + 2, "commits": 3}}}
            if status == "Skipped":
                fields.update(trigger="schedule", triggers=["schedule"], ended_at=iso(queued),
                              detail="nothing changed since the last completed refresh")
            else:
                started = queued + timedelta(seconds=30)
                fields.update(started_at=iso(started), ended_at=iso(started + timedelta(seconds=300 + r)),
                              duration_seconds=float(300 + r), request_id=f"{i:08d}-0000-4000-8000-{r:012d}")
                starts.append(iso(started))
            if status == "Failed":
                fields.update(error_code="ModelRefreshFailed_CredentialsNotSpecified", error_message=PBI_ERROR)
            row = app.outcomes.create(key, f"{i:016x}{r:016x}", queued, fields)
            if summaries is not None:
                summaries.note_end(app.states, key, to_public(row))
        record = None
        if i % 10 == 3:  # a few datasets have new commits waiting: a freshness record says since when
            from refresh.monitoring.freshness import FreshnessRecord, commit_time, record_commits
            record = FreshnessRecord.from_entity(None)
            record_commits(record, f"gold/domain{i % 9}/fact_{i:03d}",
                           [commit_time(99, int((now - timedelta(minutes=5 + i)).timestamp() * 1000), None, now)])

        def put(state: dict) -> bool:
            state["last_success_at"] = starts[-1]
            tables.put_json(state, "starts", starts)
            if record is not None:
                record.to_entity(state)
            return True

        app.states.update(key, put)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    return summaries is not None


def _measure(handler, repeat: int, counter: CountingPolicy) -> tuple[float, int, int, int]:
    """(median ms, requests of one view, bytes, status code); the first call warms up and is not timed."""
    req = func.HttpRequest("GET", "https://refresh.example.net/api/x", headers={}, params={}, route_params={},
                           body=b"")
    handler(req)
    times, requests = [], []
    resp = None
    for _ in range(repeat):
        before = counter.count
        start = time.perf_counter()
        resp = handler(req)
        times.append((time.perf_counter() - start) * 1000)
        requests.append(counter.count - before)
    assert resp is not None
    return statistics.median(times), max(requests), len(resp.get_body()), resp.status_code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2,50,300")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"status views: {args.rows} outcome rows per dataset; median of {args.repeat} views after one warm-up; "
          f"goals: <= {GOAL_MS} ms, <= {GOAL_REQUESTS} storage requests per view, page <= {GOAL_BYTES // 1000} KB; "
          "floor: 1 query")
    with Azurite() as azurite:
        for n in sizes:
            counter = CountingPolicy()
            app = make_app(azurite.connection_string, _config(n),
                           client_kwargs={"raw_request_hook": counter},
                           STATE_TABLE=f"BenchState{n}", OUTCOMES_TABLE=f"BenchOutcomes{n}")
            set_app(app)
            _ = app.state_table, app.outcomes_table
            has_summaries = _seed(app, n, args.rows)
            for name, handler in (("GET /api/status", http_api.status_page),
                                  ("GET /api/datasets", http_api.list_datasets)):
                ms, requests, size, code = _measure(handler, args.repeat, counter)
                assert code == 200, (name, code)
                ok = ms <= GOAL_MS and requests <= GOAL_REQUESTS and (name != "GET /api/status" or size <= GOAL_BYTES)
                print(f"RESULT datasets={n:>3} {name:<18} median_ms={ms:7.1f} requests_per_view={requests:>4} "
                      f"bytes={size:>8} summaries={'yes' if has_summaries else 'no'} "
                      f"{'meets goals' if ok else 'misses goals'}")
            set_app(None)


if __name__ == "__main__":
    main()
