#include "common.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <stdexcept>

namespace cur4llm::compress::detail {

PaddedFactor pad_rank(const at::Tensor& factor, bool pad_rows, bool pad_cols) {
  if (!factor.defined() || !factor.is_cuda() || factor.dim() != 2) return {factor, factor};
  auto up = [](int64_t n) { return (n + 7) / 8 * 8; };
  const int64_t rows = factor.size(0), cols = factor.size(1);
  const int64_t prow = pad_rows ? up(rows) : rows, pcol = pad_cols ? up(cols) : cols;
  if (prow == rows && pcol == cols) return {factor, factor};
  auto full = at::zeros({prow, pcol}, factor.options());
  auto view = full.narrow(0, 0, rows).narrow(1, 0, cols);
  view.copy_(factor);
  return {full, view};
}

search::PlannedLayer planned_layer(const std::string& layer, const model::LinearSlot& slot, bool compressed,
                                   const Compressor& compressor, double ratio) {
  search::PlannedLayer p;
  p.name = layer;
  p.dense_params = slot.in_features() * slot.out_features();
  p.stored_params = slot.weight_params();
  if (compressed) {
    p.method = compressor.name();
    p.ratio = ratio;
    p.rank = compressor.rank_for(slot.out_features(), slot.in_features(), ratio);
  }
  return p;
}

void check_layer(const std::string& who, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale) {
  if (!weight.defined() || weight.dim() != 2 || !c10::isFloatingType(weight.scalar_type())) {
    throw std::invalid_argument(who + ": weight must be a 2-d floating tensor [out, in]");
  }
  if (weight.size(0) < 1 || weight.size(1) < 1) {
    throw std::invalid_argument(fmt::format("{}: weight of shape [{}, {}] is empty", who, weight.size(0), weight.size(1)));
  }
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0))) {
    throw std::invalid_argument(
        fmt::format("{}: bias of {} values does not match {} outputs", who, bias.numel(), weight.size(0)));
  }
  if (scale.defined()) {
    if (scale.dim() != 1 || scale.size(0) != weight.size(1)) {
      throw std::invalid_argument(
          fmt::format("{}: scale of {} values does not match {} inputs", who, scale.numel(), weight.size(1)));
    }
    auto s = scale.detach().to(at::kDouble);
    if (!at::isfinite(s).all().item<bool>() || !(s > 0).all().item<bool>()) {
      throw std::invalid_argument(who + ": scale must be finite and positive (s = stat^alpha + 1e-6)");
    }
  }
}

void check_ratio(const std::string& who, double ratio) {
  if (!(ratio > 0) || !std::isfinite(ratio)) {
    throw std::invalid_argument(fmt::format("{}: param_ratio must be positive and finite, got {}", who, ratio));
  }
}

int64_t budget_params(int64_t out_features, int64_t in_features, double ratio) {
  return static_cast<int64_t>(std::floor(static_cast<double>(out_features) * static_cast<double>(in_features) * ratio));
}

at::Tensor scaled_weight(const at::Tensor& weight, const at::Tensor& scale) {
  auto w = weight.detach().to(work_dtype(weight));
  if (!scale.defined()) return w.contiguous();
  return w * scale.detach().to(w.options()).unsqueeze(0);
}

double link_rtol(double requested, int64_t m, int64_t n, at::ScalarType dtype) {
  if (requested >= 0) return requested;
  double eps = dtype == at::kDouble ? std::numeric_limits<double>::epsilon() : std::numeric_limits<float>::epsilon();
  return static_cast<double>(std::max(m, n)) * eps;
}

PinvFactors pinv_factors(const at::Tensor& m, double rtol) {
  auto svd = at::linalg_svd(m.to(at::kDouble), /*full_matrices=*/false);
  auto u = std::get<0>(svd), s = std::get<1>(svd), vh = std::get<2>(svd);
  // S is descending; s[0] is sigma_max (0 for a zero matrix, then nothing is kept).
  auto cutoff = s.narrow(0, 0, 1) * rtol;
  auto keep = (s > cutoff) & (s > 0);
  auto inv = at::where(keep, s.reciprocal(), at::zeros_like(s));
  inv = at::where(at::isfinite(inv), inv, at::zeros_like(inv));
  return {u, inv, vh.transpose(0, 1)};
}

at::Tensor gram_pinv_eigh(const at::Tensor& g, double rtol) {
  auto eig = at::linalg_eigh(g.to(at::kDouble));
  auto lambda = std::get<0>(eig), q = std::get<1>(eig);  // ascending
  auto cutoff = lambda.narrow(0, lambda.size(0) - 1, 1) * (rtol * rtol);
  auto keep = (lambda > cutoff) & (lambda > 0);
  auto inv = at::where(keep, lambda.reciprocal(), at::zeros_like(lambda));
  inv = at::where(at::isfinite(inv), inv, at::zeros_like(inv));
  return at::matmul(q * inv.unsqueeze(0), q.transpose(0, 1));
}

CertifiedInverse gram_inverse_certified(const at::Tensor& g_in, double rtol) {
  auto g = g_in.to(at::kDouble);
  auto chol = at::linalg_cholesky_ex(g);
  auto l = std::get<0>(chol), info = std::get<1>(chol);
  // L^-1 by a triangular solve (no error checks, unlike cholesky_inverse): a
  // failed factorisation gives non-finite values, which the proof rejects.
  auto eye = at::eye(g.size(0), g.options());
  auto l_inv = at::linalg_solve_triangular(l, eye, /*upper=*/false);
  auto inverse = at::matmul(l_inv.transpose(0, 1), l_inv);
  // trace(g^4) = ||g^2||_F^2 bounds lambda_max^4 from above; trace(g^-4) bounds lambda_min^-4.
  auto g2 = at::matmul(g, g);
  auto i2 = at::matmul(inverse, inverse);
  auto lambda_max_ub = g2.pow(2).sum().pow(0.25);
  auto lambda_min_lb = i2.pow(2).sum().pow(-0.25);
  auto certified = (info == 0) & at::isfinite(lambda_min_lb) & at::isfinite(lambda_max_ub) &
                   (lambda_min_lb > lambda_max_ub * (1.01 * rtol * rtol)) & at::isfinite(inverse).all();
  return {inverse, certified};
}

}  // namespace cur4llm::compress::detail
