#pragma once
/// Activation-aware weight quantization (AWQ, Lin et al. 2023) with packed
/// storage: per input channel c of a weight W, a scale s_c = mean|x_c|^a
/// (normalised so that max(s) * min(s) = 1) is searched over a grid of
/// exponents a in [0, 1], each candidate judged by the output error
/// ||X Q(W diag(s)) diag(1/s)^T - X W^T||^2 on the calibration inputs X of that
/// weight. The chosen 1/s is stored with the codes as the tensor's input_scales
/// (packed_quant.h). a = 0 is plain RTN, so the chosen error never exceeds RTN's.
///
/// Applied to the Linear slots inside the decoder layers (lm_head and OPT's
/// projections excluded), and inside a decomposed layer to each factor on its
/// own inputs: dense W <- x; svd B <- x, A <- B x; cur R <- x, U <- R x,
/// C <- U R x (folded: CU <- R x); skeleton_row W_I <- x, X_rest <- W_I x;
/// skeleton_col Z_rest <- the other columns of x, W_J <- x_J + Z_rest x_rest.
///
///   auto samples = pipeline::calibration_samples(*lm, *tok, options);
///   auto r = quant::awq_quantize_model(*lm, samples, quant::parse_quant_format("awq_int4"));
///   // lm computes with the dequantized weights; r.packed goes to repo::write_acur_repo

#include <cur4llm/quant/packed_model.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {
class LinearSlot;
}

namespace cur4llm::quant {

/// Options of the AWQ scale search.
struct AWQOptions {
  int64_t grid = 20;            ///< exponents a = 0, 1/grid, 2/grid, ..., 1 are tried
  int64_t max_rows = 4096;      ///< about this many calibration rows (token positions) kept per layer input
  bool show_progress = false;   ///< a progress line over the decoder layers on stderr
};

/// The search's outcome for one weight.
struct AWQChoice {
  at::Tensor input_scales;  ///< 1/s as fp16 [cols] (all ones for a = 0)
  double alpha = 0;         ///< the chosen exponent a
  double error = 0;         ///< mean squared output error with the chosen scales
  double rtn_error = 0;     ///< the same for a = 0 (plain RTN of the format)
};

/// Searches the scales of one 2-d weight `w` [out, cols] given its inputs `x`
/// [rows, cols] (any floating dtype; computed in fp32 on w's device).
/// std::invalid_argument for a format that is not activation-aware, mismatched
/// shapes, grid < 1, or a weight that cannot be quantized.
AWQChoice awq_search(const at::Tensor& w, const at::Tensor& x, const QuantFormat& format,
                     const AWQOptions& options = {});

/// The input of every 2-d floating tensor of `slot`'s state() given the slot's
/// input `x` [rows, in] (see the file comment), by state name. std::invalid_argument
/// naming the kind for a slot kind whose factors are not known here.
std::vector<std::pair<std::string, at::Tensor>> factor_inputs(const model::LinearSlot& slot, const at::Tensor& x);

/// What awq_quantize_model did.
struct AWQResult {
  PackedWeights packed;                      ///< the packed tensors by full name (CPU)
  std::map<std::string, AWQChoice> choices;  ///< the search's outcome by full tensor name
};

/// Quantizes every tensor that quantize_model_packed quantizes, in the
/// activation-aware `format` (awq_int8, awq_int4), with scales searched on the
/// inputs the calibration `samples` (token ids) produce in the model as it is,
/// decoder layer by decoder layer; overwrites each tensor in place with its
/// dequantized value. Every tensor is checked first (as quantize_model_packed
/// does): nothing changes if one fails. std::invalid_argument for a format
/// that is not activation-aware, no samples, or a slot kind factor_inputs does
/// not know.
AWQResult awq_quantize_model(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                             const QuantFormat& format, const AWQOptions& options = {});

}  // namespace cur4llm::quant
