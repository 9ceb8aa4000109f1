#!/usr/bin/env bash
# walrelay's demo without Docker, on a Debian/Ubuntu machine.
#
#   scripts/demo.sh           install what is missing, start a throwaway PostgreSQL (logical
#                             decoding on) next to the local RabbitMQ, run walrelay, generate
#                             changes, and print the events a consumer receives. Ctrl-C stops
#                             everything and removes the throwaway cluster.
#   scripts/demo.sh --check   the same, non-interactive: a fixed set of changes, then checks
#                             that the expected events arrived (exit 0) or fails (exit 1).
#
# WALRELAY_BIN points at a walrelay binary to use (default: cargo build --release).
# AMQP_URL points at RabbitMQ (default: amqp://guest:guest@127.0.0.1:5672/%2f, started if down).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# 1. Packages.
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

# 2. RabbitMQ.
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if [[ $AMQP_URL == *@127.0.0.1:5672/* ]] && ! amqp_up; then
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  as_root timeout 120 rabbitmqctl await_startup >/dev/null
  for _ in $(seq 1 60); do amqp_up && break; sleep 1; done
fi
# The management API: `walrelay doctor` reads bindings through it, and the demo deletes its
# exchange through it when it ends.
mgmt_up() { (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; }
if [[ $AMQP_URL == *@127.0.0.1:5672/* ]] && ! mgmt_up; then
  say "enabling RabbitMQ's management plugin (http://127.0.0.1:15672)"
  as_root rabbitmq-plugins enable rabbitmq_management >/dev/null || true
  for _ in $(seq 1 60); do mgmt_up && break; sleep 1; done
fi

# 3. walrelay.
if [ -z "${WALRELAY_BIN:-}" ]; then
  say "building walrelay (release)"
  cargo build --release --locked --bin walrelay >&2
  WALRELAY_BIN=$ROOT/target/release/walrelay
fi

# 4. A throwaway PostgreSQL with logical decoding, on a free port.
WORK=$(mktemp -d /tmp/walrelay-demo.XXXXXX)
chmod 755 "$WORK"
# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || for p in $(seq 20000 20999); do ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { echo "$p"; break; }; done
}
# True when something accepts connections on host:port.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
PORT=$(free_port)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PIDS=()
FAILED=0
# Names unique to this run, so two demos on one broker never see each other's events.
NAME="walrelay_demo_$$"
export AMQP_URL
# Deletes this run's exchange through the management API (the demo's only object on the
# broker: tail's queue is exclusive and goes with its connection).
delete_exchange() {
  python3 - "$NAME" <<'PY' 2>/dev/null
import base64, sys, urllib.parse, urllib.request, os
u = urllib.parse.urlparse(os.environ["AMQP_URL"])
vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
url = "http://%s:15672/api/exchanges/%s/%s" % (u.hostname, urllib.parse.quote(vhost, safe=""), urllib.parse.quote(sys.argv[1], safe=""))
req = urllib.request.Request(url, method="DELETE")
auth = "%s:%s" % (urllib.parse.unquote(u.username or "guest"), urllib.parse.unquote(u.password or "guest"))
req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    urllib.request.urlopen(req, timeout=5)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 404 else 1)
PY
}
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m fast stop >/dev/null 2>&1 || true
  delete_exchange || say "could not delete exchange $NAME (no management API on port 15672?): rabbitmqadmin delete exchange name=$NAME"
  if [ $FAILED = 1 ]; then
    # The logs are the only record of why: keep them.
    KEPT=$(mktemp -d /tmp/walrelay-demo-failed.XXXXXX)
    cp "$WORK"/*.log "$KEPT"/ 2>/dev/null || true
    say "logs kept in $KEPT"
  fi
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Stops the demo with walrelay's own words: the end of its log, then exit 1.
fail() {
  FAILED=1
  say "demo FAILED: $*"
  [ -f "$WORK/walrelay.log" ] && { echo "--- walrelay's log (last lines):" >&2; tail -n 30 "$WORK/walrelay.log" >&2; }
  [ -f "$WORK/tail.log" ] && { echo "--- walrelay tail's log (last lines):" >&2; tail -n 10 "$WORK/tail.log" >&2; }
  exit 1
}
alive() { kill -0 "$1" 2>/dev/null; }

say "starting a throwaway PostgreSQL on port $PORT (wal_level=logical)"
as_pg "$PGBIN/initdb" -D "$WORK/pgdata" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w \
  -o "-c wal_level=logical -c port=$PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK" \
  start >/dev/null
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE shop" >/dev/null
"${PSQL[@]}" -d shop -f docker/demo/schema.sql >/dev/null

# 5. The HTTP endpoint: WALRELAY_HTTP_LISTEN when given (walrelay says so if it is taken);
# else 127.0.0.1:9187 when free, else a free port (9187 is also postgres_exporter's default).
if [ -n "${WALRELAY_HTTP_LISTEN:-}" ]; then
  LISTEN=$WALRELAY_HTTP_LISTEN
elif [ $CHECK = 0 ] && ! listening 127.0.0.1 9187; then
  LISTEN=127.0.0.1:9187
else
  [ $CHECK = 0 ] && say "port 9187 is taken (postgres_exporter's default): using another"
  LISTEN=127.0.0.1:$(free_port)
fi
export WALRELAY_HTTP_LISTEN=$LISTEN

# 6. Consumer and relay.
export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/shop?sslmode=disable"
export WALRELAY_RABBITMQ_EXCHANGE=$NAME
export WALRELAY_POSTGRES_SLOT=$NAME
export WALRELAY_POSTGRES_PUBLICATION=$NAME
say "exchange, slot and publication of this run: $NAME"
# The consumer: `tail` with a temporary queue of its own bound to `#`, gone when it exits.
# It declares the exchange, so it can bind before walrelay's first event.
if [ $CHECK = 1 ]; then
  "$WALRELAY_BIN" tail --config docker/walrelay.toml --binding '#' --idle-timeout-secs 30 \
    >"$WORK/events.txt" 2>"$WORK/tail.log" &
else
  "$WALRELAY_BIN" tail --config docker/walrelay.toml --binding '#' 2>"$WORK/tail.log" &
fi
TAIL_PID=$!
PIDS+=("$TAIL_PID")
for _ in $(seq 1 100); do grep -q consuming "$WORK/tail.log" 2>/dev/null && break; alive "$TAIL_PID" || break; sleep 0.1; done
grep -q consuming "$WORK/tail.log" 2>/dev/null || fail "walrelay tail did not start consuming"

say "starting walrelay (log: $WORK/walrelay.log)"
"$WALRELAY_BIN" run --config docker/walrelay.toml 2>"$WORK/walrelay.log" &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
# Ready means /readyz says so while the process lives; a walrelay that stopped is a failure
# with its error, whatever it logged before.
ready=0
for _ in $(seq 1 600); do
  alive "$RELAY_PID" || fail "walrelay stopped"
  if "$WALRELAY_BIN" ready --url "http://$LISTEN/readyz" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
[ $ready = 1 ] || fail "walrelay was not ready after 60 s (http://$LISTEN/readyz)"

if [ $CHECK = 0 ]; then
  say "metrics: http://$LISTEN/metrics   events below; Ctrl-C stops everything"
  "${PSQL[@]}" -d shop -f docker/demo/bulk.sql >/dev/null
  while true; do
    alive "$RELAY_PID" || fail "walrelay stopped"
    alive "$TAIL_PID" || fail "walrelay tail stopped"
    "${PSQL[@]}" -d shop -f docker/demo/load.sql >/dev/null
    sleep 1
  done
fi

# --check: 3 rounds of load (4 published events each: customer insert, order insert, order
# update, and no delete below 50 orders), one bulk job (1 summary), then check.
for _ in 1 2 3; do "${PSQL[@]}" -d shop -f docker/demo/load.sql >/dev/null; done
"${PSQL[@]}" -d shop -f docker/demo/bulk.sql >/dev/null
EXPECTED=10
for _ in $(seq 1 300); do
  [ "$(wc -l <"$WORK/events.txt")" -ge $EXPECTED ] && break
  alive "$RELAY_PID" || fail "walrelay stopped"
  sleep 0.1
done
cat "$WORK/events.txt"
got=$(wc -l <"$WORK/events.txt")
[ "$got" -eq $EXPECTED ] || fail "expected $EXPECTED events, got $got"
[ "$(grep -c '^public.customers.insert ' "$WORK/events.txt")" -eq 3 ] || fail "customer inserts"
[ "$(grep -c '^public.orders.insert ' "$WORK/events.txt")" -eq 3 ] || fail "order inserts"
[ "$(grep -c '^public.orders.update ' "$WORK/events.txt")" -eq 3 ] || fail "order updates"
grep -q '^public.orders.bulk .*"reason":"marker"' "$WORK/events.txt" || fail "bulk summary"
! grep -q password_hash "$WORK/events.txt" || fail "password_hash leaked"
! grep -q audit_log "$WORK/events.txt" || fail "excluded table published"
say "demo check passed: $got events"
