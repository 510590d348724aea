#include <cur4llm/modules/modules.h>

#include <cur4llm/modules/qk_cr.h>
#include <cur4llm/modules/vo_svd.h>

#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/lagrangian.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <cmath>
#include <functional>
#include <numeric>
#include <set>
#include <cstdio>
#include <stdexcept>

namespace cur4llm::modules {
namespace {


// The calibration perplexity of the model with only layers from `layer()` on
// changed: the dense hidden states entering that layer are kept per batch, so
// a trial of a module in layer L runs layers L.. and the head only. advance()
// moves past a layer (run dense). Same value as samples_perplexity: the mean over
// samples of each sample's mean next-token NLL, exponentiated.
class LayerLocalPpl {
 public:
  LayerLocalPpl(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples, int64_t batch_size)
      : lm_(lm) {
    c10::InferenceMode guard;
    std::map<size_t, std::vector<size_t>> by_length;
    for (size_t i = 0; i < samples.size(); ++i) {
      if (samples[i].size() < 2) throw std::invalid_argument(fmt::format("calibration sample {} has fewer than 2 tokens", i));
      by_length[samples[i].size()].push_back(i);
    }
    const size_t batch = static_cast<size_t>(std::max<int64_t>(1, batch_size));
    for (const auto& [length, members] : by_length) {
      for (size_t start = 0; start < members.size(); start += batch) {
        const size_t n = std::min(batch, members.size() - start);
        auto ids = at::empty({static_cast<int64_t>(n), static_cast<int64_t>(length)}, at::kLong);
        for (size_t r = 0; r < n; ++r) {
          const auto& sample = samples[members[start + r]];
          std::copy(sample.begin(), sample.end(), ids[static_cast<int64_t>(r)].data_ptr<int64_t>());
        }
        ids = ids.to(lm.device());
        hidden_.push_back(lm.embed(ids));
        ids_.push_back(std::move(ids));
      }
    }
    samples_ = static_cast<int64_t>(samples.size());
  }

  int64_t layer() const { return layer_; }

  void advance() {
    c10::InferenceMode guard;
    for (auto& h : hidden_) h = lm_.layer(layer_, h);
    ++layer_;
  }

  double ppl() const {
    c10::InferenceMode guard;
    double total = 0;
    for (size_t b = 0; b < hidden_.size(); ++b) {
      auto h = hidden_[b];
      for (int64_t l = layer_; l < lm_.num_layers(); ++l) h = lm_.layer(l, h);
      const auto logits = lm_.head(h).narrow(1, 0, h.size(1) - 1).to(at::kFloat);
      const auto target = ids_[b].narrow(1, 1, ids_[b].size(1) - 1);
      const auto nll = -at::log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1);  // [n, T - 1]
      total += nll.to(at::kDouble).mean(1).sum().item<double>();
    }
    return std::exp(total / static_cast<double>(samples_));
  }

 private:
  const model::CausalLM& lm_;
  std::vector<at::Tensor> ids_, hidden_;
  int64_t layer_ = 0;
  int64_t samples_ = 0;
};

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
  /// A Linear compressed alone (add_linears), not a module of several.
  bool alone() const { return linears.size() == 1 && linears.front() == name; }
  int64_t width_for(double ratio) const {
    int64_t k = static_cast<int64_t>(std::llround(ratio * static_cast<double>(width)));
    k = k / align * align;
    return std::min(std::max(k, std::min(align, width)), width);
  }
};

// The per-layer "modules" of a hybrid method: one Linear outside the structural
// modules, compressed by a Gram compressor at a ratio on a grid of kGrid steps
// (the width k stands for the ratio k / kGrid).
constexpr int64_t kGrid = 1000;

void add_linears(std::vector<AnyModule>& out, const model::CausalLM& lm, const calib::ActivationStatistics& stats,
                 const std::string& method, const std::set<std::string>& taken, int64_t rank_align,
                 bool compress_tied_head) {
  compress::CompressorOptions copts;
  copts.svd.rank_align = rank_align;
  copts.skeleton.rank_align = rank_align;
  std::shared_ptr<const compress::Compressor> c = compress::make_compressor(method, copts);
  if (c->statistic() != compress::LayerStatistic::Gram) {
    throw std::invalid_argument(fmt::format(
        "a module method combines with a Gram compressor (svd_whiten, skeleton_swap, ...), not \"{}\"", method));
  }
  for (const auto& info : lm.linears()) {
    // OPT's projections stay dense, and so does a tied lm_head unless asked for (its factors count in full).
    const bool tied_head = info.name == "lm_head" && lm.config().tie_word_embeddings && !compress_tied_head;
    if (taken.count(info.name) || (info.layer < 0 && (info.name != "lm_head" || tied_head))) {
      continue;
    }
    const int64_t m = info.out_features, n = info.in_features;
    const std::string name = info.name;
    const auto gram = stats.mean_gram(name);
    out.push_back({name, info.layer, kGrid, 1, {name},
                   [c, m, n](int64_t k) {
                     return k >= kGrid ? m * n : c->stored_params(m, n, static_cast<double>(k) / kGrid);
                   },
                   [c, m, n, name, gram, method](model::CausalLM& target, int64_t k) {
                     const double ratio = static_cast<double>(k) / kGrid;
                     // Left whole: no row, so that the plan keeps what a module made of it (or dense).
                     if (k >= kGrid) return std::vector<search::PlannedLayer>{};
                     const auto& dense = target.dense_linear(name);
                     auto slot = c->compress(dense.weight(), dense.bias(), gram, ratio);
                     const int64_t stored = slot->weight_params();
                     target.replace_linear(name, std::move(slot));
                     return std::vector<search::PlannedLayer>{
                         {name, method, ratio, c->rank_for(m, n, ratio), stored, m * n}};
                   }});
  }
}

std::vector<AnyModule> gather(const model::CausalLM& lm, const calib::ActivationStatistics& stats,
                              const ModuleOptions& o) {
  std::vector<AnyModule> out;
  const auto [base, linear_method] = split_module_method(o.method);
  const bool every = base == "modular" || base == "mixed";
  const bool mlp = base == "mlp_nystrom" || every;
  const bool vo = base == "vo_svd" || every;
  const bool qk = base == "qk_cr" || every;
  if (qk) {
    for (const auto& m : qk_modules(lm)) {
      const auto gram = stats.mean_gram(m.query);
      out.push_back({m.name(), m.layer, m.width, std::lcm(m.unit(), o.head_align), {m.query, m.key},
                     [m](int64_t k) { return qk_weight_params(m, k); },
                     [m, gram](model::CausalLM& target, int64_t k) { return compress_qk(target, m, k, gram); }});
    }
  }
  if (vo) {
    for (const auto& m : vo_modules(lm)) {
      const auto gram = stats.mean_gram(m.value);
      out.push_back({m.name(), m.layer, m.width, o.head_align, {m.value, m.output},
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
  if (!linear_method.empty()) {
    // "mixed": every Linear also alone, as the other way of storing its module.
    std::set<std::string> taken;
    if (base != "mixed") {
      for (const auto& m : out) taken.insert(m.linears.begin(), m.linears.end());
    }
    add_linears(out, lm, stats, linear_method, taken, o.nystrom.channel_align, o.compress_lm_head);
  }
  return out;
}

// The module compressed to width `k` for the lifetime of the guard, then put back.
class TrialModule {
 public:
  TrialModule(model::CausalLM& lm, const AnyModule& m, int64_t k)
      : lm_(lm), layer_(m.layer), shapes_(m.layer >= 0 ? lm.config().layer_shape(m.layer) : model::LayerShapes{}) {
    for (const auto& name : m.linears) originals_[name] = lm.linear_ptr(name);
    m.compress(lm, k);
  }
  ~TrialModule() {
    try {
      if (layer_ < 0) {  // lm_head: no layer widths
        for (const auto& [name, slot] : originals_) lm_.replace_linear(name, slot);
        return;
      }
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

// "mixed": each structural module and its Linears alone form one group of the allocation, which
// takes either a width of the module or a ratio for each of its Linears (dense included); a
// Linear outside every module is a group of its own. Costs are log calibration-ppl increases
// (summed over a group's Linears, as the search sums them over layers), parameters exact. The
// width of every module of `modules` is returned (the base width where it stays dense or its
// Linears are factorized instead).
std::map<std::string, int64_t> mixed_widths(const std::vector<AnyModule>& modules, const search::SensitivityTable& table,
                                            double dense_ppl, const std::vector<double>& candidates, double budget) {
  struct Pick {
    const AnyModule* module;
    int64_t width;
  };
  // A module's own ways: dense, then each measured candidate width.
  auto ways = [&](const AnyModule& m) {
    std::vector<std::pair<search::Choice, Pick>> out{{{0.0, static_cast<double>(m.dense_params())}, {&m, m.width}}};
    for (double r : candidates) {
      const auto score = table.score(m.name, r);
      if (!score || !std::isfinite(*score)) continue;
      const int64_t k = m.width_for(r);
      if (k >= m.width) continue;
      out.push_back({{std::log(std::max(*score, dense_ppl) / dense_ppl), static_cast<double>(m.params(k))}, {&m, k}});
    }
    return out;
  };
  std::map<std::string, const AnyModule*> alone;  // a Linear's own entry
  for (const auto& m : modules) {
    if (m.alone()) alone[m.name] = &m;
  }
  std::vector<std::vector<search::Choice>> choices;
  std::vector<std::vector<std::vector<Pick>>> picks;
  std::set<std::string> grouped;
  for (const auto& m : modules) {
    if (m.alone()) continue;
    std::vector<search::Choice> c;
    std::vector<std::vector<Pick>> p;
    // Every combination of its Linears' own ways (all dense among them) ...
    c.push_back({0.0, 0.0});
    p.push_back({});
    for (const auto& name : m.linears) {
      const auto it = alone.find(name);
      if (it == alone.end()) throw std::logic_error("internal: mixed: a module's Linear without an entry of its own");
      grouped.insert(name);
      std::vector<search::Choice> nc;
      std::vector<std::vector<Pick>> np;
      for (const auto& [choice, pick] : ways(*it->second)) {
        for (size_t j = 0; j < c.size(); ++j) {
          nc.push_back({c[j].cost + choice.cost, c[j].params + choice.params});
          np.push_back(p[j]);
          np.back().push_back(pick);
        }
      }
      c = std::move(nc), p = std::move(np);
    }
    // ... and the module's narrower widths.
    for (const auto& [choice, pick] : ways(m)) {
      if (pick.width >= m.width) continue;
      c.push_back(choice);
      p.push_back({pick});
    }
    choices.push_back(std::move(c));
    picks.push_back(std::move(p));
  }
  for (const auto& [name, m] : alone) {
    if (grouped.count(name)) continue;
    std::vector<search::Choice> c;
    std::vector<std::vector<Pick>> p;
    for (const auto& [choice, pick] : ways(*m)) c.push_back(choice), p.push_back({pick});
    choices.push_back(std::move(c));
    picks.push_back(std::move(p));
  }
  const auto chosen = search::choose_lagrangian(choices, budget);
  std::map<std::string, int64_t> widths;
  for (const auto& m : modules) widths[m.name] = m.width;
  for (size_t g = 0; g < picks.size(); ++g) {
    for (const auto& pick : picks[g][chosen[g]]) widths[pick.module->name] = pick.width;
  }
  return widths;
}

}  // namespace

const std::vector<std::string>& module_method_names() {
  static const std::vector<std::string> names{"mlp_nystrom", "vo_svd", "qk_cr", "modular", "mixed"};
  return names;
}

std::pair<std::string, std::string> split_module_method(const std::string& method) {
  const auto plus = method.find('+');
  if (plus == std::string::npos) return {method, ""};
  return {method.substr(0, plus), method.substr(plus + 1)};
}

bool is_module_method(const std::string& method) {
  const auto& names = module_method_names();
  const auto [base, linear_method] = split_module_method(method);
  if (std::find(names.begin(), names.end(), base) == names.end()) return false;
  if (linear_method.empty()) return method.find('+') == std::string::npos;
  const auto& known = compress::compressor_names();
  return std::find(known.begin(), known.end(), linear_method) != known.end();
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
        fmt::format("\"{}\" is not a module method (use mlp_nystrom, vo_svd, qk_cr or modular, optionally "
                    "+ a Gram compressor for the other Linears, e.g. mlp_nystrom+svd_whiten)",
                    o.method));
  }
  check_allocation(o.allocation);
  const auto [base_method, linear_method] = split_module_method(o.method);
  if (base_method == "mixed" && (linear_method.empty() || o.allocation != "lagrangian")) {
    throw std::invalid_argument(
        "mixed chooses per module between the module method and a Gram method for its Linears: it needs one "
        "(e.g. mixed+svd_whiten) and the lagrangian allocation");
  }
  if (!(target > 0 && target <= 1)) throw std::invalid_argument(fmt::format("module target {} is not in (0, 1]", target));
  if (!(o.nystrom.ridge >= 0)) throw std::invalid_argument("mlp_nystrom: ridge must be >= 0");
  if (o.nystrom.channel_align < 1) throw std::invalid_argument("mlp_nystrom: channel_align must be positive");
  if (o.head_align < 1) throw std::invalid_argument(fmt::format("head_align must be positive, not {}", o.head_align));

  const std::vector<AnyModule> modules = gather(lm, stats, o);
  // A tied lm_head stays dense and tied: it stores nothing of its own, so it is neither
  // counted in the budget nor listed in the plan (as in the per-layer search).
  const bool tied_head = lm.config().tie_word_embeddings && !o.compress_lm_head;
  auto counted = [&](const model::LinearInfo& info) { return !(tied_head && info.name == "lm_head"); };
  std::set<std::string> in_module;
  int64_t dense_total = 0, module_dense = 0;
  for (const auto& info : lm.linears()) {
    if (counted(info)) dense_total += info.in_features * info.out_features;
  }
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
    search::SensitivityTable table("ppl");
    // Only the points not in a given table are measured, layer by layer, from that layer's dense inputs.
    std::vector<std::pair<const AnyModule*, double>> missing;
    for (const auto& m : modules) {
      for (double r : candidates) {
        std::optional<double> known;
        if (o.sensitivity) known = o.sensitivity->score(m.name, r);
        if (known) {
          table.add(m.name, r, *known);
        } else {
          missing.emplace_back(&m, r);
        }
      }
    }
    {
      LayerLocalPpl local(lm, samples, o.batch_size);
      result.dense_calibration_ppl = local.ppl();
      std::stable_sort(missing.begin(), missing.end(),
                       [](const auto& a, const auto& b) { return a.first->layer < b.first->layer; });
      for (const auto& [m, r] : missing) {
        while (local.layer() < m->layer) local.advance();
        const int64_t k = m->width_for(r);
        double ppl = 0;
        {
          TrialModule trial(lm, *m, k);
          ppl = local.ppl();
        }
        table.add(m->name, r, ppl);
        if (o.show_progress) fmt::print(stderr, "modules: {} at {} (width {}): ppl {:.4f}\n", m->name, r, k, ppl);
      }
    }
    if (base_method == "mixed") {
      // The Linears outside every group stay dense (a tied lm_head is not counted).
      int64_t rest = 0;
      for (const auto& info : lm.linears()) {
        if (!in_module.count(info.name) && counted(info)) rest += info.in_features * info.out_features;
      }
      widths = mixed_widths(modules, table, result.dense_calibration_ppl, candidates,
                            target * static_cast<double>(dense_total) - static_cast<double>(rest));
    } else {
      // The Lagrangian search over modules (each one "layer" of the search) and the dense rest.
      std::vector<search::LayerSize> sizes;
      std::map<std::string, const AnyModule*> by_name;
      std::map<std::string, int64_t> numel;
      for (const auto& m : modules) {
        sizes.push_back({m.name, m.dense_params()});
        by_name[m.name] = &m;
      }
      for (const auto& info : lm.linears()) {
        if (!in_module.count(info.name) && counted(info)) sizes.push_back({info.name, info.in_features * info.out_features});
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
    }
    result.sensitivity = std::move(table);
  }

  // Modules first, then the Linears alone (gather's order), whose rows replace a module's.
  std::map<std::string, search::PlannedLayer> rows;
  for (const auto& m : modules) {
    for (auto& row : m.compress(lm, widths.at(m.name))) rows[row.name] = row;
  }
  for (const auto& info : lm.linears()) {
    if (!counted(info)) continue;
    auto it = rows.find(info.name);
    const int64_t n = info.in_features * info.out_features;
    result.plan.add(it != rows.end() ? it->second : search::PlannedLayer{info.name, "dense", 1.0, 0, n, n});
  }
  result.widths = std::move(widths);
  return result;
}

}  // namespace cur4llm::modules
