#include <cur4llm/search/lagrangian.h>

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

namespace cur4llm::search {
namespace {

// The choice minimising cost + lambda * params (ties: fewer parameters).
std::size_t best_choice(const std::vector<Choice>& choices, double lambda) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < choices.size(); ++i) {
    const double a = choices[i].cost + lambda * choices[i].params, b = choices[best].cost + lambda * choices[best].params;
    if (a < b || (a == b && choices[i].params < choices[best].params)) best = i;
  }
  return best;
}

}  // namespace

std::vector<std::size_t> choose_lagrangian(const std::vector<std::vector<Choice>>& choices, double budget) {
  for (const auto& group : choices) {
    if (group.empty()) throw std::invalid_argument("search: a group with no choice");
  }
  auto pick = [&](double lambda, std::vector<std::size_t>& chosen) {
    double p = 0;
    for (std::size_t i = 0; i < choices.size(); ++i) {
      chosen[i] = best_choice(choices[i], lambda);
      p += choices[i][chosen[i]].params;
    }
    return p;
  };
  std::vector<std::size_t> chosen(choices.size()), trial(choices.size());
  // A price high enough that every group takes its fewest parameters.
  double hi = 1;
  while (pick(hi, chosen) > budget && hi < 1e30) hi *= 4;
  double lo = 0;
  if (pick(lo, trial) <= budget) {
    chosen = trial;
  } else if (pick(hi, chosen) <= budget) {
    for (int it = 0; it < 200; ++it) {
      const double mid = 0.5 * (lo + hi);
      if (pick(mid, trial) <= budget) {
        hi = mid;
        chosen = trial;
      } else {
        lo = mid;
      }
    }
  }
  // Spend what is left: the upgrade with the largest cost decrease per parameter, while it fits.
  double used = 0;
  for (std::size_t i = 0; i < choices.size(); ++i) used += choices[i][chosen[i]].params;
  for (;;) {
    double best_rate = 0;
    std::size_t bl = 0, bo = 0;
    for (std::size_t i = 0; i < choices.size(); ++i) {
      const Choice& now = choices[i][chosen[i]];
      for (std::size_t o = 0; o < choices[i].size(); ++o) {
        const Choice& up = choices[i][o];
        const double dp = up.params - now.params, dc = now.cost - up.cost;
        if (dp <= 0 || dc <= 0 || used + dp > budget) continue;
        if (dc / dp > best_rate) {
          best_rate = dc / dp;
          bl = i;
          bo = o;
        }
      }
    }
    if (best_rate <= 0) break;
    used += choices[bl][bo].params - choices[bl][chosen[bl]].params;
    chosen[bl] = bo;
  }
  return chosen;
}

SearchResult search_param_ratio_lagrangian(const SensitivityTable& table, const std::vector<LayerSize>& layers,
                                           double target, double dense_score, const SearchOptions& options) {
  if (!std::isfinite(target) || target <= 0) throw std::invalid_argument(fmt::format("search: param target {} must be finite and > 0", target));
  if (!std::isfinite(dense_score) || dense_score <= 0) {
    throw std::invalid_argument(fmt::format("search: dense score {} must be finite and > 0", dense_score));
  }
  if (options.mode != CompressMode::kWeights) throw std::invalid_argument("search: the Lagrangian search is for the weights mode");
  std::map<std::string, std::size_t> index;
  double total = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].numel <= 0 || !index.emplace(layers[i].name, i).second) {
      throw std::invalid_argument(fmt::format("search: layer \"{}\" is given twice or has no weights", layers[i].name));
    }
    if (!layers[i].shared) total += static_cast<double>(layers[i].numel);
  }
  if (total == 0) throw std::invalid_argument("search: no layer counts towards the budget");
  // Per layer: dense first (free for a shared layer), then each candidate of the table.
  std::vector<std::vector<Choice>> choices(layers.size());
  std::vector<std::vector<double>> ratios(layers.size());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    choices[i].push_back({0.0, layers[i].shared ? 0.0 : static_cast<double>(layers[i].numel)});
    ratios[i].push_back(1.0);
  }
  for (const auto& e : table.entries()) {
    auto it = index.find(e.layer);
    if (it == index.end()) throw std::invalid_argument(fmt::format("search: table layer \"{}\" is not a Linear layer of the model", e.layer));
    if (!(e.ratio < 1)) continue;
    const double cost = std::isfinite(e.score) ? std::log(std::max(e.score, dense_score) / dense_score)
                                               : std::numeric_limits<double>::infinity();
    if (!std::isfinite(cost)) continue;
    const double params = options.stored_params ? static_cast<double>(options.stored_params(e.layer, e.ratio))
                                                : static_cast<double>(layers[it->second].numel) * e.ratio;
    choices[it->second].push_back({cost, params});
    ratios[it->second].push_back(e.ratio);
  }
  const auto chosen = choose_lagrangian(choices, target * total);
  SearchResult result;
  result.num_entries = table.size();
  double nominal = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const double ratio = ratios[i][chosen[i]];
    result.allocation.push_back({layers[i].name, ratio, ratio < 1});
    if (!layers[i].shared || ratio < 1) nominal += static_cast<double>(layers[i].numel) * ratio;
  }
  result.nominal_ratio = nominal / total;
  result.ratio = whole_model_ratio(result.allocation, layers, options.mode, options.stored_params);
  result.target_met = result.ratio <= target * (1 + 1e-12);
  return result;
}

}  // namespace cur4llm::search
