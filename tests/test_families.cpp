// Gemma-2 and Qwen3: hand-built tiny checkpoints against a forward pass written
// here directly in ATen (independent of the library's families), the
// transformers parity fixtures (when tests/fixtures/make_fixtures.py has made
// them), and compression, export and load-back.
#include <cur4llm/compress/factory.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/repo/acur_repo.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <map>

using cur4llm::model::CausalLM;
using cur4llm::test::model_dir;
using cur4llm::test::TempDir;
namespace fs = std::filesystem;

namespace {

using Weights = std::map<std::string, at::Tensor>;

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

constexpr int64_t kVocab = 40, kHidden = 16, kInter = 24, kLayers = 3, kHeads = 4, kKv = 2, kHeadDim = 8;

// Random weights under Hugging Face's names; norms near 1 (or near 0 for Gemma's 1 + w).
Weights make_weights(bool gemma, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto randn = [&](std::vector<int64_t> shape, double std) {
    return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) * std;
  };
  Weights w;
  w["model.embed_tokens.weight"] = randn({kVocab, kHidden}, gemma ? 0.3 : 1.0);
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    // Large q and k so that Gemma's attention soft-cap bites.
    w[p + "self_attn.q_proj.weight"] = randn({kHeads * kHeadDim, kHidden}, 1.0);
    w[p + "self_attn.k_proj.weight"] = randn({kKv * kHeadDim, kHidden}, 1.0);
    w[p + "self_attn.v_proj.weight"] = randn({kKv * kHeadDim, kHidden}, 0.3);
    w[p + "self_attn.o_proj.weight"] = randn({kHidden, kHeads * kHeadDim}, 0.2);
    w[p + "mlp.gate_proj.weight"] = randn({kInter, kHidden}, 0.3);
    w[p + "mlp.up_proj.weight"] = randn({kInter, kHidden}, 0.3);
    w[p + "mlp.down_proj.weight"] = randn({kHidden, kInter}, 0.2);
    const double base = gemma ? 0.0 : 1.0;
    w[p + "input_layernorm.weight"] = base + randn({kHidden}, 0.2);
    w[p + "post_attention_layernorm.weight"] = base + randn({kHidden}, 0.2);
    if (gemma) {
      w[p + "pre_feedforward_layernorm.weight"] = randn({kHidden}, 0.2);
      w[p + "post_feedforward_layernorm.weight"] = randn({kHidden}, 0.2);
    } else {
      w[p + "self_attn.q_norm.weight"] = 1.0 + randn({kHeadDim}, 0.3);
      w[p + "self_attn.k_norm.weight"] = 1.0 + randn({kHeadDim}, 0.3);
    }
  }
  w["model.norm.weight"] = (gemma ? 0.0 : 1.0) + randn({kHidden}, 0.2);
  if (!gemma) w["lm_head.weight"] = randn({kVocab, kHidden}, 0.3);
  return w;
}

nlohmann::json gemma2_config() {
  return {{"model_type", "gemma2"},        {"vocab_size", kVocab},          {"hidden_size", kHidden},
          {"intermediate_size", kInter},   {"num_hidden_layers", kLayers},  {"num_attention_heads", kHeads},
          {"num_key_value_heads", kKv},    {"head_dim", kHeadDim},          {"query_pre_attn_scalar", 10},
          {"attn_logit_softcapping", 2.0}, {"final_logit_softcapping", 3.0}, {"sliding_window", 3},
          {"rms_norm_eps", 1e-6},          {"max_position_embeddings", 64}, {"hidden_activation", "gelu_pytorch_tanh"},
          {"tie_word_embeddings", true},   {"rope_theta", 10000.0},         {"bos_token_id", 2},
          {"eos_token_id", 1}};
}

nlohmann::json qwen3_config() {
  return {{"model_type", "qwen3"},        {"vocab_size", kVocab},         {"hidden_size", kHidden},
          {"intermediate_size", kInter},  {"num_hidden_layers", kLayers}, {"num_attention_heads", kHeads},
          {"num_key_value_heads", kKv},   {"head_dim", kHeadDim},         {"rms_norm_eps", 1e-6},
          {"max_position_embeddings", 64}, {"hidden_act", "silu"},        {"tie_word_embeddings", false},
          {"rope_theta", 1000000.0},      {"attention_bias", false}};
}

fs::path write_checkpoint(const fs::path& dir, const nlohmann::json& config, const Weights& w) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(1);
  std::vector<std::pair<std::string, at::Tensor>> tensors(w.begin(), w.end());
  cur4llm::io::save_safetensors(dir / "model.safetensors", tensors);
  return dir;
}

// ----- the reference forward pass, written out here -----

struct Ref {
  bool gemma = false;
  double theta = 10000;
  double eps = 1e-6;
  double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  double attn_cap = 0, final_cap = 0;
  std::vector<int64_t> windows;  // per layer; 0: none
};

at::Tensor rms(const at::Tensor& x, const at::Tensor& w, const Ref& r) {
  const auto n = x * at::rsqrt(x.pow(2).mean(-1, true) + r.eps);
  return r.gemma ? n * (w + 1.0) : n * w;
}

// x [B, H, T, D]: rotate pairs (j, j + D/2) by angle pos * theta^(-2j/D).
at::Tensor rope(const at::Tensor& x, double theta) {
  const int64_t t = x.size(2), half = kHeadDim / 2;
  const auto j = at::arange(half, at::kDouble);
  const auto inv = at::pow(theta, -2.0 * j / static_cast<double>(kHeadDim));
  const auto ang = at::outer(at::arange(t, at::kDouble), inv).to(at::kFloat);  // [T, D/2]
  const auto c = ang.cos(), s = ang.sin();
  const auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
}

at::Tensor attention(const Weights& w, const std::string& p, const at::Tensor& x, const Ref& r, int64_t window) {
  const int64_t b = x.size(0), t = x.size(1);
  auto q = at::linear(x, w.at(p + "self_attn.q_proj.weight")).view({b, t, kHeads, kHeadDim});
  auto k = at::linear(x, w.at(p + "self_attn.k_proj.weight")).view({b, t, kKv, kHeadDim});
  auto v = at::linear(x, w.at(p + "self_attn.v_proj.weight")).view({b, t, kKv, kHeadDim});
  if (!r.gemma) {  // Qwen3: RMSNorm over each head
    q = rms(q, w.at(p + "self_attn.q_norm.weight"), r);
    k = rms(k, w.at(p + "self_attn.k_norm.weight"), r);
  }
  q = rope(q.transpose(1, 2), r.theta);
  k = rope(k.transpose(1, 2), r.theta).repeat_interleave(kHeads / kKv, 1);
  v = v.transpose(1, 2).repeat_interleave(kHeads / kKv, 1);
  auto scores = at::matmul(q, k.transpose(2, 3)) * r.scale;
  if (r.attn_cap > 0) scores = at::tanh(scores / r.attn_cap) * r.attn_cap;
  const auto qi = at::arange(t, at::kLong).unsqueeze(1), ki = at::arange(t, at::kLong).unsqueeze(0);
  auto allowed = ki <= qi;
  if (window > 0) allowed = allowed.logical_and(qi - ki < window);
  scores = scores.masked_fill(allowed.logical_not(), -INFINITY);
  const auto out = at::matmul(at::softmax(scores, -1), v);  // [B, H, T, D]
  return at::linear(out.transpose(1, 2).reshape({b, t, kHeads * kHeadDim}), w.at(p + "self_attn.o_proj.weight"));
}

at::Tensor reference_logits(const Weights& w, const at::Tensor& ids, const Ref& r) {
  auto h = at::embedding(w.at("model.embed_tokens.weight"), ids);
  if (r.gemma) h = h * static_cast<float>(std::sqrt(static_cast<double>(kHidden)));
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const int64_t window = r.windows.empty() ? 0 : r.windows[static_cast<size_t>(i)];
    auto a = attention(w, p, rms(h, w.at(p + "input_layernorm.weight"), r), r, window);
    if (r.gemma) a = rms(a, w.at(p + "post_attention_layernorm.weight"), r);
    h = h + a;
    const auto x = rms(h, w.at(p + (r.gemma ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")), r);
    const auto gate = at::linear(x, w.at(p + "mlp.gate_proj.weight"));
    const auto act = r.gemma ? at::gelu(gate, "tanh") : at::silu(gate);
    auto m = at::linear(act * at::linear(x, w.at(p + "mlp.up_proj.weight")), w.at(p + "mlp.down_proj.weight"));
    if (r.gemma) m = rms(m, w.at(p + "post_feedforward_layernorm.weight"), r);
    h = h + m;
  }
  h = rms(h, w.at("model.norm.weight"), r);
  auto logits = at::linear(h, w.count("lm_head.weight") ? w.at("lm_head.weight") : w.at("model.embed_tokens.weight"));
  if (r.final_cap > 0) logits = at::tanh(logits / r.final_cap) * r.final_cap;
  return logits;
}

at::Tensor probe_ids() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  return at::randint(kVocab, {2, 9}, gen, at::TensorOptions().dtype(at::kLong));
}

at::Tensor model_logits(const CausalLM& lm, const at::Tensor& ids) {
  c10::InferenceMode guard;
  return lm.forward(ids);
}

Ref gemma_ref() {
  Ref r;
  r.gemma = true;
  r.scale = 1.0 / std::sqrt(10.0);
  r.attn_cap = 2.0;
  r.final_cap = 3.0;
  r.windows = {3, 0, 3};  // even layers slide
  return r;
}

}  // namespace

TEST_CASE("Gemma-2: a hand-built model equals the forward pass written out in ATen", "[model][gemma2]") {
  TempDir dir("gemma2_tiny");
  const auto w = make_weights(true, 17);
  auto lm = CausalLM::load(write_checkpoint(dir / "m", gemma2_config(), w));
  CHECK(lm->config().window(0) == 3);
  CHECK(lm->config().window(1) == 0);
  CHECK(lm->config().window(2) == 3);
  const auto ids = probe_ids();
  const auto got = model_logits(*lm, ids);
  const Ref r = gemma_ref();
  CHECK(max_abs_diff(got, reference_logits(w, ids, r)) < 1e-4);
  // Each Gemma-2 feature matters on this model: the reference without it is far off.
  Ref no_window = r;
  no_window.windows = {0, 0, 0};
  CHECK(max_abs_diff(got, reference_logits(w, ids, no_window)) > 1e-2);
  Ref flipped = r;
  flipped.windows = {0, 3, 0};
  CHECK(max_abs_diff(got, reference_logits(w, ids, flipped)) > 1e-2);
  Ref no_attn_cap = r;
  no_attn_cap.attn_cap = 0;
  CHECK(max_abs_diff(got, reference_logits(w, ids, no_attn_cap)) > 1e-2);
  Ref no_final_cap = r;
  no_final_cap.final_cap = 0;
  CHECK(max_abs_diff(got, reference_logits(w, ids, no_final_cap)) > 1e-2);
  Ref head_dim_scale = r;
  head_dim_scale.scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  CHECK(max_abs_diff(got, reference_logits(w, ids, head_dim_scale)) > 1e-2);
  // Logits never leave (-cap, cap); evaluation sees the capped logits too.
  CHECK(got.abs().max().item<double>() < 3.0);
  const auto nll = cur4llm::eval::sequence_nll(*lm, ids).mean().item<double>();
  const auto ref_logits = reference_logits(w, ids, r);
  const auto ref_nll = at::cross_entropy_loss(ref_logits.narrow(1, 0, 8).reshape({16, kVocab}),
                                              ids.narrow(1, 1, 8).reshape({16}))
                           .item<double>();
  CHECK(nll == Approx(ref_nll).epsilon(1e-5));
}

TEST_CASE("Gemma-2: layer_types in config.json choose the windowed layers", "[model][gemma2]") {
  auto config = gemma2_config();
  config["layer_types"] = {"full_attention", "sliding_attention", "sliding_attention"};
  TempDir dir("gemma2_layer_types");
  const auto w = make_weights(true, 19);
  auto lm = CausalLM::load(write_checkpoint(dir / "m", config, w));
  Ref r = gemma_ref();
  r.windows = {0, 3, 3};
  const auto ids = probe_ids();
  CHECK(max_abs_diff(model_logits(*lm, ids), reference_logits(w, ids, r)) < 1e-4);
  config["layer_types"] = {"full_attention", "local"};
  CHECK_THROWS_WITH(cur4llm::model::ModelConfig::from_json(config.dump(), "c.json"),
                    Catch::Contains("c.json") && Catch::Contains("layer_types"));
}

TEST_CASE("Qwen3: a hand-built model (q/k RMSNorm per head, head_dim from config) equals the ATen forward pass",
          "[model][qwen3]") {
  TempDir dir("qwen3_tiny");
  const auto w = make_weights(false, 23);
  auto config = qwen3_config();
  auto lm = CausalLM::load(write_checkpoint(dir / "m", config, w));
  CHECK(lm->config().head_dim == kHeadDim);  // not hidden / heads = 4
  Ref r;
  r.theta = 1000000.0;
  const auto ids = probe_ids();
  const auto got = model_logits(*lm, ids);
  CHECK(max_abs_diff(got, reference_logits(w, ids, r)) < 1e-4);
  // Without the q/k norms the model would differ.
  auto plain = w;
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
    plain[p + "q_norm.weight"] = at::ones({kHeadDim});
    plain[p + "k_norm.weight"] = at::ones({kHeadDim});
  }
  CHECK(max_abs_diff(got, reference_logits(plain, ids, r)) > 1e-2);
  // A checkpoint without them is refused, naming the tensor.
  auto missing = w;
  missing.erase("model.layers.1.self_attn.k_norm.weight");
  CHECK_THROWS_WITH(CausalLM::load(write_checkpoint(dir / "missing", config, missing)),
                    Catch::Contains("model.layers.1.self_attn.k_norm.weight"));
}

TEST_CASE("Gemma-2 and Qwen3: compressed, exported as acur repositories and read back with the same logits",
          "[model][export][gemma2][qwen3]") {
  for (const bool gemma : {true, false}) {
    DYNAMIC_SECTION((gemma ? "gemma2" : "qwen3")) {
      TempDir dir("families_export");
      const auto w = make_weights(gemma, 29);
      auto lm = CausalLM::load(write_checkpoint(dir / "m", gemma ? gemma2_config() : qwen3_config(), w));
      const auto cur = cur4llm::compress::make_compressor("cur");
      int i = 0;
      for (const auto& info : lm->linears()) {
        if (info.layer < 0 || i++ % 2) continue;
        const auto& d = lm->dense_linear(info.name);
        lm->replace_linear(info.name, cur->compress(d.weight(), d.bias(), at::Tensor(), 0.6));
      }
      const auto ids = probe_ids();
      const auto before = model_logits(*lm, ids);
      const auto written = cur4llm::repo::write_acur_repo(*lm, dir / "repo");
      const auto config = nlohmann::json::parse(std::ifstream(written.folder / "config.json"));
      const std::string family = gemma ? "gemma2" : "llama";
      CHECK(config.at("auto_map").at("AutoModelForCausalLM") ==
            "modeling_acur_" + family + (gemma ? ".AcurGemma2ForCausalLM" : ".AcurQwen3ForCausalLM"));
      CHECK(fs::exists(written.folder / ("modeling_acur_" + family + ".py")));
      auto back = CausalLM::load(written.folder);
      CHECK(at::equal(model_logits(*back, ids), before));
    }
  }
}

TEST_CASE("Gemma-2 and Qwen3 fixtures: fp32 logits and every layer's hidden states equal transformers'",
          "[model][numerics][gemma2][qwen3]") {
  for (const char* name : {"qwen3_qknorm", "gemma2_softcap"}) {
    INFO("fixture " << name);
    if (!fs::exists(model_dir(name) / "reference.safetensors")) {
      WARN("SKIPPED: tests/data/models/" << name << " not made yet (tests/fixtures/make_fixtures.py "
                                                   "--only models --models qwen3_qknorm,gemma2_softcap --merge)");
      continue;
    }
    auto lm = CausalLM::load(model_dir(name));
    cur4llm::io::SafetensorsFile ref(model_dir(name) / "reference.safetensors");
    const auto ids = ref.load("input_ids");
    c10::InferenceMode guard;
    CHECK(max_abs_diff(lm->forward(ids), ref.load("logits")) < 1e-4);
    auto h = lm->embed(ids);
    CHECK(max_abs_diff(h, ref.load("hidden_states.0")) < 1e-4);
    for (int64_t i = 0; i < lm->num_layers(); ++i) {
      h = lm->layer(i, h);
      INFO("after layer " << i);
      const auto got = i + 1 == lm->num_layers() ? lm->final_hidden(h) : h;
      CHECK(max_abs_diff(got, ref.load("hidden_states." + std::to_string(i + 1))) < 1e-4);
    }
    CHECK(cur4llm::eval::sequence_nll(*lm, ids).mean().item<double>() ==
          Approx(ref.load("loss").item<double>()).epsilon(1e-5));
  }
}
