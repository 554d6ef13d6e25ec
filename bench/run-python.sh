#!/usr/bin/env bash
# Run bench/python_audio.py in a venv with the reference Python SDK (created on first use).
# With `--sdk parlor`, the `parlor` package (crates/python) is built into the same venv first,
# optimized (`maturin develop --release`: minutes the first time, seconds when unchanged).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q "metered-realtime[webrtc]==1.0.2" >&2
fi
# BENCH_EVENT_LOOP=uvloop (read by python_audio.py): uvloop into the same venv, pinned.
if [ "${BENCH_EVENT_LOOP:-asyncio}" = uvloop ] && ! "$VENV/bin/python" -c "import uvloop" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "uvloop==0.23.0" >&2
fi
for arg in "$@"; do
  if [ "$arg" = parlor ]; then
    [ -x "$VENV/bin/maturin" ] || "$VENV/bin/python" -m pip install -q "maturin==1.16.0" >&2
    VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop -q --release --strip \
      -m "$HERE/../crates/python/Cargo.toml" >&2
  fi
done
exec "$VENV/bin/python" "$HERE/python_audio.py" "$@"
