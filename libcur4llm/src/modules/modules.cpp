#include <cur4llm/modules/modules.h>

#include <cur4llm/calib/statistics.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/lagrangian.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
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

// The module compressed to `k` channels for the lifetime of the guard, then put back.
class TrialModule {
 public:
  TrialModule(model::CausalLM& lm, const MlpModule& m, int64_t k, const at::Tensor& gram, const NystromOptions& o)
      : lm_(lm), layer_(m.layer), shapes_(lm.config().layer_shape(m.layer)) {
    for (const auto& name : m.producers) originals_[name] = lm.linear_ptr(name);
    originals_[m.consumer] = lm.linear_ptr(m.consumer);
    compress_mlp(lm, m, k, gram, o);
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
  static const std::vector<std::string> names{"mlp_nystrom"};
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
    throw std::invalid_argument(fmt::format("\"{}\" is not a module method (use mlp_nystrom)", o.method));
  }
  check_allocation(o.allocation);
  if (!(target > 0 && target <= 1)) throw std::invalid_argument(fmt::format("module target {} is not in (0, 1]", target));
  if (!(o.nystrom.ridge >= 0)) throw std::invalid_argument("mlp_nystrom: ridge must be >= 0");
  if (o.nystrom.channel_align < 1) throw std::invalid_argument("mlp_nystrom: channel_align must be positive");

  const std::vector<MlpModule> modules = mlp_modules(lm);
  std::map<std::string, at::Tensor> grams;
  for (const auto& m : modules) grams[m.name()] = stats.mean_gram(m.consumer);

  // Parameters: module weights, and every other Linear dense.
  int64_t dense_total = 0, module_dense = 0;
  for (const auto& info : lm.linears()) dense_total += info.in_features * info.out_features;
  for (const auto& m : modules) module_dense += mlp_dense_params(m);
  const int64_t other = dense_total - module_dense;

  ModuleResult result;
  std::map<std::string, int64_t> widths;
  if (o.allocation == "uniform") {
    // The widest common width whose aligned channel count fits the budget.
    const double budget = target * static_cast<double>(dense_total) - static_cast<double>(other);
    int64_t best = -1;
    const int64_t width = modules.empty() ? 0 : modules.front().width;
    for (int64_t k = width; k >= 1; --k) {
      if (k % o.nystrom.channel_align != 0 && k != width) continue;
      int64_t total = 0;
      for (const auto& m : modules) total += mlp_weight_params(m, std::min(k, m.width));
      best = k;
      if (static_cast<double>(total) <= budget) break;
    }
    for (const auto& m : modules) widths[m.name()] = std::min(best, m.width);
  } else {
    const std::vector<double> candidates =
        o.candidates.empty() ? std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9} : o.candidates;
    result.dense_calibration_ppl = calibration_ppl(lm, samples, o.batch_size);
    search::SensitivityTable table("ppl");
    for (const auto& m : modules) {
      for (double r : candidates) {
        const int64_t k = channels_for_ratio(m, r, o.nystrom.channel_align);
        double ppl = 0;
        {
          TrialModule trial(lm, m, k, grams.at(m.name()), o.nystrom);
          ppl = calibration_ppl(lm, samples, o.batch_size);
        }
        table.add(m.name(), r, ppl);
        if (o.show_progress) fmt::print(stderr, "modules: {} at {} ({} channels): ppl {:.4f}\n", m.name(), r, k, ppl);
      }
    }
    // The Lagrangian search over modules (each a "layer" of the search) and the dense rest.
    std::vector<search::LayerSize> sizes;
    std::map<std::string, const MlpModule*> by_name;
    for (const auto& m : modules) {
      sizes.push_back({m.name(), mlp_dense_params(m)});
      by_name[m.name()] = &m;
    }
    for (const auto& info : lm.linears()) {
      bool in_module = false;
      for (const auto& m : modules) {
        in_module = in_module || info.name == m.consumer ||
                    std::find(m.producers.begin(), m.producers.end(), info.name) != m.producers.end();
      }
      if (!in_module) sizes.push_back({info.name, info.in_features * info.out_features});
    }
    search::SearchOptions sopts;
    sopts.stored_params = [&](const std::string& layer, double ratio) -> int64_t {
      auto it = by_name.find(layer);
      if (it == by_name.end()) {
        for (const auto& s : sizes) {
          if (s.name == layer) return s.numel;
        }
        return 0;
      }
      return mlp_weight_params(*it->second, channels_for_ratio(*it->second, ratio, o.nystrom.channel_align));
    };
    const auto found = search::search_param_ratio_lagrangian(table, sizes, target, result.dense_calibration_ppl, sopts);
    for (const auto& a : found.allocation) {
      auto it = by_name.find(a.layer);
      if (it == by_name.end()) continue;
      widths[a.layer] = a.compressed ? channels_for_ratio(*it->second, a.ratio, o.nystrom.channel_align)
                                     : it->second->width;
    }
    result.sensitivity = std::move(table);
  }

  std::map<std::string, search::PlannedLayer> rows;
  for (const auto& m : modules) {
    for (auto& row : compress_mlp(lm, m, widths.at(m.name()), grams.at(m.name()), o.nystrom)) rows[row.name] = row;
  }
  for (const auto& info : lm.linears()) {
    auto it = rows.find(info.name);
    const int64_t numel = info.in_features * info.out_features;
    result.plan.add(it != rows.end() ? it->second : search::PlannedLayer{info.name, "dense", 1.0, 0, numel, numel});
  }
  result.widths = std::move(widths);
  return result;
}

}  // namespace cur4llm::modules
