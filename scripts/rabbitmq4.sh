#!/usr/bin/env bash
# RabbitMQ 4 next to the system's RabbitMQ 3.10 (docs/operations.md, "Supported RabbitMQ
# versions"): Debian 13's rabbitmq-server 4.0 from a Debian 13 root made by debootstrap, started
# with chroot on ports of its own, with the stream and management plugins.
#
#   scripts/rabbitmq4.sh start    build the root when missing (cached), start the node, wait
#   scripts/rabbitmq4.sh stop     stop the node and unmount what start mounted
#   scripts/rabbitmq4.sh restart  stop the node process and start it again (tests of a restart)
#   scripts/rabbitmq4.sh crash    kill -9 the node and start it again (tests of a crash)
#   scripts/rabbitmq4.sh pause    SIGSTOP the node: silent, connections open (heartbeat tests)
#   scripts/rabbitmq4.sh resume   SIGCONT the node
#   scripts/rabbitmq4.sh status   exit 0 when the node answers
#
# Ports: AMQP 5673, stream 5553, stream over TLS 5554, management 15673 (https: 15674),
# distribution 25673, its own epmd on 4370 (the system node keeps 5672/5552/15672/25672/4369). Credentials
# guest/guest (from 127.0.0.1). The TLS listener serves a certificate for localhost signed by
# a test CA made here once: $ROOT/etc/rabbitmq/tls/ca.pem (tests of stream TLS and of the
# management API over https read it).
# The root is kept in $WALRELAY_RABBITMQ4_ROOT (default /var/cache/walrelay/rabbitmq4-root);
# building it takes about a minute and needs Debian's package mirror.
# WALRELAY_RABBITMQ4_EXTRA_CONF: lines appended to rabbitmq.conf (a test's setting, e.g.
# stream.advertised_host); `start` with other lines than the running node's restarts it, and
# `start` without them puts the usual configuration back.
set -euo pipefail
# A step that fails says where (set -e alone ends the script without a word).
trap 'echo "rabbitmq4.sh: the command at line $LINENO failed (exit $?)" >&2' ERR

ROOT=${WALRELAY_RABBITMQ4_ROOT:-/var/cache/walrelay/rabbitmq4-root}
MIRROR=${WALRELAY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
AMQP_PORT=5673 STREAM_PORT=5553 STREAM_TLS_PORT=5554 MGMT_PORT=15673 MGMT_TLS_PORT=15674 DIST_PORT=25673 EPMD_PORT=4370
NODE=rabbit4@localhost

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
in_root() { as_root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
  ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODENAME=$NODE RABBITMQ_DIST_PORT=$DIST_PORT \
  chroot "$ROOT" "$@"; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null; }

build() {
  command -v debootstrap >/dev/null || {
    echo "== installing debootstrap" >&2
    as_root apt-get update -qq && as_root apt-get install -y -qq debootstrap >/dev/null
  }
  echo "== building a Debian 13 root in $ROOT (about a minute)" >&2
  local tmp="$ROOT.partial"
  as_root rm -rf "$tmp"
  as_root mkdir -p "$(dirname "$ROOT")"
  as_root debootstrap --variant=minbase trixie "$tmp" "$MIRROR" >/dev/null
  # Daemons must not start inside the root while packages install.
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$tmp/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod +x "$tmp/usr/sbin/policy-rc.d"
  as_root chroot "$tmp" apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  as_root mv "$tmp" "$ROOT"
}

# A test CA and a certificate for localhost (and 127.0.0.1) it signed, made once per root.
certificates() {
  local d="$ROOT/etc/rabbitmq/tls"
  [ -s "$d/server.pem" ] && return 0
  echo "== making a test CA and a server certificate in $d" >&2
  as_root mkdir -p "$d"
  as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=walrelay-test-ca \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  as_root openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' | as_root tee "$d/ext" >/dev/null
  as_root openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
    -CAcreateserial -days 3650 -extfile "$d/ext" -out "$d/server.pem" 2>/dev/null
  # The node runs as the rabbitmq user inside the root.
  in_root chown -R rabbitmq:rabbitmq /etc/rabbitmq/tls
  as_root chmod 644 "$d/ca.pem"
}

configure() {
  certificates
  as_root tee "$ROOT/etc/rabbitmq/rabbitmq.conf" >/dev/null <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
stream.listeners.tcp.default = 127.0.0.1:$STREAM_PORT
stream.listeners.ssl.default = 127.0.0.1:$STREAM_TLS_PORT
ssl_options.cacertfile = /etc/rabbitmq/tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/tls/server.pem
ssl_options.keyfile = /etc/rabbitmq/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
management.ssl.ip = 127.0.0.1
management.ssl.port = $MGMT_TLS_PORT
management.ssl.cacertfile = /etc/rabbitmq/tls/ca.pem
management.ssl.certfile = /etc/rabbitmq/tls/server.pem
management.ssl.keyfile = /etc/rabbitmq/tls/server.key
${WALRELAY_RABBITMQ4_EXTRA_CONF:-}
CONF
  echo '[rabbitmq_management,rabbitmq_stream,rabbitmq_stream_management].' | as_root tee "$ROOT/etc/rabbitmq/enabled_plugins" >/dev/null
}

mounted() { mountpoint -q "$ROOT/$1"; }

start() {
  [ -x "$ROOT/usr/sbin/rabbitmq-server" ] || build
  # On a new root the files are not there yet: cat fails, and under pipefail that must not
  # end the script (it did, silently, on a fresh machine).
  local before; before=$(cat "$ROOT/etc/rabbitmq/rabbitmq.conf" "$ROOT/etc/rabbitmq/enabled_plugins" 2>/dev/null | md5sum || true)
  configure
  # A node started with an older configuration (an earlier version of this script) takes the
  # new one by a restart.
  if up && [ "$before" != "$(cat "$ROOT/etc/rabbitmq/rabbitmq.conf" "$ROOT/etc/rabbitmq/enabled_plugins" | md5sum)" ]; then
    echo "== the configuration changed: restarting RabbitMQ 4" >&2
    in_root rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do up || break; sleep 0.5; done
  fi
  for m in proc dev; do mounted "$m" || as_root mount --bind "/$m" "$ROOT/$m"; done
  if ! up; then
    echo "== starting RabbitMQ 4 ($NODE, AMQP $AMQP_PORT, stream $STREAM_PORT)" >&2
    in_root rabbitmq-server -detached
  fi
  for _ in $(seq 1 120); do
    if up && in_root rabbitmqctl -q await_startup >/dev/null 2>&1; then
      echo "RabbitMQ $(in_root rabbitmqctl -q version) on 127.0.0.1:$AMQP_PORT (stream $STREAM_PORT)" >&2
      return 0
    fi
    sleep 1
  done
  echo "RabbitMQ 4 did not start; its log: $ROOT/var/log/rabbitmq/" >&2
  return 1
}

# Processes running inside the root (the node, epmd, their helpers), except those of the
# cluster scripts/rabbitmq-cluster.sh runs from the same root (its own epmd port and nodes).
inside() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(as_root readlink "$p/root" 2>/dev/null)" = "$ROOT" ] || continue
    as_root tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -q '^ERL_EPMD_PORT=4371$' && continue
    echo "${p#/proc/}"
  done
  return 0
}

stop() {
  [ -d "$ROOT" ] || return 0
  if up; then in_root rabbitmqctl -q stop >/dev/null 2>&1 || true; fi
  in_root epmd -kill >/dev/null 2>&1 || true
  # Nothing may stay behind: wait for the node to exit, then make sure.
  for _ in $(seq 1 30); do [ -z "$(inside)" ] && break; sleep 0.5; done
  local left; left=$(inside)
  [ -z "$left" ] || as_root kill -9 $left 2>/dev/null || true
  sleep 0.2
  for m in dev proc; do if mounted "$m"; then as_root umount "$ROOT/$m"; fi; done
}

# The node process exits and starts again (a broker restart: every connection drops, streams
# and their deduplication state are recovered from disk). For tests of the stream sink.
restart() {
  up || { echo "RabbitMQ 4 is not running" >&2; return 1; }
  in_root rabbitmqctl -q stop >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do up || break; sleep 0.5; done
  start
}

# The node is killed with SIGKILL (a broker crash: no connection is closed cleanly, confirms
# in flight are lost, streams recover from their segment files) and started again.
crash() {
  up || { echo "RabbitMQ 4 is not running" >&2; return 1; }
  local pids; pids=$(inside)
  [ -z "$pids" ] || as_root kill -9 $pids 2>/dev/null || true
  for _ in $(seq 1 60); do up || break; sleep 0.5; done
  start
}

# The node's processes are stopped (SIGSTOP) and go on again (SIGCONT): a broker that goes
# silent with its connections open, as behind a network that drops packets. For tests of
# heartbeat timeouts.
pause() {
  up || { echo "RabbitMQ 4 is not running" >&2; return 1; }
  local pids; pids=$(inside)
  [ -z "$pids" ] || as_root kill -STOP $pids
}
resume() {
  local pids; pids=$(inside)
  [ -z "$pids" ] || as_root kill -CONT $pids
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  crash) crash ;;
  pause) pause ;;
  resume) resume ;;
  status) up || exit 1 ;;
  *) echo "usage: $0 start|stop|restart|crash|pause|resume|status" >&2; exit 2 ;;
esac
