# Sourced by scripts/test.sh, scripts/chaos.sh and scripts/pg-matrix.sh: installs PostgreSQL,
# RabbitMQ and openssl from the distribution if missing, and makes sure RabbitMQ is running on
# 127.0.0.1:5672 (guest/guest) with its management API on 15672.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # certificates for the TLS tests
command -v curl >/dev/null 2>&1 || missing+=(curl)         # the management API in tests/compose.rs
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  # policy-rc.d style images may refuse to start services at install time; we start them below.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! amqp_up; then
  echo "== starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  as_root timeout 120 rabbitmqctl await_startup >/dev/null
  for _ in $(seq 1 60); do amqp_up && break; sleep 1; done
fi
amqp_up || { echo "RabbitMQ is not reachable on 127.0.0.1:5672" >&2; exit 1; }

# `walrelay doctor` reads bindings and queue types from the management API (port 15672).
mgmt_up() { (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; }
if ! mgmt_up; then
  echo "== enabling the RabbitMQ management plugin"
  as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
  for _ in $(seq 1 60); do mgmt_up && break; sleep 1; done
fi
mgmt_up || { echo "RabbitMQ management API is not reachable on 127.0.0.1:15672" >&2; exit 1; }

