#pragma once
/// Attention value-output compression (modular decomposition, MoDeGPT's
/// type-III module): per KV group, the value head width d is reduced to
/// dv < d by a truncated SVD of the whitened product of the group's o_proj
/// blocks and its v_proj rows,
///
///   M_j = [W_o^i ; ... for the query heads i of group j] W_v^j L,   L L^T = G (v_proj's input Gram),
///   M_j ~= U S V^T (top dv):  W_o^i' = (U S)[rows of head i],  W_v^j' = V^T L^-1,
///
/// the best rank-dv approximation of every head's W_o^i W_v^j in the output
/// error on the calibration inputs. A value bias is folded into o_proj's bias
/// (softmax rows sum to 1, so it reaches the output as W_o^i b_v^j). The
/// result is smaller dense v_proj ([kv * dv, h]) and o_proj ([h, heads * dv]).

#include <cur4llm/search/compression_plan.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::modules {

/// The new weights of a value-output pair.
struct VoFactors {
  at::Tensor value_weight;   ///< [kv * dv, h] float64
  at::Tensor output_weight;  ///< [h, heads * dv] float64
  at::Tensor output_bias;    ///< [h] float64 with the value bias folded in; undefined if neither had one
};

/// The factors above for `value_weight` [kv * d, h] (bias `value_bias` [kv * d] or undefined),
/// `output_weight` [h, heads * d] (bias or undefined) and the Gram matrix `gram` [h, h] of
/// v_proj's input. std::invalid_argument for shapes that disagree, dv outside [1, d], or a
/// value bias without an output bias to fold it into.
VoFactors vo_svd(const at::Tensor& value_weight, const at::Tensor& value_bias, const at::Tensor& output_weight,
                 const at::Tensor& output_bias, const at::Tensor& gram, int64_t heads, int64_t kv_heads, int64_t dv);

/// One attention's value-output pair.
struct VoModule {
  int64_t layer = -1;
  std::string value;       ///< v_proj
  std::string output;      ///< o_proj (or out_proj)
  int64_t hidden = 0;      ///< model width h
  int64_t heads = 0;       ///< query heads
  int64_t kv_heads = 0;    ///< value heads (groups)
  int64_t width = 0;       ///< the base head_dim d
  std::string name() const;  ///< e.g. "model.layers.3.self_attn.vo"
};

/// Every value-output pair of `lm`, in layer order.
std::vector<VoModule> vo_modules(const model::CausalLM& lm);
/// Weights the pair stores with value heads of width dv: h * dv * (kv + heads).
int64_t vo_weight_params(const VoModule& module, int64_t dv);
/// The dense pair's weights: vo_weight_params(module, d).
int64_t vo_dense_params(const VoModule& module);

/// Narrows the value heads of `module` to dv (dv == d leaves the weights as
/// they are) with vo_svd on `gram` (the mean Gram matrix of v_proj's input);
/// both Linears must be dense and not yet narrowed. Returns their plan rows
/// (method "vo_svd", rank dv, nominal ratio dv / d).
std::vector<search::PlannedLayer> compress_vo(model::CausalLM& lm, const VoModule& module, int64_t dv,
                                              const at::Tensor& gram);

}  // namespace cur4llm::modules
