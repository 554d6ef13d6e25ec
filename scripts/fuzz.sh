#!/usr/bin/env bash
# A bounded fuzz pass over every cargo-fuzz target (nightly toolchain, AddressSanitizer):
# each runs FUZZ_SECONDS (default 20) from the committed seeds (fuzz/seeds/TARGET) plus the
# local corpus (fuzz/corpus/TARGET, not committed). A crash fails the script and leaves the
# input in fuzz/artifacts/TARGET/; commit it as a regression test beside the code it broke.
#
#   scripts/fuzz.sh                    # all targets, 20 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh hub auth
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

seconds=${FUZZ_SECONDS:-20}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "---- fuzz $t (${seconds} s)"
  cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss)|SUMMARY|panicked|ERROR' || true
  # grep swallows the exit code: a crash leaves an artifact behind.
  if compgen -G "fuzz/artifacts/$t/crash-*" >/dev/null || compgen -G "fuzz/artifacts/$t/timeout-*" >/dev/null \
     || compgen -G "fuzz/artifacts/$t/oom-*" >/dev/null; then
    echo "fuzz target $t found a failing input: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
