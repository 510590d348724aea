#include "io/json_parse.h"

#include <stdexcept>

namespace cur4llm::detail {
namespace {

using Json = nlohmann::json;

// A SAX handler that builds the document as nlohmann's own DOM parser does,
// with a depth limit and duplicate-key detection.
class BoundedBuilder final : public nlohmann::json_sax<Json> {
 public:
  BoundedBuilder(const std::string& source, const JsonLimits& limits) : source_(source), limits_(limits) {}

  bool null() override { return add(Json(nullptr)); }
  bool boolean(bool v) override { return add(Json(v)); }
  bool number_integer(number_integer_t v) override { return add(Json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return add(Json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return add(Json(v)); }
  bool string(string_t& v) override { return add(Json(std::move(v))); }
  bool binary(binary_t&) override { fail("binary values are not JSON"); }

  bool start_object(std::size_t) override { return open(Json::object()); }
  bool key(string_t& k) override {
    Json& top = *stack_.back();
    if (limits_.reject_duplicate_keys && top.contains(k)) fail("key \"" + k + "\" appears twice in one object");
    if (stack_.size() == 1) parsed_.root_keys.push_back(k);
    pending_ = &top[k];
    return true;
  }
  bool end_object() override {
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return open(Json::array()); }
  bool end_array() override {
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    fail(e.what());
  }

  ParsedJson take() { return std::move(parsed_); }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(source_ + ": malformed JSON: " + what);
  }
  Json* place(Json&& v) {
    if (stack_.empty()) {
      parsed_.value = std::move(v);
      return &parsed_.value;
    }
    Json& top = *stack_.back();
    if (top.is_array()) {
      top.push_back(std::move(v));
      return &top.back();
    }
    *pending_ = std::move(v);
    return pending_;
  }
  bool add(Json&& v) {
    place(std::move(v));
    return true;
  }
  bool open(Json&& container) {
    if (stack_.size() >= limits_.max_depth) {
      fail("arrays and objects nest deeper than " + std::to_string(limits_.max_depth) + " levels");
    }
    // Pointers into an open container stay valid: a parent array grows only
    // after its open child is closed, and object members never move.
    stack_.push_back(place(std::move(container)));
    return true;
  }

  const std::string& source_;
  const JsonLimits& limits_;
  ParsedJson parsed_;
  std::vector<Json*> stack_;
  Json* pending_ = nullptr;
};

}  // namespace

ParsedJson parse_json_ordered(std::string_view text, const std::string& source, const JsonLimits& limits) {
  BoundedBuilder builder(source, limits);
  try {
    Json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(source + ": malformed JSON: " + e.what());
  }
  return builder.take();
}

Json parse_json(std::string_view text, const std::string& source, const JsonLimits& limits) {
  return parse_json_ordered(text, source, limits).value;
}

}  // namespace cur4llm::detail
