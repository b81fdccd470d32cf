// nlohmann/json as the runner and the tokenizer read it: parse errors and integer checks in the
// one-line, file-naming style of every other error (header-only, like nlohmann/json itself).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace mdship {

using Json = nlohmann::json;

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
inline std::string json_reason(const nlohmann::json::exception& e) {
  const std::string what = e.what();
  const size_t end = what.find("] ");
  return end == std::string::npos ? what : what.substr(end + 2);
}

// Parses `text`; invalid JSON throws Error("<source>: invalid JSON (<reason>)"). Each caller passes
// its own exception type (BundleError, TokenizerError, ...), so its API keeps throwing only that.
// Unlike Python's json module, NaN / Infinity literals are rejected (mdship writes finite numbers).
template <typename Error>
Json parse_json(std::string_view text, const std::string& source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    throw Error(source + ": invalid JSON (" + json_reason(e) + ")");
  }
}

// A member of an object; nullptr when absent or when `obj` is not an object.
inline const Json* json_member(const Json& obj, const std::string& key) {
  const auto it = obj.find(key);  // end() for a non-object too
  return it == obj.end() ? nullptr : &*it;
}

// The value of an integer literal that fits int64 (a float such as 5.0 is not one, as in Python).
inline std::optional<int64_t> json_int64(const Json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

}  // namespace mdship
