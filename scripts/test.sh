#!/usr/bin/env bash
# The full test suite: formatting, lints, Rust unit + integration tests (real sockets),
# and the conformance suite driven by the real Metered SDKs (Python/aiortc, Node, Chromium).
#
#   scripts/test.sh            # everything
#   SKIP_CONFORMANCE=1 scripts/test.sh   # Rust only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/system-deps.sh

echo "==== cargo fmt --check"
cargo fmt --all -- --check

echo "==== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==== cargo doc -D warnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace --quiet

echo "==== cargo test (unit, doc and integration tests)"
cargo test --workspace

if [ "${SKIP_CONFORMANCE:-0}" != 1 ]; then
  echo "==== conformance: real SDKs against parlor serve"
  cargo build -p parlor
  PARLOR_BIN="$PWD/target/debug/parlor" tests/conformance/run.sh
fi
