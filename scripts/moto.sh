#!/usr/bin/env bash
# An S3 API server on loopback for the object-storage tests: moto's server mode (PyPI), and s3fs, the client.
#   scripts/moto.sh install   s3fs (+ aiobotocore, botocore) into .venv; moto[server] into its own venv
#   scripts/moto.sh [start]   install, then start moto on $MOTO_HOST:$MOTO_PORT unless something answers there
#   scripts/moto.sh stop      stop the moto this script started on that port
#   MOTO_HOST=127.0.0.1  MOTO_PORT=5555  MOTO_VENV=.modelmill/moto-venv  PYTHON=.venv/bin/python  MOTO_PIDFILE=...
# Idempotent and fast once installed. The client stack goes into .venv at the versions constraints.txt pins
# (without dependency resolution: its requirements are pinned there already); the server, which needs nothing
# of modelmill, gets a venv of its own.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
host="${MOTO_HOST:-127.0.0.1}"
port="${MOTO_PORT:-5555}"
venv="${MOTO_VENV:-$here/.modelmill/moto-venv}"
python="${PYTHON:-$here/.venv/bin/python}"
pidfile="${MOTO_PIDFILE:-${TMPDIR:-/tmp}/modelmill-moto-$host-$port.pid}"
logfile="${pidfile%.pid}.log"
MOTO_VERSION="5.2.5"
CLIENT=(s3fs aiobotocore botocore jmespath aioitertools)   # versions: constraints.txt

up() { python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

install() {
  if ! "$python" -c 'import s3fs' 2>/dev/null; then
    echo "moto: installing the s3fs client into $(dirname "$(dirname "$python")")"
    "$python" -m pip install --quiet --no-deps -c "$here/constraints.txt" "${CLIENT[@]}" || return 1
  fi
  if ! "$venv/bin/python" -c "import moto, flask, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    echo "moto: installing moto[server]==$MOTO_VERSION into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet "moto[server]==$MOTO_VERSION" || return 1
  fi
}

case "${1:-start}" in
  install)
    install; exit $? ;;
  stop)
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
      echo "moto: stopped ($host:$port)"
    fi
    exit 0 ;;
  start) ;;
  *) echo "usage: scripts/moto.sh [install|start|stop]" >&2; exit 2 ;;
esac

install || { echo "moto: install failed" >&2; exit 1; }
if up; then
  echo "moto: something already listens on $host:$port"
  exit 0
fi
nohup "$venv/bin/moto_server" -H "$host" -p "$port" >"$logfile" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 1 150); do
  if up; then echo "moto: listening on http://$host:$port (pid $(cat "$pidfile"), log $logfile)"; exit 0; fi
  sleep 0.1
done
echo "moto: did not start; see $logfile" >&2
exit 1
