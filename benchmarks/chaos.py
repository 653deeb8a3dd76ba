"""Chaos suite, long run: ``python -m refresh local`` black-box under kills, races, duplicates and faults.

Usage (from the repository root)::

    .venv/bin/python benchmarks/chaos.py                       # every scenario, 120 s each, one after the other
    .venv/bin/python benchmarks/chaos.py --seconds 300 --seed 7 --json chaos.json
    .venv/bin/python benchmarks/chaos.py --scenarios kill9,race --seconds 60 --workdir /tmp/chaos

Prints commits written, lost, unneeded refreshes, stuck datasets, rows left non-terminal and
accepted refreshes without a row, per scenario and in total (definitions in
refresh/dev/testing/chaos/figures.py and docs/reliability.md). Exit code 0 when the goal is met
(0 lost, 0 stuck, 0 non-terminal, 0 without a row), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refresh.dev.testing.chaos.runner import RunOptions, run_chaos
from refresh.dev.testing.chaos.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="scenarios:\n" + "\n".join(f"  {s.name:<12} {s.summary}"
                                                                       for s in SCENARIOS.values()))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated scenario names (default: all)")
    parser.add_argument("--seconds", type=float, default=120.0, help="active chaos per scenario (default 120)")
    parser.add_argument("--quiet", type=float, default=180.0,
                        help="longest quiet period to settle in before measuring (default 180; ends early "
                             "once nothing is lost, stuck or unfinished)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--parallel", action="store_true", help="run the scenarios at the same time")
    parser.add_argument("--token-outage", type=float, default=40.0,
                        help="seconds the identity endpoint is down in the token scenario (default 40)")
    parser.add_argument("--refresh-seconds", type=float, default=2.0,
                        help="how long a refresh runs in the simulator (default 2)")
    parser.add_argument("--message-lock", type=float, default=10.0,
                        help="the runtime's --message-lock: when a killed runtime's messages reappear (default 10)")
    parser.add_argument("--sweep-schedule", default="*/10 * * * * *",
                        help="SWEEP_SCHEDULE of the app under test (default every 10 s)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep config, settings and runtime logs here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging in the runtimes' logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        options = RunOptions(scenarios=[s.strip() for s in args.scenarios.split(",") if s.strip()],
                             seconds=args.seconds, quiet=args.quiet, seed=args.seed, parallel=args.parallel,
                             token_outage=args.token_outage, refresh_seconds=args.refresh_seconds,
                             message_lock=args.message_lock, sweep_schedule=args.sweep_schedule,
                             workdir=args.workdir, verbose=args.verbose)
    except ValueError as exc:
        parser.error(str(exc))
    def stop(signum: int, frame: object) -> None:  # stop everything started (Azurite, runtimes) on the way out
        raise SystemExit(f"chaos: stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    report = run_chaos(options, say=lambda text: print(text, flush=True))
    print(report.text())
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.total.goal_met and not report.errors else 1


if __name__ == "__main__":
    sys.exit(main())
