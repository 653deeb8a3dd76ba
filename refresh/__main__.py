"""``python -m refresh <command>``: check-config, explain, local."""

from __future__ import annotations

import sys

USAGE = """usage: python -m refresh <command> [options]

commands:
  check-config [PATH] [--json]     validate the routing config and print what each dataset listens to
  explain TABLE [--from-version N] [--json]
                                   show each commit of a table and what it would refresh
  explain --dataset KEY [--json]   why is a dataset stale: its newest commits, their job, how the last
                                   job ended, its freshness
  local [--demo] [--run-timers-now]
                                   run the function app on this machine (Azurite + Power BI simulator)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "check-config":
        from refresh.surfaces.check_config import check_config_main

        return check_config_main(rest)
    if command == "explain":
        from refresh.surfaces.explain import main as explain_main

        return explain_main(rest)
    if command == "local":
        from refresh.dev.local.cli import main as local_main

        return local_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
