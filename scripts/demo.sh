#!/usr/bin/env bash
# The README's first command: install the build's system packages if missing (libopus-dev),
# then run the room server on the embedded defaults (dev key pk_test_x). The full
# `parlor demo` (server + voice agent + browser page) replaces this with issue #5.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SKIP_CONFORMANCE=1 scripts/system-deps.sh
exec cargo run --release -p parlor -- serve --listen 127.0.0.1:7800 --dev-key pk_test_x "$@"
