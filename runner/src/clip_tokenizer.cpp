// CLIP BPE tokenizer; see clip_tokenizer.h for the pipeline and what is supported.
#include "clip_tokenizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <queue>
#include <utility>

#include "files.h"
#include "json_io.h"

namespace mdship {

// =============================================================================================
// Unicode
// =============================================================================================
namespace unicode {
namespace tables {
#include "unicode_tables.inc"
}  // namespace tables

namespace {

template <typename T, size_t N>
const T* find_run(const T (&table)[N], char32_t c) {
  // Last entry whose first <= c.
  const T* it = std::upper_bound(std::begin(table), std::end(table), c,
                                 [](char32_t v, const T& r) { return v < r.first; });
  if (it == std::begin(table)) return nullptr;
  --it;
  return c <= it->last ? it : nullptr;
}

uint8_t ccc(char32_t c) {
  if (c < 0x300) return 0;
  const tables::CccRun* r = find_run(tables::kCcc, c);
  return r ? r->ccc : 0;
}

const tables::Decomp* find_decomp(char32_t c) {
  const tables::Decomp* begin = std::begin(tables::kDecomp);
  const tables::Decomp* end = std::end(tables::kDecomp);
  const tables::Decomp* it =
      std::lower_bound(begin, end, c, [](const tables::Decomp& d, char32_t v) { return d.cp < v; });
  return (it != end && it->cp == c) ? it : nullptr;
}

// Hangul syllable constants (Unicode chapter 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const tables::Decomp* d = find_decomp(c);
  if (!d) {
    out.push_back(c);
    return;
  }
  decompose(d->first, out);
  if (d->second) decompose(d->second, out);
}

uint64_t pair_key(char32_t a, char32_t b) { return (uint64_t(a) << 32) | uint64_t(b); }

const std::unordered_map<uint64_t, char32_t>& composition_map() {
  static const std::unordered_map<uint64_t, char32_t> map = [] {
    std::unordered_map<uint64_t, char32_t> m;
    for (const tables::Decomp& d : tables::kDecomp)
      if (d.composes) m.emplace(pair_key(d.first, d.second), d.cp);
    return m;
  }();
  return map;
}

// Primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto& m = composition_map();
  auto it = m.find(pair_key(a, b));
  return it == m.end() ? 0 : it->second;
}

bool in_ranges_ws(char32_t c) { return find_run(tables::kWhiteSpace, c) != nullptr; }

}  // namespace

const char* version() { return MDSHIP_UNICODE_VERSION; }

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int need;
    char32_t cp;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      need = 1;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      need = 2;
      cp = b0 & 0x0F;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      need = 3;
      cp = b0 & 0x07;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {  // 80..C1, F5..FF: never valid
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool ok = true;
    for (int k = 0; k < need; ++k, ++j) {
      if (j >= n) {
        ok = false;
        break;
      }
      const unsigned char b = static_cast<unsigned char>(s[j]);
      const unsigned char l = k == 0 ? lo : 0x80, h = k == 0 ? hi : 0xBF;
      if (b < l || b > h) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (b & 0x3F);
    }
    if (ok) {
      out.push_back(cp);
    } else {
      out.push_back(0xFFFD);  // one replacement for the maximal valid prefix
    }
    i = j;
  }
  return out;
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

std::u32string nfc(const std::u32string& text) {
  // Nothing below U+0300 decomposes, recomposes or has a non-zero combining class.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) return text;
  // 1. Full canonical decomposition.
  std::u32string d;
  d.reserve(text.size() + 8);
  for (char32_t c : text) decompose(c, d);
  // 2. Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // 3. Canonical composition.
  if (d.empty()) return d;
  size_t starter = 0;
  int last_class = ccc(d[0]) ? 256 : 0;  // a leading non-starter blocks everything after it
  size_t out = 1;
  for (size_t i = 1; i < d.size(); ++i) {
    const char32_t c = d[i];
    const int cls = ccc(c);
    // c composes with the last starter unless blocked by a character in between.
    const char32_t comp = (last_class < cls || last_class == 0) ? compose(d[starter], c) : 0;
    if (comp) {
      d[starter] = comp;
      continue;
    }
    if (cls == 0) starter = out;
    last_class = cls;
    d[out++] = c;
  }
  d.resize(out);
  return d;
}

bool is_white_space(char32_t c) { return in_ranges_ws(c); }

bool is_letter(char32_t c) {
  if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  return find_run(tables::kLetter, c) != nullptr;
}

bool is_number(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return find_run(tables::kNumber, c) != nullptr;
}

void append_lowercase(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  if (c == tables::kLowerSpecialCp) {
    out.append(std::begin(tables::kLowerSpecial), std::end(tables::kLowerSpecial));
    return;
  }
  const tables::LowerRun* r = find_run(tables::kLowerRuns, c);
  if (r && (c - r->first) % r->stride == 0)
    out.push_back(static_cast<char32_t>(static_cast<int64_t>(c) + r->delta));
  else
    out.push_back(c);
}

std::u32string clip_normalize(const std::u32string& text) {
  const std::u32string composed = nfc(text);
  std::u32string out;
  out.reserve(composed.size());
  bool in_space = false;
  for (char32_t c : composed) {
    if (is_white_space(c)) {
      if (!in_space) out.push_back(U' ');
      in_space = true;
      continue;
    }
    in_space = false;
    append_lowercase(c, out);
  }
  return out;
}

}  // namespace unicode

// =============================================================================================
// Loading helpers
// =============================================================================================
namespace {

// A tokenizer file's JSON object; TokenizerError (the one exception type the tokenizer's API
// throws) naming the file when it is not valid JSON or not an object.
Json parse_object(const std::string& text, const std::string& path) {
  Json v = parse_json<TokenizerError>(text, path);
  if (!v.is_object()) throw TokenizerError(path + ": expected a JSON object");
  return v;
}

// GPT-2 / CLIP bytes_to_unicode: byte -> UTF-8 of its printable stand-in character.
const std::array<std::string, 256>& byte_encoder() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    char32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      const char32_t c = direct[b] ? char32_t(b) : char32_t(256 + n++);
      t[b] = unicode::encode_utf8(std::u32string_view(&c, 1));
    }
    return t;
  }();
  return table;
}

// Named special token value in a config: "tok" or {"content": "tok", ...}; null / absent -> false.
bool token_content(const Json* v, std::string& out) {
  if (v && v->is_object()) v = json_member(*v, "content");
  if (!v || !v->is_string()) return false;
  out = v->get<std::string>();
  return true;
}

bool json_bool(const Json* v, bool fallback) { return v && v->is_boolean() ? v->get<bool>() : fallback; }

// The named special tokens (defaults of transformers' CLIPTokenizer), overridden by each config
// file that names them.
struct SpecialNames {
  std::string bos = "<|startoftext|>", eos = "<|endoftext|>", pad = "<|endoftext|>", unk = "<|endoftext|>";

  void read(const Json& config) {
    token_content(json_member(config, "bos_token"), bos);
    token_content(json_member(config, "eos_token"), eos);
    token_content(json_member(config, "pad_token"), pad);
    token_content(json_member(config, "unk_token"), unk);
  }
};

bool starts_with_at(const std::u32string& s, size_t i, std::u32string_view lit) {
  return s.size() - i >= lit.size() && std::u32string_view(s).substr(i, lit.size()) == lit;
}

// The contractions of both regexes, in alternation order.
constexpr std::u32string_view kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};

size_t match_contraction(const std::u32string& s, size_t i) {
  for (std::u32string_view c : kContractions)
    if (starts_with_at(s, i, c)) return c.size();
  return 0;
}

bool is_other(char32_t c) {  // [^\s\p{L}\p{N}]
  return !unicode::is_white_space(c) && !unicode::is_letter(c) && !unicode::is_number(c);
}

// Leftmost-longest search of `tokens` in s[from..]: returns the match start (npos if none) and
// sets `which` to the matching token.
template <typename Tok>
size_t find_added(const std::u32string& s, size_t from, const std::vector<Tok>& tokens, const Tok** which) {
  for (size_t i = from; i < s.size(); ++i) {
    const Tok* best = nullptr;
    for (const Tok& t : tokens)
      if (!t.content.empty() && starts_with_at(s, i, t.content) &&
          (!best || t.content.size() > best->content.size()))
        best = &t;
    if (best) {
      *which = best;
      return i;
    }
  }
  return std::u32string::npos;
}

}  // namespace

// =============================================================================================
// Loading
// =============================================================================================
ClipTokenizer ClipTokenizer::from_directory(const std::string& directory) {
  ClipTokenizer tok;
  const std::string vocab_path = join_path(directory, "vocab.json");
  const std::string merges_path = join_path(directory, "merges.txt");
  const std::string config_path = join_path(directory, "tokenizer_config.json");
  const std::string special_path = join_path(directory, "special_tokens_map.json");

  // vocab.json: {"token": id, ...}
  std::string text;
  if (!read_file(vocab_path, text))
    throw TokenizerError("tokenizer directory " + directory + " is missing vocab.json (cannot read " + vocab_path + ")");
  const Json vocab = parse_json<TokenizerError>(text, vocab_path);
  if (!vocab.is_object() || vocab.empty())
    throw TokenizerError(vocab_path + ": expected a non-empty JSON object mapping token -> id");
  for (const auto& [token, v] : vocab.items()) {
    const std::optional<int64_t> id = json_int64(v);
    if (!id || *id < 0 || *id > INT32_MAX)
      throw TokenizerError(vocab_path + ": token \"" + token + "\" has a non-integer or negative id");
    tok.vocab_[token] = static_cast<int32_t>(*id);
  }
  for (const auto& kv : tok.vocab_) tok.id_to_token_[kv.second] = kv.first;

  // merges.txt: "a b" per line, "#version..." lines skipped (as tokenizers' BPE::read_file).
  if (!read_file(merges_path, text))
    throw TokenizerError("tokenizer directory " + directory + " is missing merges.txt (cannot read " + merges_path + ")");
  {
    size_t pos = 0, lineno = 0;
    uint32_t rank = 0;
    while (pos < text.size()) {
      size_t eol = text.find('\n', pos);
      if (eol == std::string::npos) eol = text.size();
      std::string line = text.substr(pos, eol - pos);
      pos = eol + 1;
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        throw TokenizerError(merges_path + " line " + std::to_string(lineno) +
                             ": expected two tokens separated by one space");
      const std::string a = line.substr(0, sp), b = line.substr(sp + 1);
      for (const std::string& t : {a, b, a + b})
        if (!tok.vocab_.count(t))
          throw TokenizerError(merges_path + " line " + std::to_string(lineno) + ": token \"" + t +
                               "\" is not in vocab.json");
      auto ia = tok.vocab_.find(a), ib = tok.vocab_.find(b), in = tok.vocab_.find(a + b);
      const uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
      tok.merges_[key] = Merge{rank++, in->second};  // a repeated pair: the later line wins
    }
  }

  // Special / added tokens (defaults of transformers' CLIPTokenizer).
  SpecialNames names;
  bool split_special = false;
  Json config = Json::object();
  if (read_file(config_path, text)) {
    config = parse_object(text, config_path);
    names.read(config);
    split_special = json_bool(json_member(config, "split_special_tokens"), false);
    const Json* mml = json_member(config, "model_max_length");
    if (mml && mml->is_number() && mml->get<double>() >= 2 && mml->get<double>() <= 1e6)
      tok.model_max_length_ = static_cast<size_t>(mml->get<double>());
  }
  if (read_file(special_path, text)) names.read(parse_object(text, special_path));
  const std::string &bos = names.bos, &eos = names.eos, &pad = names.pad, &unk = names.unk;
  auto lookup = [&](const std::string& t, const char* what) {
    auto it = tok.vocab_.find(t);
    if (it == tok.vocab_.end())
      throw TokenizerError("tokenizer directory " + directory + ": " + what + " \"" + t + "\" is not in vocab.json");
    return it->second;
  };
  tok.bos_id_ = lookup(bos, "bos_token");
  tok.eos_id_ = lookup(eos, "eos_token");
  tok.pad_id_ = lookup(pad, "pad_token");
  tok.unk_id_ = lookup(unk, "unk_token");

  // Added tokens: added_tokens_decoder entries, then the named special tokens not among them.
  struct Entry {
    std::string content;
    int32_t id;
    bool normalized, special;
  };
  std::vector<Entry> entries;
  if (const Json* decoder = json_member(config, "added_tokens_decoder"); decoder && decoder->is_object()) {
    for (const auto& [key, e] : decoder->items()) {
      std::string content;
      if (!token_content(&e, content))
        throw TokenizerError(config_path + ": added_tokens_decoder[\"" + key + "\"] has no content");
      const bool special = json_bool(json_member(e, "special"), false);
      if (json_bool(json_member(e, "single_word"), false))
        throw TokenizerError(config_path + ": added token \"" + content + "\" has single_word=true, which mdship's C++ tokenizer does not support");
      int32_t id;
      auto it = tok.vocab_.find(content);
      if (it != tok.vocab_.end()) {
        id = it->second;
      } else {
        char* end = nullptr;
        const long v = std::strtol(key.c_str(), &end, 10);
        if (key.empty() || *end != '\0' || v < 0)
          throw TokenizerError(config_path + ": added_tokens_decoder key \"" + key + "\" is not an id");
        id = static_cast<int32_t>(v);
        tok.id_to_token_[id] = content;
      }
      entries.push_back({content, id, json_bool(json_member(e, "normalized"), !special), special});
    }
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.id < b.id; });
  }
  for (const std::string* named : {&bos, &eos, &unk, &pad}) {
    const bool present = std::any_of(entries.begin(), entries.end(), [&](const Entry& e) { return e.content == *named; });
    if (!present) entries.push_back({*named, tok.vocab_.at(*named), false, true});
  }
  for (const Entry& e : entries) {
    if (e.special && split_special) continue;  // split_special_tokens: matched as plain text
    AddedToken t{unicode::decode_utf8(e.content), e.id};
    (e.normalized ? tok.normalized_added_ : tok.raw_added_).push_back(std::move(t));
  }
  return tok;
}

std::string ClipTokenizer::id_to_token(int32_t id) const {
  auto it = id_to_token_.find(id);
  return it == id_to_token_.end() ? std::string() : it->second;
}

// =============================================================================================
// Encoding
// =============================================================================================
std::vector<int32_t> ClipTokenizer::encode_ordinary(std::string_view utf8_text) const {
  const std::u32string text = unicode::decode_utf8(utf8_text);
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    const AddedToken* hit = nullptr;
    const size_t at = find_added(text, pos, raw_added_, &hit);
    const size_t seg_end = at == std::u32string::npos ? text.size() : at;
    if (seg_end > pos) encode_segment(text.substr(pos, seg_end - pos), ids);
    if (at == std::u32string::npos) break;
    ids.push_back(hit->id);
    pos = at + hit->content.size();
  }
  return ids;
}

void ClipTokenizer::encode_segment(const std::u32string& raw, std::vector<int32_t>& out) const {
  const std::u32string normalized = unicode::clip_normalize(raw);
  size_t pos = 0;
  while (pos <= normalized.size()) {
    const AddedToken* hit = nullptr;
    const size_t at = normalized_added_.empty() ? std::u32string::npos
                                                : find_added(normalized, pos, normalized_added_, &hit);
    const size_t seg_end = at == std::u32string::npos ? normalized.size() : at;
    if (seg_end > pos) encode_normalized(normalized.substr(pos, seg_end - pos), out);
    if (at == std::u32string::npos) break;
    out.push_back(hit->id);
    pos = at + hit->content.size();
  }
}

// The CLIP Split pre-tokenizer: the regex's matches, in order; everything else (White_Space) dropped.
std::vector<std::pair<size_t, size_t>> ClipTokenizer::split_normalized(const std::u32string& s) const {
  static constexpr std::u32string_view kSot = U"<|startoftext|>", kEot = U"<|endoftext|>";
  std::vector<std::pair<size_t, size_t>> spans;
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    size_t len = 0;
    const char32_t c = s[i];
    if (starts_with_at(s, i, kSot)) {
      len = kSot.size();
    } else if (starts_with_at(s, i, kEot)) {
      len = kEot.size();
    } else if ((len = match_contraction(s, i)) != 0) {
    } else if (unicode::is_letter(c)) {
      len = 1;
      while (i + len < n && unicode::is_letter(s[i + len])) ++len;
    } else if (unicode::is_number(c)) {
      len = 1;
    } else if (!unicode::is_white_space(c)) {
      len = 1;
      while (i + len < n && is_other(s[i + len])) ++len;
    } else {
      ++i;  // whitespace: not part of any match
      continue;
    }
    spans.emplace_back(i, len);
    i += len;
  }
  return spans;
}

void ClipTokenizer::encode_normalized(const std::u32string& s, std::vector<int32_t>& out) const {
  for (const auto& [start, len] : split_normalized(s)) encode_piece(s.substr(start, len), out);
}

std::vector<std::string> ClipTokenizer::unknown_words(std::string_view utf8_text) const {
  // The rule of mdship/tokenizer.py unknown_words: a word more than half of whose tokens are single characters
  // (the closed vocabularies of small models spell every unknown word out).
  const std::u32string normalized = unicode::clip_normalize(unicode::decode_utf8(utf8_text));
  std::vector<std::string> words;
  for (const auto& [start, len] : split_normalized(normalized)) {
    std::vector<int32_t> ids;
    encode_piece(normalized.substr(start, len), ids);
    size_t letters = 0;
    for (int32_t id : ids) {
      std::string token = id_to_token(id);
      if (token.size() >= end_of_word_suffix_.size() &&
          token.compare(token.size() - end_of_word_suffix_.size(), std::string::npos, end_of_word_suffix_) == 0)
        token.resize(token.size() - end_of_word_suffix_.size());
      if (unicode::decode_utf8(token).size() <= 1) ++letters;
    }
    if (ids.size() > 1 && 2 * letters > ids.size())
      words.push_back(unicode::encode_utf8(std::u32string_view(normalized).substr(start, len)));
  }
  return words;
}

// The ByteLevel pre-tokenizer: GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// inside the piece, then bytes_to_unicode of each part, then BPE.
void ClipTokenizer::encode_piece(const std::u32string& s, std::vector<int32_t>& out) const {
  const auto& enc = byte_encoder();
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    size_t len = match_contraction(s, i);
    if (!len) {
      const size_t j = (s[i] == U' ' && i + 1 < n) ? i + 1 : i;  // optional leading space
      if (unicode::is_letter(s[j])) {
        len = j - i + 1;
        while (i + len < n && unicode::is_letter(s[i + len])) ++len;
      } else if (unicode::is_number(s[j])) {
        len = j - i + 1;
        while (i + len < n && unicode::is_number(s[i + len])) ++len;
      } else if (is_other(s[j])) {
        len = j - i + 1;
        while (i + len < n && is_other(s[i + len])) ++len;
      } else {  // whitespace run: \s+(?!\S) leaves the last one for the next match, else \s+
        size_t e = i;
        while (e < n && unicode::is_white_space(s[e])) ++e;
        len = (e == n || e - i == 1) ? e - i : e - i - 1;
      }
    }
    std::string word;
    for (unsigned char b : unicode::encode_utf8(std::u32string_view(s).substr(i, len))) word += enc[b];
    bpe(word, out);
    i += len;
  }
}

// tokenizers' BPE::merge_word + Word::merge_all (no dropout, no cache, fuse_unk = false).
void ClipTokenizer::bpe(const std::string& w, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t c;
    int64_t prev, next;
    size_t len;
  };
  std::vector<Symbol> symbols;
  auto add = [&symbols](int32_t c, size_t byte_len) {
    const int64_t len = static_cast<int64_t>(symbols.size());
    int64_t prev = -1;
    if (!symbols.empty()) {
      symbols.back().next = len;
      prev = len - 1;
    }
    symbols.push_back({c, prev, -1, byte_len});
  };
  bool pending_unk = false;
  size_t pending_len = 0;
  for (size_t i = 0; i < w.size();) {
    size_t clen = 1;
    const unsigned char b = static_cast<unsigned char>(w[i]);
    if (b >= 0xF0) clen = 4;
    else if (b >= 0xE0) clen = 3;
    else if (b >= 0xC0) clen = 2;
    std::string sym = w.substr(i, clen);
    const bool last = i + clen >= w.size();
    if (last) sym += end_of_word_suffix_;
    auto it = vocab_.find(sym);
    if (it != vocab_.end()) {
      if (pending_unk) add(unk_id_, pending_len);
      pending_unk = false;
      add(it->second, clen);
    } else if (unk_id_ >= 0) {
      if (pending_unk) add(unk_id_, pending_len);
      pending_unk = true;
      pending_len = clen;
    }
    i += clen;
  }
  if (pending_unk) add(unk_id_, pending_len);

  struct Cand {
    uint32_t rank;
    size_t pos;
    int32_t new_id;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> queue(worse);
  auto find_merge = [this](int32_t a, int32_t b) -> const Merge* {
    auto it = merges_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (const Merge* m = find_merge(symbols[i].c, symbols[i + 1].c)) queue.push({m->rank, i, m->new_id});
  while (!queue.empty()) {
    const Cand top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const size_t next_pos = static_cast<size_t>(cur.next);
    const Symbol right = symbols[next_pos];
    const Merge* m = find_merge(cur.c, right.c);
    if (!m || m->new_id != top.new_id) continue;  // stale entry
    cur.c = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next > -1 && static_cast<size_t>(right.next) < symbols.size())
      symbols[static_cast<size_t>(right.next)].prev = static_cast<int64_t>(top.pos);
    if (cur.prev >= 0) {
      const size_t prev = static_cast<size_t>(cur.prev);
      if (const Merge* pm = find_merge(symbols[prev].c, cur.c)) queue.push({pm->rank, prev, pm->new_id});
    }
    if (cur.next >= 0 && static_cast<size_t>(cur.next) < symbols.size()) {
      if (const Merge* nm = find_merge(cur.c, symbols[static_cast<size_t>(cur.next)].c))
        queue.push({nm->rank, top.pos, nm->new_id});
    }
  }
  for (const Symbol& s : symbols)
    if (s.len != 0) out.push_back(s.c);
}

std::vector<int32_t> ClipTokenizer::encode(std::string_view utf8_text, size_t max_length) const {
  if (max_length != 0 && max_length < 2)
    throw TokenizerError("max_length must be 0 (no truncation) or >= 2, got " + std::to_string(max_length));
  std::vector<int32_t> content = encode_ordinary(utf8_text);
  if (max_length != 0 && content.size() > max_length - 2) content.resize(max_length - 2);
  std::vector<int32_t> ids;
  ids.reserve(content.size() + 2);
  ids.push_back(bos_id_);
  ids.insert(ids.end(), content.begin(), content.end());
  ids.push_back(eos_id_);
  return ids;
}

std::vector<int32_t> ClipTokenizer::encode_padded(std::string_view utf8_text, size_t max_length) const {
  if (max_length < 2) throw TokenizerError("max_length must be >= 2, got " + std::to_string(max_length));
  std::vector<int32_t> ids = encode(utf8_text, max_length);
  ids.resize(max_length, pad_id_);
  return ids;
}

}  // namespace mdship
