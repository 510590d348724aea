#include <cur4llm/search/sensitivity_table.h>

#include <cur4llm/io/files.h>

#include "search/json_fields.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>
#include <unordered_map>

namespace cur4llm::search {

using detail::JsonField;
using detail::OrderedJson;

std::vector<double> candidate_ratios(CompressMode mode) {
  // i / 10.0 is the double nearest to i/10; 0.1 * i (the reference's KV list) drifts (0.30000000000000004).
  const int first = mode == CompressMode::kKvCache ? 1 : 4;
  const int last = mode == CompressMode::kKvCache ? 19 : 9;
  std::vector<double> out;
  for (int i = first; i <= last; ++i) out.push_back(i / 10.0);
  return out;
}

void SensitivityTable::add(const std::string& layer, double ratio, double score) {
  if (layer.empty()) throw std::invalid_argument("sensitivity table: empty layer name");
  if (!std::isfinite(ratio) || ratio <= 0)
    throw std::invalid_argument(fmt::format("sensitivity table: layer \"{}\": ratio {} must be finite and > 0", layer, ratio));
  for (auto& e : entries_) {
    if (e.layer == layer && e.ratio == ratio) {
      e.score = score;
      return;
    }
  }
  entries_.push_back({layer, ratio, score});
}

std::vector<std::string> SensitivityTable::layers() const {
  std::vector<std::string> out;
  std::unordered_map<std::string, bool> seen;
  for (const auto& e : entries_)
    if (seen.emplace(e.layer, true).second) out.push_back(e.layer);
  return out;
}

std::optional<double> SensitivityTable::score(const std::string& layer, double ratio) const {
  for (const auto& e : entries_)
    if (e.layer == layer && e.ratio == ratio) return e.score;
  return std::nullopt;
}

std::string SensitivityTable::to_json() const {
  OrderedJson root;
  root["format"] = "cur4llm.sensitivity";
  root["version"] = 1;
  root["metric"] = metric_;
  root["meta"] = OrderedJson::object();
  for (const auto& [k, v] : meta_) root["meta"][k] = v;
  // Grouped by layer (first-appearance order), points in insertion order.
  OrderedJson layers = OrderedJson::array();
  std::unordered_map<std::string, std::size_t> index;
  for (const auto& e : entries_) {
    auto [it, fresh] = index.emplace(e.layer, layers.size());
    if (fresh) layers.push_back({{"name", e.layer}, {"scores", OrderedJson::array()}});
    layers[it->second]["scores"].push_back({{"ratio", e.ratio}, {"score", detail::number_to_json(e.score)}});
  }
  root["layers"] = std::move(layers);
  return detail::dump_one_line_per_item(root, "layers");
}

SensitivityTable SensitivityTable::from_json(const std::string& text, const std::string& source) {
  const OrderedJson j = detail::parse_json(text, source);
  JsonField root(j, source, "");
  detail::check_header(root, "cur4llm.sensitivity", 1);
  SensitivityTable t(root.at("metric").string());
  if (root.has("meta")) t.meta_ = root.at("meta").string_map();
  JsonField layers = root.at("layers");
  for (std::size_t i = 0, n = layers.array_size(); i < n; ++i) {
    JsonField layer = layers.at(i);
    JsonField name = layer.at("name");
    std::string layer_name = name.string();
    if (layer_name.empty()) name.fail("must not be empty");
    JsonField scores = layer.at("scores");
    for (std::size_t k = 0, m = scores.array_size(); k < m; ++k) {
      JsonField point = scores.at(k);
      JsonField ratio = point.at("ratio");
      double r = ratio.number();
      if (!(r > 0)) ratio.fail(fmt::format("must be > 0, not {}", r));
      if (t.score(layer_name, r)) ratio.fail(fmt::format("repeats ratio {} of layer \"{}\"", r, layer_name));
      t.entries_.push_back({layer_name, r, point.at("score").number_or_nonfinite()});
    }
  }
  return t;
}

void SensitivityTable::save(const std::filesystem::path& path) const { io::write_file_atomic(path, to_json()); }

SensitivityTable SensitivityTable::load(const std::filesystem::path& path) {
  return from_json(io::read_file(path), path.string());
}

}  // namespace cur4llm::search
