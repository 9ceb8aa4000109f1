#!/usr/bin/env bash
# walrelay's end-to-end benchmark (docs/benchmarks.md): catch-up throughput against the decode
# limit (pg_recvlogical), the broker limit (a minimal pipelined-confirm publisher) and a Python
# peer (psycopg2 + pika), batch mode, live latency under pgbench, memory and CPU; then the same
# backlogs through the stream sink on RabbitMQ 4 against the stream limit, and RabbitMQ 4's
# AMQP broker limit. Prints a Markdown report and saves it to target/bench-report.md. Takes
# ~20 minutes.
#
#   scripts/bench.sh            the full run (1,000,000-row and 100,000-transaction backlogs)
#   scripts/bench.sh --smoke    the same at 2% scale (about a minute)
#
# Needs what scripts/test.sh needs, plus the Python packages psycopg2-binary and pika (installed
# into target/bench-venv from PyPI). Never part of the test command: too slow.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=1.0
[ "${1:-}" = "--smoke" ] && SCALE=0.02

VENV=target/bench-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q psycopg2-binary pika
fi

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)" >&2
BENCH_SCALE=$SCALE BENCH_PYTHON=$PWD/$VENV/bin/python \
  cargo bench --locked --bench e2e 2>target/bench-e2e.log | tee target/bench-report.md
echo "== the stream sink on RabbitMQ 4 (scripts/rabbitmq4.sh)" >&2
scripts/rabbitmq4.sh start
BENCH_SCALE=$SCALE BENCH_ONLY=stream \
  cargo bench --locked --bench e2e 2>>target/bench-e2e.log | tee -a target/bench-report.md
echo "== RabbitMQ 4 over AMQP: the broker limit" >&2
BENCH_SCALE=$SCALE BENCH_ONLY=broker WALRELAY_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2f \
  cargo bench --locked --bench e2e 2>>target/bench-e2e.log | tee -a target/bench-report.md
echo "== micro-benchmark: decode + render + encode per core" >&2
cargo bench --locked --bench decode -- --noplot 2>/dev/null | grep -E '^(decode|  +time|  +thrpt)' || true
