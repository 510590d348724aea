#include <cur4llm/compress/whiten_svd.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace cur4llm::compress {

WhitenedSVDFactory::WhitenedSVDFactory(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gram,
                                       SVDOptions options, int64_t max_rank, const WhitenOptions& whiten)
    : options_(std::move(options)) {
  detail::check_layer("WhitenedSVDFactory", weight, bias, at::Tensor());
  out_features_ = weight.size(0);
  in_features_ = weight.size(1);
  const int64_t r = std::min(out_features_, in_features_);
  if (max_rank < 1 || max_rank > r) {
    throw std::invalid_argument(fmt::format("WhitenedSVDFactory: max_rank {} is not in [1, {}]", max_rank, r));
  }
  c10::NoGradGuard no_grad;
  bias_ = bias.defined() ? bias.detach() : bias;
  dtype_ = weight.scalar_type();
  const auto w = weight.detach().to(at::kDouble);
  const auto l = whitening_factor(gram_from_statistic(gram, in_features_, w, "svd_whiten"), "svd_whiten", whiten);
  auto svd = top_k_svd(at::mm(w, l), max_rank, options_.svd);
  if (!at::isfinite(svd.S).all().item<bool>()) throw CompressionError("svd_whiten: the SVD of W L is not finite");
  u_ = svd.U;
  s_ = svd.S;
  // V^T L^{-1}: solve Y L = V^T with L lower-triangular.
  vt_linv_ = at::linalg_solve_triangular(l, svd.V.transpose(0, 1).contiguous(), /*upper=*/false, /*left=*/false);
  if (!at::isfinite(vt_linv_).all().item<bool>()) throw CompressionError("svd_whiten: V^T L^{-1} is not finite");
}

std::unique_ptr<WhitenedSVDFactory> WhitenedSVDFactory::for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                                   const at::Tensor& gram, const SVDOptions& options,
                                                                   const std::vector<double>& ratios) {
  detail::check_layer("WhitenedSVDFactory", weight, bias, at::Tensor());
  if (ratios.empty()) throw std::invalid_argument("WhitenedSVDFactory::for_ratios: no ratios");
  int64_t k = 1;
  for (double r : ratios) k = std::max(k, svd_rank_for_ratio(weight.size(0), weight.size(1), r, options.rank_align));
  return std::make_unique<WhitenedSVDFactory>(weight, bias, gram, options, k);
}

int64_t WhitenedSVDFactory::rank_for(double ratio) const {
  return svd_rank_for_ratio(out_features_, in_features_, ratio, options_.rank_align);
}

std::shared_ptr<SVDLinear> WhitenedSVDFactory::build_rank(int64_t k) const {
  if (k < 1 || k > max_rank()) {
    throw std::invalid_argument(fmt::format("WhitenedSVDFactory: rank {} is not in [1, {}]", k, max_rank()));
  }
  c10::NoGradGuard no_grad;
  auto s = s_.narrow(0, 0, k);
  at::Tensor left = s, right = s;  // UV: sqrt(S) to each side
  if (options_.sigma_fuse == SigmaFuse::UV) {
    left = right = s.sqrt();
  } else if (options_.sigma_fuse == SigmaFuse::U) {
    right = at::ones_like(s);
  } else {
    left = at::ones_like(s);
  }
  auto a = u_.narrow(1, 0, k) * left.unsqueeze(0);
  auto b = vt_linv_.narrow(0, 0, k) * right.unsqueeze(1);
  return std::make_shared<SVDLinear>(a.to(dtype_).contiguous(), b.to(dtype_).contiguous(), bias_);
}

// ---------------------------------------------------------------------------------------------
WhitenedSVDCompressor::WhitenedSVDCompressor(SVDOptions options) : options_(std::move(options)) {}

model::LinearPtr WhitenedSVDCompressor::compress(const at::Tensor& weight, const at::Tensor& bias,
                                                 const at::Tensor& scale, double param_ratio) const {
  detail::check_ratio("svd_whiten", param_ratio);
  return prepare(weight, bias, scale, {param_ratio})->build(param_ratio);
}

std::unique_ptr<PreparedLayer> WhitenedSVDCompressor::prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                              const at::Tensor& scale,
                                                              const std::vector<double>& ratios) const {
  if (!scale.defined()) {
    throw std::invalid_argument("svd_whiten: needs the layer's input Gram matrix (collect it with CollectOptions::gram)");
  }
  return WhitenedSVDFactory::for_ratios(weight, bias, scale, options_, ratios);
}

int64_t WhitenedSVDCompressor::rank_for(int64_t out_features, int64_t in_features, double param_ratio) const {
  return svd_rank_for_ratio(out_features, in_features, param_ratio, options_.rank_align);
}

int64_t WhitenedSVDCompressor::stored_params(int64_t out_features, int64_t in_features, double param_ratio) const {
  return rank_for(out_features, in_features, param_ratio) * (out_features + in_features);
}

}  // namespace cur4llm::compress
