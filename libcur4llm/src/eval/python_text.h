#pragma once
// Python's str.strip() family on UTF-8 text: the whitespace str.isspace() knows
// (ASCII, U+001C-U+001F, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
// U+2029, U+202F, U+205F, U+3000), as the harness strips prompts.

#include <string>

namespace cur4llm::detail {

/// Length of the whitespace code point ending at byte `end` of `s` (0 if none).
size_t python_space_before(const std::string& s, size_t end);
/// Length of the whitespace code point starting at byte `begin` of `s` (0 if none).
size_t python_space_at(const std::string& s, size_t begin);
/// str.strip().
std::string python_strip(const std::string& s);
/// Bytes of `s` left by str.rstrip().
size_t python_rstrip_size(const std::string& s);

}  // namespace cur4llm::detail
