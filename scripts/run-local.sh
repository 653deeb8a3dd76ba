#!/usr/bin/env bash
# Sets everything up, then runs the function app on this machine: `./scripts/run-local.sh --demo`.
# Arguments go to `python -m refresh local` (see `./scripts/run-local.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m refresh local "$@"
