#pragma once
/// MLP compression by Nyström approximation of the intermediate activation
/// (modular decomposition, MoDeGPT's type-I module): keep k of the f hidden
/// channels of an MLP, i.e. k rows of up/gate (LLaMA) or fc1 (OPT), and refit
/// down_proj / fc2 on the kept channels by ridge least squares on the Gram
/// matrix G = E[a a^T] of the intermediate activation a (down_proj's input):
///
///   W_down' = W_down G[:, S] (G[S, S] + lambda I)^-1,   lambda = ridge * trace(G) / f.
///
/// The result is smaller dense layers (h x k and k x h), installed with
/// CausalLM::reshape_layer. Numerics in float64.
///
///   auto S = modules::select_channels(G, w_down, 96, {});
///   auto w = modules::nystrom_refit(w_down, G, S, modules::ridge_lambda(G, 1e-4));

#include <cur4llm/search/compression_plan.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::modules {

/// How the kept channels are chosen on G.
enum class ChannelSelection {
  RidgeLeverage,  ///< the k largest ridge leverage scores diag(G (G + lambda I)^-1) (the paper's choice)
  Greedy,         ///< pivoted Cholesky of G, each pivot the one that most lowers the refit's output error
};

/// "ridge_leverage" | "greedy" -> ChannelSelection; std::invalid_argument naming the valid values.
ChannelSelection parse_channel_selection(const std::string& name);
std::string to_string(ChannelSelection selection);

/// Options of the MLP Nyström method.
struct NystromOptions {
  ChannelSelection selection = ChannelSelection::Greedy;  ///< how channels are chosen
  double ridge = 1e-4;       ///< lambda relative to the mean diagonal of G, >= 0
  int64_t channel_align = 1; ///< kept channel counts are multiples of this (up to f)
};

/// lambda = ridge * trace(G) / f for a Gram matrix G [f, f].
double ridge_lambda(const at::Tensor& gram, double ridge);

/// diag(G (G + lambda I)^-1), float64 [f]; lambda > 0.
at::Tensor ridge_leverage_scores(const at::Tensor& gram, double lambda);

/// k channel indices (int64 [k] on the CPU, ascending) of the intermediate
/// activation whose Gram matrix is `gram` [f, f], for the output layer
/// `down_weight` [h, f]. std::invalid_argument for shapes that disagree or k
/// outside [1, f].
at::Tensor select_channels(const at::Tensor& gram, const at::Tensor& down_weight, int64_t k,
                           const NystromOptions& options = {});

/// W_down G[:, S] (G[S, S] + lambda I)^-1, float64 [h, k]: the least-squares
/// (lambda = 0) or ridge fit of W_down a from a[S] over the activations of G.
at::Tensor nystrom_refit(const at::Tensor& down_weight, const at::Tensor& gram, const at::Tensor& channels,
                         double lambda);

/// One MLP of a decoder layer: the Linears that produce the intermediate
/// channels (gate and up, or fc1) and the one that consumes them (down or fc2).
struct MlpModule {
  int64_t layer = -1;
  std::vector<std::string> producers;  ///< gate_proj and up_proj, or fc1
  std::string consumer;                ///< down_proj or fc2
  int64_t hidden = 0;                  ///< model width h
  int64_t width = 0;                   ///< the base model's intermediate size f
  std::string name() const;            ///< the module's name, e.g. "model.layers.3.mlp"
};

/// Every MLP of `lm`, in layer order.
std::vector<MlpModule> mlp_modules(const model::CausalLM& lm);

/// Weights (biases excluded, as CompressionPlan counts) an MLP stores with k channels:
/// (producers + 1) * h * k.
int64_t mlp_weight_params(const MlpModule& module, int64_t k);
/// The weights of the dense MLP: (producers + 1) * h * f.
int64_t mlp_dense_params(const MlpModule& module);
/// Channels kept at a nominal param ratio: round(ratio * f) aligned down to
/// channel_align, at least min(channel_align, f), at most f.
int64_t channels_for_ratio(const MlpModule& module, double ratio, int64_t channel_align);

/// Compresses `module` of `lm` to k channels (k == f leaves the weights as they are):
/// kept rows (and biases) of the producers, the consumer refitted on `gram`
/// (the mean Gram matrix of the consumer's input in the dense model). The
/// module's Linears must be dense. Returns the plan rows of its Linears
/// (method "mlp_nystrom", rank k, nominal ratio k / f).
std::vector<search::PlannedLayer> compress_mlp(model::CausalLM& lm, const MlpModule& module, int64_t k,
                                               const at::Tensor& gram, const NystromOptions& options = {});

}  // namespace cur4llm::modules
