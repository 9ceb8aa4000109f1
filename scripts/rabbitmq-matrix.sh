#!/usr/bin/env bash
# The AMQP integration and fault tests against each RabbitMQ walrelay supports: the system's
# 3.10 (127.0.0.1:5672) and 4.0 (scripts/rabbitmq4.sh, 127.0.0.1:5673). Not part of the test
# command (the default suite runs against 3.10, plus the stream tests against 4.0).
#
#   scripts/rabbitmq-matrix.sh              both versions
#   scripts/rabbitmq-matrix.sh 4.0          one of them
#
# Left out: tests whose broker is not the URL's — the private 3.10 nodes of broker_faults and
# huge_row, doctor and compose (they use the management API on 15672).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/services.sh
bash scripts/rabbitmq4.sh start

TESTS=(pipeline faults refusals filters network log_privacy backfill identity publications operate)
args=()
for t in "${TESTS[@]}"; do args+=(--test "$t"); done

versions=("${@:-3.10 4.0}")
status=0
for v in ${versions[*]}; do
  case "$v" in
    3.10) url="amqp://guest:guest@127.0.0.1:5672/%2f" ;;
    4.0) url="amqp://guest:guest@127.0.0.1:5673/%2f" ;;
    *) echo "unknown version $v (3.10 or 4.0)" >&2; exit 2 ;;
  esac
  echo "== RabbitMQ $v ($url)"
  if WALRELAY_TEST_AMQP_URL=$url cargo test --locked --no-fail-fast "${args[@]}"; then
    echo "== RabbitMQ $v: passed"
  else
    echo "== RabbitMQ $v: FAILED"
    status=1
  fi
done
exit $status
