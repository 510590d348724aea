#pragma once
// Checks shared by the quant sources (not installed).

#include <cur4llm/quant/packed_quant.h>

#include <ATen/core/Tensor.h>

#include <string>

namespace cur4llm::quant::detail {

// std::invalid_argument naming `who` unless 2 <= bits <= 8 and group_size >= 0.
void check_quant_format(const std::string& who, const QuantFormat& format);

// std::invalid_argument naming `who` unless quantize_tensor(w, format, input_scales)
// would succeed (a valid format, finite weights, scales within fp16's range).
void check_quantizable(const std::string& who, const at::Tensor& w, const QuantFormat& format,
                       const at::Tensor& input_scales = {});

// std::invalid_argument naming `who` for an activation-aware format, which needs
// calibration activations (quant/awq.h).
void refuse_activation_aware(const std::string& who, const QuantFormat& format);

}  // namespace cur4llm::quant::detail
