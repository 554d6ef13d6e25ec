#!/usr/bin/env bash
# Parlor conformance suite: drives the REAL Metered client SDKs against a Parlor binary.
#
#   tests/conformance/run.sh [python|js|browser]...      (default: all three)
#
# Env:
#   PARLOR_BIN   parlor binary (default: <repo>/target/debug/parlor)
#   PYTHON       python >= 3.11 used to create the venv (default: python3)
#   PYTEST_ARGS  extra pytest arguments (e.g. "-k presence -x")
#
# Installs what it needs idempotently: a venv at tests/conformance/.venv from
# requirements.txt (and the parlor package built into it), node_modules via `npm ci` (here,
# and in web/ for the demo page's SDK), and Debian chromium if /usr/bin/chromium is missing. Exits non-zero if any part fails
# (all parts still run).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
export PARLOR_BIN="${PARLOR_BIN:-$REPO_ROOT/target/debug/parlor}"
case "$PARLOR_BIN" in /*) ;; *) PARLOR_BIN="$REPO_ROOT/$PARLOR_BIN" ;; esac
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(python js browser)

want() { local p; for p in "${PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
log() { printf '\n==== %s ====\n' "$*"; }

if [ ! -x "$PARLOR_BIN" ]; then
  echo "parlor binary not found at $PARLOR_BIN (build it with 'cargo build' or set PARLOR_BIN)" >&2
  exit 2
fi
mkdir -p "$HERE/out"

# ---------------------------------------------------------------- setup
setup_python() {
  local py="${PYTHON:-python3}" venv="$HERE/.venv" stamp="$HERE/.venv/.requirements.sha"
  local want_sha; want_sha="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" || return 1
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_sha" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q -r "$HERE/requirements.txt" || return 1
    echo "$want_sha" > "$stamp"
  fi
}

# The `parlor` Python package (crates/python), built from this checkout as a wheel and
# installed into the same venv with pip (beside metered-realtime, so tests can put both in one
# room). The wheel is the abi3 one users get from `pip install ./crates/python`, in the debug
# profile: the same compile as cargo's in the workspace's target/, stripped (the module is
# ~250 MB with debug info). Its tags are checked: one wheel for CPython >= 3.10 on Linux.
setup_parlor_python() {
  local venv="$HERE/.venv" wheels="$HERE/out/wheel" wheel
  rm -rf "$wheels"
  VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" \
    "$venv/bin/maturin" build -q --profile dev --strip -o "$wheels" \
      -m "$REPO_ROOT/crates/python/Cargo.toml" || return 1
  wheel="$(ls "$wheels"/parlor_realtime-*.whl)" || return 1
  case "$(basename "$wheel")" in
    *-cp310-abi3-*linux*_x86_64.whl) ;;
    *) echo "unexpected wheel tags: $(basename "$wheel") (want cp310-abi3, linux x86_64)" >&2; return 1 ;;
  esac
  echo "parlor-realtime wheel: $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel" || return 1
  (cd "$HERE" && "$venv/bin/python" -c "import parlor, parlor._native") || return 1
}

setup_node() {
  command -v node >/dev/null || { echo "node (>= 20) is required" >&2; return 1; }
  local stamp="$HERE/node_modules/.lock.sha" want_sha
  want_sha="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_sha" ]; then
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    echo "$want_sha" > "$stamp"
  fi
}

# The demo page's SDK (web/node_modules, served by `parlor demo`): npm ci in web/ when it is
# missing or web/package-lock.json changed since the last install.
setup_web() {
  local web="$REPO_ROOT/web" stamp="$REPO_ROOT/web/node_modules/.lock.sha" want_sha
  want_sha="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_sha" ] \
    || [ ! -f "$web/node_modules/@metered-ca/realtime/dist/index.mjs" ]; then
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    echo "$want_sha" > "$stamp"
  fi
}

setup_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    echo "installing Debian chromium ..."
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium || return 1
  fi
}

status=0
results=()
record() { results+=("$1: $2"); [ "$2" = PASS ] || status=1; }

# ---------------------------------------------------------------- python
if want python; then
  log "python: metered-realtime SDK and the parlor package (pytest)"
  if setup_python && setup_parlor_python; then
    # shellcheck disable=SC2086
    (cd "$HERE/python" && timeout 900 "$HERE/.venv/bin/python" -m pytest ${PYTEST_ARGS:-} \
        --junitxml="$HERE/out/python-junit.xml")
    rc=$?; [ $rc -eq 0 ] && record python PASS || record python "FAIL (rc=$rc)"
  else
    record python "FAIL (setup)"
  fi
fi

# ---------------------------------------------------------------- js / browser
node_ok=1
if want js || want browser; then
  setup_node || node_ok=0
fi

if want js; then
  log "js: @metered-ca/realtime in Node (node --test)"
  if [ $node_ok -eq 1 ]; then
    (cd "$HERE" && timeout 600 node --test --test-concurrency=1 --test-timeout=120000 js/)
    rc=$?; [ $rc -eq 0 ] && record js PASS || record js "FAIL (rc=$rc)"
  else
    record js "FAIL (npm setup)"
  fi
fi

if want browser; then
  log "browser: @metered-ca/realtime in Chromium (playwright-core)"
  if [ $node_ok -eq 1 ] && setup_web && setup_chromium; then
    (cd "$HERE" && timeout 600 node --test --test-concurrency=1 --test-timeout=240000 browser/)
    rc=$?; [ $rc -eq 0 ] && record browser PASS || record browser "FAIL (rc=$rc)"
  else
    record browser "FAIL (setup)"
  fi
fi

log "summary"
for r in "${results[@]}"; do echo "  $r"; done
exit $status
