#pragma once
// Internal: what differs between model families. Each family is a tensor-name
// table (data) plus its forward functions; CausalLM owns the tensors.

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/kv_cache.h>

#include <ATen/ATen.h>

#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace cur4llm::model {

namespace detail {
class Step;

/// Projections that read one input (a layer's q/k/v, or gate/up), and the slot computing them
/// together where CausalLM::group_projections stacked them (null otherwise).
struct SlotGroup {
  std::vector<const LinearSlot*> slots;
  const LinearSlot* joint = nullptr;
};
}

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

  // Generation (CausalLM::forward_cached). What a family does to support it:
  //  - embed_step: the embedding of the step's new tokens at step.positions
  //    (override only where the embedding depends on the position, as OPT's
  //    learned positions do; the default is embed());
  //  - layer_step: the layer on the step's new tokens, its attention computed
  //    by detail::cached_attention(..., step, layer) instead of
  //    detail::causal_attention (same arguments, plus the step; a rotary
  //    table must cover positions 0 .. step.rotary_length() - 1). A
  //    ValueGraphArchitecture family gets layer_step from its
  //    run(lm, i, values, detail::Step* step) and value(..., step): the step
  //    passed down to the attention value, null on the ordinary forward.
  // Everything else (norms, MLP, slots) is the ordinary layer's code on [B, T] tokens.
  virtual at::Tensor embed_step(const CausalLM& lm, const at::Tensor& input_ids, const detail::Step& step) const;
  /// Decoder layer `index` on the step's new tokens; the default refuses (family without generation support).
  /// `hidden` is moved in by the caller: a layer may add into it in place (detail::residual_linear).
  virtual at::Tensor layer_step(const CausalLM& lm, int64_t index, at::Tensor hidden, detail::Step& step) const;

 protected:
  // CausalLM's members, for the families (friendship is not inherited).
  static const at::Tensor& tensor(const CausalLM& lm, const std::string& name);
  static const at::Tensor* optional_tensor(const CausalLM& lm, const std::string& name);
  static const LinearSlot& slot(const CausalLM& lm, const std::string& name);
  /// The slots named `names`, with their joint slot where group_projections stacked them
  /// (names by reference: a forward asks for every layer's groups).
  static detail::SlotGroup group(const CausalLM& lm,
                                 std::initializer_list<std::reference_wrapper<const std::string>> names);
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

  at::Tensor layer_step(const CausalLM& lm, int64_t i, at::Tensor hidden, detail::Step& step) const override {
    std::vector<at::Tensor> values(Derived::kCount);
    values[Derived::kH] = std::move(hidden);
    return step_run(self(), lm, i, values, step, 0);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  // Derived::run(lm, i, values, &step) where the family has it; else the default (a refusal).
  template <class D>
  auto step_run(const D& d, const CausalLM& lm, int64_t i, std::vector<at::Tensor>& values, detail::Step& step,
                int) const -> decltype(d.run(lm, i, values, &step)) {
    return d.run(lm, i, values, &step);
  }
  template <class D>
  at::Tensor step_run(const D&, const CausalLM& lm, int64_t i, std::vector<at::Tensor>& values, detail::Step& step,
                      long) const {
    return Architecture::layer_step(lm, i, values[Derived::kH], step);
  }
};

/// Appends a Linear's expected weight [out_f, in_f] (and bias [out_f] when `bias`) to `out`.
void add_linear_tensors(std::vector<ExpectedTensor>& out, const std::string& module, int64_t out_f, int64_t in_f,
                        bool bias, int64_t layer, LinearRole role);

/// The named values of a pre-norm decoder layer with a gated MLP (the LLaMA
/// family, Gemma-2): hidden states, attention input and q/k/v, attention
/// output, the residual sum, MLP input, gate, up and the gated product. Such a
/// family's value graph derives from this for the names and the bookkeeping.
struct GatedLayerValues {
  enum Value { kH, kX, kQ, kK, kV, kAttn, kH2, kX2, kGate, kUp, kGated, kCount };
  /// The values of a layer that do not depend on the Linear in slot `role`.
  static std::vector<int> prefix_values(LinearRole role);
  /// After values[index] is computed with `release`: drops the inputs nothing later needs.
  static void release_inputs(std::vector<at::Tensor>& values, int index);
};

/// The registry: picks the architecture for config.model_type.
std::unique_ptr<Architecture> make_architecture(const ModelConfig& config);
std::unique_ptr<Architecture> make_opt(const ModelConfig& config);
std::unique_ptr<Architecture> make_llama(const ModelConfig& config);
std::unique_ptr<Architecture> make_gemma2(const ModelConfig& config);

namespace detail {

/// Rotary cos/sin tables [T, head_dim] in float32 for positions 0..T-1.
struct Rotary {
  at::Tensor cos;
  at::Tensor sin;
};
Rotary rotary_tables(const ModelConfig& config, int64_t seq_len, c10::Device device);

/// rotary_tables of one length and device, made once and shared by every layer
/// of a forward (and by concurrent forwards: the lookup is locked).
class RotaryCache {
 public:
  Rotary get(const ModelConfig& config, int64_t seq_len, c10::Device device) const;

 private:
  mutable std::mutex mutex_;
  mutable Rotary rotary_;
  mutable int64_t length_ = -1;
};
at::Tensor inverse_frequencies(const ModelConfig& config);

/// Causal multi-head attention with grouped KV heads on [B, T, heads*head_dim]
/// inputs. `rotary` (if given) is applied to q and k; `window` > 0 limits each
/// query to the last `window` keys (Mistral). Scale is 1/sqrt(head_dim).
/// `v_head_dim` (0: head_dim) is the per-head width of v and of the output,
/// narrower where a module method reduced the values (LayerShapes::v_head_dim);
/// `qk_head_dim` (0: head_dim) that of q and k (LayerShapes::qk_head_dim), whose
/// rotary tables are then per KV head ([kv, T, qk_head_dim], narrowed_rotary);
/// the scale stays 1/sqrt(head_dim) then. `scale` > 0 replaces 1/sqrt(head_dim) (Gemma-2: query_pre_attn_scalar^-1/2);
/// `softcap` > 0 caps the scaled scores to softcap * tanh(scores / softcap)
/// before the mask (Gemma-2's attn_logit_softcapping).
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, const Rotary* rotary, int64_t window,
                            int64_t v_head_dim = 0, int64_t qk_head_dim = 0, double scale = 0,
                            double softcap = 0);

/// The rotary tables of a layer whose queries and keys keep `qk_dims` (LayerShapes::qk_dims)
/// of each KV head: [kv, T, qk_head_dim] columns of the full [T, head_dim] tables; `full` if empty.
Rotary narrowed_rotary(const Rotary& full, const std::vector<int64_t>& qk_dims, int64_t num_kv_heads);

/// One CausalLM::forward_cached call as the layers see it: the cache, the
/// positions of the new tokens, and what every layer shares (the attention
/// mask of each window, the rotary rows of the positions), made once.
class Step {
 public:
  /// `positions` [B, T] int64 on the cache's device; the cache's step must have begun.
  /// `whole_rows`: the caller knows every new token is real (no padding) and of the trunk
  /// (no tree of tokens); with an empty cache each token then attends to those before it alone.
  /// `keep_keys` false: nothing reads the cache after this step (an empty cache made for it
  /// alone), so the layers attend to the step's own keys and values and write nothing into it.
  Step(KVCache& cache, at::Tensor positions, bool whole_rows, bool keep_keys = true);
  KVCache& cache() const { return cache_; }
  /// Whether the layers write the step's keys and values into the cache (see the constructor).
  bool keeps_keys() const { return keep_keys_; }
  /// [B, T]: the position of each new token.
  const at::Tensor& positions() const { return positions_; }
  /// New tokens per row (T).
  int64_t tokens() const { return positions_.size(1); }
  /// Whether the step is a prompt's first pass: real trunk tokens into an empty cache, so that
  /// allowed(0) is the causal triangle over the new tokens (attention can skip the mask).
  bool causal_prefill() const { return causal_prefill_; }
  /// Positions a rotary table passed to cached_attention must cover (0 .. rotary_length() - 1).
  int64_t rotary_length() const { return cache_.capacity(); }
  /// [B, 1, T, S] bool over the S = length + T slots: true where a new token attends to a slot
  /// (a token of its row, not after it, whose subtree holds the new one (KVCache::ends),
  /// within `window` positions if window > 0; a padding token attends to itself only, so that its
  /// values stay finite).
  const at::Tensor& allowed(int64_t window);
  /// allowed(window) as the additive mask the fused attention takes: [B, 1, groups * T, S] of
  /// `dtype`, 0 where allowed and -inf elsewhere, its rows repeated for `groups` query heads per
  /// KV head, each row starting 16-element aligned (a view of wider storage). Made once per step,
  /// not once per layer.
  const at::Tensor& additive_mask(int64_t window, int64_t groups, at::ScalarType dtype);
  /// `table` (tables for positions 0..N-1, [N, d]) at the step's positions: [B, T, 1, d] each.
  const Rotary& rotary_at(const Rotary& table);

 private:
  KVCache& cache_;
  at::Tensor positions_;
  bool causal_prefill_ = false;
  bool keep_keys_ = true;
  std::vector<std::pair<int64_t, at::Tensor>> masks_;            // window -> allowed
  std::vector<std::pair<std::tuple<int64_t, int64_t, at::ScalarType>, at::Tensor>> additive_;  // (window, groups, dtype)
  std::vector<std::pair<const void*, Rotary>> rotary_rows_;     // table -> rows at the positions
};

/// causal_attention for the new tokens of a step: q, k, v [B, T, heads*dim] of
/// the new tokens; k (after rotary) and v are written into layer `layer` of
/// the step's cache, and each query attends to the cached keys of its row
/// that step.allowed(window) lets it see. `rotary` (if given) holds the tables
/// for positions 0 .. step.rotary_length() - 1 (per KV head where narrowed).
/// Same conventions otherwise, `scale` and `softcap` included (Gemma-2).
at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, const Rotary* rotary, int64_t window,
                            int64_t v_head_dim, Step& step, int64_t layer, int64_t qk_head_dim = 0, double scale = 0,
                            double softcap = 0);

/// The activation named by config.json ("relu", "silu", "gelu", "gelu_new", ...).
at::Tensor activation(const std::string& name, const at::Tensor& x);

/// activation(name, slot.forward(x)), with ReLU fused into the matrix product
/// where the slot is dense with a bias and x is on CUDA (LibTorch 2.x).
at::Tensor linear_activation(const LinearSlot& slot, const std::string& name, const at::Tensor& x);

/// values[index] of a value graph whose values first, first + 1, ... are the
/// outputs of `group`'s slots on x, each passed through finish(value, output)
/// where given. Where the group has a joint slot and none of those values is
/// computed yet, all of them at once, as one product: the others are stored in
/// `values` (views of that product, along the last dimension). Else that
/// slot's forward alone. The caller stores the returned one.
at::Tensor grouped_value(std::vector<at::Tensor>& values, int first, int index, const SlotGroup& group,
                         const at::Tensor& x,
                         const std::function<at::Tensor(int, at::Tensor)>& finish = {});
/// Whether grouped_value would run the group's joint slot: it has one, and none of the
/// values first, first + 1, ... is computed yet.
bool group_fresh(const std::vector<at::Tensor>& values, int first, const SlotGroup& group);
/// For a fresh group (group_fresh), the joint slot's output `joint_out`, computed by the
/// caller, split as grouped_value splits it: the others stored in `values`, values[index]'s
/// returned.
at::Tensor split_group(std::vector<at::Tensor>& values, int first, int index, const SlotGroup& group,
                       const at::Tensor& joint_out, const std::function<at::Tensor(int, at::Tensor)>& finish = {});

/// residual + slot.forward(x) through LinearSlot::forward_add: where nothing else
/// holds `residual` (moved in), kinds that can add the product into it in place
/// do (dense without a bias on CUDA, packed int4 on the tensor cores).
at::Tensor residual_linear(at::Tensor residual, const LinearSlot& slot, const at::Tensor& x);

}  // namespace detail
}  // namespace cur4llm::model
