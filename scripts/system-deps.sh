#!/usr/bin/env bash
# Install the Debian packages the build and the tests need, if missing:
#   libopus-dev + pkg-config  (crates/media links libopus)
#   chromium                  (browser conformance tests; skipped with SKIP_CONFORMANCE=1)
#   python3-venv              (the conformance venv)
set -euo pipefail
need=()
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev pkg-config)
if [ "${SKIP_CONFORMANCE:-0}" != 1 ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
