#include <cur4llm/search/stable_rank.h>

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

namespace cur4llm::search {

double stable_rank(double frobenius_sq, double sigma_max) {
  if (!(sigma_max > 0) || !(frobenius_sq >= 0))
    throw std::invalid_argument(
        fmt::format("stable_rank: need sigma_max > 0 and ||W||_F^2 >= 0, got {} and {}", sigma_max, frobenius_sq));
  return std::sqrt(frobenius_sq / (sigma_max * sigma_max));
}

double stable_rank_score(double stable_rank, double ratio) { return -stable_rank * std::pow(ratio, 0.1); }

std::vector<double> stable_rank_candidate_ratios() {
  std::vector<double> out;
  for (int i = 1; i <= 9; ++i) out.push_back(i / 10.0);
  return out;
}

void add_stable_rank_scores(SensitivityTable& table, const std::string& layer, double stable_rank,
                            const std::vector<double>& ratios) {
  for (double r : ratios) table.add(layer, r, stable_rank_score(stable_rank, r));
}

}  // namespace cur4llm::search
