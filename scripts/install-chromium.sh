#!/usr/bin/env bash
# Install Debian's Chromium when missing; the monitoring tests screenshot the HTML report with it.
set -eu
if command -v chromium >/dev/null; then
  echo "chromium: $(chromium --version 2>/dev/null | head -n1)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
chromium --version 2>/dev/null | head -n1
