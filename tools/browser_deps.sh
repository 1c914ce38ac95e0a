#!/usr/bin/env bash
# Install what the JupyterLab browser test needs (Debian chromium + chromedriver, a Japanese font)
# when missing.
# Needs root (CI runs as root). Elsewhere it only says what is missing; the browser test then
# skips locally with that reason, and fails under CI=true so CI never skips it silently.
set -uo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v shellcheck >/dev/null || missing+=(shellcheck)
# A Japanese font for the browser, so the notebooks' Japanese lines show in the test screenshots.
[ -e /usr/share/fonts/opentype/ipafont-gothic ] || missing+=(fonts-ipafont-gothic)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing ${missing[*]} (Debian packages for the browser and job-script tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "[setup] apt-get install ${missing[*]} failed" >&2; exit 1; }
else
  echo "[setup] note: ${missing[*]} not installed (needs root); tests that need them will be skipped"
fi
