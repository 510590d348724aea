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

TruncatedSVD randomized(const at::Tensor& a, int64_t k, const RandomizedSVDOptions& options, bool use_gram) {
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
  if (use_gram) {
    auto small = gram_svd(b, k);
    return {at::matmul(q, small.U), small.S, small.V};
  }
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

TruncatedSVD gram_svd(const at::Tensor& a_in, int64_t k) {
  if (!a_in.defined() || a_in.dim() != 2) throw std::invalid_argument("gram_svd: expected a 2-d matrix");
  const int64_t m = a_in.size(0), n = a_in.size(1), r = std::min(m, n);
  if (k < 1 || k > r) throw std::invalid_argument(fmt::format("gram_svd: rank {} is not in [1, {}]", k, r));
  const auto work = detail::work_dtype(a_in);
  auto a = a_in.detach().to(at::kDouble);
  const bool tall = m >= n;
  auto g = tall ? at::matmul(a.transpose(0, 1), a) : at::matmul(a, a.transpose(0, 1));  // [r, r]
  auto eig = at::linalg_eigh(g);
  auto lambda = std::get<0>(eig).flip(0).narrow(0, 0, k);     // descending
  auto vecs = std::get<1>(eig).flip(1).narrow(1, 0, k);        // [r, k]
  auto s = lambda.clamp_min(0).sqrt();
  // The other side's vectors are a v / sigma; below ~1e-5 sigma_max the Gram's
  // round-off swamps sigma, so such directions get zero vectors.
  auto resolved = lambda > lambda.narrow(0, 0, 1) * 1e-10;
  auto inv = at::where(resolved, s.reciprocal(), at::zeros_like(s));
  inv = at::where(at::isfinite(inv), inv, at::zeros_like(inv));
  auto other = at::matmul(tall ? a : a.transpose(0, 1), vecs) * inv.unsqueeze(0);
  auto u = tall ? other : vecs, v = tall ? vecs : other;
  return {u.to(work).contiguous(), s.to(work).contiguous(), v.to(work).contiguous()};
}

TruncatedSVD top_k_svd(const at::Tensor& a, int64_t k, const RandomizedSVDOptions& options) {
  if (!a.defined() || a.dim() != 2 || !c10::isFloatingType(a.scalar_type())) {
    throw std::invalid_argument("top_k_svd: expected a 2-d floating matrix");
  }
  const int64_t r = std::min(a.size(0), a.size(1));
  if (k < 1 || k > r) throw std::invalid_argument(fmt::format("top_k_svd: rank {} is not in [1, {}]", k, r));
  if (options.algorithm == SVDAlgorithm::Gram) return gram_svd(a, k);
  bool full = options.algorithm == SVDAlgorithm::Full;
  // A dense SVD on a GPU is far slower than the eigendecomposition of a Gram matrix.
  const bool gram = options.algorithm == SVDAlgorithm::Auto && a.is_cuda();
  if (options.algorithm == SVDAlgorithm::Auto) {
    full = r <= options.full_below || (gram && r <= options.gram_full_below) ||
           static_cast<double>(k + options.oversample) > options.full_fraction * static_cast<double>(r);
  }
  if (full) return gram ? gram_svd(a, k) : truncated_svd(a, k);
  return randomized(a.detach().to(detail::work_dtype(a)).contiguous(), k, options, gram);
}

double stable_rank(const at::Tensor& weight, const RandomizedSVDOptions& options) {
  auto w = weight.detach().to(detail::work_dtype(weight));
  const double sigma_max = top_k_svd(w, 1, options).S[0].item<double>();
  const double fro2 = w.to(at::kDouble).pow(2).sum().item<double>();
  if (sigma_max == 0) return 0;
  return search::stable_rank(fro2, sigma_max);
}

}  // namespace cur4llm::compress
