// Self-contained PNG writer (no zlib): 8-bit RGB, filter type 0 on every row, zlib stream of
// stored (uncompressed) deflate blocks, CRC-32 per chunk and Adler-32 for the zlib stream.
// The files are larger than a compressing encoder's but decode identically everywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mdship::png {

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);
uint32_t adler32(const uint8_t* data, size_t size, uint32_t adler = 1);

// The zlib stream (RFC 1950) of `data` using stored deflate blocks (RFC 1951 BTYPE=00).
std::vector<uint8_t> zlib_stored(const uint8_t* data, size_t size);

// PNG bytes of an 8-bit image, rows top to bottom, HWC interleaved; channels 1 (gray), 3 (RGB)
// or 4 (RGBA).
std::vector<uint8_t> encode(const uint8_t* pixels, int width, int height, int channels);

// Writes atomically (temp file "<dir>/.<name>.tmp" then rename); throws std::runtime_error.
void write_file(const std::string& path, const uint8_t* pixels, int width, int height, int channels);

}  // namespace mdship::png
