#!/usr/bin/env bash
# The long fault-injection runs (docs/reliability.md): 60 s steady state, 20 kills, a
# 1,000,000-row transaction, and the broker variants that are #[ignore]d in the default suite.
# Prints one `chaos:` line per scenario with its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export WALRELAY_CHAOS_LONG=1
cargo test --locked --no-fail-fast --test main -- chaos:: broker_faults:: network:: --include-ignored --nocapture 2>&1 \
  | grep --line-buffered -E '^(chaos:|test |test result)|panicked'
# The framing and decoder properties, with many more cases than the default suite.
PROPTEST_CASES="${PROPTEST_CASES:-5000}" cargo test --locked --lib -- source:: pgoutput:: 2>&1 | tail -3
