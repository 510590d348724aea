#include <cur4llm/model/linear.h>

#include "fused/fused_ops.h"

#include <cur4llm/util/fused_kernels.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <stdexcept>

namespace cur4llm::model {

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  if (!weight_.defined() || weight_.dim() != 2) throw std::invalid_argument("DenseLinear: weight must be a 2-d tensor");
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != weight_.size(0))) {
    throw std::invalid_argument(
        fmt::format("DenseLinear: bias of {} values does not match {} outputs", bias_.numel(), weight_.size(0)));
  }
}

namespace {

// The tensor-core kernel with `extras` in its launch where dense layers take it (CUDA,
// util::Kernel::dense_mma); else undefined.
at::Tensor dense_mma(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     const fused::MmaExtras& extras) {
  if (!x.is_cuda() || !util::kernel_enabled(util::Kernel::dense_mma)) return {};
  return fused::dense_linear_mma(x, weight, bias, extras);
}

}  // namespace

at::Tensor DenseLinear::forward(const at::Tensor& x) const {
  auto y = dense_mma(x, weight_, bias_, {});
  return y.defined() ? y : at::linear(x, weight_, bias_);
}
int64_t DenseLinear::in_features() const { return weight_.size(1); }
int64_t DenseLinear::out_features() const { return weight_.size(0); }
int64_t DenseLinear::weight_params() const { return weight_.numel(); }

std::shared_ptr<LinearSlot> LinearSlot::stacked_with(const std::vector<const LinearSlot*>&) const { return nullptr; }
std::shared_ptr<LinearSlot> LinearSlot::rows(int64_t, int64_t) const { return nullptr; }
at::Tensor LinearSlot::forward_add(at::Tensor residual, const at::Tensor& x) const { return residual + forward(x); }
at::Tensor LinearSlot::silu_gate(const at::Tensor&) const { return {}; }
at::Tensor LinearSlot::forward_normed(const at::Tensor&, const InputNorm&) const { return {}; }
at::Tensor LinearSlot::silu_gate_normed(const at::Tensor&, const InputNorm&) const { return {}; }

at::Tensor InputNorm::apply(const at::Tensor& x) const {
  const auto xf = x.to(at::kFloat);
  const auto variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(variance + eps)).to(x.scalar_type());
}

bool sole_owner(const at::Tensor& t) { return t.defined() && t.use_count() == 1 && t.storage().use_count() == 1; }

at::Tensor DenseLinear::forward_add(at::Tensor residual, const at::Tensor& x) const {
  // The sum is rounded to the dtype once instead of twice (at most one unit apart).
  if (sole_owner(residual)) {
    auto y = dense_mma(x, weight_, bias_, fused::MmaExtras::into(residual));
    if (y.defined()) return y;
  }
  if (!bias_.defined() && x.is_cuda() && !x.requires_grad() && !residual.requires_grad() &&
      !weight_.requires_grad() && sole_owner(residual) && residual.is_contiguous() && x.size(-1) == weight_.size(1) &&
      residual.size(-1) == weight_.size(0) && residual.scalar_type() == x.scalar_type() &&
      residual.numel() / residual.size(-1) == x.numel() / x.size(-1)) {
    residual.view({-1, residual.size(-1)}).addmm_(x.reshape({-1, x.size(-1)}), weight_.t());
    return residual;
  }
  return residual + forward(x);
}

at::Tensor DenseLinear::silu_gate(const at::Tensor& x) const {
  return dense_mma(x, weight_, bias_, fused::MmaExtras::gate());
}

at::Tensor DenseLinear::forward_normed(const at::Tensor& x, const InputNorm& norm) const {
  return dense_mma(x, weight_, bias_, fused::MmaExtras::normed(norm.weight, norm.eps, false));
}

at::Tensor DenseLinear::silu_gate_normed(const at::Tensor& x, const InputNorm& norm) const {
  return dense_mma(x, weight_, bias_, fused::MmaExtras::normed(norm.weight, norm.eps, true));
}

std::shared_ptr<LinearSlot> DenseLinear::stacked_with(const std::vector<const LinearSlot*>& others) const {
  std::vector<at::Tensor> weights{weight_}, biases;
  if (bias_.defined()) biases.push_back(bias_);
  for (const auto* other : others) {
    const auto* d = dynamic_cast<const DenseLinear*>(other);
    if (!d || d->weight_.scalar_type() != weight_.scalar_type() || d->weight_.device() != weight_.device() ||
        d->weight_.size(1) != weight_.size(1) || d->bias_.defined() != bias_.defined() ||
        (bias_.defined() && d->bias_.scalar_type() != bias_.scalar_type()) || d->weight_.requires_grad()) {
      return nullptr;
    }
    weights.push_back(d->weight_);
    if (d->bias_.defined()) biases.push_back(d->bias_);
  }
  if (weight_.requires_grad()) return nullptr;
  return std::make_shared<DenseLinear>(at::cat(weights, 0), biases.empty() ? at::Tensor() : at::cat(biases, 0));
}

std::shared_ptr<LinearSlot> DenseLinear::rows(int64_t begin, int64_t count) const {
  return std::make_shared<DenseLinear>(weight_.narrow(0, begin, count),
                                       bias_.defined() ? bias_.narrow(0, begin, count) : at::Tensor());
}

std::vector<std::pair<std::string, at::Tensor>> DenseLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"weight", weight_}};
  if (bias_.defined()) out.emplace_back("bias", bias_);
  return out;
}

}  // namespace cur4llm::model
