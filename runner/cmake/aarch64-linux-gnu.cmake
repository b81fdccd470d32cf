# CMake toolchain file: cross-compile the runner for arm64 Linux (glibc) with Debian's
# g++-aarch64-linux-gnu. Used by tools/build_runner_arm64.sh (`make runner-arm64`), which also passes
#   MDSHIP_ARM64_SYSROOT   a directory holding Debian arm64 packages unpacked with `dpkg -x`
#                          (OpenSSL's libcrypto and its arch-specific headers)
#   CMAKE_PREFIX_PATH      the aarch64 executorch wheel's share/cmake
# The header-only dependencies (nlohmann/json, CLI11, stb) are the host's Debian packages: headers
# are the same on every architecture, so packages and includes are searched on the host too; libraries
# only under the cross roots.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES MDSHIP_ARM64_SYSROOT)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu ${MDSHIP_ARM64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

if(MDSHIP_ARM64_SYSROOT)
  # OpenSSL: arch-independent headers in usr/include, opensslconf.h / configuration.h in the multiarch dir.
  set(OPENSSL_INCLUDE_DIR "${MDSHIP_ARM64_SYSROOT}/usr/include" CACHE PATH "")
  set(OPENSSL_CRYPTO_LIBRARY "${MDSHIP_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu/libcrypto.so" CACHE FILEPATH "")
  set(CMAKE_CXX_FLAGS_INIT "-isystem ${MDSHIP_ARM64_SYSROOT}/usr/include/aarch64-linux-gnu")
endif()
