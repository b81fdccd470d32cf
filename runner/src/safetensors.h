// Minimal safetensors reader for the bundle's test vectors (test_vectors/<component>.safetensors).
//
// Format: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the raw little-endian tensor data (offsets are relative to the end of the header).
// Supported dtypes: F32, F64, I64, I32, F16 / BF16 are rejected with a clear error on access.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mdship {

class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct StTensor {
  std::string dtype;           // "F32", "I64", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;   // raw little-endian bytes

  int64_t numel() const;
  // Converted copies; throw SafetensorsError for an unsupported dtype.
  std::vector<float> to_float() const;
  std::vector<int64_t> to_int64() const;
};

class SafetensorsFile {
 public:
  // Reads the whole file; throws SafetensorsError naming the path on any fault.
  static SafetensorsFile read(const std::string& path);

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const StTensor& at(const std::string& name) const;  // throws when absent
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::map<std::string, StTensor> tensors_;
};

}  // namespace mdship
