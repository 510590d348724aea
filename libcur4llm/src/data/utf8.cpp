#include "data/utf8.h"

#include <stdexcept>

namespace cur4llm::detail {

namespace {

[[noreturn]] void invalid_utf8(size_t pos) {
  throw std::invalid_argument("text is not valid UTF-8 at byte " + std::to_string(pos));
}

}  // namespace

size_t decode_utf8(const std::string& text, size_t pos, uint32_t& cp) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  size_t len;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    invalid_utf8(pos);
  }
  if (pos + len > text.size()) invalid_utf8(pos);
  for (size_t i = 1; i < len; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) invalid_utf8(pos);
    cp = (cp << 6) | (b & 0x3F);
  }
  // Python's strict UTF-8 decoder rejects these, so we do too.
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) invalid_utf8(pos);
  return len;
}

bool is_py_space(uint32_t cp) {
  // CPython's _Py_ascii_whitespace plus the Unicode code points whose
  // bidirectional type is WS, B or S or whose category is Zs.
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D:
    case 0x1C: case 0x1D: case 0x1E: case 0x1F: case 0x20:
    case 0x85: case 0xA0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

}  // namespace cur4llm::detail
