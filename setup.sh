#!/usr/bin/env bash
# One-time setup on a fresh Debian machine: mosquitto and ser2net, a venv with the
# project and its dev tools, and the npm tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
# mosquitto: the test broker; ser2net: lab hosts serve boards' UARTs with it (the
# remote-rig tests put one in front of a virtual board).
missing=""
command -v mosquitto >/dev/null 2>&1 || missing="$missing mosquitto"
command -v ser2net >/dev/null 2>&1 || [ -x /usr/sbin/ser2net ] || missing="$missing ser2net"
if [ -n "$missing" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
    # Debian starts ser2net as a service with a sample config; the project runs its own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now ser2net >/dev/null 2>&1 || true; fi
  else
    echo "setup.sh: not installed:$missing; run 'sudo apt-get install$missing'" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# pimoroni-bme280 also installs as `bme280` (clashing with RPi.bme280): keep it aside;
# the driver tests load it from there under another name.
[ -d .venv/pimoroni-bme280 ] || .venv/bin/python -m pip install -q --no-deps --target .venv/pimoroni-bme280 pimoroni-bme280==1.0.0
# Allure 3 (npm, no Java) for `hil report`; a machine without npm still runs every suite.
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
else
  echo "setup.sh: npm not found: 'hil report' needs it (apt-get install npm)" >&2
fi
echo "setup.sh: ready (.venv, node_modules)"
