#!/usr/bin/env bash
# `make runner-arm64`: cross-compile the C++ runner for arm64 Linux and install what running it under
# emulation needs, from Debian and PyPI only, idempotently (a second run reuses everything):
#   Debian (apt)   qemu-user (qemu-aarch64), g++-aarch64-linux-gnu (cross compiler + arm64 glibc), and
#                  the host packages of tools/install_system_deps.sh (header-only libraries, cmake)
#   Debian arm64   libssl-dev + libssl3 .debs, fetched with `apt-get download` under a private apt state
#                  (this machine's dpkg architectures are not changed) and unpacked into $CACHE/sysroot
#   PyPI           the aarch64 executorch wheel of the venv's executorch version (`pip download`),
#                  its lib/, include/ and share/cmake unpacked into $CACHE/executorch
# Output, in artifacts/runner-arm64-build (run with qemu-aarch64 by mdship/devices.py):
#   mdship-runner      the runner (runner/ unchanged, through runner/cmake/aarch64-linux-gnu.cmake)
#   cpu_probe          tools/arm64/cpu_probe.c: a CPU model's features, and whether its SME outer products are right
#   kernel_trace.so    tools/arm64/kernel_trace.c: an LD_AUDIT module naming the KleidiAI micro-kernels that ran
#
#   PY=.venv/bin/python MDSHIP_ARM64_CACHE=.cache/arm64 bash tools/build_runner_arm64.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
CACHE=$(mkdir -p "${MDSHIP_ARM64_CACHE:-$REPO/.cache/arm64}" && cd "${MDSHIP_ARM64_CACHE:-$REPO/.cache/arm64}" && pwd)
BUILD=${MDSHIP_ARM64_BUILD:-$REPO/artifacts/runner-arm64-build}
JOBS=${JOBS:-2}

apt_install() {  # Debian packages, only those missing
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt)"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

arm64_sysroot() {  # OpenSSL libcrypto for arm64, unpacked, without touching dpkg's architecture list
  local root=$CACHE/sysroot
  [ -e "$root/usr/lib/aarch64-linux-gnu/libcrypto.so" ] && return 0
  echo "fetching Debian arm64 libssl-dev, libssl3 into $root"
  local state=$CACHE/apt codename
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs"
  printf 'deb http://deb.debian.org/debian %s main\ndeb http://deb.debian.org/debian %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$codename" "$codename" "$codename" > "$state/sources.list"
  local opts=(-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o "Dir::Etc::SourceList=$state/sources.list"
              -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache")
  apt-get "${opts[@]}" update -qq
  (cd "$state/debs" && rm -f ./*.deb && apt-get "${opts[@]}" download libssl-dev libssl3 2>&1 | grep -v unsandboxed || true)
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  for deb in "$state"/debs/*.deb; do dpkg -x "$deb" "$root.tmp"; done
  rm -rf "$root" && mv "$root.tmp" "$root"
}

executorch_wheel() {  # the aarch64 wheel of the venv's executorch version: C++ parts only
  local version dest=$CACHE/executorch
  version=$("$PY" -c 'import importlib.metadata as m; print(m.version("executorch"))')
  [ -e "$dest/share/cmake/executorch-config.cmake" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ] && return 0
  echo "fetching the executorch $version manylinux aarch64 wheel (PyPI) into $dest"
  local dl=$CACHE/wheel
  rm -rf "$dl" && mkdir -p "$dl"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 "executorch==$version" -d "$dl" 2>&1 | grep -v "is ignored" || true
  rm -rf "$dest.tmp"
  "$PY" - "$dl" "$dest.tmp" <<'PYEOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("executorch-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(("executorch/lib/", "executorch/include/", "executorch/share/")):
            z.extract(name, sys.argv[2])
PYEOF
  mv "$dest.tmp/executorch" "$dest.new" && rm -rf "$dest" "$dest.tmp" "$dl" && mv "$dest.new" "$dest"
  echo "$version" > "$dest/VERSION"
}

bash "$REPO/tools/install_system_deps.sh"
apt_install qemu-user g++-aarch64-linux-gnu
arm64_sysroot
executorch_wheel
cmake -S "$REPO/runner" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMDSHIP_BUILD_RUNNER=ON \
  -DCMAKE_TOOLCHAIN_FILE="$REPO/runner/cmake/aarch64-linux-gnu.cmake" -DMDSHIP_ARM64_SYSROOT="$CACHE/sysroot" \
  -DCMAKE_PREFIX_PATH="$CACHE/executorch/share/cmake" >/dev/null
cmake --build "$BUILD" --target mdship-runner -j"$JOBS"
aarch64-linux-gnu-gcc -O1 -Wall -o "$BUILD/cpu_probe" "$REPO/tools/arm64/cpu_probe.c" "$REPO/tools/arm64/sme_ops.S"
aarch64-linux-gnu-gcc -O2 -Wall -shared -fPIC -o "$BUILD/kernel_trace.so" "$REPO/tools/arm64/kernel_trace.c"
echo "$BUILD/mdship-runner"
