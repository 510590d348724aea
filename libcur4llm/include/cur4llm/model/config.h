#pragma once
/// Model hyper-parameters, parsed once from config.json into a typed struct.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace cur4llm::model {

/// The families of architectures the library runs.
enum class Family {
  Opt,    ///< OPT: LayerNorm, learned positions, ReLU MLP, biases
  Llama,  ///< LLaMA, Mistral, Qwen2, Qwen3: RMSNorm, RoPE, SiLU-gated MLP, GQA
  Gemma2, ///< Gemma-2: RMSNorm (1 + w) before and after each block, GeGLU, soft-capping, alternating windows
};

/// RoPE frequency scaling ("rope_scaling" / "rope_parameters" in config.json).
struct RopeScaling {
  std::string type = "default";                  ///< "default", "linear" or "llama3"
  double factor = 1.0;                           ///< linear and llama3
  double low_freq_factor = 1.0;                  ///< llama3
  double high_freq_factor = 4.0;                 ///< llama3
  int64_t original_max_position_embeddings = 0;  ///< llama3
};

/// The widths of one decoder layer that module methods (modules/) may narrow;
/// 0 means the model-wide value of ModelConfig.
struct LayerShapes {
  int64_t intermediate_size = 0;  ///< MLP hidden width (rows of up/gate or fc1; columns of down or fc2)
  int64_t qk_head_dim = 0;        ///< per-head width of queries and keys (the attention scale stays 1/sqrt(head_dim))
  int64_t v_head_dim = 0;         ///< per-head width of values and of the attention output (o_proj's input per head)
  /// Narrowed queries and keys: for each KV head, the base head dimension of each kept one
  /// ([num_kv_heads * qk_head_dim], empty: 0 .. head_dim - 1). Rotary models keep pairs:
  /// entry r + qk_head_dim / 2 of a head is entry r + head_dim / 2.
  std::vector<int64_t> qk_dims;
  bool operator==(const LayerShapes& o) const {
    return intermediate_size == o.intermediate_size && qk_head_dim == o.qk_head_dim && v_head_dim == o.v_head_dim &&
           qk_dims == o.qk_dims;
  }
  bool operator!=(const LayerShapes& o) const { return !(*this == o); }
};

/// Everything the forward pass needs to know about a checkpoint.
struct ModelConfig {
  std::string model_type;            ///< config.json "model_type": opt, llama, mistral, qwen2, qwen3, gemma2
  Family family = Family::Llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;     ///< OPT: ffn_dim
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;          ///< equals num_heads without GQA
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  std::string hidden_act;            ///< "relu", "silu", "gelu", ...
  std::string torch_dtype;           ///< the stored dtype named by config.json, may be empty
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  // OPT
  int64_t word_embed_proj_dim = 0;   ///< embedding width; project_in/out when != hidden_size
  bool do_layer_norm_before = true;  ///< pre-LN (true) or post-LN (OPT-350m)
  bool final_layer_norm = true;      ///< pre-LN and not _remove_final_layer_norm
  bool layer_norm_affine = true;     ///< layer_norm_elementwise_affine
  bool enable_bias = true;           ///< biases in Linear layers

  // LLaMA family
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;       ///< bias on q, k, v (Qwen2: always; LLaMA: attention_bias)
  bool attention_out_bias = false;   ///< bias on o_proj (LLaMA attention_bias)
  bool mlp_bias = false;
  int64_t sliding_window = 0;        ///< 0: none (Mistral: sliding_window)
  std::vector<bool> sliding_layers;  ///< per layer: whether sliding_window applies; empty: every layer
  bool qk_norm = false;              ///< RMSNorm over each head of q and k before RoPE (Qwen3, Gemma-2: no)

  // Gemma-2
  double attn_logit_softcapping = 0;   ///< attention scores become cap * tanh(scores / cap); 0: none
  double final_logit_softcapping = 0;  ///< logits become cap * tanh(logits / cap); 0: none
  double query_pre_attn_scalar = 0;    ///< attention scale 1/sqrt(this); 0: 1/sqrt(head_dim)

  /// The attention window of layer `i`: sliding_window where it applies, else 0 (none).
  int64_t window(int64_t i) const {
    return sliding_layers.empty() || sliding_layers.at(static_cast<size_t>(i)) ? sliding_window : 0;
  }

  /// Per-layer widths where a module method narrowed a layer (config.json
  /// "layer_shapes": one object per layer); empty: every layer has the
  /// model-wide widths above, which stay those of the base model.
  std::vector<LayerShapes> layer_shapes;
  /// Layer `i`'s widths with every 0 resolved to the model-wide value.
  LayerShapes layer_shape(int64_t i) const;
  /// True if some layer differs from the model-wide widths.
  bool has_layer_shapes() const;

  /// Parses config.json text; `source` names the file in errors. Throws
  /// std::runtime_error for malformed JSON, missing or invalid keys, and an
  /// unknown model_type (the message names the key and the file).
  static ModelConfig from_json(const std::string& text, const std::string& source);
  /// Reads and parses a config.json file.
  static ModelConfig from_file(const std::filesystem::path& path);
};

/// Why `shapes` cannot be a layer of a model with config `config` (widths above the base
/// model's, qk_dims of the wrong length, repeated, or breaking rotary pairs); empty if it can.
std::string layer_shape_problem(const ModelConfig& config, const LayerShapes& shapes);

/// The dtype config.json names for the stored weights ("dtype", else
/// "torch_dtype"): float16 or bfloat16; float32 otherwise and when absent.
c10::ScalarType stored_dtype(const ModelConfig& config);

}  // namespace cur4llm::model
