// The LLaMA family (llama, mistral, qwen2, qwen3): RMSNorm before each block,
// rotary position embeddings, grouped-query attention, SiLU-gated MLP. The
// members differ only in data: attention biases (Qwen2), a sliding window
// (Mistral; Qwen3 from max_window_layers on), RoPE scaling (LLaMA-3), an
// RMSNorm over each head of q and k (Qwen3), tied or untied lm_head.
#include "architecture.h"

#include "fused/fused_ops.h"

#include <fmt/format.h>

#include <map>
#include <mutex>
#include <utility>


namespace cur4llm::model {
namespace {

std::string layer_name(int64_t i, const char* rest) { return fmt::format("model.layers.{}.{}", i, rest); }

struct LayerNames {
  std::string q, k, v, o, gate, up, down, attn_norm, ffn_norm, q_norm, k_norm;
};

class Llama final : public ValueGraphArchitecture<Llama>, public GatedLayerValues {
 public:
  explicit Llama(const ModelConfig& c) : c_(c) {
    for (int64_t i = 0; i < c.num_layers; ++i) {
      layers_.push_back({layer_name(i, "self_attn.q_proj"), layer_name(i, "self_attn.k_proj"),
                         layer_name(i, "self_attn.v_proj"), layer_name(i, "self_attn.o_proj"),
                         layer_name(i, "mlp.gate_proj"), layer_name(i, "mlp.up_proj"), layer_name(i, "mlp.down_proj"),
                         layer_name(i, "input_layernorm.weight"), layer_name(i, "post_attention_layernorm.weight"),
                         layer_name(i, "self_attn.q_norm.weight"), layer_name(i, "self_attn.k_norm.weight")});
    }
  }

  std::vector<ExpectedTensor> expected_tensors() const override {
    const int64_t h = c_.hidden_size;
    std::vector<ExpectedTensor> out;
    out.push_back({"model.embed_tokens.weight", {c_.vocab_size, h}});
    for (int64_t i = 0; i < c_.num_layers; ++i) {
      const LayerNames& n = layers_[i];
      const LayerShapes s = c_.layer_shape(i);
      const int64_t f = s.intermediate_size;
      const int64_t q_dim = c_.num_heads * s.qk_head_dim, kv_dim = c_.num_kv_heads * s.qk_head_dim;
      const int64_t v_dim = c_.num_kv_heads * s.v_head_dim, o_dim = c_.num_heads * s.v_head_dim;
      out.push_back({n.attn_norm, {h}});
      add_linear_tensors(out, n.q, q_dim, h, c_.attention_bias, i, LinearRole::Q);
      add_linear_tensors(out, n.k, kv_dim, h, c_.attention_bias, i, LinearRole::K);
      add_linear_tensors(out, n.v, v_dim, h, c_.attention_bias, i, LinearRole::V);
      add_linear_tensors(out, n.o, h, o_dim, c_.attention_out_bias, i, LinearRole::O);
      if (c_.qk_norm) {
        out.push_back({n.q_norm, {c_.head_dim}});
        out.push_back({n.k_norm, {c_.head_dim}});
      }
      out.push_back({n.ffn_norm, {h}});
      add_linear_tensors(out, n.gate, f, h, c_.mlp_bias, i, LinearRole::Gate);
      add_linear_tensors(out, n.up, f, h, c_.mlp_bias, i, LinearRole::Up);
      add_linear_tensors(out, n.down, h, f, c_.mlp_bias, i, LinearRole::Down);
    }
    out.push_back({"model.norm.weight", {h}});
    ExpectedTensor head{"lm_head.weight", {c_.vocab_size, h}, true};
    if (c_.tie_word_embeddings) head.tied_to = "model.embed_tokens.weight";
    out.push_back(head);
    return out;
  }

  at::Tensor embed(const CausalLM& lm, const at::Tensor& ids) const override {
    return at::embedding(tensor(lm, "model.embed_tokens.weight"), ids);
  }


  at::Tensor final_hidden(const CausalLM& lm, const at::Tensor& hidden) const override {
    return rms_norm(tensor(lm, "model.norm.weight"), hidden);
  }

 private:
  friend class ValueGraphArchitecture<Llama>;

  // As transformers: normalise in float32, cast back, then scale.
  at::Tensor rms_norm(const at::Tensor& weight, const at::Tensor& x) const {
    if (fused::enabled_for(x) && weight.scalar_type() == x.scalar_type()) return fused::rms_norm(x, weight, c_.norm_eps);
    return InputNorm{weight, c_.norm_eps}.apply(x);
  }

  // Qwen3: RMSNorm over each head's head_dim features of q or k ([B, T, heads * head_dim]).
  at::Tensor head_norm(const at::Tensor& weight, const at::Tensor& x) const {
    if (!c_.qk_norm) return x;
    const auto sizes = x.sizes().vec();
    auto per_head = x.reshape({-1, c_.head_dim});
    return rms_norm(weight, per_head).reshape(sizes);
  }

  detail::Rotary rotary_for(int64_t t, c10::Device device) const { return rotary_.get(c_, t, device); }

  // Layer i's tables for its kept query/key dimensions (narrowed layers), made once per full
  // table: rebuilding them every step would copy the kept dimensions to the device each time,
  // which also cannot be captured in a CUDA graph.
  detail::Rotary layer_rotary(int64_t i, const detail::Rotary& full) const {
    const LayerShapes s = c_.layer_shape(i);
    if (s.qk_dims.empty()) return full;
    std::lock_guard<std::mutex> lock(narrowed_mutex_);
    auto& [source, tables] = narrowed_[i];
    if (!source.defined() || !source.is_same(full.cos)) {  // the held source keeps its storage from reuse
      tables = detail::narrowed_rotary(full, s.qk_dims, c_.num_kv_heads);
      source = full.cos;
    }
    return tables;
  }

  // With `release`, inputs nothing later needs are dropped once used (a whole layer's peak memory).
  // With `step` (generation), the attention reads and extends its KV cache.
  at::Tensor value(const CausalLM& lm, int64_t i, std::vector<at::Tensor>& v, int index, bool release = false,
                   detail::Step* step = nullptr) const {
    if (v[index].defined()) return v[index];
    auto get = [&](int other) { return value(lm, i, v, other, release, step); };
    const LayerNames& n = layers_.at(i);
    at::Tensor t;
    switch (index) {
      case kX: t = rms_norm(tensor(lm, n.attn_norm), v[kH]); break;
      case kQ:
      case kK:
      case kV: {
        // Query, key and value in one product where group_projections stacked them; the input
        // norm in that product's launch where its kind can (LinearSlot::forward_normed).
        const detail::SlotGroup g = group(lm, {n.q, n.k, n.v});
        auto head_norms = [&](int value, at::Tensor out) {
          if (!c_.qk_norm || value == kV) return out;
          return head_norm(tensor(lm, value == kQ ? n.q_norm : n.k_norm), out);
        };
        if (!v[kX].defined() && detail::group_fresh(v, kQ, g)) {
          auto joint = g.joint->forward_normed(v[kH], InputNorm{tensor(lm, n.attn_norm), c_.norm_eps});
          if (joint.defined()) {
            t = detail::split_group(v, kQ, index, g, joint, head_norms);
            break;
          }
        }
        t = detail::grouped_value(v, kQ, index, g, get(kX), head_norms);
        break;
      }
      case kAttn: {
        const LayerShapes s = c_.layer_shape(i);
        if (step) {
          const detail::Rotary rotary = layer_rotary(i, rotary_for(step->rotary_length(), v[kH].device()));
          t = detail::cached_attention(get(kQ), get(kK), get(kV), c_.num_heads, c_.num_kv_heads, c_.head_dim, &rotary,
                                       c_.window(i), s.v_head_dim, *step, i, s.qk_head_dim);
          break;
        }
        const detail::Rotary rotary = layer_rotary(i, rotary_for(v[kH].size(1), v[kH].device()));
        t = detail::causal_attention(get(kQ), get(kK), get(kV), c_.num_heads, c_.num_kv_heads, c_.head_dim, &rotary,
                                     c_.window(i), s.v_head_dim, s.qk_head_dim);
        break;
      }
      case kH2: {
        auto attn = get(kAttn);
        // Once released, the layer's input is needed no more: o_proj may add into it in place.
        t = release ? detail::residual_linear(std::move(v[kH]), slot(lm, n.o), attn)
                    : v[kH] + slot(lm, n.o).forward(attn);
        break;
      }
      case kX2: t = rms_norm(tensor(lm, n.ffn_norm), get(kH2)); break;
      case kGate:
      case kUp:
        t = detail::grouped_value(v, kGate, index, group(lm, {n.gate, n.up}), get(kX2));
        break;
      case kGated: {
        const bool silu = c_.hidden_act == "silu" || c_.hidden_act == "swish";
        if (silu && !v[kGate].defined() && !v[kUp].defined()) {
          // A stacked gate/up whose kind computes the gate with the product (LinearSlot::silu_gate).
          const detail::SlotGroup g = group(lm, {n.gate, n.up});
          if (g.joint && g.slots.size() == 2 && g.slots[0]->out_features() == g.slots[1]->out_features()) {
            // The input norm in the launch too, where the kind can.
            if (!v[kX2].defined()) {
              t = g.joint->silu_gate_normed(get(kH2), InputNorm{tensor(lm, n.ffn_norm), c_.norm_eps});
            }
            if (!t.defined()) t = g.joint->silu_gate(get(kX2));
          }
        }
        if (t.defined()) break;
        auto gate = get(kGate), up = get(kUp);
        t = silu && fused::enabled_for(gate) && fused::enabled_for(up) && gate.sizes() == up.sizes()
                ? fused::silu_mul(gate, up)
                : detail::activation(c_.hidden_act, gate) * up;
        break;
      }
      default: throw std::logic_error("internal: LLaMA layer value");
    }
    v[index] = t;
    if (release) release_inputs(v, index);
    return t;
  }

  at::Tensor run(const CausalLM& lm, int64_t i, std::vector<at::Tensor>& v, detail::Step* step = nullptr) const {
    value(lm, i, v, kH2, true, step);
    auto gated = value(lm, i, v, kGated, true, step);
    // Moved out: unless a layer prefix also holds it, down_proj adds into it in place.
    return detail::residual_linear(std::move(v[kH2]), slot(lm, layers_.at(i).down), gated);
  }

  ModelConfig c_;
  std::vector<LayerNames> layers_;
  detail::RotaryCache rotary_;
  mutable std::mutex narrowed_mutex_;
  mutable std::map<int64_t, std::pair<at::Tensor, detail::Rotary>> narrowed_;  // layer -> (full cos, its tables)
};

}  // namespace

std::unique_ptr<Architecture> make_llama(const ModelConfig& config) { return std::make_unique<Llama>(config); }

}  // namespace cur4llm::model
