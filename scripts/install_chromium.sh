#!/usr/bin/env bash
# Installs headless Chromium and chromedriver (Debian packages) for the status-page browser test.
# Idempotent: does nothing when both are already installed. Runs as root, or through sudo when
# available (CI runs as root on Debian).
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo -n"
else
  echo "install_chromium.sh: need root or sudo to install chromium and chromium-driver" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium chromium-driver

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "install_chromium.sh: chromium or chromedriver still missing after apt-get install" >&2
  exit 1
fi
