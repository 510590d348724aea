#pragma once
/// A differentiable CUR layer for optimising the activation scale: the rows
/// and columns stay fixed, C, U and R are recomputed from W diag(s) on every
/// forward, so autograd gives d loss / d s.

#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/model/linear.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// y = x Ŵ(s)^T + b with Ŵ(s) = C_s pinv(C_s) (W S) pinv(R_s) W[I, :],
/// C_s = (W S)[:, J], R_s = (W S)[I, :]; I and J chosen once, as CURLinear
/// chooses them, at the initial scale. Works in fp32 (fp64 if the weight is
/// fp64); builds the out x in matrix on each forward (training only).
class GradCURLinear final : public model::LinearSlot {
 public:
  /// Selection as CURLinear::from_linear with `options` (scale undefined: ones).
  static std::shared_ptr<GradCURLinear> from_linear(const at::Tensor& weight, const at::Tensor& bias,
                                                    const CUROptions& options);
  /// `scale` is copied into a new leaf tensor with requires_grad.
  GradCURLinear(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale, at::Tensor row_indices,
                at::Tensor col_indices, CUROptions options);

  /// Differentiable in scale(); output in x's dtype.
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  /// What the equivalent CURLinear stores.
  int64_t weight_params() const override;
  std::string kind() const override { return "grad_cur"; }
  /// "weight", "bias" (if any), "scale", "row_indices", "col_indices".
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  /// Ŵ(s), differentiable in scale(), in the work dtype.
  at::Tensor reconstruct_weight() const override;

  /// The leaf an optimiser updates (requires_grad).
  at::Tensor& scale() { return scale_; }
  const at::Tensor& scale() const { return scale_; }
  const at::Tensor& row_indices() const { return row_indices_; }
  const at::Tensor& col_indices() const { return col_indices_; }
  /// A CURLinear with the current scale and the same rows and columns, in `dtype`.
  std::shared_ptr<CURLinear> to_cur(at::ScalarType dtype) const;

 private:
  at::Tensor weight_, bias_, scale_, row_indices_, col_indices_;
  CUROptions options_;
};

}  // namespace cur4llm::compress
