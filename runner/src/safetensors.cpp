#include "safetensors.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "json.h"

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
  std::ifstream f(path, std::ios::binary);
  if (!f) throw SafetensorsError("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  if (bytes.size() < 8) throw SafetensorsError(path + ": too short to be a safetensors file");
  const uint64_t header_len = load<uint64_t>(reinterpret_cast<const uint8_t*>(bytes.data()));
  if (header_len > bytes.size() - 8) throw SafetensorsError(path + ": header length exceeds the file size");
  const std::string header_text = bytes.substr(8, static_cast<size_t>(header_len));
  json::Value header;
  try {
    header = json::parse(header_text, path + " (header)");
  } catch (const json::JsonError& e) {
    throw SafetensorsError(e.what());
  }
  if (!header.is_object()) throw SafetensorsError(path + ": header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(header_len);
  const size_t data_size = bytes.size() - data_start;

  SafetensorsFile out;
  out.path_ = path;
  for (const auto& [name, info] : header.object) {
    if (name == "__metadata__") continue;
    const json::Value* dtype = info.get("dtype");
    const json::Value* shape = info.get("shape");
    const json::Value* offsets = info.get("data_offsets");
    if (!dtype || !dtype->is_string() || !shape || !shape->is_array() || !offsets || !offsets->is_array() ||
        offsets->array.size() != 2)
      throw SafetensorsError(path + ": tensor '" + name + "' has a malformed header entry");
    StTensor t;
    t.dtype = dtype->string;
    for (const json::Value& d : shape->array) {
      if (!d.is_integer || d.integer < 0) throw SafetensorsError(path + ": tensor '" + name + "' has a bad shape");
      t.shape.push_back(d.integer);
    }
    const json::Value& b = offsets->array[0];
    const json::Value& e = offsets->array[1];
    if (!b.is_integer || !e.is_integer || b.integer < 0 || e.integer < b.integer ||
        static_cast<uint64_t>(e.integer) > data_size)
      throw SafetensorsError(path + ": tensor '" + name + "' has data offsets outside the file");
    const size_t elem = dtype_size(t.dtype);
    if (elem == 0) throw SafetensorsError(path + ": tensor '" + name + "' has unknown dtype " + t.dtype);
    if (static_cast<uint64_t>(e.integer - b.integer) != static_cast<uint64_t>(t.numel()) * elem)
      throw SafetensorsError(path + ": tensor '" + name + "' data size does not match its shape and dtype");
    const auto* begin = reinterpret_cast<const uint8_t*>(bytes.data()) + data_start + b.integer;
    t.data.assign(begin, begin + (e.integer - b.integer));
    out.tensors_.emplace(name, std::move(t));
  }
  return out;
}

const StTensor& SafetensorsFile::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw SafetensorsError(path_ + ": no tensor named '" + name + "'");
  return it->second;
}

}  // namespace mdship
