// PackedLinear: a dense Linear layer computed from its packed int4/int8 weight.
#include <cur4llm/quant/packed_linear.h>

#include "../fused/fused_ops.h"

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <stdexcept>

namespace cur4llm::quant {

PackedLinear::PackedLinear(QuantizedTensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  const int64_t rows = weight_.rows, cols = weight_.cols;
  weight_ = make_quantized_tensor("PackedLinear weight", weight_.qweight, weight_.scales, weight_.zeros, rows, cols,
                                  weight_.format, weight_.input_scales);  // checks shapes and dtypes
  group_ = weight_.format.group_size > 0 && weight_.format.group_size < cols ? weight_.format.group_size : cols;
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != rows)) {
    throw std::invalid_argument(fmt::format("PackedLinear: bias of {} values for {} output features", bias_.numel(), rows));
  }
}

bool PackedLinear::fused_for(const at::Tensor& x) const {
  return fused::packed_linear_applies(x, weight_.qweight, weight_.scales, weight_.zeros, weight_.format.bits,
                                      weight_.cols, group_, bias_, weight_.input_scales);
}

at::Tensor PackedLinear::forward(const at::Tensor& x) const {
  if (fused_for(x)) {
    return fused::packed_linear(x, weight_.qweight, weight_.scales, weight_.zeros, weight_.format.bits, weight_.cols,
                                group_, bias_, weight_.input_scales);
  }
  return at::linear(x, dequantize_tensor(weight_, x.scalar_type()), bias_);
}

std::vector<std::pair<std::string, at::Tensor>> PackedLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"weight", reconstruct_weight()}};
  if (bias_.defined()) out.emplace_back("bias", bias_);
  return out;
}

at::Tensor PackedLinear::reconstruct_weight() const {
  return dequantize_tensor(weight_, bias_.defined() ? bias_.scalar_type() : at::kFloat);
}

}  // namespace cur4llm::quant
