# Sourced by scripts/test.sh: the ecosystem's own checkers the suite runs, installed once into
# ~/.cache/walrelay/tools (outside the checkout, so a fresh clone on the same machine reuses
# them): promtool from Debian's prometheus package (extracted, so no Prometheus server is
# installed or started) and kubernetes-validate from PyPI (it bundles the Kubernetes schemas
# and works offline). tests/observability.rs and tests/kubernetes.rs look for them there.

TOOLS="${HOME:-/root}/.cache/walrelay/tools"
mkdir -p "$TOOLS/bin"
if [ ! -x "$TOOLS/bin/promtool" ]; then
  echo "== installing promtool (Debian package prometheus, extracted into $TOOLS)"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { as_root apt-get update -qq && apt-get download prometheus >/dev/null; }; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$TOOLS/bin/promtool"
  rm -rf "$tmp"
fi
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  echo "== installing kubernetes-validate (PyPI) into $TOOLS/venv"
  # Debian's python3 needs its venv module as a package of its own.
  python3 -m venv "$TOOLS/venv" 2>/dev/null || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf "$TOOLS/venv" && python3 -m venv "$TOOLS/venv"
  }
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate
fi
