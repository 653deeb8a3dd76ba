"""Benchmark: refresh jobs one worker takes through start and completion against the Power BI simulator.

Reports jobs per second of our own overhead (time inside Power BI calls excluded; the refresh itself
runs on the simulator's virtual clock), Power BI calls per completed refresh with a warm name cache
(goal: at most 3 on average) and Table Storage / queue requests per job.

    .venv/bin/python benchmarks/bench_worker.py [--jobs 60] [--datasets 6]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from refresh.core.context import set_app
from refresh.dev.powerbi_sim.simulator import PowerBISimulator
from refresh.dev.testing.azurite import Azurite
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs.pending import Change


class Counter:
    def __init__(self, ports: dict[int, str]) -> None:
        self.ports = ports
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request) -> None:
        url = request.http_request.url
        port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        name = self.ports.get(port, str(port))
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def reset(self) -> None:
        self.counts.clear()


class TimedPowerBI:
    """Wraps the client to measure time spent in Power BI calls."""

    def __init__(self, client) -> None:
        self.client = client
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return attr(*a, **k)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--datasets", type=int, default=6)
    args = parser.parse_args()
    config = {"datasets": {f"ds{i}": {"workspace": f"Workspace {i}", "dataset": f"Model {i}",
                                      "sources": [{"table": f"t{i}/fact", "model_tables": ["Fact"]}],
                                      "debounce_seconds": 0, "max_delay_seconds": 0}
                           for i in range(args.datasets)}}
    with Azurite() as azurite, PowerBISimulator(refresh_duration=45, token_lifetime=30 * 86400) as sim:
        # tokens: the simulator judges expiry on its virtual clock, azure-identity caches on the wall
        # clock; a long lifetime keeps the jumps in virtual time from forcing a token retry per job
        for i in range(args.datasets):
            ws = sim.add_workspace(f"Workspace {i}", dedicated=i % 2 == 0)  # half enhanced, half standard
            sim.add_dataset(ws, f"Model {i}")
        os.environ["IDENTITY_ENDPOINT"] = sim.identity_endpoint
        os.environ["IDENTITY_HEADER"] = sim.identity_header
        counter = Counter({azurite.table_port: "table", azurite.queue_port: "queue", azurite.blob_port: "blob"})
        app = make_app(azurite.connection_string, config, POWERBI_API_URL=sim.base_url,
                       client_kwargs={"raw_request_hook": counter})
        app.__dict__["queue"] = VirtualQueue(app.queue, app.clock)
        timed = TimedPowerBI(app.powerbi)
        app.__dict__["powerbi"] = timed
        set_app(app)
        handler = lambda msg: app.worker.handle(msg.get_body(), dequeue_count=msg.dequeue_count)  # noqa: E731
        pump = Pump(app.queue, handler, advance=[sim.advance])

        def run_jobs(n: int, version_base: int) -> list[str]:
            ids = []
            for j in range(n):
                key = f"ds{j % args.datasets}"
                rec = app.states.record(key, Change(trigger="commit", table=f"t{j % args.datasets}/fact",
                                                   versions=(version_base + j,), model_tables=frozenset({"Fact"}),
                                                   debounce_seconds=0, max_delay_seconds=0))
                ids.append(rec.job_id)
                pump.run()
                app.clock.advance(3600 * 3)  # stay clear of the shared-capacity daily limit
                sim.advance(3600 * 3)
            return ids

        run_jobs(args.datasets * 2, 0)  # warm: name cache, durations history, connections
        counter.reset()
        timed.seconds = 0.0
        calls_before = app.powerbi.client.calls
        sim.clear_requests()
        start = time.perf_counter()
        ids = run_jobs(args.jobs, 10_000)
        wall = time.perf_counter() - start
        statuses = [app.outcomes.get(i)["status"] for i in ids]
        assert statuses == ["Completed"] * len(ids), statuses
        pbi_calls = app.powerbi.client.calls - calls_before
        ours = wall - timed.seconds
        print(f"{len(ids)} jobs ({args.datasets} datasets, half enhanced / half standard), all Completed")
        print(f"wall {wall:.2f} s, of which inside Power BI calls {timed.seconds:.2f} s")
        print(f"our overhead: {ours / len(ids) * 1000:.1f} ms per job -> {len(ids) / ours:.1f} jobs/s "
              "(start + checks + completion; includes Table Storage and queue round trips to Azurite)")
        print(f"Power BI calls per completed refresh (warm name cache): {pbi_calls / len(ids):.2f}")
        by_kind = {k: round(v / len(ids), 2) for k, v in sorted(counter.counts.items())}
        print(f"storage requests per job: {by_kind} (the job's creation included)")
        print(f"RESULT jobs_per_second={len(ids) / ours:.1f} powerbi_calls_per_refresh={pbi_calls / len(ids):.2f} "
              f"table_calls_per_job={counter.counts.get('table', 0) / len(ids):.1f}")


if __name__ == "__main__":
    main()
