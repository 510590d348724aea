#include <cur4llm/compress/svd_linear.h>

#include "common.h"
#include "fused/fused_ops.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace cur4llm::compress {

SigmaFuse parse_sigma_fuse(const std::string& name) {
  if (name == "U") return SigmaFuse::U;
  if (name == "V") return SigmaFuse::V;
  if (name == "UV") return SigmaFuse::UV;
  throw std::invalid_argument(fmt::format("unknown sigma_fuse \"{}\" (valid: U, V, UV)", name));
}

int64_t svd_rank_for_ratio(int64_t out_features, int64_t in_features, double param_ratio, int64_t rank_align) {
  detail::check_ratio("svd_rank_for_ratio", param_ratio);
  if (out_features < 1 || in_features < 1) throw std::invalid_argument("svd_rank_for_ratio: empty layer");
  const int64_t align = std::max<int64_t>(rank_align, 1);
  int64_t rank = detail::budget_params(out_features, in_features, param_ratio) / (out_features + in_features);
  rank = (rank + align - 1) / align * align;
  // ASVD would fail on rank 0 or beyond min(m, n); clamp instead.
  return std::clamp<int64_t>(rank, 1, std::min(out_features, in_features));
}

// ---------------------------------------------------------------------------------------------
SVDLinear::SVDLinear(at::Tensor a, at::Tensor b, at::Tensor bias)
    : a_(std::move(a)), b_(std::move(b)), bias_(std::move(bias)) {
  if (!a_.defined() || !b_.defined() || a_.dim() != 2 || b_.dim() != 2 || a_.size(1) != b_.size(0)) {
    throw std::invalid_argument("SVDLinear: A [out, k] and B [k, in] must be 2-d with the same k");
  }
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != a_.size(0))) {
    throw std::invalid_argument(
        fmt::format("SVDLinear: bias of {} values does not match {} outputs", bias_.numel(), a_.size(0)));
  }
  // The rank padded to a multiple of 8 in storage (CUDA): A [out, k] becomes a view.
  auto pa = detail::pad_rank(a_, false, true);
  auto pb = detail::pad_rank(b_, true, false);
  a_full_ = pa.full, a_ = pa.view;
  b_full_ = pb.full, b_ = pb.view;
}

at::Tensor SVDLinear::forward(const at::Tensor& x) const {
  // Decoding on CUDA: both products in one kernel launch.
  if (fused::lowrank_applies(x, b_full_, at::Tensor(), a_full_, bias_)) {
    return fused::lowrank_forward(x, b_full_, at::Tensor(), a_full_, bias_);
  }
  return at::linear(at::linear(x, b_full_), a_full_, bias_);
}

std::vector<std::pair<std::string, at::Tensor>> SVDLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"ALinear.weight", a_}};
  if (bias_.defined()) out.emplace_back("ALinear.bias", bias_);
  out.emplace_back("BLinear.weight", b_);
  return out;
}

at::Tensor SVDLinear::reconstruct_weight() const {
  const auto work = detail::work_dtype(a_);
  return at::matmul(a_.to(work), b_.to(work)).to(a_.scalar_type());
}

std::shared_ptr<SVDLinear> SVDLinear::from_linear(const at::Tensor& weight, const at::Tensor& bias,
                                                  const SVDOptions& options) {
  detail::check_layer("SVDLinear::from_linear", weight, bias, options.scale);
  const int64_t k = svd_rank_for_ratio(weight.size(0), weight.size(1), options.param_ratio, options.rank_align);
  return SVDFactory(weight, bias, options, k).build_rank(k);
}

// ---------------------------------------------------------------------------------------------
SVDFactory::SVDFactory(const at::Tensor& weight, at::Tensor bias, SVDOptions options, int64_t max_rank)
    : options_(std::move(options)) {
  detail::check_layer("SVDFactory", weight, bias, options_.scale);
  out_features_ = weight.size(0);
  in_features_ = weight.size(1);
  const int64_t r = std::min(out_features_, in_features_);
  if (max_rank < 1 || max_rank > r) {
    throw std::invalid_argument(fmt::format("SVDFactory: max_rank {} is not in [1, {}]", max_rank, r));
  }
  c10::NoGradGuard no_grad;
  bias_ = bias.defined() ? bias.detach() : bias;
  dtype_ = weight.scalar_type();
  auto scaled = detail::scaled_weight(weight, options_.scale);
  if (options_.scale.defined()) inv_scale_ = options_.scale.detach().to(scaled.options()).reciprocal();
  options_.scale = at::Tensor();
  subspace_ = top_k_svd(scaled, max_rank, options_.svd);
  if (!at::isfinite(subspace_.S).all().item<bool>()) {
    throw CompressionError(fmt::format("SVD: non-finite singular values for a [{}, {}] weight", out_features_, in_features_));
  }
}

int64_t SVDFactory::rank_for(double ratio) const {
  return svd_rank_for_ratio(out_features_, in_features_, ratio, options_.rank_align);
}

std::shared_ptr<SVDLinear> SVDFactory::build_rank(int64_t k) const {
  if (k < 1 || k > max_rank()) {
    throw std::invalid_argument(fmt::format("SVDFactory: rank {} is not in [1, {}]", k, max_rank()));
  }
  c10::NoGradGuard no_grad;
  auto u = subspace_.U.narrow(1, 0, k);
  auto s = subspace_.S.narrow(0, 0, k);
  auto b = subspace_.V.narrow(1, 0, k).transpose(0, 1);  // [k, in]
  // (W S) ≈ U Σ V^T, so W ≈ U Σ (V^T S^-1): 1/s goes to the input side.
  if (inv_scale_.defined()) b = b * inv_scale_.unsqueeze(0);
  at::Tensor a;
  switch (options_.sigma_fuse) {
    case SigmaFuse::U:
      a = u * s.unsqueeze(0);
      break;
    case SigmaFuse::V:
      a = u;
      b = s.unsqueeze(1) * b;
      break;
    case SigmaFuse::UV:
      a = u * s.sqrt().unsqueeze(0);
      b = s.sqrt().unsqueeze(1) * b;
      break;
  }
  return std::make_shared<SVDLinear>(a.to(dtype_).contiguous(), b.to(dtype_).contiguous(), bias_);
}

// ---------------------------------------------------------------------------------------------
SVDCompressor::SVDCompressor(SVDOptions options) : options_(std::move(options)) {}

model::LinearPtr SVDCompressor::compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         double param_ratio) const {
  SVDOptions o = options_;
  o.param_ratio = param_ratio;
  o.scale = scale;
  return SVDLinear::from_linear(weight, bias, o);
}

std::unique_ptr<PreparedLayer> SVDCompressor::prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                      const at::Tensor& scale, const std::vector<double>& ratios) const {
  detail::check_layer("SVDCompressor::prepare", weight, bias, scale);
  if (ratios.empty()) throw std::invalid_argument("SVDCompressor::prepare: no ratios");
  int64_t k = 0;
  for (double ratio : ratios) k = std::max(k, rank_for(weight.size(0), weight.size(1), ratio));
  SVDOptions o = options_;
  o.scale = scale;
  return std::make_unique<SVDFactory>(weight, bias, o, k);
}

int64_t SVDCompressor::rank_for(int64_t out_features, int64_t in_features, double param_ratio) const {
  return svd_rank_for_ratio(out_features, in_features, param_ratio, options_.rank_align);
}

int64_t SVDCompressor::stored_params(int64_t out_features, int64_t in_features, double param_ratio) const {
  return rank_for(out_features, in_features, param_ratio) * (out_features + in_features);
}

}  // namespace cur4llm::compress
