#include <cur4llm/dist/work.h>

#include <cur4llm/dist/group.h>
#include <cur4llm/compress/compressor.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/sensitivity_table.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace cur4llm::dist {

std::vector<int> balance(const std::vector<double>& costs, int world_size) {
  if (world_size < 1) throw std::invalid_argument(fmt::format("dist::balance: world size {} < 1", world_size));
  std::vector<size_t> order(costs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Longest first; equal costs in item order (a stable sort: the same on every rank).
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<size_t>(world_size), 0.0);
  std::vector<int> rank_of(costs.size(), 0);
  for (size_t item : order) {
    const auto lightest = std::min_element(load.begin(), load.end()) - load.begin();  // first of equals: lower rank
    rank_of[item] = static_cast<int>(lightest);
    load[static_cast<size_t>(lightest)] += costs[item];
  }
  return rank_of;
}

std::pair<std::size_t, std::size_t> contiguous_share(std::size_t n, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument(fmt::format("dist: rank {} is not in a group of {}", rank, world_size));
  }
  const auto w = static_cast<std::size_t>(world_size), r = static_cast<std::size_t>(rank);
  return {n * r / w, n * (r + 1) / w};
}

std::vector<double> sweep_costs(const model::CausalLM& lm, const std::vector<std::string>& layers,
                                const SweepCostOptions& options) {
  // Multiply-adds per token: each decoder layer's Linear weights, and those outside the layers
  // that run after them (lm_head, OPT's project_out) or before them (project_in).
  std::vector<double> layer_macs(static_cast<size_t>(lm.num_layers()), 0.0);
  double after = 0, before = 0;
  std::map<std::string, const model::LinearInfo*> info_of;
  for (const auto& info : lm.linears()) {
    info_of[info.name] = &info;
    const double macs = static_cast<double>(info.in_features) * static_cast<double>(info.out_features);
    if (info.layer >= 0) layer_macs.at(static_cast<size_t>(info.layer)) += macs;
    else if (info.name.find("project_in") != std::string::npos) before += macs;
    else after += macs;
  }
  // from[i]: a pass from decoder layer i on (from[L]: the vocabulary side alone).
  std::vector<double> from(layer_macs.size() + 1, after);
  for (size_t i = layer_macs.size(); i-- > 0;) from[i] = from[i + 1] + layer_macs[i];
  const double passes = static_cast<double>(options.candidates) * static_cast<double>(options.calibration_tokens);
  std::vector<double> costs;
  for (const auto& name : layers) {
    const auto it = info_of.find(name);
    if (it == info_of.end()) throw std::invalid_argument(fmt::format("the model has no Linear layer \"{}\"", name));
    const auto& info = *it->second;
    double forward = from.back();  // lm_head, OPT's project_out
    if (info.layer >= 0) forward = from[static_cast<size_t>(info.layer)];
    else if (name.find("project_in") != std::string::npos) forward = before + from.front();
    const auto m = static_cast<double>(info.out_features), n = static_cast<double>(info.in_features);
    costs.push_back(passes * forward + options.prepare_cost * m * n * std::min(m, n));
  }
  return costs;
}

calib::ActivationStatistics collect_statistics(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                               const calib::CollectOptions& options, Group& group) {
  if (!group.distributed()) return calib::collect_statistics(lm, samples, options);
  if (samples.size() < static_cast<size_t>(group.world_size())) {
    throw std::invalid_argument(fmt::format("{} calibration samples cannot be shared by {} ranks (give at least one each)",
                                            samples.size(), group.world_size()));
  }
  const auto [first, end] = contiguous_share(samples.size(), group.rank(), group.world_size());
  const std::vector<std::vector<int64_t>> share(samples.begin() + static_cast<std::ptrdiff_t>(first),
                                                samples.begin() + static_cast<std::ptrdiff_t>(end));
  detail::fault_point("statistics", group);
  calib::CollectOptions mine = options;
  mine.show_progress = options.show_progress && group.is_root();
  auto stats = calib::collect_statistics(lm, share, mine);

  // Every rank must hold the same tensors before they are reduced one by one.
  const auto names = stats.layer_names();
  std::string layout;
  for (const auto& name : names) {
    const auto& s = stats.layer(name);
    layout += fmt::format("{} {}{}{}{}\n", name, s.abs_mean_sum.defined(), s.abs_max.defined(), s.fisher_sq_sum.defined(),
                          s.gram.defined());
  }
  group.check_same("the collected statistics", layout);
  auto counts = at::empty({static_cast<int64_t>(2 * names.size())}, at::kLong);
  for (size_t i = 0; i < names.size(); ++i) {
    auto& s = stats.mutable_layer(names[i]);
    counts.data_ptr<int64_t>()[2 * i] = s.samples;
    counts.data_ptr<int64_t>()[2 * i + 1] = s.tokens;
    if (s.abs_mean_sum.defined()) group.all_reduce_sum(s.abs_mean_sum);
    if (s.abs_max.defined()) group.all_reduce_max(s.abs_max);
    if (s.fisher_sq_sum.defined()) group.all_reduce_sum(s.fisher_sq_sum);
    if (s.gram.defined()) group.all_reduce_sum(s.gram);
  }
  group.all_reduce_sum(counts);
  for (size_t i = 0; i < names.size(); ++i) {
    auto& s = stats.mutable_layer(names[i]);
    s.samples = counts.data_ptr<int64_t>()[2 * i];
    s.tokens = counts.data_ptr<int64_t>()[2 * i + 1];
  }
  return stats;
}

std::string table_to_bytes(const search::SensitivityTable& table) {
  std::string out = table.metric() + "\n";
  for (const auto& e : table.entries()) out += fmt::format("{}\t{:a}\t{:a}\n", e.layer, e.ratio, e.score);
  return out;
}

search::SensitivityTable table_from_bytes(const std::string& bytes) {
  std::istringstream in(bytes);
  std::string line;
  if (!std::getline(in, line)) throw std::runtime_error("dist: an empty sensitivity table message");
  search::SensitivityTable table(line);
  while (std::getline(in, line)) {
    const auto t1 = line.find('\t'), t2 = line.find('\t', t1 == std::string::npos ? t1 : t1 + 1);
    if (t1 == std::string::npos || t2 == std::string::npos) throw std::runtime_error("dist: a malformed table line");
    const std::string ratio = line.substr(t1 + 1, t2 - t1 - 1), score = line.substr(t2 + 1);
    char* end = nullptr;
    const double r = std::strtod(ratio.c_str(), &end);
    if (*end) throw std::runtime_error("dist: a malformed ratio in a table line");
    const double s = std::strtod(score.c_str(), &end);
    if (*end) throw std::runtime_error("dist: a malformed score in a table line");
    table.add(line.substr(0, t1), r, s);
  }
  return table;
}

search::SensitivityTable ppl_sensitivity(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                         const compress::Compressor& compressor, const sensitivity::ScaleFn& scale,
                                         const sensitivity::SweepOptions& options, Group& group) {
  if (!group.distributed()) return sensitivity::ppl_sensitivity(lm, samples, compressor, scale, options);
  // The layers in the order one process visits them (model order).
  const auto names = sensitivity::sweep_layers(lm, options);
  std::vector<std::string> ordered;
  for (const auto& info : lm.linears()) {
    if (std::find(names.begin(), names.end(), info.name) != names.end()) ordered.push_back(info.name);
  }
  SweepCostOptions cost;
  cost.calibration_tokens = 0;
  for (const auto& s : samples) cost.calibration_tokens += static_cast<int64_t>(s.size());
  cost.candidates = static_cast<int64_t>(options.candidates.empty() ? search::candidate_ratios(options.mode).size()
                                                                    : options.candidates.size());
  cost.prepare_cost = compressor.prepare_cost();
  const auto rank_of = balance(sweep_costs(lm, ordered, cost), group.world_size());
  sensitivity::SweepOptions mine = options;
  mine.layers.clear();
  for (size_t i = 0; i < ordered.size(); ++i) {
    if (rank_of[i] == group.rank()) mine.layers.push_back(ordered[i]);
  }
  mine.show_progress = options.show_progress && group.is_root();
  detail::fault_point("sweep", group);
  search::SensitivityTable local("ppl");
  if (!mine.layers.empty()) local = sensitivity::ppl_sensitivity(lm, samples, compressor, scale, mine);
  const auto parts = group.all_gather(table_to_bytes(local));

  std::map<std::string, std::vector<search::SensitivityEntry>> by_layer;
  for (const auto& part : parts) {
    const auto received = table_from_bytes(part);
    for (const auto& e : received.entries()) by_layer[e.layer].push_back(e);
  }
  search::SensitivityTable table("ppl");
  for (const auto& name : ordered) {
    const auto it = by_layer.find(name);
    if (it == by_layer.end()) throw std::runtime_error(fmt::format("dist: no rank swept layer \"{}\"", name));
    for (const auto& e : it->second) table.add(e.layer, e.ratio, e.score);
  }
  return table;
}

}  // namespace cur4llm::dist
