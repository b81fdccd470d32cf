#!/usr/bin/env bash
# What the tests need beyond the venv: Debian's chromium, for the test that opens `mdship compare`'s report.html
# headless (tests/test_compare.py drives it over the DevTools protocol on a pipe; nothing else is downloaded, no
# browser build of any tool's own). Installed only when missing, so a second run does nothing.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
echo "installing chromium (apt)"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
log=$(mktemp)  # apt's chatter is shown only when it fails
if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
