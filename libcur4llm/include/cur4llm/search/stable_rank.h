#pragma once
/// The "stable_rank" sensitivity metric: scores without forward passes.
///
/// As the reference's calib_sensitivity_stable_rank: sr = sqrt(||W||_F^2 / sigma_max^2)
/// of the raw (unscaled) weight, and score(r) = -sr * r^0.1. Scores are negative; the
/// search sorts them descending like perplexities, so low-sr layers at low ratios count
/// as the most sensitive.

#include <string>
#include <vector>

#include <cur4llm/search/sensitivity_table.h>

namespace cur4llm::search {

/// sqrt(frobenius_sq / sigma_max^2); std::invalid_argument unless sigma_max > 0 and frobenius_sq >= 0.
double stable_rank(double frobenius_sq, double sigma_max);

/// -stable_rank * ratio^0.1.
double stable_rank_score(double stable_rank, double ratio);

/// The reference's stable-rank candidates: 0.1, 0.2, ..., 0.9 (i / 10.0), in either mode.
std::vector<double> stable_rank_candidate_ratios();

/// Adds stable_rank_score(sr, r) for every r in `ratios` to `table` under `layer`.
void add_stable_rank_scores(SensitivityTable& table, const std::string& layer, double stable_rank,
                            const std::vector<double>& ratios);

}  // namespace cur4llm::search
