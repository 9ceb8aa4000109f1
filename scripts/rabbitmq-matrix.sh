#!/usr/bin/env bash
# The AMQP integration and fault tests against each RabbitMQ walrelay supports: the system's
# 3.10 (127.0.0.1:5672) and 4.0 (scripts/rabbitmq4.sh, 127.0.0.1:5673). Not part of the test
# command (the default suite runs against 3.10, plus the stream tests against 4.0).
#
#   scripts/rabbitmq-matrix.sh              both versions, classic then quorum queues
#   scripts/rabbitmq-matrix.sh 4.0          one version (both queue types)
#   QUEUE_TYPES=quorum scripts/rabbitmq-matrix.sh 4.0
#
# The queue type is that of the queues the tests declare (TEST_QUEUE_TYPE); tests that
# declare a queue with arguments of their own keep them.
#
# Left out: tests whose broker is not the URL's — the private 3.10 nodes of broker_faults and
# huge_row, doctor and compose (they use the management API on 15672).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/services.sh
bash scripts/rabbitmq4.sh start

# Suites of the one test binary (tests/main.rs), by module path; a filter matches anywhere in
# a test's name, so the suites it would take by accident are skipped.
args=(pipeline:: faults:: refusals:: filters:: network:: log_privacy:: backfill:: identity:: publications:: operate::
  --skip broker_faults:: --skip stream_refusals:: --skip stream_filters::)

versions=("${@:-3.10 4.0}")
status=0
for v in ${versions[*]}; do
  case "$v" in
    3.10) url="amqp://guest:guest@127.0.0.1:5672/%2f" ;;
    4.0) url="amqp://guest:guest@127.0.0.1:5673/%2f" ;;
    *) echo "unknown version $v (3.10 or 4.0)" >&2; exit 2 ;;
  esac
  for q in ${QUEUE_TYPES:-classic quorum}; do
    echo "== RabbitMQ $v ($url), $q queues"
    if WALRELAY_TEST_AMQP_URL=$url TEST_QUEUE_TYPE=$q \
      cargo test --locked --no-fail-fast --test main -- "${args[@]}"; then
      echo "== RabbitMQ $v, $q queues: passed"
    else
      echo "== RabbitMQ $v, $q queues: FAILED"
      status=1
    fi
  done
done
exit $status
