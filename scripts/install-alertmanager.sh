#!/usr/bin/env bash
# Install Debian's Alertmanager (prometheus-alertmanager) when missing: tests/monitoring/test_alertmanager.py posts
# the monitor's alerts to its API. The package may start a system service where systemd runs; the tests start
# their own on loopback (cluster mode off).
set -eu
if command -v prometheus-alertmanager >/dev/null; then
  echo "alertmanager: $(prometheus-alertmanager --version 2>&1 | head -n1)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus-alertmanager
prometheus-alertmanager --version 2>&1 | head -n1
