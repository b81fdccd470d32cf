// PNG output of the runner: a compressed PNG (stb_image_write's deflate), written atomically.
#pragma once

#include <cstdint>
#include <string>

namespace mdship {

// Writes an 8-bit image (rows top to bottom, HWC interleaved; channels 1, 3 or 4) to `path`:
// creates missing parent directories (as mdship's save_png), writes a temp file beside `path` and
// renames it over `path`, so a reader never sees half a file. Throws std::runtime_error with a
// one-line message naming `path` (or the directory it cannot create).
void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels);

}  // namespace mdship
