#!/usr/bin/env bash
# Install Debian's wrk (the HTTP load generator benchmarks/serving.py drives) when missing.
set -eu
if command -v wrk >/dev/null; then
  echo "wrk: $(wrk --version 2>&1 | head -n1)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends wrk
wrk --version 2>&1 | head -n1 || true
