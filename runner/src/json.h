// Minimal JSON reader for the runner (manifest.json, scheduler.json, safetensors headers) and a
// few helpers for writing JSON text. No third-party dependency.
//
// Accepts RFC 8259 JSON (objects, arrays, strings with escapes incl. surrogate pairs, numbers,
// true/false/null). Duplicate object keys: the last occurrence wins, as in Python's json module.
// Errors throw JsonError naming the source (usually a file path) and the byte offset.
//
// Shared by everything in the runner, the tokenizer (clip_tokenizer.cpp) included, which rethrows
// JsonError as TokenizerError. Built as the mdship_json library (runner/CMakeLists.txt).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mdship::json {

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Value {
  enum Type { kNull, kBool, kNumber, kString, kArray, kObject } type = kNull;
  bool boolean = false;
  double number = 0;
  bool is_integer = false;  // an integer literal that fits int64
  int64_t integer = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;

  bool is_null() const { return type == kNull; }
  bool is_object() const { return type == kObject; }
  bool is_array() const { return type == kArray; }
  bool is_string() const { return type == kString; }
  bool is_number() const { return type == kNumber; }
  bool is_bool() const { return type == kBool; }

  // Member lookup (nullptr when absent or when this is not an object).
  const Value* get(const std::string& key) const;
};

// Parses `text`; `source` names it in error messages.
Value parse(const std::string& text, const std::string& source);
// Reads and parses a file; throws JsonError when it cannot be read.
Value parse_file(const std::string& path);

// "type name" for messages: "null", "bool", "number", "string", "array", "object".
const char* type_name(Value::Type t);

// Writing helpers.
std::string quote(const std::string& s);  // a JSON string literal, with escapes
std::string number(double v);             // shortest round-trip form; non-finite -> null

}  // namespace mdship::json
