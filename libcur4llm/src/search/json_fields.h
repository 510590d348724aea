#pragma once
// JSON helpers shared by the search area's file formats: typed field access whose
// errors name the file and the key path (e.g. layers[3].scores[1].ratio), and
// numbers that may be non-finite (a perplexity can overflow to inf).

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>

namespace cur4llm::detail {

using OrderedJson = nlohmann::ordered_json;

// A JSON value together with where it came from, for error messages.
class JsonField {
 public:
  JsonField(const OrderedJson& j, const std::string& source, std::string key)
      : j_(j), source_(source), key_(std::move(key)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: key \"{}\" {}", source_, key_.empty() ? "(root)" : key_, what));
  }

  const OrderedJson& json() const { return j_; }
  const std::string& key() const { return key_; }

  JsonField at(const char* name) const {
    if (!j_.is_object()) fail("must be an object");
    std::string k = key_.empty() ? name : key_ + "." + name;
    auto it = j_.find(name);
    if (it == j_.end()) throw std::runtime_error(fmt::format("{}: key \"{}\" is missing", source_, k));
    return JsonField(*it, source_, k);
  }
  bool has(const char* name) const { return j_.is_object() && j_.contains(name); }
  JsonField at(std::size_t i) const { return JsonField(j_.at(i), source_, fmt::format("{}[{}]", key_, i)); }

  std::size_t array_size() const {
    if (!j_.is_array()) fail("must be an array");
    return j_.size();
  }
  std::string string() const {
    if (!j_.is_string()) fail("must be a string");
    return j_.get<std::string>();
  }
  std::int64_t integer() const {
    if (!j_.is_number_integer()) fail("must be an integer");
    return j_.get<std::int64_t>();
  }
  double number() const {
    if (!j_.is_number()) fail("must be a number");
    return j_.get<double>();
  }
  // A number, or one of the strings "inf", "-inf", "nan".
  double number_or_nonfinite() const {
    if (j_.is_number()) return j_.get<double>();
    if (j_.is_string()) {
      const auto& s = j_.get_ref<const std::string&>();
      if (s == "inf") return std::numeric_limits<double>::infinity();
      if (s == "-inf") return -std::numeric_limits<double>::infinity();
      if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    }
    fail("must be a number or \"inf\", \"-inf\", \"nan\"");
  }
  std::map<std::string, std::string> string_map() const {
    if (!j_.is_object()) fail("must be an object");
    std::map<std::string, std::string> out;
    for (auto it = j_.begin(); it != j_.end(); ++it) out[it.key()] = at(it.key().c_str()).string();
    return out;
  }

 private:
  const OrderedJson& j_;
  const std::string& source_;
  std::string key_;
};

inline OrderedJson number_to_json(double v) {
  if (std::isfinite(v)) return v;
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

inline OrderedJson parse_json(const std::string& text, const std::string& source) {
  try {
    return OrderedJson::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(fmt::format("{}: invalid JSON: {}", source, e.what()));
  }
}

// Pretty JSON with one line per top-level key and one line per element of the
// array `lines_key` (a file with thousands of entries stays readable and diffable).
inline std::string dump_one_line_per_item(const OrderedJson& root, const char* lines_key) {
  std::string out = "{\n";
  std::size_t i = 0;
  for (auto it = root.begin(); it != root.end(); ++it, ++i) {
    out += " " + OrderedJson(it.key()).dump() + ": ";
    if (it.key() == lines_key && it->is_array() && !it->empty()) {
      out += "[\n";
      for (std::size_t k = 0; k < it->size(); ++k) out += "  " + (*it)[k].dump() + (k + 1 < it->size() ? ",\n" : "\n");
      out += " ]";
    } else {
      out += it->dump();
    }
    out += i + 1 < root.size() ? ",\n" : "\n";
  }
  return out + "}\n";
}

// Checks "format" and "version" of a cur4llm JSON file.
inline void check_header(const JsonField& root, const char* format, std::int64_t version) {
  if (!root.json().is_object()) root.fail("must be an object");
  JsonField f = root.at("format");
  if (f.string() != format) f.fail(fmt::format("must be \"{}\", not \"{}\"", format, f.string()));
  JsonField v = root.at("version");
  if (v.integer() != version) v.fail(fmt::format("must be {}, not {}", version, v.integer()));
}

}  // namespace cur4llm::detail
