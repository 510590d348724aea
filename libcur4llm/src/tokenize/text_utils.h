#pragma once
// Internals of the tokenize area: UTF-8 helpers, GPT-2's byte <-> unicode map,
// and a PCRE2 regex that behaves like the Oniguruma regexes of HF tokenizers.

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cur4llm::detail {

/// Length in bytes of the UTF-8 sequence that starts with `lead` (1 for invalid leads).
inline size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

/// Whether `text` is valid UTF-8.
bool is_valid_utf8(std::string_view text);

/// Appends the UTF-8 encoding of `cp` to `out`.
void append_utf8(uint32_t cp, std::string& out);

/// Decodes the code point at `pos` and advances `pos` (assumes valid UTF-8).
uint32_t next_code_point(std::string_view text, size_t& pos);

/// Whether `cp` is whitespace as Rust's char::is_whitespace says.
bool is_unicode_whitespace(uint32_t cp);

/// `text` (valid UTF-8) in Unicode Normalization Form C, as tokenizers' NFC normalizer gives it.
std::string nfc(std::string_view text);

/// The Unicode version of the NFC tables (unicode_nfc.inc).
const char* unicode_version();

/// GPT-2's reversible map of the 256 byte values to printable code points.
class ByteLevelMap {
 public:
  static const ByteLevelMap& get();
  /// The UTF-8 string of the code point that stands for byte `b`.
  const std::string& encode(unsigned char b) const { return byte_to_utf8_[b]; }
  /// Maps every byte of `raw` to its code point.
  std::string encode(std::string_view raw) const;
  /// The byte for code point `cp`, or -1 when `cp` stands for no byte.
  int decode(uint32_t cp) const;

 private:
  ByteLevelMap();
  std::array<std::string, 256> byte_to_utf8_;
  std::unordered_map<uint32_t, unsigned char> cp_to_byte_;
};

/// A compiled PCRE2 pattern (UTF, UCP, JIT where available). `\s` also
/// matches U+0085 as in Oniguruma, which HF tokenizers uses.
class Regex {
 public:
  /// Throws std::runtime_error with `where` in the message when `pattern` does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  /// Byte ranges [start, end) of the successive non-overlapping matches in `text`
  /// (valid UTF-8 is assumed).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

/// Rewrites `\s` and `\S` outside character classes (and `\s` inside) so that
/// PCRE2 10.42 agrees with Oniguruma's Unicode White_Space on U+0085.
std::string oniguruma_compatible_pattern(const std::string& pattern);

}  // namespace cur4llm::detail
