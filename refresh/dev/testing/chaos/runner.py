"""Run chaos scenarios against ``python -m refresh local`` and measure (dev only; see docs/reliability.md)."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refresh.dev.testing.chaos.env import ChaosEnv, EnvOptions
from refresh.dev.testing.chaos.figures import Figures, measure
from refresh.dev.testing.chaos.scenarios import SCENARIOS, Context


@dataclass
class RunOptions:
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    seconds: float = 120.0  # active chaos per scenario
    quiet: float = 180.0  # at most this long to settle after the chaos (ends early once everything is done)
    seed: int = 1
    parallel: bool = False  # all scenarios at once (the short test) instead of one after the other
    token_outage: float = 40.0
    refresh_seconds: float = 2.0
    message_lock: float = 10.0
    sweep_schedule: str = "*/10 * * * * *"
    workdir: Path | None = None  # kept when given (runtime logs); a temporary one is removed
    verbose: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        if self.seconds <= 0 or self.quiet < 0:
            raise ValueError("seconds must be > 0 and quiet >= 0")


@dataclass
class Report:
    options: RunOptions
    total: Figures
    per_scenario: dict[str, Figures]
    faults: dict[str, int]
    kills: int
    notes: list[str]
    chaos_seconds: float
    settle_seconds: float
    errors: list[str]

    def text(self) -> str:
        lines = [f"chaos: scenarios {', '.join(self.options.scenarios)}; {self.options.seconds:g} s each"
                 f"{' in parallel' if self.options.parallel else ''}; seed {self.options.seed}",
                 f"chaos {self.chaos_seconds:.0f} s, settled in {self.settle_seconds:.0f} s "
                 f"(quiet period at most {self.options.quiet:g} s); {self.kills} kill -9; "
                 f"faults injected: {', '.join(f'{k} {v}' for k, v in sorted(self.faults.items())) or 'none'}"]
        width = max(len(n) for n in self.per_scenario) if self.per_scenario else 5
        for name, figures in self.per_scenario.items():
            lines.append(f"  {name:<{width}}  {figures.line()}")
        lines.append(f"  {'TOTAL':<{width}}  {self.total.line()}")
        for label, items in (("lost", self.total.lost_detail), ("stuck", self.total.stuck),
                             ("non-terminal", self.total.non_terminal), ("without row", self.total.without_row),
                             ("credited twice", self.total.credited_twice),
                             ("misreported", self.total.misreported)):
            if items:
                shown = "; ".join(items[:12]) + (f"; ... {len(items) - 12} more" if len(items) > 12 else "")
                lines.append(f"  {label}: {shown}")
        lines.extend(f"  error: {e}" for e in self.errors)
        lines.append("GOAL MET (0 lost, 0 stuck, 0 non-terminal, 0 without a row)" if self.total.goal_met and
                     not self.errors else "GOAL NOT MET")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"scenarios": self.options.scenarios, "seconds": self.options.seconds, "seed": self.options.seed,
                "parallel": self.options.parallel, "kills": self.kills, "faults": self.faults,
                "chaos_seconds": round(self.chaos_seconds, 1), "settle_seconds": round(self.settle_seconds, 1),
                "total": self.total.as_dict(), "errors": self.errors,
                "per_scenario": {k: v.as_dict() for k, v in self.per_scenario.items()}}


def run_chaos(options: RunOptions, say: Callable[[str], None] = print,
              check_requests: Callable[[list[Any]], list[str]] | None = None) -> Report:
    """Start everything, run the scenarios, let the app settle, measure, stop everything.

    ``check_requests`` gets the simulator's recorded requests at the end (e.g. a swagger check); what it
    returns is reported as errors.
    """
    chosen = [SCENARIOS[name] for name in options.scenarios]
    datasets = [spec for scenario in chosen for spec in scenario.datasets]
    temporary = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="chaos-")) if temporary else Path(options.workdir)  # type: ignore[arg-type]
    env = ChaosEnv(workdir, datasets, EnvOptions(refresh_seconds=options.refresh_seconds,
                                                 message_lock=options.message_lock,
                                                 sweep_schedule=options.sweep_schedule, verbose=options.verbose),
                   say=say)
    errors: list[str] = []
    ctx: Context | None = None
    try:
        env.start()
        env.runtime("main").start()
        say(f"chaos: storage, simulator, proxy and runtime ready (logs in {workdir})")
        ctx = Context(env, random.Random(options.seed), options.seconds, token_outage=options.token_outage,
                      parallel=options.parallel)
        started = time.monotonic()
        if options.parallel:
            threads = [threading.Thread(target=_guarded, args=(s, ctx, errors, say), name=f"scenario-{s.name}")
                       for s in chosen]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for scenario in chosen:
                _guarded(scenario, ctx, errors, say)
        chaos_seconds = time.monotonic() - started
        assert env.proxy is not None
        env.proxy.clear()
        for name, runtime in env.runtimes.items():
            if name != "main":
                runtime.stop()
        if not env.runtime("main").alive:
            env.runtime("main").start()
        say(f"chaos: done after {chaos_seconds:.0f} s; quiet period (at most {options.quiet:g} s)")
        settle_started = time.monotonic()
        total = _measure(env, datasets)
        while not total.goal_met and time.monotonic() - settle_started < options.quiet:
            time.sleep(2.0)
            total = _measure(env, datasets)
        settle_seconds = time.monotonic() - settle_started
        per = {s.name: _measure(env, list(s.datasets)) for s in chosen}
        total = _measure(env, datasets)
        kills = sum(r.kills for r in env.runtimes.values())
        if check_requests is not None:
            errors.extend(check_requests(list(env.sim.requests)))
        return Report(options, total, per, env.proxy.counts(), kills, ctx.notes, chaos_seconds, settle_seconds,
                      errors)
    finally:
        env.stop()
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(env: ChaosEnv, datasets: list) -> Figures:
    return measure(datasets, list(env.commits), env.simulator_refreshes(), env.outcome_rows(), env.dataset_states())


def _guarded(scenario: Any, ctx: Context, errors: list[str], say: Callable[[str], None]) -> None:
    say(f"chaos: scenario {scenario.name}: {scenario.summary}")
    try:
        scenario.run(ctx)
    except Exception as exc:  # a broken scenario is reported, the others still run
        errors.append(f"scenario {scenario.name}: {type(exc).__name__}: {exc}")
        say(f"chaos: scenario {scenario.name} failed: {type(exc).__name__}: {exc}")
