#include "image_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <system_error>

// The one translation unit that compiles stb_image_write; STATIC keeps its symbols private, so an
// app that links its own copy of stb does not clash with this one.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>

namespace mdship {

namespace {

namespace fs = std::filesystem;

[[noreturn]] void cannot_write(const std::string& path, const std::string& reason) {
  throw std::runtime_error(path + ": cannot write the image (" + reason + ")");
}

void make_parent_dirs(const fs::path& file) {
  const fs::path dir = file.parent_path();
  std::error_code ec;
  if (dir.empty() || fs::is_directory(dir, ec)) return;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create the directory for the image (" + ec.message() + ")");
}

// stb's output callback: appends to the temp file and remembers the first failure.
struct Sink {
  std::FILE* file;
  int error = 0;
};

void append(void* context, void* data, int size) {
  auto* sink = static_cast<Sink*>(context);
  if (!sink->error && std::fwrite(data, 1, static_cast<size_t>(size), sink->file) != static_cast<size_t>(size))
    sink->error = errno ? errno : EIO;
}

// Encodes into `tmp`; returns 0 or the errno of the failure (the temp file is then removed).
int write_temp(const std::string& tmp, const uint8_t* pixels, int width, int height, int channels) {
  std::FILE* f = std::fopen(tmp.c_str(), "wbx");  // "x": never follow or reuse an existing name
  if (!f) return errno;
  Sink sink{f};
  if (!stbi_write_png_to_func(append, &sink, width, height, channels, pixels, width * channels) && !sink.error)
    sink.error = EINVAL;  // stb refused the image (size or channel count)
  if (std::fclose(f) != 0 && !sink.error) sink.error = errno;
  if (sink.error) std::remove(tmp.c_str());
  return sink.error;
}

}  // namespace

void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels) {
  const fs::path out(path);
  make_parent_dirs(out);
  // Beside the target (same file system, so the rename is atomic); the pid keeps two runners apart.
  const fs::path tmp = out.parent_path() / ("." + out.filename().string() + "." + std::to_string(::getpid()) + ".tmp");
  if (const int error = write_temp(tmp.string(), pixels, width, height, channels))
    cannot_write(path, std::strerror(error));
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) {
    std::remove(tmp.c_str());
    cannot_write(path, ec.message());
  }
}

}  // namespace mdship
