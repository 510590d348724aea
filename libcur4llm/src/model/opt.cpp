// OPT (facebook/opt-*): learned positions with an offset of 2, LayerNorm before
// (or, as in OPT-350m, after) each block, ReLU MLP, biases everywhere, and an
// optional projection between the embedding width and the hidden size.
#include "architecture.h"

#include "fused/fused_ops.h"

#include <fmt/format.h>

#include <stdexcept>
#include <tuple>
#include <utility>

namespace cur4llm::model {
namespace {

// The tensor-name table of the family: one pattern per role.
constexpr const char* kPrefix = "model.decoder.";
constexpr int64_t kPositionOffset = 2;  // OPTLearnedPositionalEmbedding

std::string layer_name(int64_t i, const char* rest) { return fmt::format("{}layers.{}.{}", kPrefix, i, rest); }

struct LayerNames {
  std::string q, k, v, o, fc1, fc2, attn_norm, ffn_norm;
};

class Opt final : public ValueGraphArchitecture<Opt> {
 public:
  explicit Opt(const ModelConfig& c) : c_(c) {
    for (int64_t i = 0; i < c.num_layers; ++i) {
      layers_.push_back({layer_name(i, "self_attn.q_proj"), layer_name(i, "self_attn.k_proj"),
                         layer_name(i, "self_attn.v_proj"), layer_name(i, "self_attn.out_proj"),
                         layer_name(i, "fc1"), layer_name(i, "fc2"), layer_name(i, "self_attn_layer_norm"),
                         layer_name(i, "final_layer_norm")});
    }
  }

  std::vector<ExpectedTensor> expected_tensors() const override {
    const int64_t h = c_.hidden_size, e = c_.word_embed_proj_dim;
    std::vector<ExpectedTensor> out;
    out.push_back({std::string(kPrefix) + "embed_tokens.weight", {c_.vocab_size, e}});
    out.push_back({std::string(kPrefix) + "embed_positions.weight", {c_.max_position_embeddings + kPositionOffset, h}});
    if (e != h) {
      out.push_back({std::string(kPrefix) + "project_in.weight", {h, e}, true});
    }
    auto linear = [&](const std::string& module, int64_t out_f, int64_t in_f, int64_t layer, LinearRole role) {
      add_linear_tensors(out, module, out_f, in_f, c_.enable_bias, layer, role);
    };
    auto norm = [&](const std::string& module) {
      if (!c_.layer_norm_affine) return;
      out.push_back({module + ".weight", {h}});
      out.push_back({module + ".bias", {h}});
    };
    for (int64_t i = 0; i < c_.num_layers; ++i) {
      const LayerNames& n = layers_[i];
      const LayerShapes s = c_.layer_shape(i);
      const int64_t f = s.intermediate_size, v_dim = c_.num_heads * s.v_head_dim;
      const int64_t qk_dim = c_.num_heads * s.qk_head_dim;
      linear(n.q, qk_dim, h, i, LinearRole::Q);
      linear(n.k, qk_dim, h, i, LinearRole::K);
      linear(n.v, v_dim, h, i, LinearRole::V);
      linear(n.o, h, v_dim, i, LinearRole::O);
      norm(n.attn_norm);
      linear(n.fc1, f, h, i, LinearRole::Fc1);
      linear(n.fc2, h, f, i, LinearRole::Fc2);
      norm(n.ffn_norm);
    }
    if (c_.final_layer_norm) norm(std::string(kPrefix) + "final_layer_norm");
    if (e != h) out.push_back({std::string(kPrefix) + "project_out.weight", {e, h}, true});
    ExpectedTensor head{"lm_head.weight", {c_.vocab_size, e}, true};
    if (c_.tie_word_embeddings) head.tied_to = std::string(kPrefix) + "embed_tokens.weight";
    out.push_back(head);
    return out;
  }

  at::Tensor embed(const CausalLM& lm, const at::Tensor& ids) const override {
    const int64_t t = ids.size(1);
    if (t > c_.max_position_embeddings) {
      throw std::invalid_argument(fmt::format("sequence of {} tokens exceeds max_position_embeddings ({})", t,
                                              c_.max_position_embeddings));
    }
    auto x = at::embedding(tensor(lm, std::string(kPrefix) + "embed_tokens.weight"), ids);
    if (c_.word_embed_proj_dim != c_.hidden_size) x = slot(lm, std::string(kPrefix) + "project_in").forward(x);
    const at::Tensor pos_table = tensor(lm, std::string(kPrefix) + "embed_positions.weight");
    auto positions = at::arange(kPositionOffset, t + kPositionOffset, ids.options());
    return x + at::embedding(pos_table, positions).unsqueeze(0);
  }


  // The tokens at the step's positions (learned positions, offset 2 as in OPTLearnedPositionalEmbedding).
  at::Tensor embed_step(const CausalLM& lm, const at::Tensor& ids, const detail::Step& step) const override {
    auto x = at::embedding(tensor(lm, std::string(kPrefix) + "embed_tokens.weight"), ids);
    if (c_.word_embed_proj_dim != c_.hidden_size) x = slot(lm, std::string(kPrefix) + "project_in").forward(x);
    const at::Tensor pos_table = tensor(lm, std::string(kPrefix) + "embed_positions.weight");
    return x + at::embedding(pos_table, step.positions() + kPositionOffset);
  }

  at::Tensor final_hidden(const CausalLM& lm, const at::Tensor& hidden) const override {
    auto h = c_.final_layer_norm ? norm(lm, std::string(kPrefix) + "final_layer_norm", hidden) : hidden;
    if (c_.word_embed_proj_dim != c_.hidden_size) h = slot(lm, std::string(kPrefix) + "project_out").forward(h);
    return h;
  }

 private:
  friend class ValueGraphArchitecture<Opt>;

  // A LayerNorm's weight and bias (undefined where the checkpoint has none).
  static std::pair<at::Tensor, at::Tensor> norm_params(const CausalLM& lm, const std::string& module) {
    const at::Tensor* w = optional_tensor(lm, module + ".weight");
    const at::Tensor* b = optional_tensor(lm, module + ".bias");
    return {w ? *w : at::Tensor(), b ? *b : at::Tensor()};
  }

  at::Tensor norm(const CausalLM& lm, const std::string& module, const at::Tensor& x) const {
    const auto [w, b] = norm_params(lm, module);
    if (fused::enabled_for(x)) return fused::layer_norm(x, w, b, c_.norm_eps);
    return at::layer_norm(x, {c_.hidden_size}, w, b, c_.norm_eps);
  }

  // The layer's named values; value() computes one from those it needs unless already present.
  enum Value { kH, kX, kQ, kK, kV, kAttn, kH2, kX2, kAct, kCount };

  // With `release`, inputs nothing later needs are dropped once used (a whole layer's peak memory).
  // With `step` (generation), the attention reads and extends its KV cache.
  at::Tensor value(const CausalLM& lm, int64_t i, std::vector<at::Tensor>& v, int index, bool release = false,
                   detail::Step* step = nullptr) const {
    if (v[index].defined()) return v[index];
    auto get = [&](int other) { return value(lm, i, v, other, release, step); };
    const LayerNames& n = layers_.at(i);
    const bool pre = c_.do_layer_norm_before;
    at::Tensor t;
    switch (index) {
      case kX: t = pre ? norm(lm, n.attn_norm, v[kH]) : v[kH]; break;
      case kQ:
      case kK:
      case kV:
        t = detail::grouped_value(v, kQ, index, group(lm, {n.q, n.k, n.v}), get(kX));
        break;
      case kAttn: {
        const LayerShapes s = c_.layer_shape(i);
        t = step ? detail::cached_attention(get(kQ), get(kK), get(kV), c_.num_heads, c_.num_kv_heads, c_.head_dim,
                                            nullptr, 0, s.v_head_dim, *step, i, s.qk_head_dim)
                 : detail::causal_attention(get(kQ), get(kK), get(kV), c_.num_heads, c_.num_kv_heads, c_.head_dim,
                                            nullptr, 0, s.v_head_dim, s.qk_head_dim);
        break;
      }
      case kH2: {
        auto o = slot(lm, n.o).forward(get(kAttn));
        if (pre && fused::enabled_for(o) && v[kH].sizes() == o.sizes() && v[kH].scalar_type() == o.scalar_type()) {
          // The residual sum and the LayerNorm after it (kX2) in one pass.
          const auto [w, b] = norm_params(lm, n.ffn_norm);
          std::tie(t, v[kX2]) = fused::add_layer_norm(v[kH], o, w, b, c_.norm_eps);
        } else {
          t = v[kH] + o;
          if (!pre) t = norm(lm, n.attn_norm, t);
        }
        break;
      }
      case kX2: t = pre ? norm(lm, n.ffn_norm, get(kH2)) : get(kH2); break;
      case kAct: t = detail::linear_activation(slot(lm, n.fc1), c_.hidden_act, get(kX2)); break;
      default: throw std::logic_error("internal: OPT layer value");
    }
    v[index] = t;
    if (release) {
      if (index == kAttn) v[kX] = v[kQ] = v[kK] = v[kV] = at::Tensor();
      if (index == kH2) v[kH] = v[kAttn] = at::Tensor();
      if (index == kAct) v[kX2] = at::Tensor();
    }
    return t;
  }

  // The values of a layer that do not depend on the Linear in slot `role`.
  static std::vector<int> prefix_values(LinearRole role) {
    switch (role) {
      case LinearRole::Q: return {kH, kX, kK, kV};
      case LinearRole::K: return {kH, kX, kQ, kV};
      case LinearRole::V: return {kH, kX, kQ, kK};
      case LinearRole::O: return {kH, kAttn};
      case LinearRole::Fc1: return {kH2, kX2};
      case LinearRole::Fc2: return {kH2, kAct};
      default: return {kH};
    }
  }

  at::Tensor run(const CausalLM& lm, int64_t i, std::vector<at::Tensor>& v, detail::Step* step = nullptr) const {
    auto h2 = value(lm, i, v, kH2, true, step);
    auto h = h2 + slot(lm, layers_.at(i).fc2).forward(value(lm, i, v, kAct, true, step));
    return c_.do_layer_norm_before ? h : norm(lm, layers_.at(i).ffn_norm, h);
  }

  ModelConfig c_;
  std::vector<LayerNames> layers_;
};

}  // namespace

std::unique_ptr<Architecture> make_opt(const ModelConfig& config) { return std::make_unique<Opt>(config); }

}  // namespace cur4llm::model
