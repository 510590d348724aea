#include <cur4llm/modules/modules.h>

#include <cur4llm/modules/qk_cr.h>
#include <cur4llm/modules/vo_svd.h>

#include <cur4llm/calib/statistics.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/lagrangian.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <cstdio>
#include <stdexcept>

namespace cur4llm::modules {
namespace {

double calibration_ppl(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                       int64_t batch_size) {
  eval::PerplexityOptions popts;
  popts.batch_size = batch_size;
  return eval::samples_perplexity(lm, samples, popts).perplexity;
}

// One module of any kind, as the allocation sees it.
struct AnyModule {
  std::string name;
  int64_t layer = -1;
  int64_t width = 0;                  // the base width (MLP channels, value head width)
  int64_t align = 1;                  // kept widths are multiples of this (up to width)
  std::vector<std::string> linears;   // its Linear slots
  std::function<int64_t(int64_t)> params;  // weights stored at a width
  std::function<std::vector<search::PlannedLayer>(model::CausalLM&, int64_t)> compress;

  int64_t dense_params() const { return params(width); }
  int64_t width_for(double ratio) const {
    int64_t k = static_cast<int64_t>(std::llround(ratio * static_cast<double>(width)));
    k = k / align * align;
    return std::min(std::max(k, std::min(align, width)), width);
  }
};

std::vector<AnyModule> gather(const model::CausalLM& lm, const calib::ActivationStatistics& stats,
                              const ModuleOptions& o) {
  std::vector<AnyModule> out;
  const bool mlp = o.method == "mlp_nystrom" || o.method == "modular";
  const bool vo = o.method == "vo_svd" || o.method == "modular";
  const bool qk = o.method == "qk_cr" || o.method == "modular";
  if (qk) {
    for (const auto& m : qk_modules(lm)) {
      const auto gram = stats.mean_gram(m.query);
      out.push_back({m.name(), m.layer, m.width, m.unit(), {m.query, m.key},
                     [m](int64_t k) { return qk_weight_params(m, k); },
                     [m, gram](model::CausalLM& target, int64_t k) { return compress_qk(target, m, k, gram); }});
    }
  }
  if (vo) {
    for (const auto& m : vo_modules(lm)) {
      const auto gram = stats.mean_gram(m.value);
      out.push_back({m.name(), m.layer, m.width, 1, {m.value, m.output},
                     [m](int64_t k) { return vo_weight_params(m, k); },
                     [m, gram](model::CausalLM& target, int64_t k) { return compress_vo(target, m, k, gram); }});
    }
  }
  if (mlp) {
    for (const auto& m : mlp_modules(lm)) {
      const auto gram = stats.mean_gram(m.consumer);
      std::vector<std::string> linears = m.producers;
      linears.push_back(m.consumer);
      const NystromOptions nystrom = o.nystrom;
      out.push_back({m.name(), m.layer, m.width, nystrom.channel_align, linears,
                     [m](int64_t k) { return mlp_weight_params(m, k); },
                     [m, gram, nystrom](model::CausalLM& target, int64_t k) {
                       return compress_mlp(target, m, k, gram, nystrom);
                     }});
    }
  }
  return out;
}

// The module compressed to width `k` for the lifetime of the guard, then put back.
class TrialModule {
 public:
  TrialModule(model::CausalLM& lm, const AnyModule& m, int64_t k)
      : lm_(lm), layer_(m.layer), shapes_(lm.config().layer_shape(m.layer)) {
    for (const auto& name : m.linears) originals_[name] = lm.linear_ptr(name);
    m.compress(lm, k);
  }
  ~TrialModule() {
    try {
      lm_.reshape_layer(layer_, shapes_, originals_);
    } catch (const std::exception& e) {
      fmt::print(stderr, "internal: could not restore layer {}: {}\n", layer_, e.what());
    }
  }
  TrialModule(const TrialModule&) = delete;
  TrialModule& operator=(const TrialModule&) = delete;

 private:
  model::CausalLM& lm_;
  int64_t layer_;
  model::LayerShapes shapes_;
  std::map<std::string, model::LinearPtr> originals_;
};

}  // namespace

const std::vector<std::string>& module_method_names() {
  static const std::vector<std::string> names{"mlp_nystrom", "vo_svd", "qk_cr", "modular"};
  return names;
}

bool is_module_method(const std::string& method) {
  const auto& names = module_method_names();
  return std::find(names.begin(), names.end(), method) != names.end();
}

void check_allocation(const std::string& allocation) {
  if (allocation != "uniform" && allocation != "lagrangian") {
    throw std::invalid_argument(fmt::format("module allocation must be uniform or lagrangian, not \"{}\"", allocation));
  }
}

ModuleResult compress_modules(model::CausalLM& lm, const calib::ActivationStatistics& stats,
                              const std::vector<std::vector<int64_t>>& samples, double target,
                              const ModuleOptions& o) {
  if (!is_module_method(o.method)) {
    throw std::invalid_argument(
        fmt::format("\"{}\" is not a module method (use mlp_nystrom, vo_svd, qk_cr or modular)", o.method));
  }
  check_allocation(o.allocation);
  if (!(target > 0 && target <= 1)) throw std::invalid_argument(fmt::format("module target {} is not in (0, 1]", target));
  if (!(o.nystrom.ridge >= 0)) throw std::invalid_argument("mlp_nystrom: ridge must be >= 0");
  if (o.nystrom.channel_align < 1) throw std::invalid_argument("mlp_nystrom: channel_align must be positive");

  const std::vector<AnyModule> modules = gather(lm, stats, o);
  std::set<std::string> in_module;
  int64_t dense_total = 0, module_dense = 0;
  for (const auto& info : lm.linears()) dense_total += info.in_features * info.out_features;
  for (const auto& m : modules) {
    module_dense += m.dense_params();
    in_module.insert(m.linears.begin(), m.linears.end());
  }
  const int64_t other = dense_total - module_dense;

  ModuleResult result;
  std::map<std::string, int64_t> widths;
  if (o.allocation == "uniform") {
    // The largest common nominal ratio (on a grid finer than any width's step) whose widths fit.
    const double budget = target * static_cast<double>(dense_total) - static_cast<double>(other);
    const int steps = 4096;
    double chosen = 0;
    for (int i = steps; i >= 0; --i) {
      const double r = static_cast<double>(i) / steps;
      int64_t total = 0;
      for (const auto& m : modules) total += m.params(m.width_for(r));
      chosen = r;
      if (static_cast<double>(total) <= budget) break;
    }
    for (const auto& m : modules) widths[m.name] = m.width_for(chosen);
  } else {
    const std::vector<double> candidates =
        o.candidates.empty() ? std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9} : o.candidates;
    result.dense_calibration_ppl = calibration_ppl(lm, samples, o.batch_size);
    search::SensitivityTable table("ppl");
    for (const auto& m : modules) {
      for (double r : candidates) {
        const int64_t k = m.width_for(r);
        if (o.sensitivity) {
          if (auto known = o.sensitivity->score(m.name, r)) {
            table.add(m.name, r, *known);
            continue;
          }
        }
        double ppl = 0;
        {
          TrialModule trial(lm, m, k);
          ppl = calibration_ppl(lm, samples, o.batch_size);
        }
        table.add(m.name, r, ppl);
        if (o.show_progress) fmt::print(stderr, "modules: {} at {} (width {}): ppl {:.4f}\n", m.name, r, k, ppl);
      }
    }
    // The Lagrangian search over modules (each one "layer" of the search) and the dense rest.
    std::vector<search::LayerSize> sizes;
    std::map<std::string, const AnyModule*> by_name;
    std::map<std::string, int64_t> numel;
    for (const auto& m : modules) {
      sizes.push_back({m.name, m.dense_params()});
      by_name[m.name] = &m;
    }
    for (const auto& info : lm.linears()) {
      if (!in_module.count(info.name)) sizes.push_back({info.name, info.in_features * info.out_features});
    }
    for (const auto& s : sizes) numel[s.name] = s.numel;
    search::SearchOptions sopts;
    sopts.stored_params = [&](const std::string& layer, double ratio) -> int64_t {
      auto it = by_name.find(layer);
      return it == by_name.end() ? numel.at(layer) : it->second->params(it->second->width_for(ratio));
    };
    const auto found = search::search_param_ratio_lagrangian(table, sizes, target, result.dense_calibration_ppl, sopts);
    for (const auto& a : found.allocation) {
      auto it = by_name.find(a.layer);
      if (it != by_name.end()) widths[a.layer] = a.compressed ? it->second->width_for(a.ratio) : it->second->width;
    }
    result.sensitivity = std::move(table);
  }

  std::map<std::string, search::PlannedLayer> rows;
  for (const auto& m : modules) {
    for (auto& row : m.compress(lm, widths.at(m.name))) rows[row.name] = row;
  }
  for (const auto& info : lm.linears()) {
    auto it = rows.find(info.name);
    const int64_t n = info.in_features * info.out_features;
    result.plan.add(it != rows.end() ? it->second : search::PlannedLayer{info.name, "dense", 1.0, 0, n, n});
  }
  result.widths = std::move(widths);
  return result;
}

}  // namespace cur4llm::modules
