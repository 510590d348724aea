#pragma once
// Small string helpers shared by the library's parsers of flag and variable values.

#include <cctype>
#include <sstream>
#include <string>
#include <vector>

namespace cur4llm::util {

/// `s` without the white space at its ends.
inline std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

/// The items of `s` between the separators, trimmed; empty items left out.
inline std::vector<std::string> split_items(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) {
    item = trim(item);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace cur4llm::util
