// Python's whitespace stripping on UTF-8 text (python_text.h).
#include "python_text.h"

#include <cstdint>

namespace cur4llm::detail {

namespace {

bool is_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The code point at `i` and its byte length (0 if malformed).
uint32_t decode(const std::string& s, size_t i, size_t* len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 0;
    return 0;
  }
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) {
      *len = 0;
      return 0;
    }
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  *len = n;
  return cp;
}

}  // namespace

size_t python_space_at(const std::string& s, size_t begin) {
  if (begin >= s.size()) return 0;
  size_t len = 0;
  const uint32_t cp = decode(s, begin, &len);
  return len > 0 && is_space(cp) ? len : 0;
}

size_t python_space_before(const std::string& s, size_t end) {
  size_t start = end;
  while (start > 0 && end - start < 4) {
    --start;
    if ((static_cast<unsigned char>(s[start]) & 0xC0) != 0x80) break;
  }
  if (start == end) return 0;
  const size_t len = python_space_at(s, start);
  return start + len == end ? len : 0;
}

size_t python_rstrip_size(const std::string& s) {
  size_t end = s.size();
  while (size_t n = python_space_before(s, end)) end -= n;
  return end;
}

std::string python_strip(const std::string& s) {
  const size_t end = python_rstrip_size(s);
  size_t begin = 0;
  while (begin < end) {
    const size_t n = python_space_at(s, begin);
    if (n == 0) break;
    begin += n;
  }
  return s.substr(begin, end - begin);
}

}  // namespace cur4llm::detail
