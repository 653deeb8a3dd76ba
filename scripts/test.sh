#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this): sets everything up, then runs
# ruff, mypy (strict for the deployed package, pyproject.toml [tool.mypy]), the infrastructure checks and the
# whole test suite against real Azurite, the Power BI
# simulator and headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
