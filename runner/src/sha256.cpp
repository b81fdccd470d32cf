#include "sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

namespace mdship {

namespace {

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
      throw std::runtime_error("OpenSSL cannot start a SHA-256 digest");
  }
  void update(const void* data, size_t size) {
    if (EVP_DigestUpdate(ctx_.get(), data, size) != 1) throw std::runtime_error("OpenSSL SHA-256 update failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), digest, &size) != 1) throw std::runtime_error("OpenSSL SHA-256 final failed");
    static const char kDigits[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < size; ++i) {
      out.push_back(kDigits[digest[i] >> 4]);
      out.push_back(kDigits[digest[i] & 15]);
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

using File = std::unique_ptr<std::FILE, decltype(&std::fclose)>;

[[noreturn]] void unreadable(const std::string& path) {
  throw std::runtime_error(path + ": cannot read (" + std::strerror(errno) + ")");
}

}  // namespace

std::string sha256_hex(std::string_view bytes) {
  Sha256 sha;
  sha.update(bytes.data(), bytes.size());
  return sha.hex();
}

std::string sha256_file(const std::string& path) {
  const File f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) unreadable(path);
  Sha256 sha;
  std::vector<char> block(1 << 20);
  size_t n = 0;
  while ((n = std::fread(block.data(), 1, block.size(), f.get())) > 0) sha.update(block.data(), n);
  if (std::ferror(f.get())) unreadable(path);
  return sha.hex();
}

}  // namespace mdship
