#pragma once
/// Attention query-key compression by column-row selection (modular
/// decomposition, MoDeGPT's type-II module): the query and key head width d
/// becomes dk < d by keeping the same dk dimensions of a KV head's keys and of
/// all its query heads (rows of q_proj and k_proj), so that each kept score is
/// the original score restricted to those dimensions. Rotary models keep
/// rotary pairs (dimensions p and p + d/2) together, so the kept dimensions are
/// rotated by their own frequencies; the attention scale stays 1/sqrt(d).
///
/// Selection: a unit u (one dimension, or one rotary pair) of KV head j scores
///
///   s_j(u) = sum over the query heads i of group j of  sqrt(E||q_i,u||^2) * sqrt(E||k_j,u||^2),
///
/// with E||q_i,u||^2 = sum over p in u of (W_q[p] G W_q[p]^T + b_q[p]^2) on the Gram
/// matrix G of the attention input. sqrt(E||q_u||^2 E||k_u||^2) is the RMS, over
/// independent query and key tokens, of the largest score contribution of u
/// (for a pair: at any rotation), so the k highest-scoring units are the ones
/// whose dropping has the smallest sum of these bounds (qk_unit_scores).
/// Without rotary and with one query head per KV head, the mean-square score
/// error of a kept set D' (dropped set D) on token pairs x, y of the calibration
/// distribution is exactly sum over p, p' in D of Gq[p, p'] Gk[p, p'] (the tests check it).

#include <cur4llm/search/compression_plan.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::modules {

/// One attention's query-key pair.
struct QkModule {
  int64_t layer = -1;
  std::string query;       ///< q_proj
  std::string key;         ///< k_proj
  int64_t hidden = 0;      ///< model width h (the input of both)
  int64_t heads = 0;       ///< query heads
  int64_t kv_heads = 0;    ///< key heads (groups)
  int64_t width = 0;       ///< the base head_dim d
  bool rotary = false;     ///< LLaMA family: dimensions are kept in rotary pairs
  std::string name() const;  ///< e.g. "model.layers.3.self_attn.qk"
  /// The smallest step of kept widths: 2 with rotary (a pair), else 1.
  int64_t unit() const { return rotary ? 2 : 1; }
};

/// Every query-key pair of `lm`, in layer order.
std::vector<QkModule> qk_modules(const model::CausalLM& lm);
/// Weights the pair stores with heads of width dk: h * dk * (heads + kv).
int64_t qk_weight_params(const QkModule& module, int64_t dk);
/// The dense pair's weights.
int64_t qk_dense_params(const QkModule& module);

/// s_j(u) above, float64 [kv_heads, units] (units = d, or d / 2 pairs: pair u is
/// dimensions u and u + d/2). `query_weight` [heads * d, h], `key_weight` [kv * d, h],
/// biases [.] or undefined, `gram` [h, h].
at::Tensor qk_unit_scores(const at::Tensor& query_weight, const at::Tensor& query_bias, const at::Tensor& key_weight,
                          const at::Tensor& key_bias, const at::Tensor& gram, int64_t heads, int64_t kv_heads,
                          bool rotary);

/// The kept dimensions of each KV head (LayerShapes::qk_dims, [kv * dk]) for the
/// highest scores of `scores` [kv, units]: ascending; with rotary the kept pairs'
/// first halves, then the same + d/2. dk must be a multiple of the unit, in [unit, d].
std::vector<int64_t> select_qk_dims(const at::Tensor& scores, int64_t head_dim, int64_t dk, bool rotary);

/// Narrows the queries and keys of `module` to dk (dk == d leaves them as they
/// are) on `gram` (the mean Gram matrix of q_proj's input): rows of q_proj and
/// k_proj (and their biases), LayerShapes::qk_head_dim and qk_dims set. Both
/// Linears must be dense and not yet narrowed. Returns their plan rows
/// (method "qk_cr", rank dk, nominal ratio dk / d).
std::vector<search::PlannedLayer> compress_qk(model::CausalLM& lm, const QkModule& module, int64_t dk,
                                              const at::Tensor& gram);

}  // namespace cur4llm::modules
