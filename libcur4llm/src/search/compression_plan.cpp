#include <cur4llm/search/compression_plan.h>

#include <cur4llm/io/files.h>

#include "search/json_fields.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <cmath>
#include <stdexcept>

namespace cur4llm::search {

using detail::JsonField;
using detail::OrderedJson;

namespace {

// "dense" or one of compress::compressor_names() (search does not depend on compress).
bool known_method(const std::string& m) {
  static const char* const names[] = {"dense",         "cur",          "svd",          "grad_cur",
                                      "svd_whiten",    "skeleton",     "skeleton_row", "skeleton_col",
                                      "skeleton_diag", "skeleton_swap", "cur_whiten",   "cur_deim",     "cur_qr",
                                      "mlp_nystrom",   "vo_svd",       "qk_cr"};
  return std::find(std::begin(names), std::end(names), m) != std::end(names);
}

// The checks of add(), as a message (empty when the layer is valid).
std::string invalid_reason(const PlannedLayer& l) {
  if (l.name.empty()) return "has an empty name";
  if (!known_method(l.method)) return fmt::format("has method \"{}\", not dense or a compression method", l.method);
  if (!std::isfinite(l.ratio) || l.ratio <= 0) return fmt::format("has ratio {}, must be finite and > 0", l.ratio);
  if (l.rank < 0) return fmt::format("has rank {}, must be >= 0", l.rank);
  if (l.stored_params < 0) return fmt::format("has stored_params {}, must be >= 0", l.stored_params);
  if (l.dense_params <= 0) return fmt::format("has dense_params {}, must be > 0", l.dense_params);
  return {};
}

}  // namespace

void CompressionPlan::add(PlannedLayer layer) {
  std::string why = invalid_reason(layer);
  if (why.empty() && find(layer.name)) why = "is planned twice";
  if (!why.empty()) throw std::invalid_argument(fmt::format("compression plan: layer \"{}\" {}", layer.name, why));
  layers_.push_back(std::move(layer));
}

std::optional<PlannedLayer> CompressionPlan::find(const std::string& name) const {
  for (const auto& l : layers_)
    if (l.name == name) return l;
  return std::nullopt;
}

std::int64_t CompressionPlan::stored_params() const {
  std::int64_t sum = 0;
  for (const auto& l : layers_) sum += l.stored_params;
  return sum;
}

std::int64_t CompressionPlan::dense_params() const {
  std::int64_t sum = 0;
  for (const auto& l : layers_) sum += l.dense_params;
  return sum;
}

double CompressionPlan::param_ratio() const {
  const std::int64_t dense = dense_params();
  return dense == 0 ? 1.0 : static_cast<double>(stored_params()) / static_cast<double>(dense);
}

std::string CompressionPlan::table() const {
  const std::string total_label = fmt::format("total ({} layers)", layers_.size());
  std::size_t w = std::max<std::size_t>(total_label.size(), 5);
  std::size_t mw = 6;  // "method"
  for (const auto& l : layers_) {
    w = std::max(w, l.name.size());
    mw = std::max(mw, l.method.size());
  }
  std::string out = fmt::format("{:<{}}  {:<{}}  {:>6}  {:>6}  {:>12}  {:>12}  {:>7}\n", "layer", w, "method", mw,
                                "ratio", "rank", "stored", "dense", "stored%");
  out += std::string(w + 2 + mw + 2 + 6 + 2 + 6 + 2 + 12 + 2 + 12 + 2 + 7, '-') + "\n";
  for (const auto& l : layers_) {
    const double pct = 100.0 * static_cast<double>(l.stored_params) / static_cast<double>(l.dense_params);
    // A dense layer has no ratio or rank of its own.
    const bool dense = l.method == "dense";
    out += fmt::format("{:<{}}  {:<{}}  {:>6}  {:>6}  {:>12}  {:>12}  {:>6.2f}%\n", l.name, w, l.method, mw,
                       dense ? std::string("-") : fmt::format("{:.3f}", l.ratio),
                       dense ? std::string("-") : std::to_string(l.rank), l.stored_params, l.dense_params, pct);
  }
  out += fmt::format("{:<{}}  {:<{}}  {:>6}  {:>6}  {:>12}  {:>12}  {:>6.2f}%\n", total_label, w, "", mw, "", "",
                     stored_params(), dense_params(), 100.0 * param_ratio());
  return out;
}

std::string CompressionPlan::to_json() const {
  OrderedJson root;
  root["format"] = "cur4llm.compression_plan";
  root["version"] = 1;
  root["meta"] = OrderedJson::object();
  for (const auto& [k, v] : meta_) root["meta"][k] = v;
  // For readers only; load() recomputes these from the layers.
  root["stored_params"] = stored_params();
  root["dense_params"] = dense_params();
  root["param_ratio"] = param_ratio();
  OrderedJson layers = OrderedJson::array();
  for (const auto& l : layers_)
    layers.push_back({{"name", l.name},
                      {"method", l.method},
                      {"ratio", l.ratio},
                      {"rank", l.rank},
                      {"stored_params", l.stored_params},
                      {"dense_params", l.dense_params}});
  root["layers"] = std::move(layers);
  return detail::dump_one_line_per_item(root, "layers");
}

CompressionPlan CompressionPlan::from_json(const std::string& text, const std::string& source) {
  const OrderedJson j = detail::parse_json(text, source);
  JsonField root(j, source, "");
  detail::check_header(root, "cur4llm.compression_plan", 1);
  CompressionPlan plan;
  if (root.has("meta")) plan.meta_ = root.at("meta").string_map();
  JsonField layers = root.at("layers");
  for (std::size_t i = 0, n = layers.array_size(); i < n; ++i) {
    JsonField f = layers.at(i);
    PlannedLayer l;
    l.name = f.at("name").string();
    l.method = f.at("method").string();
    l.ratio = f.at("ratio").number();
    l.rank = f.at("rank").integer();
    l.stored_params = f.at("stored_params").integer();
    l.dense_params = f.at("dense_params").integer();
    std::string why = invalid_reason(l);
    if (why.empty() && plan.find(l.name)) why = "is planned twice";
    if (!why.empty()) f.fail(fmt::format("(layer \"{}\") {}", l.name, why));
    plan.layers_.push_back(std::move(l));
  }
  return plan;
}

void CompressionPlan::save(const std::filesystem::path& path) const { io::write_file_atomic(path, to_json()); }

CompressionPlan CompressionPlan::load(const std::filesystem::path& path) {
  return from_json(io::read_file(path), path.string());
}

}  // namespace cur4llm::search
