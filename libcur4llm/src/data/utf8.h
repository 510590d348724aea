#pragma once
// UTF-8 helpers of the data area: code points as Python's str counts them.

#include <cstddef>
#include <cstdint>
#include <string>

namespace cur4llm::detail {

/// Decodes the code point that starts at byte `pos` of `text` into `cp` and
/// returns its length in bytes (1..4). Throws std::invalid_argument naming the
/// byte offset when the bytes there are not valid UTF-8 (overlong forms,
/// surrogates and values above U+10FFFF included).
size_t decode_utf8(const std::string& text, size_t pos, uint32_t& cp);

/// Whether Python's str.isspace() holds for `cp` (what str.strip() removes).
bool is_py_space(uint32_t cp);

}  // namespace cur4llm::detail
