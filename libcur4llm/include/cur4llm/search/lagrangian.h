#pragma once
/// Per-layer ratios from a "ppl" sensitivity table by a Lagrangian relaxation
/// of  min sum_l cost_l(r_l)  s.t.  sum_l params_l(r_l) <= target * sum_l numel_l,
/// with cost_l(r) = log(ppl_l(r) / ppl_dense) (the log-perplexity increase of
/// compressing layer l alone at ratio r; 0 for a dense layer). For a price
/// lambda each layer takes the r minimising cost_l(r) + lambda params_l(r);
/// lambda is bisected to the smallest total that fits, then the budget left
/// is spent greedily on the upgrades with the best cost decrease per
/// parameter. Unlike the reference's search (binary_search.h), which cuts one
/// list sorted by perplexity, this weighs each step's damage against the
/// parameters it saves. Same table, same candidates; weights mode only.
///
///   auto r = search_param_ratio_lagrangian(table, layers, 0.9, dense_calibration_ppl);

#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/sensitivity_table.h>

#include <cstddef>
#include <vector>

namespace cur4llm::search {

/// One way to store a group of layers: its cost (a log-perplexity increase) and the
/// parameters it stores.
struct Choice {
  double cost = 0;
  double params = 0;
};

/// The Lagrangian allocation itself, over groups that each take exactly one of their choices:
/// for a price lambda every group takes the choice minimising cost + lambda * params
/// (ties: fewer parameters); lambda is bisected to the smallest total within `budget`,
/// then what is left is spent greedily on the upgrades with the best cost decrease per
/// parameter. Returns the chosen index per group; if even the fewest parameters exceed the
/// budget, every group takes its fewest. std::invalid_argument for a group without choices.
std::vector<std::size_t> choose_lagrangian(const std::vector<std::vector<Choice>>& choices, double budget);

/// `dense_score`: the calibration perplexity of the uncompressed model (> 0).
/// options.stored_params, when set, counts real parameters (else numel * ratio);
/// options.mode must be kWeights and options.final_cut is ignored. The result's
/// cut and steps are empty (cut = 0). If even the smallest ratios do not fit,
/// every layer takes its smallest. std::invalid_argument for a bad target or
/// dense score, a KV-cache mode, or table layers missing from `layers`.
SearchResult search_param_ratio_lagrangian(const SensitivityTable& table, const std::vector<LayerSize>& layers,
                                           double target, double dense_score, const SearchOptions& options = {});

}  // namespace cur4llm::search
