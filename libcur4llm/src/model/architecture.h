#pragma once
// Internal: what differs between model families. Each family is a tensor-name
// table (data) plus its forward functions; CausalLM owns the tensors.

#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cur4llm::model {

/// One tensor the checkpoint must (or may) hold.
struct ExpectedTensor {
  std::string name;                 ///< full checkpoint key, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  bool linear_weight = false;       ///< the weight of a Linear slot (module name = name minus ".weight")
  bool linear_bias = false;         ///< the bias of a Linear slot
  int64_t layer = -1;
  std::optional<LinearRole> role;
  std::string tied_to;              ///< if absent from the checkpoint, use this tensor instead (tied lm_head)
};

class Architecture {
 public:
  virtual ~Architecture() = default;
  /// Every tensor of the model, in model order; linear weights define the slots.
  virtual std::vector<ExpectedTensor> expected_tensors() const = 0;
  virtual at::Tensor embed(const CausalLM& lm, const at::Tensor& input_ids) const = 0;
  virtual at::Tensor layer(const CausalLM& lm, int64_t index, const at::Tensor& hidden) const = 0;
  /// The values of layer `index` on `hidden` that do not depend on slot `role` (CausalLM::layer_prefix).
  virtual std::vector<at::Tensor> prefix(const CausalLM& lm, int64_t index, const at::Tensor& hidden,
                                         LinearRole role) const = 0;
  /// The layer's output from such values (missing ones are computed with the current slots).
  virtual at::Tensor resume(const CausalLM& lm, int64_t index, std::vector<at::Tensor> values) const = 0;
  virtual at::Tensor final_hidden(const CausalLM& lm, const at::Tensor& hidden) const = 0;

 protected:
  // CausalLM's members, for the families (friendship is not inherited).
  static const at::Tensor& tensor(const CausalLM& lm, const std::string& name);
  static const at::Tensor* optional_tensor(const CausalLM& lm, const std::string& name);
  static const LinearSlot& slot(const CausalLM& lm, const std::string& name);
};

/// A family whose decoder layer is computed as a graph of named values (an
/// enum with the layer's input hidden states at kH and the count at kCount).
/// Derived provides
///   at::Tensor value(lm, i, values, index, release = false) const;  // computes values[index] from what it needs
///   at::Tensor run(lm, i, values) const;                            // the layer's output
///   static std::vector<int> prefix_values(LinearRole role);         // the values that do not depend on that slot
/// and gets layer(), prefix() and resume() from here.
template <class Derived>
class ValueGraphArchitecture : public Architecture {
 public:
  at::Tensor layer(const CausalLM& lm, int64_t i, const at::Tensor& hidden) const override {
    std::vector<at::Tensor> values(Derived::kCount);
    values[Derived::kH] = hidden;
    return self().run(lm, i, values);
  }

  std::vector<at::Tensor> prefix(const CausalLM& lm, int64_t i, const at::Tensor& hidden,
                                 LinearRole role) const override {
    std::vector<at::Tensor> v(Derived::kCount);
    v[Derived::kH] = hidden;
    const std::vector<int> keep = Derived::prefix_values(role);
    for (int index : keep) (void)self().value(lm, i, v, index);
    std::vector<at::Tensor> out(Derived::kCount);
    for (int index : keep) out[index] = v[index];
    return out;
  }

  at::Tensor resume(const CausalLM& lm, int64_t i, std::vector<at::Tensor> values) const override {
    values.resize(Derived::kCount);
    return self().run(lm, i, values);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

/// The registry: picks the architecture for config.model_type.
std::unique_ptr<Architecture> make_architecture(const ModelConfig& config);
std::unique_ptr<Architecture> make_opt(const ModelConfig& config);
std::unique_ptr<Architecture> make_llama(const ModelConfig& config);

namespace detail {

/// Rotary cos/sin tables [T, head_dim] in float32 for positions 0..T-1.
struct Rotary {
  at::Tensor cos;
  at::Tensor sin;
};
Rotary rotary_tables(const ModelConfig& config, int64_t seq_len, c10::Device device);
at::Tensor inverse_frequencies(const ModelConfig& config);

/// Causal multi-head attention with grouped KV heads on [B, T, heads*head_dim]
/// inputs. `rotary` (if given) is applied to q and k; `window` > 0 limits each
/// query to the last `window` keys (Mistral). Scale is 1/sqrt(head_dim).
/// `v_head_dim` (0: head_dim) is the per-head width of v and of the output,
/// narrower where a module method reduced the values (LayerShapes::v_head_dim);
/// `qk_head_dim` (0: head_dim) that of q and k (LayerShapes::qk_head_dim), whose
/// rotary tables are then per KV head ([kv, T, qk_head_dim], narrowed_rotary).
/// The scale stays 1/sqrt(head_dim) either way.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, const Rotary* rotary, int64_t window,
                            int64_t v_head_dim = 0, int64_t qk_head_dim = 0);

/// The rotary tables of a layer whose queries and keys keep `qk_dims` (LayerShapes::qk_dims)
/// of each KV head: [kv, T, qk_head_dim] columns of the full [T, head_dim] tables; `full` if empty.
Rotary narrowed_rotary(const Rotary& full, const std::vector<int64_t>& qk_dims, int64_t num_kv_heads);

/// The activation named by config.json ("relu", "silu", "gelu", "gelu_new", ...).
at::Tensor activation(const std::string& name, const at::Tensor& x);

/// activation(name, slot.forward(x)), with ReLU fused into the matrix product
/// where the slot is dense with a bias and x is on CUDA (LibTorch 2.x).
at::Tensor linear_activation(const LinearSlot& slot, const std::string& name, const at::Tensor& x);

/// residual + slot.forward(x). Where the slot is dense without a bias, x is on
/// CUDA and nothing else holds `residual` (moved in), the product is added to
/// it in place inside the matrix product.
at::Tensor residual_linear(at::Tensor residual, const LinearSlot& slot, const at::Tensor& x);

}  // namespace detail
}  // namespace cur4llm::model
