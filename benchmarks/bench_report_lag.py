"""Benchmark: how late the app reports a refresh's end, and how long a busy answer costs (issue 9 items 2, 3).

Runs the real worker (Azurite tables and queue, the Power BI simulator on loopback, the real
ManagedIdentityCredential) in virtual time: the queue's visibility delays and the refreshes' durations
pass on a fake clock shared by the app and the simulator (the pump of refresh/dev/testing/pump.py plays
the Functions host), so ten refreshes take seconds instead of minutes. Both clocks tell the same time.

* Report lag, per refresh: the outcome row's ``ended_at`` (the time of the check that saw the end)
  minus Power BI's ``endTime``, in virtual time, plus the real time that check's handling took (its
  Power BI and storage round trips): what a user waits beyond the refresh's real end.
* Busy wait: a POST answered "another refresh is already executing" while nothing runs; the time
  from that answer to the next POST (virtual; jittered, so several runs).

    .venv/bin/python benchmarks/bench_report_lag.py [--refreshes 10] [--duration 5] [--busy-runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from refresh.core.clock import parse_iso
from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import align_wall
from refresh.dev.powerbi_sim.simulator import PowerBISimulator
from refresh.dev.testing.azurite import Azurite
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs.pending import Change

CONFIG = {"datasets": {
    "enhanced": {"workspace": "Premium", "dataset": "Sales", "sources": [{"table": "e/fact"}],
                 "debounce_seconds": 0, "max_delay_seconds": 0},
    "standard": {"workspace": "Shared", "dataset": "Ops", "sources": [{"table": "s/fact"}],
                 "debounce_seconds": 0, "max_delay_seconds": 0},
}}


class Timed:
    """The pump's handler, timing each delivery in real time."""

    def __init__(self, app) -> None:
        self.app = app
        self.last = 0.0

    def __call__(self, msg) -> str:
        start = time.perf_counter()
        try:
            return self.app.worker.handle(msg.get_body(), dequeue_count=msg.dequeue_count)
        finally:
            self.last = time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--refreshes", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each refresh runs in Power BI")
    parser.add_argument("--busy-runs", type=int, default=10)
    args = parser.parse_args()
    # the simulator's clock moves only with the pump (no real-time drift between the two clocks)
    frozen = time.monotonic()
    with Azurite() as azurite, PowerBISimulator(clock=lambda: frozen, refresh_duration=args.duration,
                                                token_lifetime=30 * 86400) as sim:
        ids = {"enhanced": sim.add_dataset(sim.add_workspace("Premium", dedicated=True), "Sales"),
               "standard": sim.add_dataset(sim.add_workspace("Shared", dedicated=False), "Ops")}
        os.environ["IDENTITY_ENDPOINT"] = sim.identity_endpoint
        os.environ["IDENTITY_HEADER"] = sim.identity_header
        app = make_app(azurite.connection_string, CONFIG, POWERBI_API_URL=sim.base_url)
        app.__dict__["queue"] = VirtualQueue(app.queue, app.clock)
        align_wall(sim, app.clock.now())
        set_app(app)
        handler = Timed(app)
        pump = Pump(app.queue, handler, advance=[sim.advance])

        def tick(seconds: float) -> None:
            app.clock.advance(seconds)
            sim.advance(seconds)

        version = 0
        for kind in ("enhanced", "standard"):
            lags, handling = [], []
            for _ in range(args.refreshes):
                version += 1
                rec = app.states.record(kind, Change(trigger="commit", table=f"{kind[0]}/fact", versions=(version,),
                                                     model_tables=None, debounce_seconds=0, max_delay_seconds=0))
                pump.run()
                row = app.outcomes.get(rec.job_id)
                assert row["status"] == "Completed", row
                [pbi] = [e for e in sim.refreshes(ids[kind]) if e["requestId"] == row["request_id"]]
                virtual = (parse_iso(row["ended_at"]) - parse_iso(pbi["endTime"])).total_seconds()
                lags.append(virtual + handler.last)
                handling.append(handler.last)
                tick(3 * 3600 if kind == "standard" else 60)  # standard: stay clear of the daily limit of 8
            print(f"{kind} refreshes of {args.duration:g} s, {args.refreshes} in a row: report lag (s) = "
                  + ", ".join(f"{v:.2f}" for v in lags))
            print(f"  max {max(lags):.2f} s, after the first {max(lags[1:]):.2f} s; handling of the reporting "
                  f"check (real time) median {statistics.median(handling) * 1000:.0f} ms")

        waits = []
        for _ in range(args.busy_runs):
            sim.busy_next()
            sent: list = []
            real = app.powerbi.start_refresh

            def start(*a, _real=real, _sent=sent, **k):
                _sent.append(app.clock.now())
                return _real(*a, **k)

            app.powerbi.start_refresh = start
            version += 1
            app.states.record("enhanced", Change(trigger="commit", table="e/fact", versions=(version,),
                                                 model_tables=None, debounce_seconds=0, max_delay_seconds=0))
            pump.run()
            del app.powerbi.start_refresh
            if len(sent) < 2:
                print("  busy answer: no second POST (the job took another refresh as its own)")
            else:
                waits.append((sent[1] - sent[0]).total_seconds())
            tick(60)
        if waits:
            print(f"busy answer with nothing running, {len(waits)} runs: wait until the next POST (s) = "
                  + ", ".join(f"{w:.1f}" for w in waits))
            print(f"  median {statistics.median(waits):.1f} s, max {max(waits):.1f} s")
        set_app(None)


if __name__ == "__main__":
    main()
