#include "safetensors.h"

#include <cstring>

#include "files.h"
#include "json_io.h"

namespace mdship {

namespace {

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

template <typename T>
T load(const uint8_t* p) {  // little-endian host assumed (x86_64, arm64)
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// One header entry {"dtype", "shape", "data_offsets": [begin, end]} -> the tensor, its data copied
// from `data` (data_size bytes after the header).
StTensor read_tensor(const std::string& path, const std::string& name, const Json& info, const uint8_t* data,
                     size_t data_size) {
  const auto fail = [&](const std::string& what) -> SafetensorsError {
    return SafetensorsError(path + ": tensor '" + name + "' " + what);
  };
  const Json* dtype = json_member(info, "dtype");
  const Json* shape = json_member(info, "shape");
  const Json* offsets = json_member(info, "data_offsets");
  if (!dtype || !dtype->is_string() || !shape || !shape->is_array() || !offsets || !offsets->is_array() ||
      offsets->size() != 2)
    throw fail("has a malformed header entry");
  StTensor t;
  t.dtype = dtype->get<std::string>();
  for (const Json& d : *shape) {
    const std::optional<int64_t> v = json_int64(d);
    if (!v || *v < 0) throw fail("has a bad shape");
    t.shape.push_back(*v);
  }
  const std::optional<int64_t> b = json_int64((*offsets)[0]), e = json_int64((*offsets)[1]);
  if (!b || !e || *b < 0 || *e < *b || static_cast<uint64_t>(*e) > data_size)
    throw fail("has data offsets outside the file");
  const size_t elem = dtype_size(t.dtype);
  if (elem == 0) throw fail("has unknown dtype " + t.dtype);
  if (static_cast<uint64_t>(*e - *b) != static_cast<uint64_t>(t.numel()) * elem)
    throw fail("data size does not match its shape and dtype");
  t.data.assign(data + *b, data + *e);
  return t;
}

}  // namespace

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<float> StTensor::to_float() const {
  const int64_t n = numel();
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = data.data();
  if (dtype == "F32") {
    std::memcpy(out.data(), p, out.size() * 4);
  } else if (dtype == "F64") {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
  } else if (dtype == "I64") {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<int64_t>(p + 8 * i));
  } else if (dtype == "I32") {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<int32_t>(p + 4 * i));
  } else {
    throw SafetensorsError("tensor dtype " + dtype + " cannot be read as float (supported: F32, F64, I64, I32)");
  }
  return out;
}

std::vector<int64_t> StTensor::to_int64() const {
  const int64_t n = numel();
  std::vector<int64_t> out(static_cast<size_t>(n));
  const uint8_t* p = data.data();
  if (dtype == "I64") {
    std::memcpy(out.data(), p, out.size() * 8);
  } else if (dtype == "I32") {
    for (int64_t i = 0; i < n; ++i) out[i] = load<int32_t>(p + 4 * i);
  } else {
    throw SafetensorsError("tensor dtype " + dtype + " cannot be read as int64 (supported: I64, I32)");
  }
  return out;
}

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  std::string bytes;
  if (!read_file(path, bytes)) throw SafetensorsError("cannot read " + path);
  if (bytes.size() < 8) throw SafetensorsError(path + ": too short to be a safetensors file");
  const auto* raw = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint64_t header_len = load<uint64_t>(raw);
  if (header_len > bytes.size() - 8) throw SafetensorsError(path + ": header length exceeds the file size");
  const std::string_view header_text = std::string_view(bytes).substr(8, static_cast<size_t>(header_len));
  const Json header = parse_json<SafetensorsError>(header_text, path + " (header)");
  if (!header.is_object()) throw SafetensorsError(path + ": header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(header_len);

  SafetensorsFile out;
  out.path_ = path;
  for (const auto& [name, info] : header.items())
    if (name != "__metadata__")
      out.tensors_.emplace(name, read_tensor(path, name, info, raw + data_start, bytes.size() - data_start));
  return out;
}

const StTensor& SafetensorsFile::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw SafetensorsError(path_ + ": no tensor named '" + name + "'");
  return it->second;
}

}  // namespace mdship
