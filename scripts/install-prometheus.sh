#!/usr/bin/env bash
# Install Debian's Prometheus (prometheus + promtool) when missing; the monitoring tests use both.
set -eu
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  echo "prometheus: $(prometheus --version 2>&1 | head -n1)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus
# The package starts a system service where systemd runs; the tests start their own on loopback.
prometheus --version 2>&1 | head -n1
