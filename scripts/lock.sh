#!/usr/bin/env bash
# Re-locks the Python dependencies declared in pyproject.toml, from PyPI, with exact versions and
# sha256 hashes, for CPython 3.11 on Linux x86_64 (the Flex Consumption runtime, and CI):
#
#   requirements.txt      [project].dependencies: what the Azure remote build installs (pip sees the
#                         hashes and checks every file), and what setup.sh installs first
#   requirements-dev.txt  the same runtime pins plus [project.optional-dependencies].dev
#
#   ./scripts/lock.sh              keep every pin the ranges still allow, add/remove what changed
#   ./scripts/lock.sh --upgrade    move everything to the newest allowed versions
#   ./scripts/lock.sh --upgrade-package azure-identity
#
# Then ./scripts/setup.sh installs the new lock into .venv. tests/test_project.py fails when the
# locks disagree with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if [ ! -x .venv/bin/uv ]; then
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

compile() {
  # Both locks: one Python, one platform, PyPI only (uv ignores pip.conf), hashes of every file.
  UV_INDEX_URL=https://pypi.org/simple .venv/bin/uv pip compile pyproject.toml --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
    --no-strip-extras --custom-compile-command ./scripts/lock.sh "$@"
}
compile -o requirements.txt "$@"
compile --extra dev --constraint requirements.txt -o requirements-dev.txt "$@"
echo "lock: requirements.txt ($(grep -c '==' requirements.txt) packages), requirements-dev.txt ($(grep -c '==' requirements-dev.txt) packages)"
