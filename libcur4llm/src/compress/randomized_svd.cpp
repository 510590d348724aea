#include <cur4llm/compress/randomized_svd.h>

#include <cur4llm/search/stable_rank.h>

#include "common.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace cur4llm::compress {

namespace {

at::Tensor orthonormal_basis(const at::Tensor& y) { return std::get<0>(at::linalg_qr(y, "reduced")); }

TruncatedSVD randomized(const at::Tensor& a, int64_t k, const RandomizedSVDOptions& options) {
  const int64_t m = a.size(0), n = a.size(1);
  const int64_t l = std::min(k + std::max<int64_t>(options.oversample, 0), std::min(m, n));
  // The test matrix is drawn on the CPU so that every device sees the same one.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  auto omega = at::randn({n, l}, gen, at::TensorOptions().dtype(a.scalar_type())).to(a.device());
  // Range finder with subspace iterations; QR after every product keeps the
  // basis from collapsing onto the top singular vector.
  auto q = orthonormal_basis(at::matmul(a, omega));
  for (int64_t i = 0; i < options.power_iters; ++i) {
    auto z = orthonormal_basis(at::matmul(a.transpose(0, 1), q));
    q = orthonormal_basis(at::matmul(a, z));
  }
  auto b = at::matmul(q.transpose(0, 1), a);  // [l, n]
  auto svd = at::linalg_svd(b, /*full_matrices=*/false);
  auto ub = std::get<0>(svd), s = std::get<1>(svd), vh = std::get<2>(svd);
  return {at::matmul(q, ub.narrow(1, 0, k)), s.narrow(0, 0, k).contiguous(),
          vh.narrow(0, 0, k).transpose(0, 1).contiguous()};
}

}  // namespace

TruncatedSVD truncated_svd(const at::Tensor& a, int64_t k) {
  if (!a.defined() || a.dim() != 2) throw std::invalid_argument("truncated_svd: expected a 2-d matrix");
  const int64_t r = std::min(a.size(0), a.size(1));
  if (k < 1 || k > r) {
    throw std::invalid_argument(fmt::format("truncated_svd: rank {} is not in [1, {}]", k, r));
  }
  auto w = a.detach().to(detail::work_dtype(a));
  auto svd = at::linalg_svd(w, /*full_matrices=*/false);
  return {std::get<0>(svd).narrow(1, 0, k).contiguous(), std::get<1>(svd).narrow(0, 0, k).contiguous(),
          std::get<2>(svd).narrow(0, 0, k).transpose(0, 1).contiguous()};
}

TruncatedSVD top_k_svd(const at::Tensor& a, int64_t k, const RandomizedSVDOptions& options) {
  if (!a.defined() || a.dim() != 2 || !c10::isFloatingType(a.scalar_type())) {
    throw std::invalid_argument("top_k_svd: expected a 2-d floating matrix");
  }
  const int64_t r = std::min(a.size(0), a.size(1));
  if (k < 1 || k > r) throw std::invalid_argument(fmt::format("top_k_svd: rank {} is not in [1, {}]", k, r));
  bool full = options.algorithm == SVDAlgorithm::Full;
  if (options.algorithm == SVDAlgorithm::Auto) {
    full = r <= options.full_below ||
           static_cast<double>(k + options.oversample) > options.full_fraction * static_cast<double>(r);
  }
  if (full) return truncated_svd(a, k);
  return randomized(a.detach().to(detail::work_dtype(a)).contiguous(), k, options);
}

double stable_rank(const at::Tensor& weight, const RandomizedSVDOptions& options) {
  auto w = weight.detach().to(detail::work_dtype(weight));
  const double sigma_max = top_k_svd(w, 1, options).S[0].item<double>();
  const double fro2 = w.to(at::kDouble).pow(2).sum().item<double>();
  if (sigma_max == 0) return 0;
  return search::stable_rank(fro2, sigma_max);
}

}  // namespace cur4llm::compress
