#include "common.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <stdexcept>

namespace cur4llm::compress::detail {

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

}  // namespace cur4llm::compress::detail
