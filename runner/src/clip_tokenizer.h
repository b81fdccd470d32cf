// CLIP BPE tokenizer, a C++17 port of transformers' CLIPTokenizer (the Rust `tokenizers`-backed
// one that transformers 5.x ships; there is no ftfy step and no BasicTokenizer step in it).
//
// Loads vocab.json + merges.txt (+ optional tokenizer_config.json / special_tokens_map.json) from
// a directory, no third-party dependency. The encoding pipeline, step by step as the reference:
//
//  1. UTF-8 decode. Invalid bytes become U+FFFD, one per maximal invalid subpart (what Python's
//     bytes.decode("utf-8", "replace") does); the Python reference only ever sees valid text.
//  2. Added tokens (bos/eos/pad/unk and any added_tokens_decoder entry) are cut out of the raw text,
//     leftmost-longest, exact and case-sensitive ("normalized": false, as mdship writes them);
//     entries with "normalized": true are matched after step 3 instead, inside the normalized text.
//  3. Normalizer: NFC -> every run of White_Space characters becomes one " " -> per-character full
//     lowercase (no context rules: a final capital sigma becomes U+03C3, U+0130 becomes "i" U+0307).
//  4. Split (keep matches, drop the rest): <|startoftext|> | <|endoftext|> | 's|'t|'re|'ve|'m|'ll|'d
//     | \p{L}+ | \p{N} | [^\s\p{L}\p{N}]+   (leftmost-first alternation, as the regex).
//  5. ByteLevel pre-tokenizer: GPT-2's regex inside each piece (it only ever splits the
//     "<|startoftext|>" / "<|endoftext|>" pieces into "<|", name, "|>"), then bytes_to_unicode.
//  6. BPE with end-of-word suffix "</w>": symbols not in the vocabulary become the unk token (one
//     per character, not fused), then merges by rank, leftmost first (tokenizers' Word::merge_all).
//  7. bos + ids + eos; with a max length the ids are cut to max_length - 2 first (eos is kept);
//     encode_padded() right-pads with the pad token.
//
// Unicode data (White_Space, general categories L/N, lowercase mappings, canonical combining
// classes and decompositions for NFC) comes from unicode_tables.inc, generated from Python's
// unicodedata (Unicode 14.0 with Python 3.11) by tools/gen_unicode_tables.py. The reference's own
// data is a mix: its NFC crate is older (Unicode 9-era: it ignores the combining classes of 98
// marks added in 10.0-14.0 and one decomposition), so the generator restricts the NFC tables to
// what the reference applies; its regex engine (\p{L}, \p{N}) and Rust's lowercase are newer.
//
// What is covered, as measured by tests/runner/test_tokenizer_parity.py against transformers 5.23
// / tokenizers 0.23.3: identical ids for every code point assigned in Unicode 14.0 (alone, inside
// words, next to digits), for NFC sequences (reordering, composition, blocking, singletons,
// exclusions, Hangul), invalid UTF-8, whitespace/control characters, CJK, emoji, contractions,
// special-token strings, truncation and padding.
// What is not: the 9,420 code points assigned in Unicode 15.0-17.0 (CJK Extensions H and I,
// Kawi, Nag Mundari, Garay, Todhri, Kirat Rai, Sunuwar, Tulu-Tigalari, Egyptian hieroglyphs
// Extended-A, a few Latin/Cyrillic letters, ...) are unassigned here (not letters, not numbers,
// no case) while the reference knows them, so text containing them may tokenize differently.
// Not done because the reference does not do them either: ftfy, BasicTokenizer control-character
// removal, CJK character spacing, accent stripping (those belonged to the old slow tokenizer).
//
// Not supported (rejected with TokenizerError at load time): added tokens with "single_word": true,
// named special tokens missing from vocab.json. tokenizer.json is not read: vocab.json and
// merges.txt are the source of truth (mdship never writes a tokenizer.json).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mdship {

class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ClipTokenizer {
 public:
  static constexpr size_t kDefaultMaxLength = 77;

  // Loads DIR/vocab.json and DIR/merges.txt, and DIR/tokenizer_config.json and
  // DIR/special_tokens_map.json when present. Throws TokenizerError naming the file on failure.
  static ClipTokenizer from_directory(const std::string& directory);

  // bos + ids + eos. max_length == 0: no truncation; otherwise max_length >= 2 and the content
  // ids are truncated to max_length - 2 so that bos and eos always fit.
  std::vector<int32_t> encode(std::string_view utf8_text, size_t max_length = 0) const;

  // encode(text, max_length) right-padded with pad_id() to exactly max_length ids.
  std::vector<int32_t> encode_padded(std::string_view utf8_text, size_t max_length) const;

  // The ids of the text alone: no bos/eos, no truncation.
  std::vector<int32_t> encode_ordinary(std::string_view utf8_text) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }
  int32_t unk_id() const { return unk_id_; }  // -1 when there is no unk token
  size_t vocab_size() const { return vocab_.size(); }
  // tokenizer_config.json "model_max_length" when present and sane (2..1e6), else 77.
  size_t model_max_length() const { return model_max_length_; }
  // Token string for an id ("" when unknown); for debugging.
  std::string id_to_token(int32_t id) const;

  // Words of the text that the vocabulary spells out: more than half of their tokens are single characters
  // (normalized as the tokenizer sees them). mdship/tokenizer.py unknown_words is the reference.
  std::vector<std::string> unknown_words(std::string_view utf8_text) const;

 private:
  struct AddedToken {
    std::u32string content;
    int32_t id;
  };
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };

  ClipTokenizer() = default;
  void encode_segment(const std::u32string& raw, std::vector<int32_t>& out) const;
  // The CLIP Split pre-tokenizer's matches in a normalized segment, as (start, length) spans.
  std::vector<std::pair<size_t, size_t>> split_normalized(const std::u32string& normalized) const;
  void encode_normalized(const std::u32string& normalized, std::vector<int32_t>& out) const;
  void encode_piece(const std::u32string& piece, std::vector<int32_t>& out) const;
  void bpe(const std::string& byte_level_word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<int32_t, std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<AddedToken> raw_added_;         // matched on the raw text
  std::vector<AddedToken> normalized_added_;  // matched on the normalized text
  std::string end_of_word_suffix_ = "</w>";
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
  int32_t unk_id_ = -1;
  size_t model_max_length_ = kDefaultMaxLength;
};

// Unicode helpers used by the tokenizer; exposed for tests and tools.
namespace unicode {
const char* version();                                  // Unicode version of the tables
std::u32string decode_utf8(std::string_view bytes);     // invalid sequences -> U+FFFD
std::string encode_utf8(std::u32string_view text);
std::u32string nfc(const std::u32string& text);         // canonical composition (NFC)
bool is_white_space(char32_t c);                        // White_Space property (regex \s)
bool is_letter(char32_t c);                             // general category L
bool is_number(char32_t c);                             // general category N
void append_lowercase(char32_t c, std::u32string& out);  // full per-character lowercase
// The reference normalizer: NFC, White_Space runs -> " ", per-character lowercase.
std::u32string clip_normalize(const std::u32string& text);
}  // namespace unicode

}  // namespace mdship
