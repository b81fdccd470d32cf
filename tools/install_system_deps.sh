#!/usr/bin/env bash
# System packages the C++ runner needs (runner/CMakeLists.txt): cmake, a C++17 compiler, and the
# libraries it builds against (nlohmann/json, CLI11, stb_image_write, OpenSSL libcrypto). Installed
# from Debian only when missing, so a second run does nothing.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
for pkg in nlohmann-json3-dev libcli11-dev libstb-dev libssl-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log=$(mktemp)  # apt's chatter (debconf notes included) is shown only when it fails
  if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi
