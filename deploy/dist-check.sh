#!/bin/sh
# `make dist-check`: the sidecar installs and runs on its own. Builds its wheel
# (sidecar/pyproject.toml), installs it into a fresh virtualenv in which Django is
# not importable, and runs the installed `warden-sidecar` there: --help, `check` of
# an offline configuration, and one engine decision (pglast and the bundle schema
# from the wheel). Needs the package index (or a mirror), not the internet.
set -eu
PY=${PY:-.venv/bin/python}
ROOT=$(pwd)
started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/warden-dist-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "[dist-check] building the wheel"
"$PY" -m pip wheel --quiet --no-deps ./sidecar -w "$work/dist"
wheel=$(ls "$work"/dist/warden_sidecar-*.whl)
echo "[dist-check] $(basename "$wheel")"

echo "[dist-check] installing it into a fresh virtualenv"
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
cd "$work"  # not the checkout: everything below must come from the wheel
if "$work/venv/bin/python" -c "import django" 2>/dev/null; then
    echo "[dist-check] FAIL: Django is importable in the sidecar's virtualenv" >&2
    exit 1
fi
"$work/venv/bin/python" - <<'PY'
import sidecar
from sidecar.proxy.session import NATIVE_RELAY_AVAILABLE

assert "/site-packages/" in sidecar.__file__, sidecar.__file__
relay = "native" if NATIVE_RELAY_AVAILABLE else "pure Python (no C compiler at build time)"
print(f"[dist-check] sidecar from {sidecar.__file__}; relay: {relay}")
PY

"$work/venv/bin/warden-sidecar" --help
cat > "$work/sidecar.toml" <<TOML
# Offline mode: a local bundle, an upstream that check --offline does not reach.
upstream_dsn = "postgresql://warden_sidecar@127.0.0.1:5432/crm"
state_dir = "$work/state"
datasource = "demo"
bundle_file = "$ROOT/tests/fixtures/bundles/demo-production.json"
TOML
"$work/venv/bin/warden-sidecar" check --config "$work/sidecar.toml" --offline
status=0
"$work/venv/bin/warden-sidecar" check --bundle "$ROOT/tests/fixtures/bundles/demo-production.json" \
    --identity alice --sql "DROP TABLE orders" > "$work/decision.json" || status=$?
if [ "$status" != 1 ] || ! grep -q '"no-drop-in-prod"' "$work/decision.json"; then
    echo "[dist-check] FAIL: the engine did not refuse DROP TABLE (exit $status)" >&2
    exit 1
fi
echo "[dist-check] the installed engine refuses DROP TABLE in production (exit 1)"

echo "[dist-check] the mcp extra resolves"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --dry-run "$wheel[mcp]"
echo "[dist-check] ok in $(( $(date +%s) - started )) s"
