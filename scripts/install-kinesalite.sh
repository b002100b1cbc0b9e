#!/usr/bin/env bash
# Install kinesalite (a Kinesis implementation, from the npm registry) under ~/.cache/modelmill/kinesalite unless
# it is there already; the Kinesis tests start it on a free port (tests/ingest/test_kinesis.py) and stop it.
#   KINESALITE_PREFIX=~/.cache/modelmill/kinesalite   KINESALITE_VERSION=3.3.3
set -eu
prefix="${KINESALITE_PREFIX:-$HOME/.cache/modelmill/kinesalite}"
version="${KINESALITE_VERSION:-3.3.3}"
bin="$prefix/node_modules/.bin/kinesalite"
if [ -x "$bin" ]; then
  echo "kinesalite: $bin"; exit 0
fi
if ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends nodejs npm
fi
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "kinesalite@$version"
[ -x "$bin" ] || { echo "kinesalite: npm install left no $bin" >&2; exit 1; }
echo "kinesalite: $bin"
