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
# mosquitto 2.0 is the oldest the tests support: the generated configs rely on its
# per-listener settings and its refusal of anonymous clients by default.
MOSQUITTO_MIN="2.0.0"
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ -x "$mosquitto_bin" ]; then
  mosquitto_version=$("$mosquitto_bin" -h 2>&1 | sed -n 's/^mosquitto version \([0-9][0-9.]*\).*/\1/p' | head -1 || true)
  ser2net_version=$( (ser2net -v 2>&1 || /usr/sbin/ser2net -v 2>&1) | grep -Eo '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1 || true)
  echo "setup.sh: mosquitto ${mosquitto_version:-unknown} ($mosquitto_bin), ser2net ${ser2net_version:-not found}"
  if [ -z "$mosquitto_version" ] || [ "$(printf '%s\n%s\n' "$MOSQUITTO_MIN" "$mosquitto_version" | sort -V | head -1)" != "$MOSQUITTO_MIN" ]; then
    echo "setup.sh: mosquitto ${mosquitto_version:-of unknown version} is older than $MOSQUITTO_MIN, the oldest the tests support; install a newer one (Debian 12 has 2.0.11)" >&2
    exit 1
  fi
fi
# The venv gets exactly the versions CI tested: locks/*.txt, pinned with hashes (written
# by 'bash .ci/lock' from pyproject.toml's ranges). The project itself goes in editable,
# without resolving anything more.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --require-hashes -r locks/dev.txt -r locks/build.txt
# labgrid's pyserial-labgrid and esptool's pyserial both install `serial`; the project
# runs on pyserial-labgrid's (pyserial 3.5 with RFC 2217 fixes), so it goes in last.
pyserial_labgrid=$(mktemp)
sed -n '/^pyserial-labgrid==/,/^[^ ]/p' locks/dev.txt | sed '$!b;/^[^ ]/d' > "$pyserial_labgrid"
.venv/bin/python -m pip install -q --no-deps --force-reinstall --require-hashes -r "$pyserial_labgrid"
rm -f "$pyserial_labgrid"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# pimoroni-bme280 also installs as `bme280` (clashing with RPi.bme280): keep it aside;
# the driver tests load it from there under another name.
[ -d .venv/pimoroni-bme280 ] || .venv/bin/python -m pip install -q --no-deps --require-hashes --target .venv/pimoroni-bme280 -r locks/pimoroni.txt
.venv/bin/python -m pip freeze | .venv/bin/python .ci/lockcheck.py locks/dev.txt -
# Allure 3 (npm, no Java) for `hil report`; a machine without npm still runs every suite.
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
else
  echo "setup.sh: npm not found: 'hil report' needs it (apt-get install npm)" >&2
fi
echo "setup.sh: ready (.venv, node_modules)"
