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

# 3. walrelay.
if [ -z "${WALRELAY_BIN:-}" ]; then
  say "building walrelay (release)"
  cargo build --release --locked --bin walrelay >&2
  WALRELAY_BIN=$ROOT/target/release/walrelay
fi

# 4. A throwaway PostgreSQL with logical decoding, on a free port.
WORK=$(mktemp -d /tmp/walrelay-demo.XXXXXX)
chmod 755 "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a throwaway PostgreSQL on port $PORT (wal_level=logical)"
as_pg "$PGBIN/initdb" -D "$WORK/pgdata" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w \
  -o "-c wal_level=logical -c port=$PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK" \
  start >/dev/null
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE shop" >/dev/null
"${PSQL[@]}" -d shop -f docker/demo/schema.sql >/dev/null

# 5. Consumer and relay. In --check mode every name is unique, so runs never collide.
SUFFIX=$([ $CHECK = 1 ] && echo "_$$" || echo "")
export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/shop?sslmode=disable"
export WALRELAY_RABBITMQ_EXCHANGE="walrelay_demo$SUFFIX"
export WALRELAY_POSTGRES_SLOT="walrelay_demo$SUFFIX"
export WALRELAY_HTTP_LISTEN=$([ $CHECK = 1 ] && echo "127.0.0.1:0" || echo "127.0.0.1:9187")
# The consumer: `tail` with a temporary queue of its own bound to `#`, gone when it exits.
if [ $CHECK = 1 ]; then
  "$WALRELAY_BIN" tail --config docker/walrelay.toml --binding '#' --idle-timeout-secs 30 \
    >"$WORK/events.txt" 2>"$WORK/tail.log" &
else
  "$WALRELAY_BIN" tail --config docker/walrelay.toml --binding '#' 2>"$WORK/tail.log" &
fi
PIDS+=($!)
for _ in $(seq 1 100); do grep -q consuming "$WORK/tail.log" 2>/dev/null && break; sleep 0.1; done

say "starting walrelay (log: $WORK/walrelay.log)"
"$WALRELAY_BIN" run --config docker/walrelay.toml 2>"$WORK/walrelay.log" &
PIDS+=($!)
for _ in $(seq 1 300); do grep -q streaming "$WORK/walrelay.log" && break; sleep 0.1; done
grep -q streaming "$WORK/walrelay.log" || { cat "$WORK/walrelay.log" >&2; exit 1; }

if [ $CHECK = 0 ]; then
  say "metrics: http://127.0.0.1:9187/metrics   events below; Ctrl-C stops everything"
  "${PSQL[@]}" -d shop -f docker/demo/bulk.sql >/dev/null
  while true; do
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
  sleep 0.1
done
cat "$WORK/events.txt"
fail() { echo "demo check FAILED: $*" >&2; cat "$WORK/walrelay.log" >&2; exit 1; }
got=$(wc -l <"$WORK/events.txt")
[ "$got" -eq $EXPECTED ] || fail "expected $EXPECTED events, got $got"
[ "$(grep -c '^public.customers.insert ' "$WORK/events.txt")" -eq 3 ] || fail "customer inserts"
[ "$(grep -c '^public.orders.insert ' "$WORK/events.txt")" -eq 3 ] || fail "order inserts"
[ "$(grep -c '^public.orders.update ' "$WORK/events.txt")" -eq 3 ] || fail "order updates"
grep -q '^public.orders.bulk .*"reason":"marker"' "$WORK/events.txt" || fail "bulk summary"
! grep -q password_hash "$WORK/events.txt" || fail "password_hash leaked"
! grep -q audit_log "$WORK/events.txt" || fail "excluded table published"
say "demo check passed: $got events"
