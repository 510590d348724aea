// The data objective ||(W - W') L||_F^2 / ||W L||_F^2 (L L^T = G, the input
// Gram matrix on calibration text) of every Linear layer of a model, for the
// data-aware methods at equal parameter ratios: whitened SVD (rank k(m+n)),
// row and column skeletons (k(m+n-k)) and the diagonal skeleton. Prints one
// JSON object per (layer, ratio). Diagnostics only; never pass/fail.
//
//   bench_layer_errors --model DIR --calib TEXT [--seqlen 512] [--samples 32] [--seed 233] [--ratios 0.9,0.7]
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/compress/whiten_svd.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>

#include "bench_common.h"

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  args.check_known({"model", "calib", "seqlen", "samples", "seed", "ratios"});
  const std::string model_dir = args.str("model", ""), calib = args.str("calib", "");
  const int64_t seqlen = args.integer("seqlen", 512), samples = args.integer("samples", 32);
  const auto seed = static_cast<uint64_t>(args.integer("seed", 233));
  const std::vector<double> ratios = args.reals("ratios", "0.95,0.9,0.8,0.7,0.6,0.5,0.4");
  if (model_dir.empty() || calib.empty()) throw std::invalid_argument("give --model and --calib");
  auto lm = model::CausalLM::load(model_dir);
  auto tok = tokenize::load_tokenizer(model_dir);
  data::CalibrationOptions copts;
  copts.n_samples = samples;
  copts.seqlen = seqlen;
  copts.seed = seed;
  auto text = data::load_text(calib, data::Purpose::Calibration, ".");
  auto ids = data::sample_calibration(text.text, *tok, copts);
  calib::CollectOptions so;
  so.gram = true;
  auto stats = calib::collect_statistics(*lm, ids, so);
  double max_ratio = 0;
  for (double r : ratios) max_ratio = std::max(max_ratio, r);
  for (const auto& info : lm->linears()) {
    const auto& slot = lm->linear(info.name);
    const auto w = slot.reconstruct_weight();
    const auto g = stats.mean_gram(info.name);
    const auto s = stats.scale(info.name, calib::ScalingMethod::AbsMean, 0.5);
    const int64_t m = w.size(0), n = w.size(1);
    compress::SkeletonOptions both;
    both.side = compress::SkeletonSide::Auto;
    auto skel = compress::SkeletonFactory::for_ratios(w, at::Tensor(), g, both, ratios);
    auto diag = compress::SkeletonFactory::for_ratios(w, at::Tensor(), s, compress::SkeletonOptions{}, ratios);
    int64_t k_max = 1;
    for (double r : ratios) k_max = std::max({k_max, skel->rank_for(r), compress::svd_rank_for_ratio(m, n, r, 1)});
    compress::WhitenedSVDFactory white(w, at::Tensor(), g, compress::SVDOptions{}, k_max);
    const auto sv2 = white.singular_values().pow(2);
    const double total = skel->predicted_error(0, compress::SkeletonSide::Row);  // ||W L||_F^2
    auto svd_error = [&](int64_t k) { return (total - sv2.narrow(0, 0, k).sum().item<double>()) / total; };
    for (double r : ratios) {
      const int64_t ks = skel->rank_for(r), kv = white.rank_for(r);
      nlohmann::json j = {{"layer", info.name},
                          {"shape", {m, n}},
                          {"ratio", r},
                          {"k_skeleton", ks},
                          {"k_svd", kv},
                          {"svd_whiten", svd_error(kv)},
                          {"skeleton_row", skel->predicted_error(ks, compress::SkeletonSide::Row) / total},
                          {"skeleton_col", skel->predicted_error(ks, compress::SkeletonSide::Column) / total},
                          {"skeleton_diag", compress::output_error(w, diag->build_rank(ks, compress::SkeletonSide::Row)->reconstruct_weight(), g) / total},
                          {"svd_whiten_at_k_skeleton", svd_error(ks)}};
      double swapped = 0;
      compress::exchange_rows(w, g, skel->rows()->pivots.narrow(0, 0, ks), 4 * ks, &swapped);
      j["skeleton_row_swap"] = swapped / total;
      std::cout << j.dump() << "\n";
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_layer_errors: " << e.what() << "\n";
  return 1;
}
