#!/usr/bin/env bash
# Run bench/python_audio.py in a venv with the reference Python SDK (created on first use).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q "metered-realtime[webrtc]==1.0.2" >&2
fi
exec "$VENV/bin/python" "$HERE/python_audio.py" "$@"
