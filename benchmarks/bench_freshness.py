"""Benchmark: what freshness tracking (issue 12) costs in storage requests, and breach-to-notification time.

Counts every Table Storage / queue / blob request (azure-core ``raw_request_hook``) of the wired app
(refresh/core/context.py) on Azurite, against the Power BI simulator, in virtual time:

* per job (commit recorded with its commit time -> refresh started -> Completed, or Failed with an
  alert), with freshness tracking wired and with it unwired (``worker.freshness = None``, commits
  without times): the difference is what tracking costs;
* per every-minute timer run (``FreshnessTracker.tick``) over N datasets: quiet, and on a breach;
* breach to notification: from the timer run that sees the breach to the webhook sink (loopback)
  receiving ``freshness_breached`` (wall time of our own work: the tick, the alert row, the queue
  message, its delivery and the POST); the timer's period (60 s) comes on top in the worst case.

    .venv/bin/python benchmarks/bench_freshness.py [--jobs 30] [--datasets 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from datetime import timedelta

from refresh.core.context import set_app
from refresh.dev.powerbi_sim.extras import align_wall
from refresh.dev.powerbi_sim.simulator import PowerBISimulator
from refresh.dev.testing.azurite import Azurite
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.dev.testing.webhook_sink import WebhookSink
from refresh.jobs.pending import Change
from refresh.monitoring.freshness import CommitTime


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

    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--datasets", type=int, default=20)
    args = parser.parse_args()
    n = args.datasets
    config = {"datasets": {f"ds{i}": {"workspace": "Bench", "dataset": f"Model {i}",
                                      "sources": [{"table": f"t{i}/fact"}], "debounce_seconds": 0,
                                      "max_delay_seconds": 0, "freshness_slo_minutes": 30}
                           for i in range(n)}}
    with Azurite() as azurite, PowerBISimulator(refresh_duration=45, token_lifetime=30 * 86400) as sim, \
            WebhookSink() as sink:
        ws = sim.add_workspace("Bench", dedicated=False)
        ids = {f"ds{i}": sim.add_dataset(ws, f"Model {i}") for i in range(n)}
        os.environ["IDENTITY_ENDPOINT"] = sim.identity_endpoint
        os.environ["IDENTITY_HEADER"] = sim.identity_header
        counter = Counter({azurite.table_port: "table", azurite.queue_port: "queue", azurite.blob_port: "blob"})
        app = make_app(azurite.connection_string, config, POWERBI_API_URL=sim.base_url, ALERT_WEBHOOK_URL=sink.url,
                       client_kwargs={"raw_request_hook": counter})
        align_wall(sim, app.clock.now())
        app.__dict__["queue"] = VirtualQueue(app.queue, app.clock)
        set_app(app)
        worker = app.worker
        tracker = app.freshness

        def handler(msg) -> None:
            from refresh.monitoring.alerts import is_alert_message

            body = msg.get_body()
            if is_alert_message(body):
                app.alerter.handle(body)
            else:
                worker.handle(body, dequeue_count=msg.dequeue_count)

        pump = Pump(app.queue, handler, advance=[sim.advance])
        version = [0]

        def job(key: str, tracked: bool, fail: bool = False) -> int:
            if fail:
                sim.fail_refresh(ids[key])
            version[0] += 1
            times = (CommitTime(version[0], app.clock.now()),) if tracked else ()
            counter.reset()
            app.states.record(key, Change(trigger="commit", table=f"t{key[2:]}/fact", versions=(version[0],),
                                          model_tables=None, debounce_seconds=0, max_delay_seconds=0,
                                          commit_times=times))
            pump.run()
            used = counter.total()
            app.clock.advance(3 * 3600)  # stay clear of the shared-capacity daily limit
            sim.advance(3 * 3600)
            return used

        def per_job(tracked: bool, fail: bool = False) -> float:
            worker.freshness = tracker if tracked else None
            return statistics.mean(job(f"ds{j % n}", tracked, fail) for j in range(args.jobs))

        for i in range(n):  # warm-up: name cache, durations, every dataset's entity and row partitions
            job(f"ds{i}", True)
        off = per_job(False)
        on = per_job(True)
        failed_off = per_job(False, fail=True)
        failed_on = per_job(True, fail=True)
        # the failures left every dataset failing; a Completed job each brings them back (refresh_recovered)
        worker.freshness = tracker
        for i in range(n):
            job(f"ds{i}", True)

        counter.reset()
        tracker.tick()
        quiet_tick = counter.total()

        # a breach nobody announces: a commit whose job does not run, then the SLO passes
        app.states.record("ds0", Change(trigger="commit", table="t0/fact", versions=(version[0] + 1,),
                                        model_tables=None, debounce_seconds=3600, max_delay_seconds=7200,
                                        commit_times=(CommitTime(version[0] + 1, app.clock.now()),)))
        app.clock.advance(31 * 60)
        sim.advance(31 * 60)
        before = len(sink.accepted())
        counter.reset()
        start = time.perf_counter()
        report = tracker.tick()
        tick_requests = counter.total()
        deadline = time.perf_counter() + 30
        while not [r for r in sink.accepted()[before:] if r.body.get("event") == "freshness_breached"]:
            if time.perf_counter() > deadline:
                raise SystemExit("the breach was not delivered")
            pump.step(until=app.clock.now() + timedelta(seconds=1))
        notified = time.perf_counter() - start
        assert [e.event for e in report.events] == ["freshness_breached"], report

        print(f"{args.jobs} jobs per variant over {n} datasets (whole-model refreshes on the simulator)")
        print(f"storage requests per Completed job: untracked {off:.2f}, tracked {on:.2f} -> +{on - off:.2f}")
        print(f"storage requests per Failed job (alert queued and delivered): untracked {failed_off:.2f}, tracked "
              f"{failed_on:.2f} -> +{failed_on - failed_off:.2f}")
        print(f"timer run over {n} datasets: quiet {quiet_tick} request(s); on a breach {tick_requests} "
              "(the tick: query, transition write, alert row, queue message, outbox write)")
        print(f"breach to notification: {notified * 1000:.0f} ms from the timer run that sees it to the webhook "
              "receiving it (+ up to 60 s until that timer run)")
        print(f"RESULT extra_per_job={on - off:.2f} extra_per_failed_job={failed_on - failed_off:.2f} "
              f"quiet_tick={quiet_tick} breach_tick={tick_requests} breach_to_notification_ms={notified * 1000:.0f}")


if __name__ == "__main__":
    main()
