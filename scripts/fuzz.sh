#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz) of the code that reads bytes from the
# network: the wire framing and the pgoutput decoder. Not part of the test command.
#   scripts/fuzz.sh            # 60 s per target
#   FUZZ_SECONDS=600 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# libFuzzer needs nightly compiler flags: use a nightly toolchain when rustup has one,
# otherwise let the stable compiler accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
mkdir -p target
status=0
for target in framing pgoutput; do
  echo "== fuzzing $target for ${FUZZ_SECONDS:-60} s"
  log=target/fuzz-$target.log
  if "${fuzz[@]}" run "$target" -- -max_total_time="${FUZZ_SECONDS:-60}" -rss_limit_mb=4096 >"$log" 2>&1; then
    grep -E '^#[0-9]+ +DONE|^Done' "$log" || tail -2 "$log"
  else
    echo "FAILED: see $log (the crashing input is under fuzz/artifacts/$target/)"
    grep -E 'panicked|SUMMARY|artifact' "$log" || tail -20 "$log"
    status=1
  fi
done
exit $status
