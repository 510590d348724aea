#pragma once
// Bounded JSON parsing for the files cur4llm reads from untrusted folders
// (safetensors headers, config.json, tokenizer.json, vocab.json): nesting is
// limited, so that no later recursive walk of the document overflows the
// stack, and a key given twice in one object is refused instead of silently
// keeping the last value.

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace cur4llm::detail {

/// Nesting depth allowed by default: far above any real config or tokenizer file.
constexpr std::size_t kMaxJsonDepth = 128;

/// Limits applied by parse_json().
struct JsonLimits {
  std::size_t max_depth = kMaxJsonDepth;  ///< deepest nesting of arrays and objects
  bool reject_duplicate_keys = true;      ///< a key twice in one object is an error
};

/// The parsed document, and the keys of its top-level object in file order.
struct ParsedJson {
  nlohmann::json value;               ///< the document
  std::vector<std::string> root_keys;  ///< top-level keys in the order of the text (object roots only)
};

/// Parses `text`; throws std::runtime_error "<source>: malformed JSON: ..." for
/// syntax errors, nesting deeper than the limit and duplicate keys.
ParsedJson parse_json_ordered(std::string_view text, const std::string& source, const JsonLimits& limits = {});

/// parse_json_ordered() without the key order.
nlohmann::json parse_json(std::string_view text, const std::string& source, const JsonLimits& limits = {});

}  // namespace cur4llm::detail
