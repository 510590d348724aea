#pragma once
/// Scale optimisation, the CUR counterpart of the reference's
/// binary_search_truncation_rank_optimize_scale: the search allocates ratios as
/// usual, and the chosen layers become GradCURLinear, whose scale vectors are
/// trainable leaves, so that an optimiser can lower the calibration loss by
/// gradient descent on the scales before the layers are frozen into CURLinear.
///
///   auto grad = cur4llm::compress::make_compressor("grad_cur", options);
///   auto result = cur4llm::search::search_param_ratio(table, sizes, 0.9);   // or search_perplexity
///   auto plan = cur4llm::compress::apply_allocation(lm, result.allocation, *grad, scale);
///   for (auto& s : cur4llm::compress::trainable_scales(lm)) { /* optimiser over s */ }
///   cur4llm::compress::freeze_scales(lm);   // GradCURLinear -> CURLinear

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/cur_linear.h>

#include <ATen/core/Tensor.h>

#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::compress {

/// The "grad_cur" Compressor: GradCURLinear layers (rows and columns chosen as
/// CURLinear chooses them; the scale a trainable leaf). It stores what the
/// equivalent CURLinear stores.
class GradCURCompressor final : public Compressor {
 public:
  explicit GradCURCompressor(CUROptions options = {});
  std::string name() const override { return "grad_cur"; }
  model::LinearPtr compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                            double param_ratio) const override;
  /// No shared decomposition: each ratio is built on demand.
  std::unique_ptr<PreparedLayer> prepare(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         const std::vector<double>& ratios) const override;
  int64_t rank_for(int64_t out_features, int64_t in_features, double param_ratio) const override;
  int64_t stored_params(int64_t out_features, int64_t in_features, double param_ratio) const override;

 private:
  CUROptions options_;
};

/// The scale leaves (requires_grad) of every GradCURLinear slot, in model order.
std::vector<at::Tensor> trainable_scales(const model::CausalLM& lm);

/// Replaces every GradCURLinear slot by the CURLinear of its current scale, in
/// the model's dtype. Returns the number of layers frozen.
int64_t freeze_scales(model::CausalLM& lm);

}  // namespace cur4llm::compress
