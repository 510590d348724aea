#pragma once
/// Round-to-nearest weight quantization as the reference applies it after
/// decomposition (docs/protocol.md, "Weight quantization"), and the same
/// applied with a storage format's groups and fp16 scales (packed_quant.h).

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::quant {

struct QuantFormat;

/// Quantizes and dequantizes a 2-d weight per output channel (row),
/// asymmetric min-max with `bits` bits: xmin = min(row min, 0), xmax =
/// max(row max, 0) (both zero: -1 and +1), scale = (xmax - xmin) / (2^bits - 1),
/// zero = round(-xmin / scale), q = clamp(round(w / scale) + zero, 0, 2^bits - 1),
/// w' = scale * (q - zero). Computed in fp32, returned in w's dtype.
at::Tensor rtn_fake_quantize(const at::Tensor& w, int bits);

/// The tensors weight quantization applies to: every 2-d floating tensor
/// stored by the Linear slots inside the decoder layers (the factors of
/// decomposed layers included; lm_head and OPT's projections excluded), by full
/// name ("<module>.<state name>"), sharing the slots' storage.
std::vector<std::pair<std::string, at::Tensor>> decoder_weight_tensors(const model::CausalLM& lm);

/// Applies rtn_fake_quantize in place to every 2-d floating tensor stored by the
/// Linear slots inside the decoder layers (the factors of decomposed layers
/// included; lm_head and OPT's projections excluded). Returns the number of
/// tensors quantized.
int64_t rtn_quantize_model(model::CausalLM& lm, int bits);

/// As above with fake_quantize(w, format) (packed_quant.h): the weights become
/// exactly what a reader of the packed format rebuilds (groups, fp16 scales).
/// Every tensor is checked first: a bad format, non-finite weights or a scale
/// beyond fp16 throw std::invalid_argument naming the tensor, before anything changes.
int64_t rtn_quantize_model(model::CausalLM& lm, const QuantFormat& format);

}  // namespace cur4llm::quant
