// SHA-256 (OpenSSL libcrypto's EVP API; BoringSSL on Android / iOS provides the same calls), for the
// bundle's integrity checks (bundle.cpp). Digests are lowercase hex, as Python's hexdigest().
#pragma once

#include <string>
#include <string_view>

namespace mdship {

std::string sha256_hex(std::string_view bytes);
// Streams the file in 1 MiB blocks (programs are hundreds of MB); throws std::runtime_error naming
// the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace mdship
