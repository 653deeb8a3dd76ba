#!/usr/bin/env bash
# Installs what the app needs on this machine, idempotently: a virtualenv with the app and its
# development tools (.venv) from the hashed lock requirements-dev.txt (the same pins as the runtime
# lock requirements.txt that the Azure remote build installs; ./scripts/lock.sh refreshes both), and
# the pinned Azurite storage emulator (node_modules, from package-lock.json).
# A second run with nothing changed installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp="$(cat pyproject.toml requirements-dev.txt | sha256sum | cut -c1-64)"
if [ "$(cat .venv/.installed 2>/dev/null || true)" != "$stamp" ]; then
  # Exactly the lock: every file checked against its hash, nothing resolved here. The project itself
  # goes in editable, without dependencies and without build isolation (setuptools is in the lock).
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r requirements-dev.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$stamp" > .venv/.installed
fi

lock="$(sha256sum package-lock.json | cut -c1-64)"
if [ ! -x node_modules/.bin/azurite ] || [ "$(cat node_modules/.installed 2>/dev/null || true)" != "$lock" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock" > node_modules/.installed
fi
