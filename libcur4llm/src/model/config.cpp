#include <cur4llm/model/config.h>

#include <cur4llm/io/files.h>

#include "io/json_parse.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <stdexcept>

namespace cur4llm::model {
namespace {

using Json = nlohmann::json;

// Typed access to config.json keys; every error names the key and the file.
class Keys {
 public:
  Keys(const Json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) throw error(key, "is missing");
    const Json& v = j_.at(key);
    if (!v.is_number_integer()) throw error(key, "must be an integer");
    return v.get<int64_t>();
  }
  int64_t integer(const char* key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }
  int64_t positive(const char* key) const {
    int64_t v = integer(key);
    if (v <= 0) throw error(key, fmt::format("must be positive, not {}", v));
    return v;
  }
  int64_t positive(const char* key, int64_t fallback) const { return has(key) ? positive(key) : fallback; }

  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const Json& v = j_.at(key);
    if (!v.is_number()) throw error(key, "must be a number");
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const Json& v = j_.at(key);
    if (!v.is_boolean()) throw error(key, "must be true or false");
    return v.get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const Json& v = j_.at(key);
    if (!v.is_string()) throw error(key, "must be a string");
    return v.get<std::string>();
  }
  // bos/eos ids may be an int or a list of ints (LLaMA-3 eos); the first counts.
  int64_t token_id(const char* key) const {
    if (!has(key)) return -1;
    const Json& v = j_.at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_array() && !v.empty() && v.front().is_number_integer()) return v.front().get<int64_t>();
    throw error(key, "must be an integer or a list of integers");
  }

  std::runtime_error error(const std::string& key, const std::string& what) const {
    return std::runtime_error(fmt::format("{}: \"{}\" {}", source_, key, what));
  }
  const Json& json() const { return j_; }
  const std::string& source() const { return source_; }

 private:
  const Json& j_;
  std::string source_;
};

void parse_opt(const Keys& k, ModelConfig& c) {
  c.family = Family::Opt;
  c.hidden_size = k.positive("hidden_size");
  c.intermediate_size = k.positive("ffn_dim");
  c.num_heads = k.positive("num_attention_heads");
  c.num_kv_heads = c.num_heads;
  c.word_embed_proj_dim = k.positive("word_embed_proj_dim", c.hidden_size);
  c.do_layer_norm_before = k.boolean("do_layer_norm_before", true);
  c.final_layer_norm = c.do_layer_norm_before && !k.boolean("_remove_final_layer_norm", false);
  c.layer_norm_affine = k.boolean("layer_norm_elementwise_affine", true);
  c.enable_bias = k.boolean("enable_bias", true);
  c.hidden_act = k.string("activation_function", "relu");
  c.norm_eps = 1e-5;  // nn.LayerNorm's default; OPT has no key for it
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", true);
}

void parse_rope(const Keys& k, ModelConfig& c) {
  // transformers 5 writes "rope_parameters" (with rope_theta inside); older
  // configs have "rope_theta" and "rope_scaling" at the top level.
  const Json& j = k.json();
  const Json* scaling = nullptr;
  std::string scaling_key;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (k.has(key)) {
      if (!j.at(key).is_object()) throw k.error(key, "must be an object");
      scaling = &j.at(key);
      scaling_key = key;
      break;
    }
  }
  c.rope_theta = k.number("rope_theta", 10000.0);
  if (!scaling) return;
  Keys s(*scaling, fmt::format("{} (\"{}\")", k.source(), scaling_key));
  c.rope_theta = s.number("rope_theta", c.rope_theta);
  std::string type = s.string("rope_type", s.string("type", "default"));
  if (type == "default") return;
  if (type != "linear" && type != "llama3") {
    throw s.error("rope_type", fmt::format("\"{}\" is not supported (supported: default, linear, llama3)", type));
  }
  c.rope_scaling.type = type;
  c.rope_scaling.factor = s.number("factor", 1.0);
  if (c.rope_scaling.factor <= 0) throw s.error("factor", "must be positive");
  if (type == "llama3") {
    c.rope_scaling.low_freq_factor = s.number("low_freq_factor", 1.0);
    c.rope_scaling.high_freq_factor = s.number("high_freq_factor", 4.0);
    c.rope_scaling.original_max_position_embeddings = s.positive("original_max_position_embeddings");
    if (c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor) {
      throw s.error("high_freq_factor", "must exceed low_freq_factor");
    }
  }
}

// The widths every LLaMA-layout family reads alike: hidden, MLP, query and key/value heads.
void parse_llama_widths(const Keys& k, ModelConfig& c) {
  c.hidden_size = k.positive("hidden_size");
  c.intermediate_size = k.positive("intermediate_size");
  c.num_heads = k.positive("num_attention_heads");
  c.num_kv_heads = k.positive("num_key_value_heads", c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0) {
    throw k.error("num_key_value_heads",
                  fmt::format("({}) must divide num_attention_heads ({})", c.num_kv_heads, c.num_heads));
  }
}

void parse_llama_family(const Keys& k, ModelConfig& c) {
  c.family = Family::Llama;
  parse_llama_widths(k, c);
  c.head_dim = k.positive("head_dim", c.model_type == "qwen3" ? 128 : 0);  // transformers' Qwen3Config default
  c.norm_eps = k.number("rms_norm_eps", 1e-6);
  c.hidden_act = k.string("hidden_act", "silu");
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", false);
  c.mlp_bias = k.boolean("mlp_bias", false);
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases and none on o_proj
    c.attention_out_bias = false;
    if (k.boolean("use_sliding_window", false)) c.sliding_window = k.positive("sliding_window", 0);
  } else {
    c.attention_bias = k.boolean("attention_bias", false);
    c.attention_out_bias = c.attention_bias;
    if (c.model_type == "mistral") c.sliding_window = k.has("sliding_window") ? k.positive("sliding_window") : 0;
  }
  if (c.model_type == "qwen3") {
    c.qk_norm = true;
    // As transformers: with use_sliding_window, layers from max_window_layers on are windowed.
    if (k.boolean("use_sliding_window", false) && k.has("sliding_window") && !k.json().at("sliding_window").is_null()) {
      c.sliding_window = k.positive("sliding_window");
      const int64_t from = k.has("max_window_layers") ? k.positive("max_window_layers", 0) : c.num_layers;
      for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_layers.push_back(i >= from);
    }
  }
  parse_rope(k, c);
}

// Gemma-2: "layer_types" lists "sliding_attention" / "full_attention" per layer; older configs
// leave it out, and then even layers are windowed (transformers' default).
void parse_gemma2(const Keys& k, ModelConfig& c) {
  c.family = Family::Gemma2;
  parse_llama_widths(k, c);
  c.head_dim = k.positive("head_dim", 256);
  c.norm_eps = k.number("rms_norm_eps", 1e-6);
  c.hidden_act = k.string("hidden_activation", k.string("hidden_act", "gelu_pytorch_tanh"));
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", true);
  c.attention_bias = k.boolean("attention_bias", false);
  c.attention_out_bias = c.attention_bias;
  c.query_pre_attn_scalar = k.number("query_pre_attn_scalar", 256.0);
  if (c.query_pre_attn_scalar <= 0) throw k.error("query_pre_attn_scalar", "must be positive");
  const auto cap = [&](const char* key, double fallback) {
    if (!k.has(key) || k.json().at(key).is_null()) return 0.0;
    const double v = k.number(key, fallback);
    if (v < 0) throw k.error(key, "must be positive or null");
    return v;
  };
  c.attn_logit_softcapping = cap("attn_logit_softcapping", 50.0);
  c.final_logit_softcapping = cap("final_logit_softcapping", 30.0);
  if (k.has("sliding_window") && !k.json().at("sliding_window").is_null()) c.sliding_window = k.positive("sliding_window");
  if (c.sliding_window > 0) {
    if (k.has("layer_types")) {
      const Json& types = k.json().at("layer_types");
      if (!types.is_array() || static_cast<int64_t>(types.size()) != c.num_layers) {
        throw k.error("layer_types", fmt::format("must list {} layer types", c.num_layers));
      }
      for (const auto& t : types) {
        if (t != "sliding_attention" && t != "full_attention") {
          throw k.error("layer_types", "holds a type other than sliding_attention and full_attention");
        }
        c.sliding_layers.push_back(t == "sliding_attention");
      }
    } else {
      for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_layers.push_back(i % 2 == 0);
    }
  }
  parse_rope(k, c);
}

}  // namespace

std::string layer_shape_problem(const ModelConfig& c, const LayerShapes& s) {
  if (s.intermediate_size > c.intermediate_size) {
    return fmt::format("intermediate_size {} exceeds the model's {}", s.intermediate_size, c.intermediate_size);
  }
  if (s.v_head_dim > c.head_dim) return fmt::format("v_head_dim {} exceeds head_dim ({})", s.v_head_dim, c.head_dim);
  if (s.qk_head_dim > c.head_dim) return fmt::format("qk_head_dim {} exceeds head_dim ({})", s.qk_head_dim, c.head_dim);
  const int64_t dk = s.qk_head_dim == 0 ? c.head_dim : s.qk_head_dim;
  if (dk == c.head_dim) {
    if (!s.qk_dims.empty()) return "qk_dims is given, but qk_head_dim is the model's head_dim";
    return {};
  }
  if (static_cast<int64_t>(s.qk_dims.size()) != c.num_kv_heads * dk) {
    return fmt::format("qk_dims must list {} dimensions ({} KV heads x qk_head_dim {}), not {}", c.num_kv_heads * dk,
                       c.num_kv_heads, dk, s.qk_dims.size());
  }
  const bool rotary = c.family == Family::Llama;
  if (rotary && dk % 2 != 0) return fmt::format("qk_head_dim {} must be even (rotary pairs)", dk);
  const int64_t half = c.head_dim / 2;
  for (int64_t j = 0; j < c.num_kv_heads; ++j) {
    std::vector<bool> seen(static_cast<size_t>(c.head_dim), false);
    for (int64_t r = 0; r < dk; ++r) {
      const int64_t d = s.qk_dims[static_cast<size_t>(j * dk + r)];
      if (d < 0 || d >= c.head_dim) return fmt::format("qk_dims entry {} is outside [0, {})", d, c.head_dim);
      if (seen[static_cast<size_t>(d)]) return fmt::format("qk_dims repeats dimension {} of KV head {}", d, j);
      seen[static_cast<size_t>(d)] = true;
      if (rotary && r < dk / 2 &&
          (d >= half || s.qk_dims[static_cast<size_t>(j * dk + r + dk / 2)] != d + half)) {
        return fmt::format("qk_dims of KV head {} must keep rotary pairs (entry {} + {} is entry {} + {})", j, r, dk / 2,
                           r, half);
      }
    }
  }
  return {};
}

namespace {

// "layer_shapes": [{"intermediate_size": n, "qk_head_dim": d, "v_head_dim": d}, ...], one per layer
// (written by module methods, docs/methods.md); keys may be left out for the model-wide value.
void parse_layer_shapes(const Keys& k, ModelConfig& c) {
  if (!k.has("layer_shapes")) return;
  const Json& list = k.json().at("layer_shapes");
  if (!list.is_array() || static_cast<int64_t>(list.size()) != c.num_layers) {
    throw k.error("layer_shapes", fmt::format("must be a list of {} objects, one per layer", c.num_layers));
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("layer_shapes[{}]", i);
    if (!list[i].is_object()) throw k.error(where, "must be an object");
    Keys entry(list[i], k.source());
    LayerShapes s;
    s.intermediate_size = entry.has("intermediate_size") ? entry.positive("intermediate_size") : 0;
    s.qk_head_dim = entry.has("qk_head_dim") ? entry.positive("qk_head_dim") : 0;
    s.v_head_dim = entry.has("v_head_dim") ? entry.positive("v_head_dim") : 0;
    if (entry.has("qk_dims")) {
      const Json& dims = list[i].at("qk_dims");
      if (!dims.is_array()) throw k.error(where, "qk_dims must be a list of integers");
      for (const auto& d : dims) {
        if (!d.is_number_integer()) throw k.error(where, "qk_dims must be a list of integers");
        s.qk_dims.push_back(d.get<int64_t>());
      }
    }
    for (const auto& [key, value] : list[i].items()) {
      if (key != "intermediate_size" && key != "qk_head_dim" && key != "v_head_dim" && key != "qk_dims") {
        throw k.error(where, fmt::format("has an unknown key \"{}\"", key));
      }
    }
    const std::string problem = layer_shape_problem(c, s);
    if (!problem.empty()) throw k.error(where, problem);
    c.layer_shapes.push_back(s);
  }
}

using Parser = std::function<void(const Keys&, ModelConfig&)>;

// The registry: config.json model_type -> how its hyper-parameters are read.
const std::map<std::string, Parser>& registry() {
  static const std::map<std::string, Parser> table = {
      {"opt", parse_opt},
      {"llama", parse_llama_family},
      {"mistral", parse_llama_family},
      {"qwen2", parse_llama_family},
      {"qwen3", parse_llama_family},
      {"gemma2", parse_gemma2},
  };
  return table;
}

}  // namespace

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source) {
  // Depth-limited; a key given twice is refused (which value was meant?).
  const Json j = cur4llm::detail::parse_json(text, source);
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object", source));
  Keys k(j, source);
  ModelConfig c;
  c.model_type = k.string("model_type", "");
  if (c.model_type.empty()) throw k.error("model_type", "is missing");
  auto it = registry().find(c.model_type);
  if (it == registry().end()) {
    std::string known;
    for (const auto& [name, parser] : registry()) known += (known.empty() ? "" : ", ") + name;
    throw k.error("model_type", fmt::format("\"{}\" is not supported (supported: {})", c.model_type, known));
  }
  c.vocab_size = k.positive("vocab_size");
  c.num_layers = k.positive("num_hidden_layers");
  c.max_position_embeddings = k.positive("max_position_embeddings", 2048);
  c.torch_dtype = k.string("dtype", k.string("torch_dtype", ""));
  {
    const char* dtype_key = k.has("dtype") ? "dtype" : "torch_dtype";
    static const char* const kDtypes[] = {"", "float32", "float16", "bfloat16", "float64", "auto"};
    if (std::find(std::begin(kDtypes), std::end(kDtypes), c.torch_dtype) == std::end(kDtypes)) {
      throw k.error(dtype_key, fmt::format("\"{}\" is not a dtype (expected float32, float16, bfloat16 or float64)",
                                           c.torch_dtype));
    }
  }
  c.bos_token_id = k.token_id("bos_token_id");
  c.eos_token_id = k.token_id("eos_token_id");
  it->second(k, c);
  {
    const char* act_key = c.family == Family::Opt ? "activation_function"
                          : c.family == Family::Gemma2 ? "hidden_activation"
                                                       : "hidden_act";
    static const char* const kActivations[] = {"relu", "silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh",
                                               "gelu_fast"};
    if (std::find(std::begin(kActivations), std::end(kActivations), c.hidden_act) == std::end(kActivations)) {
      throw k.error(act_key, fmt::format("\"{}\" is not supported (supported: relu, silu, swish, gelu, gelu_new, "
                                         "gelu_pytorch_tanh, gelu_fast)",
                                         c.hidden_act));
    }
  }
  // Values transformers reads that cur4llm does not use must still be what their type says.
  for (const char* key : {"dropout", "attention_dropout", "activation_dropout", "layerdrop", "initializer_range",
                          "init_std"}) {
    k.number(key, 0.0);
  }
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0) {
      throw k.error("num_attention_heads",
                    fmt::format("({}) must divide hidden_size ({})", c.num_heads, c.hidden_size));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  parse_layer_shapes(k, c);
  return c;
}

LayerShapes ModelConfig::layer_shape(int64_t i) const {
  if (i < 0 || i >= num_layers) throw std::out_of_range(fmt::format("layer {} out of range [0, {})", i, num_layers));
  LayerShapes s = i < static_cast<int64_t>(layer_shapes.size()) ? layer_shapes[i] : LayerShapes{};
  if (s.intermediate_size == 0) s.intermediate_size = intermediate_size;
  if (s.qk_head_dim == 0) s.qk_head_dim = head_dim;
  if (s.v_head_dim == 0) s.v_head_dim = head_dim;
  return s;
}

bool ModelConfig::has_layer_shapes() const {
  const LayerShapes base{intermediate_size, head_dim, head_dim};
  for (int64_t i = 0; i < static_cast<int64_t>(layer_shapes.size()); ++i) {
    if (layer_shape(i) != base) return true;
  }
  return false;
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& path) {
  return from_json(io::read_file(path), path.string());
}

c10::ScalarType stored_dtype(const ModelConfig& config) {
  if (config.torch_dtype == "float16") return c10::kHalf;
  if (config.torch_dtype == "bfloat16") return c10::kBFloat16;
  return c10::kFloat;
}

}  // namespace cur4llm::model
