// OPT (facebook/opt-*): learned positions with an offset of 2, LayerNorm before
// (or, as in OPT-350m, after) each block, ReLU MLP, biases everywhere, and an
// optional projection between the embedding width and the hidden size.
#include "architecture.h"

#include <fmt/format.h>

#include <stdexcept>

namespace cur4llm::model {
namespace {

// The tensor-name table of the family: one pattern per role.
constexpr const char* kPrefix = "model.decoder.";
constexpr int64_t kPositionOffset = 2;  // OPTLearnedPositionalEmbedding

std::string layer_name(int64_t i, const char* rest) { return fmt::format("{}layers.{}.{}", kPrefix, i, rest); }

struct LayerNames {
  std::string q, k, v, o, fc1, fc2, attn_norm, ffn_norm;
};

class Opt final : public Architecture {
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
    const int64_t h = c_.hidden_size, e = c_.word_embed_proj_dim, f = c_.intermediate_size;
    std::vector<ExpectedTensor> out;
    out.push_back({std::string(kPrefix) + "embed_tokens.weight", {c_.vocab_size, e}});
    out.push_back({std::string(kPrefix) + "embed_positions.weight", {c_.max_position_embeddings + kPositionOffset, h}});
    if (e != h) {
      out.push_back({std::string(kPrefix) + "project_in.weight", {h, e}, true});
    }
    auto linear = [&](const std::string& module, int64_t out_f, int64_t in_f, int64_t layer, LinearRole role) {
      out.push_back({module + ".weight", {out_f, in_f}, true, false, layer, role});
      if (c_.enable_bias) out.push_back({module + ".bias", {out_f}, false, true, layer, role});
    };
    auto norm = [&](const std::string& module) {
      if (!c_.layer_norm_affine) return;
      out.push_back({module + ".weight", {h}});
      out.push_back({module + ".bias", {h}});
    };
    for (int64_t i = 0; i < c_.num_layers; ++i) {
      const LayerNames& n = layers_[i];
      linear(n.q, h, h, i, LinearRole::Q);
      linear(n.k, h, h, i, LinearRole::K);
      linear(n.v, h, h, i, LinearRole::V);
      linear(n.o, h, h, i, LinearRole::O);
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

  at::Tensor layer(const CausalLM& lm, int64_t i, const at::Tensor& hidden) const override {
    const LayerNames& n = layers_.at(i);
    const bool pre = c_.do_layer_norm_before;
    auto x = pre ? norm(lm, n.attn_norm, hidden) : hidden;
    auto q = slot(lm, n.q).forward(x), k = slot(lm, n.k).forward(x), v = slot(lm, n.v).forward(x);
    auto attn = detail::causal_attention(q, k, v, c_.num_heads, c_.num_kv_heads, c_.head_dim, nullptr, 0);
    auto h = hidden + slot(lm, n.o).forward(attn);
    if (!pre) h = norm(lm, n.attn_norm, h);
    x = pre ? norm(lm, n.ffn_norm, h) : h;
    x = slot(lm, n.fc2).forward(detail::linear_activation(slot(lm, n.fc1), c_.hidden_act, x));
    h = h + x;
    if (!pre) h = norm(lm, n.ffn_norm, h);
    return h;
  }

  at::Tensor final_hidden(const CausalLM& lm, const at::Tensor& hidden) const override {
    auto h = c_.final_layer_norm ? norm(lm, std::string(kPrefix) + "final_layer_norm", hidden) : hidden;
    if (c_.word_embed_proj_dim != c_.hidden_size) h = slot(lm, std::string(kPrefix) + "project_out").forward(h);
    return h;
  }

 private:
  at::Tensor norm(const CausalLM& lm, const std::string& module, const at::Tensor& x) const {
    const at::Tensor* w = optional_tensor(lm, module + ".weight");
    const at::Tensor* b = optional_tensor(lm, module + ".bias");
    return at::layer_norm(x, {c_.hidden_size}, w ? *w : at::Tensor(), b ? *b : at::Tensor(), c_.norm_eps);
  }

  ModelConfig c_;
  std::vector<LayerNames> layers_;
};

}  // namespace

std::unique_ptr<Architecture> make_opt(const ModelConfig& config) { return std::make_unique<Opt>(config); }

}  // namespace cur4llm::model
