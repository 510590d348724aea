#pragma once
/// A Linear layer whose weight stays packed in memory (quant/packed_quant.h):
/// a model loaded with LoadOptions::keep_packed holds its int4/int8 weights as
/// codes, scales and zero points, so its memory is the packed size. Each
/// product rebuilds the weight exactly as a load-time dequantization would:
/// on CUDA, for up to 8 tokens (decoding) with 4 or 8 bits, inside one kernel
/// that reads the codes once; otherwise by dequantizing the weight for the
/// call (the CPU's reference path, prefill on the GPU, activation-aware
/// formats).

#include <cur4llm/model/linear.h>
#include <cur4llm/quant/packed_quant.h>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::quant {

/// y = x deq(W)^T + b with W kept packed; kind() is "dense" (it computes what
/// the dequantized DenseLinear computes).
class PackedLinear final : public model::LinearSlot {
 public:
  /// `weight` on the device the model runs on; `bias` [out] or undefined.
  /// std::invalid_argument if the packed tensors do not fit rows x cols.
  PackedLinear(QuantizedTensor weight, at::Tensor bias);

  at::Tensor forward(const at::Tensor& x) const override;
  /// Whether forward(x) takes the fused CUDA kernel (else it dequantizes for the call).
  bool fused_for(const at::Tensor& x) const;
  int64_t in_features() const override { return weight_.cols; }
  int64_t out_features() const override { return weight_.rows; }
  int64_t weight_params() const override { return weight_.rows * weight_.cols; }
  std::string kind() const override { return "dense"; }
  /// {"weight": dequantized (in the bias's dtype, else float32), "bias"}.
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  at::Tensor reconstruct_weight() const override;

  const QuantizedTensor& packed() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  /// Bytes held by the packed weight (codes, scales, zeros).
  int64_t packed_bytes() const { return weight_.nbytes(); }

 private:
  QuantizedTensor weight_;
  at::Tensor bias_;
  int64_t group_ = 0;  // columns per group
};

}  // namespace cur4llm::quant
