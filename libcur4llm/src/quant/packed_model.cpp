#include <cur4llm/quant/packed_model.h>

#include <cur4llm/quant/quantize.h>
#include <cur4llm/model/causal_lm.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

namespace cur4llm::quant {

PackedWeights quantize_model_packed(model::CausalLM& lm, const QuantFormat& format) {
  detail::check_quant_format("quantize_model_packed", format);
  detail::refuse_activation_aware("quantize_model_packed", format);
  c10::InferenceMode guard;
  const auto tensors = decoder_weight_tensors(lm);
  // Every tensor is checked before any is changed.
  for (const auto& [name, t] : tensors) detail::check_quantizable(name, t, format);
  PackedWeights out;
  for (auto& [name, t] : tensors) {
    QuantizedTensor q = quantize_tensor(t, format);
    auto tensor = t;  // shares the slot's storage
    tensor.copy_(dequantize_tensor(q, t.scalar_type()));
    q.qweight = q.qweight.cpu();
    q.scales = q.scales.cpu();
    q.zeros = q.zeros.cpu();
    out.emplace(name, std::move(q));
  }
  return out;
}

int64_t unpacked_bytes(const PackedWeights& packed, c10::ScalarType dtype) {
  int64_t total = 0;
  for (const auto& [name, q] : packed) total += q.rows * q.cols * static_cast<int64_t>(c10::elementSize(dtype));
  return total;
}

int64_t packed_bytes(const PackedWeights& packed) {
  int64_t total = 0;
  for (const auto& [name, q] : packed) total += q.nbytes();
  return total;
}

}  // namespace cur4llm::quant
