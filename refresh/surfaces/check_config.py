"""``python -m refresh check-config [PATH] [--json]``: validate the routing config and print what
each dataset listens to, its timing, schedule and limits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refresh.core.routing import ConfigError, DatasetConfig, RoutingConfig, load_config
from refresh.core.settings import Settings, SettingsError


def _duration(seconds: int) -> str:
    if seconds == 0:
        return "0 s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts)


def _limits(ds: DatasetConfig) -> list[str]:
    capacities = {True: "dedicated", False: "shared", None: "detected from the workspace"}
    if ds.daily_limit is not None:
        limit = f"{ds.daily_limit} refreshes/day"
    elif ds.dedicated_capacity is None:
        limit = "8 refreshes/day on shared capacity, unlimited on dedicated"
    else:
        limit = "unlimited" if ds.dedicated_capacity else "8 refreshes/day"
    slo = "none" if ds.freshness_slo_minutes is None else _duration(ds.freshness_slo_minutes * 60)
    return [f"  capacity {capacities[ds.dedicated_capacity]}; daily limit {limit}",
            f"  refresh timeout {ds.timeout_minutes} min; freshness objective {slo}"]


def describe(config: RoutingConfig) -> str:
    """A human-readable summary: per dataset, its model, sources, timing, schedule and limits."""
    count = len(config.datasets)
    lines = [f"Routing config {config.source_file or '(in memory)'}: {count} dataset{'s' * (count != 1)}"]
    if config.adhoc.enabled:
        allowed = "every workspace" if config.adhoc.everything else ", ".join(sorted(config.adhoc.workspaces))
        lines.append(f"Ad-hoc refreshes of unconfigured datasets allowed in: {allowed}")
    for key, ds in config.datasets.items():
        lines += ["", f"{key}: workspace {ds.workspace!r}, dataset {ds.dataset!r}"]
        for s in ds.sources:
            target = ", ".join(s.model_tables) if s.model_tables else "whole model"
            lines.append(f"  {s.table}{' (glob)' if s.is_glob else ''} -> {target}")
        lines.append(f"  debounce {_duration(ds.debounce_seconds)}, "
                     f"max delay {_duration(ds.max_delay_seconds)}")
        if ds.schedule:
            skip = ", skipped when nothing changed" if ds.schedule_skip_if_unchanged else ""
            lines.append(f"  schedule {ds.schedule} (UTC){skip}")
        else:
            lines.append("  schedule none (commits only)")
        options = ", ".join(f"{k} {v}" for k, v in ds.refresh.enhanced_options().items())
        lines.append(f"  refresh {options}; notify {ds.refresh.notify_option} (standard refresh)")
        lines += _limits(ds)
    return "\n".join(lines)


def check_config_main(argv: list[str] | None = None) -> int:
    """``python -m refresh check-config [PATH] [--json]``: validate the routing config and print it.
    Returns 0 when valid, 1 (problems on stderr) when not."""
    parser = argparse.ArgumentParser(
        prog="python -m refresh check-config",
        description="Validate the routing config and print what it routes where.")
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="config file (default: the REFRESH_CONFIG setting)")
    parser.add_argument("--json", action="store_true",
                        help="print the config as JSON with every default filled in")
    args = parser.parse_args(argv)
    try:
        path = Path(args.path) if args.path else Settings.from_env().refresh_config
        config = load_config(path)
    except (ConfigError, SettingsError) as exc:
        print(exc, file=sys.stderr)
        if isinstance(exc, ConfigError):
            print(f"{len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}; the config is not valid",
                  file=sys.stderr)
        return 1
    print(json.dumps(config.to_dict(), indent=2) if args.json else describe(config))
    from refresh.core.lake_check import check_config_lake  # lake preconditions (issue 10 item 7)

    return check_config_lake()

