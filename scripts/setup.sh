#!/usr/bin/env bash
# Installs what the app needs on this machine, idempotently: a virtualenv with the app and its
# development tools (.venv), and the pinned Azurite storage emulator (node_modules, from package-lock.json).
# A second run with nothing changed installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp="$(sha256sum pyproject.toml | cut -c1-64)"
if [ "$(cat .venv/.installed 2>/dev/null || true)" != "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  echo "$stamp" > .venv/.installed
fi

lock="$(sha256sum package-lock.json | cut -c1-64)"
if [ ! -x node_modules/.bin/azurite ] || [ "$(cat node_modules/.installed 2>/dev/null || true)" != "$lock" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock" > node_modules/.installed
fi
