#pragma once
/// Packed weight quantization of a whole model (compress/packed_quant.h holds
/// the storage format of one tensor): what `quantize`, `build_acur_repo
/// --weight_quant` and `acur --weight_quant rtn_int4` apply.

#include <cur4llm/quant/packed_quant.h>

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::quant {

/// Packed tensors by full tensor name ("model.layers.0.mlp.up_proj.weight",
/// "model.layers.0.self_attn.q_proj.C").
using PackedWeights = std::map<std::string, QuantizedTensor>;

/// Quantizes in `format` every tensor that rtn_quantize_model quantizes (the
/// 2-d floating tensors of the Linear slots inside the decoder layers, factors
/// of decomposed layers included; lm_head and OPT's projections excluded) and
/// overwrites each in place with its dequantized value, so that the model
/// computes exactly what a checkpoint holding the packed tensors computes once
/// loaded. Returns the packed tensors (on the CPU). Every tensor is checked
/// first (rtn_quantize_model's checks): nothing changes if one fails.
PackedWeights quantize_model_packed(model::CausalLM& lm, const QuantFormat& format);

/// Bytes of the tensors in `packed` unpacked, stored in `dtype`.
int64_t unpacked_bytes(const PackedWeights& packed, c10::ScalarType dtype);
/// Bytes of the packed tensors (codes, scales and zeros).
int64_t packed_bytes(const PackedWeights& packed);

}  // namespace cur4llm::quant
