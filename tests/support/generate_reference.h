#pragma once
// Reads the greedy-generation references scripts/generate_reference.py writes
// (one JSON file per model): the prompts as token ids and the tokens
// transformers' generate() gave for them.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cur4llm::test {

/// One generate() call of the reference: a prompt, or a batch of them.
struct ReferenceCase {
  std::string name;
  int64_t max_new_tokens = 0;
  std::vector<std::vector<int64_t>> prompt_ids;     // one per row, unpadded
  std::vector<std::vector<int64_t>> generated_ids;  // one per row, the new tokens only
};

/// One model's references.
struct ReferenceFile {
  std::string model;         // the folder's name
  std::string location;      // "fixture" (tests/data/models) or "shared" (shared data models/)
  std::vector<ReferenceCase> cases;
};

/// Parses a reference file; std::runtime_error naming the file and the key on any malformed part.
inline ReferenceFile read_reference(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot read");
  std::stringstream text;
  text << in.rdbuf();
  auto bad = [&](const std::string& what) { return std::runtime_error(path.string() + ": " + what); };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const std::exception& e) {
    throw bad(std::string("not JSON: ") + e.what());
  }
  auto ids_list = [&](const nlohmann::json& v, const std::string& key) {
    std::vector<std::vector<int64_t>> out;
    if (!v.is_array()) throw bad("\"" + key + "\" must be a list of lists of token ids");
    for (const auto& row : v) {
      if (!row.is_array()) throw bad("\"" + key + "\" must be a list of lists of token ids");
      std::vector<int64_t> ids;
      for (const auto& id : row) {
        if (!id.is_number_integer()) throw bad("\"" + key + "\" holds a value that is not a token id");
        ids.push_back(id.get<int64_t>());
      }
      out.push_back(std::move(ids));
    }
    return out;
  };
  if (!j.is_object() || !j.contains("model") || !j.at("model").is_string()) throw bad("no string \"model\"");
  if (!j.contains("cases") || !j.at("cases").is_array()) throw bad("no list \"cases\"");
  ReferenceFile out;
  out.model = j.at("model").get<std::string>();
  out.location = j.value("location", std::string("fixture"));
  if (out.location != "fixture" && out.location != "shared") throw bad("\"location\" must be fixture or shared");
  for (const auto& c : j.at("cases")) {
    ReferenceCase rc;
    if (!c.is_object() || !c.contains("name") || !c.contains("max_new_tokens") || !c.contains("prompt_ids") ||
        !c.contains("generated_ids") || !c.at("max_new_tokens").is_number_integer()) {
      throw bad("a case needs \"name\", \"max_new_tokens\", \"prompt_ids\" and \"generated_ids\"");
    }
    rc.name = c.at("name").get<std::string>();
    rc.max_new_tokens = c.at("max_new_tokens").get<int64_t>();
    rc.prompt_ids = ids_list(c.at("prompt_ids"), "prompt_ids");
    rc.generated_ids = ids_list(c.at("generated_ids"), "generated_ids");
    if (rc.prompt_ids.empty() || rc.prompt_ids.size() != rc.generated_ids.size()) {
      throw bad("case \"" + rc.name + "\": \"prompt_ids\" and \"generated_ids\" must have the same rows");
    }
    out.cases.push_back(std::move(rc));
  }
  return out;
}

}  // namespace cur4llm::test
