#pragma once
/// Linear layers whose weights stay packed in memory (quant/packed_quant.h):
/// a model loaded with LoadOptions::keep_packed holds its int4/int8 weights,
/// dense or factorized, as codes, scales and zero points, so its memory is the
/// packed size. On CUDA, for up to 16 tokens (decoding) with 4 or 8 bits, a
/// product is one kernel that reads the codes once and rebuilds each weight in
/// float; otherwise the weight is dequantized for the call, exactly as a
/// load-time dequantization would (the CPU's reference path, prefill on the GPU).

#include <cur4llm/model/linear.h>
#include <cur4llm/model/slot_registry.h>
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
  /// Packed slots of one format, width and device (and one set of input scales), all with a
  /// bias or none: their codes, scales and zero points stacked row-wise.
  std::shared_ptr<model::LinearSlot> stacked_with(const std::vector<const model::LinearSlot*>& others) const override;
  std::shared_ptr<model::LinearSlot> rows(int64_t begin, int64_t count) const override;
  /// int4 on the tensor cores (a few tokens on CUDA): the product and the residual's
  /// addition, or the SiLU gate of a stacked gate/up weight, in one launch; the input's norm
  /// too, with util::Kernel::norm_in_product. On the CPU, silu_gate and the normed forms are
  /// the reference (the norm, the product, then silu(gate) * up, as the separate steps).
  at::Tensor forward_add(at::Tensor residual, const at::Tensor& x) const override;
  at::Tensor silu_gate(const at::Tensor& x) const override;
  at::Tensor forward_normed(const at::Tensor& x, const model::InputNorm& norm) const override;
  at::Tensor silu_gate_normed(const at::Tensor& x, const model::InputNorm& norm) const override;

  const QuantizedTensor& packed() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  /// Bytes held by the packed weight (codes, scales, zeros).
  int64_t packed_bytes() const { return weight_.nbytes(); }

 private:
  at::Tensor normed(const at::Tensor& x, const model::InputNorm& norm, bool gate) const;

  QuantizedTensor weight_;
  at::Tensor bias_;
  int64_t group_ = 0;  // columns per group
};

/// A factorized layer (CUR, SVD) whose factors stay packed: y = F_n(... F_1(x)),
/// each factor a PackedLinear (packed) or a DenseLinear, the last one with the
/// bias. kind() is the factorized kind it computes, state() that kind's
/// tensors (factors dequantized), so a kept model is written back as the same
/// repository's model.
class PackedFactors final : public model::LinearSlot {
 public:
  struct Factor {
    std::string name;        ///< the factor's tensor in state() ("R", "BLinear.weight")
    model::LinearPtr layer;  ///< PackedLinear or DenseLinear; only the last may have a bias
  };
  /// `factors` input side first, their shapes chained; `bias_name` names the
  /// last factor's bias in state(); `extra` tensors (CUR's indices) go to
  /// state() as they are; `fields` are the kind's fields (slot_registry.h).
  /// std::invalid_argument if the shapes do not chain or a bias is misplaced.
  PackedFactors(std::string kind, model::SlotFields fields, std::vector<Factor> factors, std::string bias_name,
                std::vector<std::pair<std::string, at::Tensor>> extra = {});

  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return factors_.front().layer->in_features(); }
  int64_t out_features() const override { return factors_.back().layer->out_features(); }
  int64_t weight_params() const override;
  std::string kind() const override { return kind_; }
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  at::Tensor reconstruct_weight() const override;

  const model::SlotFields& fields() const { return fields_; }
  const std::vector<Factor>& factors() const { return factors_; }
  /// Bytes the factors hold (packed ones as codes, scales and zeros), bias excluded.
  int64_t packed_bytes() const;

 private:
  std::string kind_;
  model::SlotFields fields_;
  std::vector<Factor> factors_;
  std::string bias_name_;
  std::vector<std::pair<std::string, at::Tensor>> extra_;
};

/// The slot packed in memory at `format` (round to nearest; not activation-aware):
/// a dense slot as a PackedLinear, a "cur" or "svd" slot as PackedFactors of its
/// quantized factors (with the slot's fields and other stored tensors), on the
/// slot's device. What a
/// repository quantized at `format` and loaded with keep_packed holds, without
/// writing it. std::invalid_argument for other kinds or an activation-aware format.
model::LinearPtr pack_slot(const model::LinearSlot& slot, const QuantFormat& format);

}  // namespace cur4llm::quant
