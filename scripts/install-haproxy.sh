#!/usr/bin/env bash
# Install Debian's HAProxy when missing: the fleet tests (tests/fleet) and benchmarks/fleet.py put it in front of
# several `modelmill serve` hosts. The tests start their own haproxy process (never the system service).
set -eu
HAPROXY="$(command -v haproxy || true)"; [ -z "$HAPROXY" ] && [ -x /usr/sbin/haproxy ] && HAPROXY=/usr/sbin/haproxy
if [ -n "$HAPROXY" ]; then
  echo "haproxy: $("$HAPROXY" -v 2>/dev/null | head -n1)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends haproxy
/usr/sbin/haproxy -v 2>/dev/null | head -n1
