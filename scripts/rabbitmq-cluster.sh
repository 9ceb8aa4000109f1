#!/usr/bin/env bash
# A three-node RabbitMQ 4 cluster on loopback (docs/operations.md, "Running against a cluster"),
# from the Debian 13 root that scripts/rabbitmq4.sh builds: three node names, their own ports,
# the root's one Erlang cookie, joined with join_cluster. Next to the system's RabbitMQ 3.10
# and scripts/rabbitmq4.sh's single node, which keep their ports.
#
#   scripts/rabbitmq-cluster.sh start         build the root when missing, start the three nodes, join them
#   scripts/rabbitmq-cluster.sh stop          stop the three nodes
#   scripts/rabbitmq-cluster.sh stop-node N   stop node N (1-3) the way an upgrade does (rabbitmqctl stop)
#   scripts/rabbitmq-cluster.sh start-node N  start node N again and wait until it runs in the cluster
#   scripts/rabbitmq-cluster.sh status        print the running nodes; exit 0 when all three run
#
# Node N: rabbitcN@localhost, AMQP 568N, stream 556N (advertised as 127.0.0.1), management
# 1568N, distribution 2568N; the cluster's own epmd on 4371. guest/guest from 127.0.0.1.
set -euo pipefail
trap 'echo "rabbitmq-cluster.sh: the command at line $LINENO failed (exit $?)" >&2' ERR

ROOT=${WALRELAY_RABBITMQ4_ROOT:-/var/cache/walrelay/rabbitmq4-root}
EPMD_PORT=4371
HERE=$(cd "$(dirname "$0")" && pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
node() { echo "rabbitc$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
# Runs a command inside the root as node N's environment.
in_node() {
  local n=$1; shift
  as_root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
    ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME="$(node "$n")" RABBITMQ_DIST_PORT=$((25680 + n)) \
    RABBITMQ_CONFIG_FILE="/etc/rabbitmq/cluster/n$n/rabbitmq.conf" \
    RABBITMQ_MNESIA_BASE="/var/lib/rabbitmq/cluster/n$n" \
    RABBITMQ_LOG_BASE="/var/log/rabbitmq/cluster/n$n" \
    RABBITMQ_PID_FILE="/var/lib/rabbitmq/cluster/n$n.pid" \
    chroot "$ROOT" "$@"
}
ctl() { local n=$1; shift; in_node "$n" rabbitmqctl -q -n "$(node "$n")" "$@"; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$(amqp_port "$1")") 2>/dev/null; }

configure() {
  local n=$1
  as_root mkdir -p "$ROOT/etc/rabbitmq/cluster/n$n" "$ROOT/var/lib/rabbitmq/cluster/n$n" "$ROOT/var/log/rabbitmq/cluster/n$n"
  as_root tee "$ROOT/etc/rabbitmq/cluster/n$n/rabbitmq.conf" >/dev/null <<CONF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
stream.listeners.tcp.default = 127.0.0.1:$((5560 + n))
stream.advertised_host = 127.0.0.1
stream.advertised_port = $((5560 + n))
management.tcp.ip = 127.0.0.1
management.tcp.port = $((15680 + n))
CONF
  as_root chroot "$ROOT" chown -R rabbitmq:rabbitmq /var/lib/rabbitmq/cluster /var/log/rabbitmq/cluster
}

launch() {
  local n=$1
  configure "$n"
  for m in proc dev; do mountpoint -q "$ROOT/$m" || as_root mount --bind "/$m" "$ROOT/$m"; done
  up "$n" || in_node "$n" rabbitmq-server -detached
}

start_node() {
  local n=$1
  launch "$n"
  for _ in $(seq 1 120); do
    if up "$n" && ctl "$n" await_startup >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "node $n did not start; its log: $ROOT/var/log/rabbitmq/cluster/n$n/" >&2
  return 1
}

# How many nodes node N sees running.
running() { ctl "$1" cluster_status --formatter json 2>/dev/null |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("running_nodes", [])))' 2>/dev/null || echo 0; }

start() {
  # The root (and the single node, which the test suite uses anyway).
  [ -x "$ROOT/usr/sbin/rabbitmq-server" ] || bash "$HERE/rabbitmq4.sh" start
  # All three at once: after a full stop each node waits for the others' tables.
  for n in 1 2 3; do launch "$n"; done
  for n in 1 2 3; do start_node "$n"; done
  for n in 2 3; do
    if ! ctl "$n" cluster_status --formatter json 2>/dev/null | grep -q "$(node 1)"; then
      echo "== joining $(node "$n") to $(node 1)" >&2
      ctl "$n" stop_app
      ctl "$n" join_cluster "$(node 1)"
      ctl "$n" start_app
    fi
  done
  for _ in $(seq 1 60); do
    [ "$(running 1)" = 3 ] && { echo "RabbitMQ cluster: 3 nodes on AMQP 5681-5683, stream 5561-5563" >&2; return 0; }
    sleep 1
  done
  echo "the cluster did not form: $(running 1) nodes running" >&2
  return 1
}

stop_node() {
  local n=$1
  up "$n" || return 0
  ctl "$n" stop >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do up "$n" || return 0; sleep 0.5; done
}

start_again() {
  start_node "$1"
  for _ in $(seq 1 60); do [ "$(running "$1")" = 3 ] && return 0; sleep 1; done
  echo "node $1 runs but the cluster has $(running "$1") running nodes" >&2
  return 1
}

stop() {
  for n in 3 2 1; do stop_node "$n"; done
  as_root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin ERL_EPMD_PORT=$EPMD_PORT chroot "$ROOT" epmd -kill >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  stop-node) stop_node "${2:?node 1-3}" ;;
  start-node) start_again "${2:?node 1-3}" ;;
  status) r=$(running 1); echo "$r nodes running"; [ "$r" = 3 ] ;;
  *) echo "usage: $0 start|stop|stop-node N|start-node N|status" >&2; exit 2 ;;
esac
