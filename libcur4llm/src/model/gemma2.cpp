// Gemma-2: the LLaMA layout of Linears with Gemma's own arithmetic. The
// embedding is scaled by sqrt(hidden_size); every RMSNorm scales by (1 + w) in
// float32; each block has a norm before and after it (input_layernorm and
// post_attention_layernorm around attention, pre_ and post_feedforward_layernorm
// around the MLP); the MLP is GeGLU (gelu_pytorch_tanh); attention is scaled by
// query_pre_attn_scalar^-1/2, its scores soft-capped, and windowed on the layers
// layer_types marks "sliding_attention"; the final logits are soft-capped
// (CausalLM::logits_slot). Generation reads and extends a KV cache through the
// same attention (detail::cached_attention, with the scale and the soft cap).
#include "architecture.h"

#include <fmt/format.h>

#include <cmath>

namespace cur4llm::model {
namespace {

std::string layer_name(int64_t i, const char* rest) { return fmt::format("model.layers.{}.{}", i, rest); }

struct LayerNames {
  std::string q, k, v, o, gate, up, down, attn_norm, post_attn_norm, pre_ffn_norm, post_ffn_norm;
};

class Gemma2 final : public ValueGraphArchitecture<Gemma2>, public GatedLayerValues {
 public:
  explicit Gemma2(const ModelConfig& c) : c_(c) {
    for (int64_t i = 0; i < c.num_layers; ++i) {
      layers_.push_back({layer_name(i, "self_attn.q_proj"), layer_name(i, "self_attn.k_proj"),
                         layer_name(i, "self_attn.v_proj"), layer_name(i, "self_attn.o_proj"),
                         layer_name(i, "mlp.gate_proj"), layer_name(i, "mlp.up_proj"), layer_name(i, "mlp.down_proj"),
                         layer_name(i, "input_layernorm.weight"), layer_name(i, "post_attention_layernorm.weight"),
                         layer_name(i, "pre_feedforward_layernorm.weight"),
                         layer_name(i, "post_feedforward_layernorm.weight")});
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
      const int64_t q_dim = c_.num_heads * c_.head_dim, kv_dim = c_.num_kv_heads * c_.head_dim;
      const int64_t v_dim = c_.num_kv_heads * s.v_head_dim, o_dim = c_.num_heads * s.v_head_dim;
      out.push_back({n.attn_norm, {h}});
      add_linear_tensors(out, n.q, q_dim, h, c_.attention_bias, i, LinearRole::Q);
      add_linear_tensors(out, n.k, kv_dim, h, c_.attention_bias, i, LinearRole::K);
      add_linear_tensors(out, n.v, v_dim, h, c_.attention_bias, i, LinearRole::V);
      add_linear_tensors(out, n.o, h, o_dim, c_.attention_out_bias, i, LinearRole::O);
      out.push_back({n.post_attn_norm, {h}});
      out.push_back({n.pre_ffn_norm, {h}});
      add_linear_tensors(out, n.gate, f, h, false, i, LinearRole::Gate);
      add_linear_tensors(out, n.up, f, h, false, i, LinearRole::Up);
      add_linear_tensors(out, n.down, h, f, false, i, LinearRole::Down);
      out.push_back({n.post_ffn_norm, {h}});
    }
    out.push_back({"model.norm.weight", {h}});
    ExpectedTensor head{"lm_head.weight", {c_.vocab_size, h}, true};
    if (c_.tie_word_embeddings) head.tied_to = "model.embed_tokens.weight";
    out.push_back(head);
    return out;
  }

  at::Tensor embed(const CausalLM& lm, const at::Tensor& ids) const override {
    auto h = at::embedding(tensor(lm, "model.embed_tokens.weight"), ids);
    // As transformers: the normaliser is sqrt(hidden_size) rounded to the hidden states' dtype.
    const auto normalizer = at::scalar_tensor(std::sqrt(static_cast<double>(c_.hidden_size)),
                                              at::TensorOptions().dtype(h.scalar_type()).device(h.device()));
    return h * normalizer;
  }

  at::Tensor final_hidden(const CausalLM& lm, const at::Tensor& hidden) const override {
    return rms_norm(tensor(lm, "model.norm.weight"), hidden);
  }

 private:
  friend class ValueGraphArchitecture<Gemma2>;

  // Gemma's RMSNorm: everything in float32, scaled by (1 + w), then cast back.
  at::Tensor rms_norm(const at::Tensor& weight, const at::Tensor& x) const {
    auto xf = x.to(at::kFloat);
    auto normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + c_.norm_eps);
    return (normed * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
  }

  detail::Rotary rotary_for(int64_t t, c10::Device device) const { return rotary_.get(c_, t, device); }

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
      case kV:
        t = detail::grouped_value(v, kQ, index, group(lm, {n.q, n.k, n.v}), get(kX));
        break;
      case kAttn: {
        const double scale = 1.0 / std::sqrt(c_.query_pre_attn_scalar);
        if (step) {
          // Sliding layers see the last window positions through the step's mask; the cache keeps every slot.
          const detail::Rotary rotary = rotary_for(step->rotary_length(), v[kH].device());
          t = detail::cached_attention(get(kQ), get(kK), get(kV), c_.num_heads, c_.num_kv_heads, c_.head_dim,
                                       &rotary, c_.window(i), c_.layer_shape(i).v_head_dim, *step, i,
                                       /*qk_head_dim=*/0, scale, c_.attn_logit_softcapping);
          break;
        }
        const detail::Rotary rotary = rotary_for(v[kH].size(1), v[kH].device());
        t = detail::causal_attention(get(kQ), get(kK), get(kV), c_.num_heads, c_.num_kv_heads, c_.head_dim, &rotary,
                                     c_.window(i), c_.layer_shape(i).v_head_dim, /*qk_head_dim=*/0, scale,
                                     c_.attn_logit_softcapping);
        break;
      }
      case kH2: t = v[kH] + rms_norm(tensor(lm, n.post_attn_norm), slot(lm, n.o).forward(get(kAttn))); break;
      case kX2: t = rms_norm(tensor(lm, n.pre_ffn_norm), get(kH2)); break;
      case kGate:
      case kUp:
        t = detail::grouped_value(v, kGate, index, group(lm, {n.gate, n.up}), get(kX2));
        break;
      case kGated: t = detail::activation(c_.hidden_act, get(kGate)) * get(kUp); break;
      default: throw std::logic_error("internal: Gemma-2 layer value");
    }
    v[index] = t;
    if (release) release_inputs(v, index);
    return t;
  }

  at::Tensor run(const CausalLM& lm, int64_t i, std::vector<at::Tensor>& v, detail::Step* step = nullptr) const {
    auto h2 = value(lm, i, v, kH2, true, step);
    auto gated = value(lm, i, v, kGated, true, step);
    return h2 + rms_norm(tensor(lm, layers_.at(i).post_ffn_norm), slot(lm, layers_.at(i).down).forward(gated));
  }

  ModelConfig c_;
  std::vector<LayerNames> layers_;
  detail::RotaryCache rotary_;
};

}  // namespace

std::unique_ptr<Architecture> make_gemma2(const ModelConfig& config) { return std::make_unique<Gemma2>(config); }

}  // namespace cur4llm::model
