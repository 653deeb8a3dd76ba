"""Benchmark: routing a table path to its datasets, and finding a sparse schedule's next occurrence.

These were timed assertions in tests/test_config.py and tests/test_ncrontab.py ("< 1 s"); the tests now
check only the answers, and the speed is measured here.

  (a) ``RoutingConfig.routes_for`` on 200 datasets, each with an explicit table, a ``*`` glob and a
      ``**`` glob (600 sources), over 700 paths x 20 rounds: lookups per second;
  (b) ``Schedule.next_after`` for ``0 0 0 29 2 MON`` (a 29 February that is a Monday: 28 years ahead)
      and for an impossible schedule (30 February: raises): milliseconds per call.

Run: ``.venv/bin/python benchmarks/bench_routing.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh.core.ncrontab import CronError, Schedule, parse  # noqa: E402 - after the path set-up
from refresh.core.routing import parse_config  # noqa: E402


def routing(rounds: int) -> tuple[int, float]:
    datasets = {
        f"ds{i:03d}": {"workspace": "W", "dataset": f"D{i}", "sources": [
            {"table": f"area{i % 20}/fact_{i}", "model_tables": ["F"]},
            {"table": f"area{i % 20}/dim_*"},
            {"table": f"area{i % 20}/**/history_{i}"},
        ]}
        for i in range(200)
    }
    config = parse_config({"datasets": datasets})
    paths = [f"area{i % 20}/dim_{i}" for i in range(500)] + [f"area{i % 20}/x/y/history_{i}" for i in range(200)]
    started = time.perf_counter()
    for _ in range(rounds):
        for path in paths:
            config.routes_for(path)
    return rounds * len(paths), time.perf_counter() - started


def best_ms(call, runs: int = 7, per_run: int = 20) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(per_run):
            call()
        best = min(best, (time.perf_counter() - started) / per_run)
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    lookups, seconds = routing(args.rounds)
    print(f"routes_for: {lookups:,} lookups in {seconds:.3f} s = {lookups / seconds:,.0f} per second "
          "(200 datasets, 600 sources)")
    start = datetime(2016, 3, 1, tzinfo=UTC)
    sparse = parse("0 0 0 29 2 MON")
    print(f"next_after '0 0 0 29 2 MON' from 2016-03-01 -> {sparse.next_after(start):%Y-%m-%d}: "
          f"{best_ms(lambda: sparse.next_after(start)):.2f} ms per call (best of 7)")
    feb_30 = Schedule("0 0 0 30 2 *", frozenset({0}), frozenset({0}), frozenset({0}), frozenset({30}),
                      frozenset({2}), frozenset(range(7)))

    def impossible() -> None:
        try:
            feb_30.next_after(start)
        except CronError:
            return
        raise AssertionError("30 February has an occurrence?")

    print(f"next_after '0 0 0 30 2 *' (impossible, raises): {best_ms(impossible):.2f} ms per call (best of 7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
