// The forward pass against Hugging Face transformers: logits, loss and every
// layer's hidden states of tiny random checkpoints (tests/fixtures/make_fixtures.py).
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/kv_cache.h>
#include <cur4llm/util/fused_kernels.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>
#include <c10/core/InferenceMode.h>

#include "test_paths.h"
#include "product_checks.h"
#include "test_helpers.h"

#include <cur4llm/io/files.h>

#include <fstream>
#include <limits>
#include <map>
#include <iterator>
#include <string>

using cur4llm::io::SafetensorsFile;
using cur4llm::model::CausalLM;
using cur4llm::model::LoadOptions;
namespace fs = std::filesystem;

using cur4llm::test::model_dir;
using cur4llm::test::TempDir;

namespace {


double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).abs().max().item<double>();
}

// Normalised mean squared error, as llama.cpp's test-backend-ops compares.
double nmse(const at::Tensor& got, const at::Tensor& want) {
  auto g = got.to(at::kDouble).cpu(), w = want.to(at::kDouble).cpu();
  return ((g - w).pow(2).sum() / w.pow(2).sum()).item<double>();
}

// A random model of `config` on CUDA in `dtype` (weights from the device's generator).
std::unique_ptr<CausalLM> random_on_cuda(const cur4llm::model::ModelConfig& config, at::ScalarType dtype) {
  LoadOptions options;
  options.device = c10::Device(c10::kCUDA);
  options.dtype = dtype;
  return CausalLM::random(config, options, 7);
}

// `rows` x `tokens` random ids of `config`'s vocabulary (host tensor, seeded).
at::Tensor random_ids(const cur4llm::model::ModelConfig& config, int64_t rows, int64_t tokens, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(config.vocab_size, {rows, tokens}, gen, at::TensorOptions().dtype(at::kLong));
}

// The float logits with cur4llm's kernels off (ATen's operators), then on; they are left on.
std::pair<at::Tensor, at::Tensor> plain_and_fused(const CausalLM& lm, const at::Tensor& ids) {
  c10::InferenceMode guard;
  cur4llm::util::set_fused_kernels_enabled(false);
  auto plain = lm.forward(ids).to(at::kFloat);
  cur4llm::util::set_fused_kernels_enabled(true);
  return {plain, lm.forward(ids).to(at::kFloat)};
}

// Copies a fixture folder to a scratch folder so that a test can damage it.
fs::path scratch_copy(const std::string& name, const std::string& tag) {
  fs::path dst = fs::temp_directory_path() / ("cur4llm_test_model_" + tag);
  cur4llm::io::remove_tree(dst);
  fs::copy(model_dir(name), dst, fs::copy_options::recursive);
  return dst;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary | std::ios::trunc) << s; }

void replace_in_file(const fs::path& p, const std::string& from, const std::string& to) {
  std::string s = slurp(p);
  auto at = s.find(from);
  REQUIRE(at != std::string::npos);
  s.replace(at, from.size(), to);
  spit(p, s);
}

void check_against_reference(const std::string& name, const LoadOptions& options, double logits_tol) {
  INFO("fixture " << name);
  auto lm = CausalLM::load(model_dir(name), options);
  SafetensorsFile ref(model_dir(name) / "reference.safetensors");
  auto ids = ref.load("input_ids");

  at::Tensor logits;
  {
    c10::InferenceMode guard;
    logits = lm->forward(ids);
  }
  CHECK(max_abs_diff(logits, ref.load("logits")) < logits_tol);

  // One layer at a time reproduces transformers' hidden states after each layer.
  c10::InferenceMode guard;
  auto h = lm->embed(ids);
  CHECK(max_abs_diff(h, ref.load("hidden_states.0")) < logits_tol);
  const int64_t n = lm->num_layers();
  for (int64_t i = 0; i < n; ++i) {
    h = lm->layer(i, h);
    const auto key = "hidden_states." + std::to_string(i + 1);
    // transformers' last entry is taken after the final norm (and OPT's project_out).
    auto got = i + 1 == n ? lm->final_hidden(h) : h;
    INFO("after layer " << i);
    CHECK(max_abs_diff(got, ref.load(key)) < logits_tol);
  }
  // transformers' loss: mean token cross-entropy over the batch (rows have equal length).
  const double loss = cur4llm::eval::sequence_nll(*lm, ids).mean().item<double>();
  CHECK(loss == Approx(ref.load("loss").item<double>()).epsilon(1e-5));
}

}  // namespace

TEST_CASE("fp32 logits equal transformers' for every fixture", "[model][numerics]") {
  for (const char* name : {"opt_pre", "opt_proj_post", "llama_gqa", "llama3_rope", "qwen2_bias", "mistral_window",
                           "llama_gqa_sharded", "llama_gqa_bf16", "opt_pre_fp16"}) {
    check_against_reference(name, {}, 1e-4);
  }
}

TEST_CASE("bf16 and fp16 inference on the CPU stay within dtype tolerance", "[model][numerics]") {
  for (const char* name : {"llama_gqa", "opt_pre", "qwen2_bias"}) {
    INFO("fixture " << name);
    SafetensorsFile ref(model_dir(name) / "reference.safetensors");
    auto want = ref.load("logits");
    for (auto dtype : {at::kBFloat16, at::kHalf}) {
      LoadOptions options;
      options.dtype = dtype;
#if TORCH_VERSION_MAJOR < 2
      if (dtype == at::kHalf) {  // LibTorch 1.13 has no fp16 matmul on the CPU: refused up front
        CHECK_THROWS_WITH(CausalLM::load(model_dir(name), options),
                          Catch::Contains("Half") && Catch::Contains("not supported"));
        continue;
      }
#endif
      auto lm = CausalLM::load(model_dir(name), options);
      REQUIRE(lm->dtype() == dtype);
      c10::InferenceMode guard;
      auto logits = lm->forward(ref.load("input_ids"));
      CHECK(logits.scalar_type() == dtype);
      CHECK(nmse(logits, want) < (dtype == at::kBFloat16 ? 1e-3 : 1e-5));
    }
  }
}

TEST_CASE("CUDA fp32 and bf16 logits match transformers", "[model][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  for (const char* name : {"opt_pre", "opt_proj_post", "llama_gqa", "llama3_rope", "qwen2_bias", "mistral_window"}) {
    LoadOptions fp32;
    fp32.device = c10::Device(c10::kCUDA);
    fp32.dtype = at::kFloat;
    check_against_reference(name, fp32, 2e-4);
    LoadOptions bf16 = fp32;
    bf16.dtype = at::kBFloat16;
    auto lm = CausalLM::load(model_dir(name), bf16);
    SafetensorsFile ref(model_dir(name) / "reference.safetensors");
    c10::InferenceMode guard;
    auto logits = lm->forward(ref.load("input_ids"));
    INFO("fixture " << name << " bf16 on CUDA");
    CHECK(logits.device().is_cuda());
    CHECK(nmse(logits, ref.load("logits")) < 1e-3);
  }
}

TEST_CASE("CUDA: cur4llm's kernels and cuDNN attention give ATen's results on model-sized layers", "[model][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  // Shapes where the vectorised paths run (hidden 768 and 1024, head dim 128 and 64, GQA);
  // the fixtures above cover the scalar paths and real norm weights.
  const char* opt = R"({"model_type": "opt", "vocab_size": 512, "hidden_size": 768, "num_hidden_layers": 2,
      "ffn_dim": 3072, "num_attention_heads": 12, "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
      "do_layer_norm_before": true, "activation_function": "relu", "enable_bias": true})";
  const char* llama = cur4llm::test::kModelSizedLlama;
  for (const char* text : {opt, llama}) {
    const auto config = cur4llm::model::ModelConfig::from_json(text, "test config");
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      auto lm = random_on_cuda(config, dtype);
      const auto ids = random_ids(config, 2, 384, 11);
      c10::InferenceMode guard;
      const auto [plain, fused] = plain_and_fused(*lm, ids);
      // q/k/v and gate/up as one product each: the kernels read their parts as rows further apart.
      REQUIRE(lm->group_projections() == (config.model_type == "opt" ? 2 : 4));
      auto grouped = lm->forward(ids).to(at::kFloat);
      INFO(config.model_type << " " << c10::toString(dtype));
      if (dtype == at::kFloat) {
        CHECK(max_abs_diff(fused, plain) <= 1e-4 * plain.abs().max().item<double>());
        CHECK(max_abs_diff(grouped, plain) <= 1e-4 * plain.abs().max().item<double>());
      } else {
        CHECK(nmse(fused, plain) < 1e-4);
        CHECK(nmse(grouped, plain) < 1e-4);
      }
    }
  }
}

TEST_CASE("CUDA: narrowed heads at long prompts: cuDNN's attention, with the model's scale, gives ATen's", "[model][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  // kModelSizedLlama's heads (128 dimensions) narrowed: layer 0 to 104 query/key and value
  // dimensions, layer 1 to 96 query/key dimensions with whole values (no fused kernel takes
  // unequal widths). Scores are scaled by 1 / sqrt(128), not by the kept width: the kernels are
  // given that scale, and cuDNN's must apply it as ATen's does. With 2 KV heads the cached
  // prefill expands keys and values to the 8 query heads (new tensors); with 8 it hands the
  // kernels slices of the cache (rows `capacity` apart), as a LLaMA-7B prompt does; whole heads too.
  const auto config_for = [](int kv, bool narrowed) {
    std::string text = cur4llm::test::kModelSizedLlama;
    const std::string key = R"("num_key_value_heads": 2)";
    text.replace(text.find(key), key.size(), R"("num_key_value_heads": )" + std::to_string(kv));
    if (narrowed) {
      std::string dims104, dims96;
      for (int j = 0; j < kv; ++j) {
        for (int half = 0; half < 2; ++half) {
          for (int r = 0; r < 52; ++r) dims104 += (dims104.empty() ? "" : ",") + std::to_string(half * 64 + r);
          for (int r = 0; r < 48; ++r) dims96 += (dims96.empty() ? "" : ",") + std::to_string(half * 64 + 8 + r);
        }
      }
      text.pop_back();  // the closing brace
      text += R"(, "layer_shapes": [{"qk_head_dim": 104, "v_head_dim": 104, "qk_dims": [)" + dims104 +
              R"(]}, {"qk_head_dim": 96, "qk_dims": [)" + dims96 + "]}]}";
    }
    return cur4llm::model::ModelConfig::from_json(text, "test config");
  };
  for (const auto& [kv, narrowed] : {std::pair{2, true}, std::pair{8, true}, std::pair{8, false}}) {
    const auto config = config_for(kv, narrowed);
    REQUIRE(config.num_kv_heads == kv);
    REQUIRE(config.layer_shape(0).qk_head_dim == (narrowed ? 104 : 128));
    for (auto dtype : {at::kBFloat16, at::kHalf}) {
      INFO(kv << " KV heads, narrowed " << narrowed << ", " << c10::toString(dtype));
      auto lm = random_on_cuda(config, dtype);
      const auto ids = random_ids(config, 2, 300, 12);
      c10::InferenceMode guard;
      const auto [plain, fused] = plain_and_fused(*lm, ids);  // ATen's attention, then cuDNN's on Hopper
      cur4llm::model::KVCache cache(2, 310, lm->device());
      const auto prefill = lm->forward_cached(ids.cuda(), cache).to(at::kFloat);  // the prompt's first pass
      CHECK(nmse(fused, plain) < 1e-4);
      CHECK(nmse(prefill, plain) < 1e-4);
    }
  }
}

TEST_CASE("CUDA: a model-sized LLaMA decodes on the dense tensor-core kernel as on cuBLAS", "[model][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  using cur4llm::util::Kernel;
  const auto config = cur4llm::model::ModelConfig::from_json(cur4llm::test::kModelSizedLlama, "test config");
  auto lm = random_on_cuda(config, at::kBFloat16);
  REQUIRE(lm->group_projections() == 2 * config.num_layers);  // as the generate app runs it
  c10::InferenceMode guard;
  const auto ids = random_ids(config, 2, 13, 12).cuda();
  // A prefill of 9 tokens (more than the kernel takes: cuBLAS either way), then steps of 2 rows x 1 token: every Linear of a
  // step on the kernel (q/k/v with the norm inside, o_proj and down_proj into the residual, the
  // gate in gate/up's launch) or on cuBLAS with the norm, the addition and the gate apart.
  auto decode = [&] {
    std::vector<at::Tensor> logits;
    cur4llm::model::KVCache cache(2, 17, lm->device());
    logits.push_back(lm->forward_cached(ids.narrow(1, 0, 9), cache).to(at::kFloat));
    for (int64_t t = 9; t < 13; ++t) logits.push_back(lm->forward_cached(ids.narrow(1, t, 1), cache).to(at::kFloat));
    return logits;
  };
  cur4llm::test::KernelScope kernels{{Kernel::dense_mma, false}, {Kernel::norm_in_product, false}};
  const auto cublas = decode();
  kernels.set(Kernel::dense_mma, true);
  kernels.set(Kernel::norm_in_product, true);
  const auto mma = decode();
  REQUIRE(mma.size() == cublas.size());
  CHECK(mma.front().equal(cublas.front()));  // the prefill takes cuBLAS either way
  for (size_t i = 1; i < cublas.size(); ++i) {
    INFO("step " << i);
    const double bound = 2e-2 * (1 + cublas[i].abs().max().item<double>());
    CHECK((mma[i] - cublas[i]).abs().max().item<double>() <= bound);
    // And the same greedy choice wherever cuBLAS's best logit leads by more than the bound.
    const auto top2 = cublas[i].topk(2, -1);
    const auto lead = (std::get<0>(top2).select(-1, 0) - std::get<0>(top2).select(-1, 1)).reshape({-1});
    const auto same = mma[i].argmax(-1).reshape({-1}).eq(std::get<1>(top2).select(-1, 0).reshape({-1}));
    CHECK(same.logical_or(lead.le(2 * bound)).all().item<bool>());
  }
}

TEST_CASE("CUDA: dense 16-bit products of a few tokens on the tensor cores: plain, into a residual, SiLU gate, "
          "with the input's norm",
          "[model][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  using cur4llm::util::Kernel;
  cur4llm::test::KernelScope kernels{{Kernel::dense_mma, true}, {Kernel::norm_in_product, true}};
  c10::InferenceMode guard;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  // 128 columns: one chunk of the kernel; 384: three (fewer than a block's warps); 2816: 22.
  // 48 rows: a block and a half (32 rows each); 70: the last block repeats rows it does not write.
  for (const int64_t cols : {128, 384, 2816}) {
    for (const int64_t rows : {48, 70}) {
      for (const auto dtype : {at::kHalf, at::kBFloat16}) {
        const auto w = at::randn({rows, cols}, gen).to(at::kCUDA, dtype);
        const auto b = at::randn({rows}, gen).to(at::kCUDA, dtype);
        for (const bool with_bias : {false, true}) {
          cur4llm::model::DenseLinear layer(w, with_bias ? b : at::Tensor());
          for (const int64_t tokens : {1, 3, 8}) {
            DYNAMIC_SECTION(cols << " cols, " << rows << " rows, " << c10::toString(dtype) << ", bias " << with_bias
                                 << ", tokens " << tokens) {
              const auto x = at::randn({tokens, cols}, gen).to(at::kCUDA, dtype);
              auto exact = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
              if (with_bias) exact = exact + b.to(at::kDouble);
              cur4llm::test::check_forward_and_add(layer, x, exact, gen);
              const cur4llm::model::InputNorm norm{(at::rand({cols}, gen) + 0.5).to(at::kCUDA, dtype), 1e-5};
              cur4llm::test::check_normed(layer, x, norm, w.to(at::kDouble), with_bias ? b : at::Tensor(), false);
            }
          }
        }
      }
    }
  }
  // The SiLU gate of stacked [gate; up] rows.
  for (const auto dtype : {at::kHalf, at::kBFloat16}) {
    const auto w = at::randn({2 * 40, 1024}, gen).to(at::kCUDA, dtype);
    cur4llm::model::DenseLinear layer(w, at::Tensor());
    for (const int64_t tokens : {1, 8}) {
      const auto x = at::randn({tokens, 1024}, gen).to(at::kCUDA, dtype);
      cur4llm::test::check_silu_gate(layer, x, at::matmul(x.to(at::kDouble), w.to(at::kDouble).t()));
      const cur4llm::model::InputNorm norm{(at::rand({1024}, gen) + 0.5).to(at::kCUDA, dtype), 1e-6};
      cur4llm::test::check_normed(layer, x, norm, w.to(at::kDouble), at::Tensor(), true);
    }
    // The norm in the launch turned off: the caller normalises.
    kernels.set(Kernel::norm_in_product, false);
    const cur4llm::model::InputNorm norm{at::ones({1024}, at::TensorOptions().device(at::kCUDA).dtype(dtype)), 1e-6};
    CHECK_FALSE(layer.forward_normed(at::randn({1, 1024}, gen).to(at::kCUDA, dtype), norm).defined());
    kernels.set(Kernel::norm_in_product, true);
    CHECK_FALSE(layer.silu_gate(at::randn({9, 1024}, gen).to(at::kCUDA, dtype)).defined());  // more than 8 tokens
    kernels.set(Kernel::dense_mma, false);
    CHECK_FALSE(layer.silu_gate(at::randn({1, 1024}, gen).to(at::kCUDA, dtype)).defined());  // turned off
    kernels.set(Kernel::dense_mma, true);
  }
}

TEST_CASE("asking for CUDA without a CUDA device says so, not that a dtype is unsupported", "[model][unit]") {
  if (at::hasCUDA()) {
    WARN("SKIPPED: a CUDA device is present");
    return;
  }
  LoadOptions options;
  options.device = c10::Device(c10::kCUDA);
  CHECK_THROWS_WITH(CausalLM::load(model_dir("llama_gqa"), options),
                    Catch::Contains("no CUDA device is available") && !Catch::Contains("dtype"));
}

TEST_CASE("configs are parsed into the typed struct", "[model][unit]") {
  auto opt = cur4llm::model::ModelConfig::from_file(model_dir("opt_proj_post") / "config.json");
  CHECK(opt.family == cur4llm::model::Family::Opt);
  CHECK(opt.word_embed_proj_dim == 16);
  CHECK(opt.hidden_size == 32);
  CHECK_FALSE(opt.do_layer_norm_before);
  CHECK_FALSE(opt.final_layer_norm);
  CHECK(opt.tie_word_embeddings);

  auto l3 = cur4llm::model::ModelConfig::from_file(model_dir("llama3_rope") / "config.json");
  CHECK(l3.rope_scaling.type == "llama3");
  CHECK(l3.rope_theta == 500000.0);
  CHECK(l3.rope_scaling.original_max_position_embeddings == 8);
  CHECK(l3.num_kv_heads == 2);
  CHECK(l3.head_dim == 8);

  auto qwen = cur4llm::model::ModelConfig::from_file(model_dir("qwen2_bias") / "config.json");
  CHECK(qwen.attention_bias);
  CHECK_FALSE(qwen.attention_out_bias);
  auto mistral = cur4llm::model::ModelConfig::from_file(model_dir("mistral_window") / "config.json");
  CHECK(mistral.sliding_window == 5);
}

TEST_CASE("Linear slots are named as in Hugging Face and can be swapped", "[model][unit]") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  const auto& infos = lm->linears();
  REQUIRE(infos.size() == 2 * 7 + 1);
  CHECK(infos.front().name == "model.layers.0.self_attn.q_proj");
  CHECK(infos.back().name == "lm_head");
  CHECK(lm->linear("model.layers.1.self_attn.k_proj").out_features() == 16);  // 2 KV heads x 8
  CHECK(lm->linear("model.layers.1.mlp.down_proj").in_features() == 48);
  CHECK_THROWS_WITH(lm->linear("model.layers.9.self_attn.q_proj"), Catch::Contains("model.layers.9.self_attn.q_proj"));

  SafetensorsFile ref(model_dir("llama_gqa") / "reference.safetensors");
  auto ids = ref.load("input_ids");
  c10::InferenceMode guard;
  auto before = lm->forward(ids);
  const std::string name = "model.layers.0.mlp.up_proj";
  auto original = lm->linear_ptr(name);
  auto zero = std::make_shared<cur4llm::model::DenseLinear>(at::zeros_like(original->reconstruct_weight()), at::Tensor());
  auto previous = lm->replace_linear(name, zero);
  CHECK(previous == original);
  CHECK(max_abs_diff(lm->forward(ids), before) > 1e-3);  // the swapped layer is used
  lm->replace_linear(name, original);
  CHECK(max_abs_diff(lm->forward(ids), before) == 0.0);
  auto wrong = std::make_shared<cur4llm::model::DenseLinear>(at::zeros({3, 3}), at::Tensor());
  CHECK_THROWS_AS(lm->replace_linear(name, wrong), std::invalid_argument);
}

TEST_CASE("tied lm_head shares the embedding, untied reads its own tensor", "[model][unit]") {
  auto tied = CausalLM::load(model_dir("qwen2_bias"));
  CHECK(tied->linear("lm_head").reconstruct_weight().data_ptr() ==
        tied->other_tensors().at("model.embed_tokens.weight").data_ptr());
  auto untied = CausalLM::load(model_dir("llama_gqa"));
  CHECK(max_abs_diff(untied->linear("lm_head").reconstruct_weight(),
                     untied->other_tensors().at("model.embed_tokens.weight")) > 0.1);
}

TEST_CASE("bad checkpoints give one clear error naming the file and tensor", "[model][errors]") {
  SECTION("no config.json") {
    fs::path dir = fs::temp_directory_path() / "cur4llm_test_model_empty";
    cur4llm::io::remove_tree(dir);
    fs::create_directories(dir);
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("no config.json") && Catch::Contains(dir.string()));
  }
  SECTION("config.json that lies about a shape") {
    auto dir = scratch_copy("llama_gqa", "lies");
    replace_in_file(dir / "config.json", "\"intermediate_size\": 48", "\"intermediate_size\": 40");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("model.layers.0.mlp.gate_proj.weight") &&
                                               Catch::Contains("[48, 32]") && Catch::Contains("[40, 32]") &&
                                               Catch::Contains("model.safetensors"));
  }
  SECTION("unknown model_type") {
    auto dir = scratch_copy("llama_gqa", "type");
    replace_in_file(dir / "config.json", "\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\"");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("gpt_neox") && Catch::Contains("model_type") &&
                                               Catch::Contains("config.json"));
  }
  SECTION("malformed config.json") {
    auto dir = scratch_copy("llama_gqa", "json");
    spit(dir / "config.json", "{\"model_type\": \"llama\", ");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") && Catch::Contains("JSON"));
  }
  SECTION("missing key") {
    auto dir = scratch_copy("llama_gqa", "key");
    replace_in_file(dir / "config.json", "\"hidden_size\": 32,", "");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("hidden_size") && Catch::Contains("missing"));
  }
  SECTION("missing tensor") {
    auto dir = scratch_copy("llama_gqa", "tensor");
    SafetensorsFile file(model_dir("llama_gqa") / "model.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> kept;
    for (const auto& n : file.names()) {
      if (n != "model.layers.1.self_attn.v_proj.weight") kept.emplace_back(n, file.load(n));
    }
    cur4llm::io::save_safetensors(dir / "model.safetensors", kept);
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("model.layers.1.self_attn.v_proj.weight") &&
                                               Catch::Contains("missing"));
  }
  SECTION("unsupported RoPE scaling") {
    auto dir = scratch_copy("llama3_rope", "rope");
    replace_in_file(dir / "config.json", "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("yarn") && Catch::Contains("rope_type"));
  }
}

TEST_CASE("config.json values are checked against the checkpoint before anything is sized by them",
          "[model][errors][bad_input]") {
  for (const std::string layers : {"2147483648", "1000000000", "4611686018427387904", "1", "3"}) {
    INFO("num_hidden_layers " << layers);
    auto dir = scratch_copy("opt_pre", "layers");
    replace_in_file(dir / "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": " + layers);
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") && Catch::Contains("num_hidden_layers") &&
                                               Catch::Contains(layers) && Catch::Contains("holds 2 decoder layers"));
  }
  SECTION("a tensor the config does not use") {
    auto dir = scratch_copy("llama_gqa", "extra");
    SafetensorsFile file(model_dir("llama_gqa") / "model.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> all;
    for (const auto& n : file.names()) all.emplace_back(n, file.load(n));
    all.emplace_back("model.layers.0.mlp.extra_proj.weight", at::zeros({2, 2}));
    cur4llm::io::save_safetensors(dir / "model.safetensors", all);
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("model.layers.0.mlp.extra_proj.weight") &&
                                               Catch::Contains("not used"));
  }
  SECTION("bias tensors of a config that says there are none") {
    auto dir = scratch_copy("opt_pre", "bias");
    replace_in_file(dir / "config.json", "\"enable_bias\": true", "\"enable_bias\": false");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains(".bias") && Catch::Contains("not used"));
  }
  SECTION("dtype, activation and dropout of the wrong kind name the file and key") {
    auto dir = scratch_copy("opt_pre", "keys");
    const std::string original = slurp(dir / "config.json");
    replace_in_file(dir / "config.json", "\"dtype\": \"float32\"", "\"dtype\": \"bogus\"");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") && Catch::Contains("\"dtype\"") &&
                                               Catch::Contains("bogus"));
    spit(dir / "config.json", original);
    replace_in_file(dir / "config.json", "\"activation_function\": \"relu\"", "\"activation_function\": \"bogus\"");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") &&
                                               Catch::Contains("\"activation_function\"") && Catch::Contains("bogus"));
    spit(dir / "config.json", original);
    replace_in_file(dir / "config.json", "\"dropout\": 0.0", "\"dropout\": \"x\"");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") && Catch::Contains("\"dropout\"") &&
                                               Catch::Contains("number"));
    spit(dir / "config.json", original.substr(0, original.rfind('}')) + ", \"deep\": " + std::string(100000, '[') +
                                  std::string(100000, ']') + "}");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") && Catch::Contains("nest deeper than"));
    spit(dir / "config.json", "{\"model_type\": \"opt\", \"model_type\": \"llama\"}");
    CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("config.json") && Catch::Contains("\"model_type\" appears twice"));
  }
}

TEST_CASE("non-finite weights are refused at load unless allowed", "[model][errors][bad_input]") {
  auto dir = scratch_copy("opt_pre", "nan");
  SafetensorsFile file(model_dir("opt_pre") / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> all;
  const std::string victim = "model.decoder.layers.1.fc1.weight";
  bool found = false;
  for (const auto& n : file.names()) {
    auto t = file.load(n);
    if (n == victim || n == victim.substr(6)) {
      t.view(-1)[3] = std::numeric_limits<float>::quiet_NaN();
      t.view(-1)[5] = std::numeric_limits<float>::infinity();
      found = true;
    }
    all.emplace_back(n, t);
  }
  REQUIRE(found);
  cur4llm::io::save_safetensors(dir / "model.safetensors", all);
  CHECK_THROWS_WITH(CausalLM::load(dir), Catch::Contains("fc1.weight") && Catch::Contains("2 non-finite") &&
                                             Catch::Contains("allow_nonfinite"));
  LoadOptions allow;
  allow.allow_nonfinite = true;
  auto lm = CausalLM::load(dir, allow);
  c10::InferenceMode guard;
  CHECK_FALSE(at::isfinite(lm->forward(at::zeros({1, 4}, at::kLong))).all().item<bool>());
}

TEST_CASE("out-of-vocabulary ids and too long OPT inputs are refused", "[model][errors]") {
  auto lm = CausalLM::load(model_dir("opt_pre"));
  c10::InferenceMode guard;
  CHECK_THROWS_WITH(lm->forward(at::full({1, 4}, 128, at::kLong)), Catch::Contains("outside the vocabulary"));
  CHECK_THROWS_WITH(lm->forward(at::zeros({1, 65}, at::kLong)), Catch::Contains("max_position_embeddings"));
}

TEST_CASE("ScopedSlots puts every replaced slot back, in reverse order", "[model][unit]") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  const std::string a = "model.layers.0.mlp.up_proj", b = "model.layers.1.self_attn.o_proj";
  const auto original_a = lm->linear_ptr(a), original_b = lm->linear_ptr(b);
  auto zeros_like = [](const cur4llm::model::LinearPtr& s) {
    return std::make_shared<cur4llm::model::DenseLinear>(at::zeros_like(s->reconstruct_weight()), at::Tensor());
  };
  {
    cur4llm::model::ScopedSlots trial(*lm);
    trial.replace(a, zeros_like(original_a));
    trial.replace(a, zeros_like(original_a));  // replaced twice: the first original must come back
    trial.replace(b, zeros_like(original_b));
    CHECK(lm->linear_ptr(a) != original_a);
    CHECK(trial.original(a) == original_a);
    CHECK(trial.original("lm_head") == lm->linear_ptr("lm_head"));
  }
  CHECK(lm->linear_ptr(a) == original_a);
  CHECK(lm->linear_ptr(b) == original_b);
  try {
    cur4llm::model::ScopedSlots trial(*lm);
    trial.replace(b, zeros_like(original_b));
    throw std::runtime_error("unwinding");
  } catch (const std::runtime_error&) {
  }
  CHECK(lm->linear_ptr(b) == original_b);
}

TEST_CASE("a layer resumed from its prefix at any slot equals the whole layer, also with that slot swapped",
          "[model][unit]") {
  const std::string name = GENERATE(as<std::string>{}, "opt_pre", "opt_proj_post", "llama_gqa", "mistral_window",
                                    "qwen2_bias");
  INFO(name);
  auto lm = CausalLM::load(model_dir(name));
  c10::InferenceMode guard;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(41);
  auto ids = at::randint(lm->config().vocab_size, {2, 9}, gen, at::TensorOptions().dtype(at::kLong));
  auto h = lm->embed(ids);
  for (const auto& info : lm->linears()) {
    if (info.layer < 0 || !info.role) continue;
    INFO(info.name);
    auto hidden = h;
    for (int64_t i = 0; i < info.layer; ++i) hidden = lm->layer(i, hidden);
    const auto prefix = lm->layer_prefix(info.layer, hidden, *info.role);
    const auto before = lm->layer(info.layer, hidden);
    CHECK(at::equal(lm->layer_resume(prefix), before));
    // Another slot in place after the prefix was taken: the rest of the layer uses it.
    const auto original = lm->linear_ptr(info.name);
    cur4llm::model::ScopedSlots trial(*lm);
    trial.replace(info.name, std::make_shared<cur4llm::model::DenseLinear>(original->reconstruct_weight() * 1.5,
                                                                           at::Tensor()));
    const auto want = lm->layer(info.layer, hidden);
    REQUIRE(!at::allclose(want, before));  // the swap matters
    CHECK(at::allclose(lm->layer_resume(prefix), want, 1e-6, 1e-6));
  }
  CHECK_THROWS_AS(lm->layer_resume(cur4llm::model::LayerPrefix()), std::invalid_argument);
}

namespace {

// Weight of slot `name` as a dense layer.
const at::Tensor& dense_weight(const CausalLM& lm, const std::string& name) { return lm.dense_linear(name).weight(); }

std::string slot_of(const CausalLM& lm, int64_t layer, cur4llm::model::LinearRole role) {
  for (const auto& info : lm.linears()) {
    if (info.layer == layer && info.role == role) return info.name;
  }
  return "";
}

}  // namespace

TEST_CASE("group_projections lays q/k/v and gate/up out together, logits, weights and later swaps as before",
          "[model][unit]") {
  using cur4llm::model::LinearRole;
  const std::string name = GENERATE(as<std::string>{}, "opt_pre", "llama_gqa", "qwen2_bias", "qwen3_qknorm",
                                    "gemma2_softcap");
  INFO(name);
  auto lm = CausalLM::load(model_dir(name));
  auto plain = CausalLM::load(model_dir(name));
  const bool gated = lm->config().family != cur4llm::model::Family::Opt;
  const int64_t layers = lm->config().num_layers;
  c10::InferenceMode guard;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto ids = at::randint(lm->config().vocab_size, {2, 11}, gen, at::TensorOptions().dtype(at::kLong));
  const auto before = lm->forward(ids);
  std::map<std::string, at::Tensor> weights;
  for (const auto& info : lm->linears()) weights[info.name] = dense_weight(*lm, info.name).clone();

  // One group per layer for OPT (q/k/v; fc1 has no partner), two for the gated MLP families.
  const int64_t groups = layers * (gated ? 2 : 1);
  CHECK(lm->group_projections() == groups);
  const void* q0 = dense_weight(*lm, slot_of(*lm, 0, LinearRole::Q)).data_ptr();
  CHECK(lm->group_projections() == groups);  // already stacked: counted, not copied again
  CHECK(dense_weight(*lm, slot_of(*lm, 0, LinearRole::Q)).data_ptr() == q0);
  for (int64_t layer = 0; layer < layers; ++layer) {
    std::vector<std::vector<LinearRole>> sets{{LinearRole::Q, LinearRole::K, LinearRole::V}};
    if (gated) sets.push_back({LinearRole::Gate, LinearRole::Up});
    for (const auto& roles : sets) {
      for (size_t j = 1; j < roles.size(); ++j) {
        const auto& prev = dense_weight(*lm, slot_of(*lm, layer, roles[j - 1]));
        const auto& next = dense_weight(*lm, slot_of(*lm, layer, roles[j]));
        INFO("layer " << layer << " slot " << slot_of(*lm, layer, roles[j]));
        CHECK(static_cast<const char*>(next.data_ptr()) ==
              static_cast<const char*>(prev.data_ptr()) + prev.numel() * prev.element_size());
      }
    }
  }
  for (const auto& [slot, w] : weights) CHECK(at::equal(dense_weight(*lm, slot), w));
  CHECK(at::allclose(lm->forward(ids), before, 1e-5, 1e-5));

  // A layer resumed from a prefix (as the sensitivity sweeps do) still equals the whole layer: its
  // key computed alone, the rest as parts of the one product, differ from the whole in round-off.
  auto hidden = lm->embed(ids);
  const auto prefix = lm->layer_prefix(0, hidden, LinearRole::K);
  const auto whole = lm->layer(0, hidden);
  INFO("largest difference " << (lm->layer_resume(prefix) - whole).abs().max().item<double>() << " of "
                             << whole.abs().max().item<double>());
  CHECK(at::allclose(lm->layer_resume(prefix), whole, 1e-5, 1e-5));  // the parts of one product or three: round-off

  // Replacing one slot of a group afterwards: the forward uses the new slot, as on a model never grouped.
  // (Its columns reversed: a scaled key would not matter where keys are normalised, as in Qwen3.)
  const std::string k = slot_of(*lm, 0, LinearRole::K);
  for (auto* model : {lm.get(), plain.get()}) {
    const auto& old = model->dense_linear(k);
    model->replace_linear(k, std::make_shared<cur4llm::model::DenseLinear>(old.weight().flip(1), old.bias()));
  }
  const auto swapped = plain->forward(ids);
  REQUIRE(!at::allclose(swapped, before, 1e-4, 1e-4));
  CHECK(at::allclose(lm->forward(ids), swapped, 1e-5, 1e-5));
  CHECK(lm->group_projections() == groups);  // the group of the new slot is laid out again

  // A group with a slot that is not dense stays apart.
  const std::string q = slot_of(*plain, 1, LinearRole::Q);
  plain->replace_linear(q, std::make_shared<cur4llm::model::ForwardingSlot>(plain->linear_ptr(q)));
  CHECK(plain->group_projections() == groups - 1);
  CHECK(at::allclose(plain->forward(ids), swapped, 1e-5, 1e-5));
}
