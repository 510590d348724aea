// The Lagrangian param-ratio search on a ppl sensitivity table.
#include <cur4llm/search/lagrangian.h>

#include "test_paths.h"

#include <cmath>

using namespace cur4llm::search;
using Catch::Matchers::Contains;

namespace {

double ratio_of(const SearchResult& r, const std::string& layer) {
  for (const auto& a : r.allocation)
    if (a.layer == layer) return a.compressed ? a.ratio : 1.0;
  return -1;
}

}  // namespace

TEST_CASE("the Lagrangian search spends the budget where perplexity suffers least per parameter", "[unit]") {
  // Two layers of equal size. "robust" barely notices compression; "fragile" does.
  SensitivityTable t("ppl");
  for (double r : {0.4, 0.5, 0.6, 0.7, 0.8, 0.9}) {
    t.add("robust", r, 10.0 * (1 + 0.01 * (1 - r)));
    t.add("fragile", r, 10.0 * std::exp(2.0 * (1 - r)));
  }
  const std::vector<LayerSize> layers{{"robust", 100}, {"fragile", 100}};
  auto r = search_param_ratio_lagrangian(t, layers, 0.7, 10.0);
  // Hand-worked: robust at 0.4 (cost ~0.006) frees 60 of the 60 parameters the target asks for.
  CHECK(ratio_of(r, "robust") == 0.4);
  CHECK(ratio_of(r, "fragile") == 1.0);
  CHECK(r.ratio <= 0.7 + 1e-12);
  CHECK(std::abs(r.ratio - 0.7) < 1e-12);
  // A tighter target compresses the fragile layer as little as it can: 0.4 + 0.8 = 1.2 of 2.
  r = search_param_ratio_lagrangian(t, layers, 0.6, 10.0);
  CHECK(ratio_of(r, "robust") == 0.4);
  CHECK(ratio_of(r, "fragile") == 0.8);
  // Real stored counts: the fragile layer stores twice what its ratio says, so it stays dense.
  SearchOptions o;
  o.stored_params = [](const std::string& layer, double ratio) {
    return static_cast<std::int64_t>(std::llround(100 * ratio * (layer == "fragile" ? 2 : 1)));
  };
  r = search_param_ratio_lagrangian(t, layers, 0.7, 10.0, o);
  CHECK(ratio_of(r, "fragile") == 1.0);
  // Unreachable targets: every layer at its smallest ratio.
  r = search_param_ratio_lagrangian(t, layers, 0.1, 10.0);
  CHECK(ratio_of(r, "robust") == 0.4);
  CHECK(ratio_of(r, "fragile") == 0.4);
  // Target 1: nothing to compress.
  r = search_param_ratio_lagrangian(t, layers, 1.0, 10.0);
  CHECK(ratio_of(r, "robust") == 1.0);
  CHECK(ratio_of(r, "fragile") == 1.0);
}

TEST_CASE("the Lagrangian search refuses bad input", "[unit]") {
  SensitivityTable t("ppl");
  t.add("a", 0.5, 12);
  const std::vector<LayerSize> layers{{"a", 10}};
  CHECK_THROWS_WITH(search_param_ratio_lagrangian(t, layers, 0, 10), Contains("target"));
  CHECK_THROWS_WITH(search_param_ratio_lagrangian(t, layers, 0.5, -1), Contains("dense score"));
  CHECK_THROWS_WITH(search_param_ratio_lagrangian(t, {{"b", 10}}, 0.5, 10), Contains("\"a\""));
  SearchOptions kv;
  kv.mode = CompressMode::kKvCache;
  CHECK_THROWS_AS(search_param_ratio_lagrangian(t, layers, 0.5, 10, kv), std::invalid_argument);
}
