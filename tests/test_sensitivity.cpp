// The sensitivity area: the fast sweep (hidden states reused from the layer
// onward, one decomposition per layer) against the straightforward one (a full
// forward per candidate) and against entries computed in the test by swapping
// the layer by hand; stable-rank scores from at::linalg_svdvals.
#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/compress/factory.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/sensitivity/sensitivity.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace cur4llm;
using test::make_samples;
using test::model_dir;

namespace {



std::map<std::string, model::LinearPtr> slots_of(const model::CausalLM& lm) {
  std::map<std::string, model::LinearPtr> out;
  for (const auto& info : lm.linears()) out[info.name] = lm.linear_ptr(info.name);
  return out;
}

// A fixed positive scale per layer (0.2 .. 3), drawn once so the call order does not matter.
compress::ScaleFn fixed_scales(const model::CausalLM& lm, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto scales = std::make_shared<std::map<std::string, at::Tensor>>();
  for (const auto& info : lm.linears()) {
    (*scales)[info.name] = at::rand({info.in_features}, gen, at::TensorOptions().dtype(at::kFloat)) * 2.8 + 0.2;
  }
  return [scales](const std::string& name) { return scales->at(name); };
}

// The entry as the protocol defines it: only that layer compressed, ppl over the samples, layer restored.
double entry_by_hand(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                     const compress::Compressor& compressor, const compress::ScaleFn& scale, const std::string& name,
                     double ratio) {
  const auto original = lm.linear_ptr(name);
  const auto* dense = dynamic_cast<const model::DenseLinear*>(original.get());
  REQUIRE(dense);
  lm.replace_linear(name, compressor.compress(dense->weight(), dense->bias(), scale ? scale(name) : at::Tensor(), ratio));
  const double ppl = eval::samples_perplexity(lm, samples).perplexity;
  lm.replace_linear(name, original);
  return ppl;
}

void require_tables_equal(const search::SensitivityTable& fast, const search::SensitivityTable& slow, double rel) {
  REQUIRE(fast.size() == slow.size());
  for (size_t i = 0; i < fast.size(); ++i) {
    const auto& a = fast.entries()[i];
    const auto& b = slow.entries()[i];
    INFO(a.layer << " at " << a.ratio);
    REQUIRE(a.layer == b.layer);
    REQUIRE(a.ratio == b.ratio);
    REQUIRE(std::isfinite(a.score));
    CHECK(std::abs(a.score - b.score) <= rel * std::abs(b.score));
  }
}

struct Case {
  std::string model;
  std::string method;
  bool scaled;
};

}  // namespace

TEST_CASE("ppl sweep: hidden-state reuse equals a full forward per candidate and hand-swapped layers",
          "[sensitivity][model]") {
  const Case c = GENERATE(Case{"llama_gqa", "cur", false}, Case{"llama_gqa", "svd", true},
                          Case{"opt_proj_post", "cur", true}, Case{"opt_proj_post", "svd", false},
                          Case{"qwen2_bias", "cur", true});
  INFO(c.model << " " << c.method << (c.scaled ? " scaled" : " unscaled"));
  auto lm = model::CausalLM::load(model_dir(c.model));
  // Two lengths, so the batches of a length group and a lone sample both occur.
  const auto samples = make_samples({16, 16, 16, 11, 16}, lm->config().vocab_size, 21);
  const auto compressor = compress::make_compressor(c.method);
  const auto scale = c.scaled ? fixed_scales(*lm, 22) : compress::ScaleFn();
  const auto before = slots_of(*lm);

  sensitivity::SweepOptions opt;
  opt.batch_size = 2;
  const auto fast = sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, opt);
  CHECK(slots_of(*lm) == before);
  opt.reuse_hidden_states = false;
  const auto slow = sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, opt);
  CHECK(slots_of(*lm) == before);

  // Every Linear (lm_head and OPT's projections included), each at 0.4 .. 0.9.
  std::vector<std::string> names;
  for (const auto& info : lm->linears()) names.push_back(info.name);
  CHECK(fast.layers() == names);
  CHECK(fast.size() == names.size() * 6);
  CHECK(fast.metric() == "ppl");
  require_tables_equal(fast, slow, 1e-5);

  std::vector<std::pair<std::string, double>> spot{{"lm_head", 0.5}, {names[names.size() / 2], 0.6}};
  if (c.model == "opt_proj_post") {
    spot.emplace_back("model.decoder.project_in", 0.7);
    spot.emplace_back("model.decoder.project_out", 0.4);
  } else {
    spot.emplace_back("model.layers.0.self_attn.q_proj", 0.9);
  }
  const double dense_ppl = eval::samples_perplexity(*lm, samples).perplexity;
  for (const auto& [name, ratio] : spot) {
    INFO(name << " at " << ratio);
    REQUIRE(lm->has_linear(name));
    const double want = entry_by_hand(*lm, samples, *compressor, scale, name, ratio);
    const auto got = fast.score(name, ratio);
    REQUIRE(got);
    CHECK(std::abs(*got - want) <= 1e-5 * want);
    CHECK(*got != dense_ppl);  // the entry did see a compressed layer
  }
  CHECK(eval::samples_perplexity(*lm, samples).perplexity == dense_ppl);
}

TEST_CASE("ppl sweep: batched samples, odd batch remainders and chunked cross-entropy equal one sample at a time",
          "[sensitivity][model]") {
  struct Fast {
    int64_t batch_size;
    int64_t batch_tokens;
    int64_t chunk;
    int64_t batches;     // forward passes per entry
    int64_t batch_rows;  // samples in the largest batch
  };
  // Five samples of 16 tokens and three of 11: batches of 2 leave a remainder
  // of one in both groups, batches of 3 of two and none, the token budget of
  // 40 gives 2 per batch, and 0 (all in one batch per length) is the GPU default.
  const Fast fast_options = GENERATE(Fast{2, 0, 7, 5, 2}, Fast{3, 0, 5, 3, 3}, Fast{0, 40, 0, 5, 2},
                                     Fast{0, 65536, 13, 2, 5});
  const std::string model = GENERATE(as<std::string>{}, "llama_gqa", "opt_proj_post");
  const std::string method = model == "llama_gqa" ? "cur" : "svd";
  INFO(model << " " << method << " batch " << fast_options.batch_size << " tokens " << fast_options.batch_tokens
             << " chunk " << fast_options.chunk);
  auto lm = model::CausalLM::load(model_dir(model));
  const auto samples = make_samples({16, 11, 16, 16, 11, 16, 11, 16}, lm->config().vocab_size, 25);
  compress::CompressorOptions copts;
  copts.cur.link_solver = compress::CURLinkSolver::Gram;  // the GPU's solver, here on the CPU
  const auto compressor = compress::make_compressor(method, copts);
  const auto scale = fixed_scales(*lm, 26);

  sensitivity::SweepOptions opt;
  opt.batch_size = fast_options.batch_size;
  opt.batch_tokens = fast_options.batch_tokens;
  opt.logits_chunk_tokens = fast_options.chunk;
  sensitivity::SweepProfile profile;
  opt.profile = &profile;
  const auto fast = sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, opt);
  CHECK(profile.batches == fast_options.batches);
  CHECK(profile.batch_size == fast_options.batch_rows);
  CHECK(profile.entries == static_cast<int64_t>(lm->linears().size() * 6));
  CHECK(profile.decompose_s >= 0);
  CHECK(profile.forward_s > 0);

  // The straightforward table: one sample per forward pass, every forward from
  // the embedding, the whole vocabulary's logits of a sample at once, SVD links.
  compress::CompressorOptions plain;
  plain.cur.link_solver = compress::CURLinkSolver::SVD;
  const auto reference = compress::make_compressor(method, plain);
  sensitivity::SweepOptions slow_opt;
  slow_opt.batch_size = 1;
  slow_opt.logits_chunk_tokens = 1 << 20;
  slow_opt.reuse_hidden_states = false;
  const auto slow = sensitivity::ppl_sensitivity(*lm, samples, *reference, scale, slow_opt);
  require_tables_equal(fast, slow, 1e-5);
}

TEST_CASE("CUDA: the fast sweep (second stream, Gram links, fused kernels) equals one sample at a time",
          "[sensitivity][model][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  const std::string model = GENERATE(as<std::string>{}, "llama_gqa", "opt_pre");
  const auto dtype = GENERATE(at::kFloat, at::kBFloat16);
  INFO(model << " " << c10::toString(dtype));
  model::LoadOptions load;
  load.device = c10::Device(c10::kCUDA);
  load.dtype = dtype;
  auto lm = model::CausalLM::load(model_dir(model), load);
  const auto samples = make_samples({16, 16, 16, 11, 16}, lm->config().vocab_size, 27);
  for (const std::string method : {"cur", "svd"}) {
    INFO(method);
    const auto compressor = compress::make_compressor(method);
    const auto scale = fixed_scales(*lm, 28);
    sensitivity::SweepOptions opt;
    const auto fast = sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, opt);
    opt.batch_size = 1;
    opt.reuse_hidden_states = false;
    const auto slow = sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, opt);
    require_tables_equal(fast, slow, dtype == at::kFloat ? 1e-4 : 2e-2);
  }
}

TEST_CASE("ppl sweep in KV-cache mode: k_proj/v_proj only, ratios 0.1 .. 1.9", "[sensitivity][model]") {
  const std::string model = GENERATE(as<std::string>{}, "llama_gqa", "opt_pre");
  INFO(model);
  auto lm = model::CausalLM::load(model_dir(model));
  const auto samples = make_samples({12, 12, 12}, lm->config().vocab_size, 23);
  const auto compressor = compress::make_compressor("svd");
  const auto before = slots_of(*lm);

  sensitivity::SweepOptions opt;
  opt.mode = search::CompressMode::kKvCache;
  const auto fast = sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, opt);
  opt.reuse_hidden_states = false;
  const auto slow = sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, opt);
  CHECK(slots_of(*lm) == before);

  std::vector<std::string> kv;
  for (const auto& info : lm->linears()) {
    if (info.role == model::LinearRole::K || info.role == model::LinearRole::V) kv.push_back(info.name);
  }
  REQUIRE(kv.size() == 4);
  CHECK(fast.layers() == kv);
  REQUIRE(fast.size() == kv.size() * 19);
  for (size_t i = 0; i < 19; ++i) CHECK(fast.entries()[i].ratio == (i + 1) / 10.0);
  require_tables_equal(fast, slow, 1e-5);

  // Above ratio 1 the rank is min(out, in): the layer is exact, so the ppl is the dense one.
  const double dense_ppl = eval::samples_perplexity(*lm, samples).perplexity;
  for (const auto& name : kv) {
    INFO(name);
    const auto& slot = lm->linear(name);
    if (compressor->rank_for(slot.out_features(), slot.in_features(), 1.9) ==
        std::min(slot.out_features(), slot.in_features())) {
      CHECK(std::abs(*fast.score(name, 1.9) - dense_ppl) <= 1e-4 * dense_ppl);
    }
    CHECK(std::abs(*fast.score(name, 0.1) - entry_by_hand(*lm, samples, *compressor, {}, name, 0.1)) <=
          1e-5 * dense_ppl);
  }
}

TEST_CASE("ppl sweep over chosen layers in model order, and refusals of bad layers and empty samples",
          "[sensitivity][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto samples = make_samples({10, 10}, 128, 24);
  const auto compressor = compress::make_compressor("cur");
  sensitivity::SweepOptions opt;
  opt.candidates = {0.3, 0.8};
  // Listed out of order: the fast sweep visits them in model order (its hidden states only move forward).
  opt.layers = {"lm_head", "model.layers.1.mlp.up_proj", "model.layers.0.self_attn.o_proj"};
  const auto fast = sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, opt);
  CHECK(fast.layers() ==
        std::vector<std::string>{"model.layers.0.self_attn.o_proj", "model.layers.1.mlp.up_proj", "lm_head"});
  CHECK(fast.size() == 6);
  for (const auto& name : opt.layers) {
    for (double r : opt.candidates) {
      INFO(name << " at " << r);
      CHECK(std::abs(*fast.score(name, r) - entry_by_hand(*lm, samples, *compressor, {}, name, r)) <=
            1e-5 * *fast.score(name, r));
    }
  }
  opt.layers = {"model.layers.7.self_attn.q_proj"};
  CHECK_THROWS_AS(sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, opt), std::invalid_argument);
  opt.layers = {};
  CHECK_THROWS_AS(sensitivity::ppl_sensitivity(*lm, {}, *compressor, {}, opt), std::invalid_argument);

  // An already-compressed layer is refused, and the model keeps its slots.
  const auto* q = dynamic_cast<const model::DenseLinear*>(lm->linear_ptr("model.layers.1.self_attn.q_proj").get());
  REQUIRE(q);
  lm->replace_linear("model.layers.1.self_attn.q_proj", compressor->compress(q->weight(), q->bias(), {}, 0.5));
  const auto before = slots_of(*lm);
  CHECK_THROWS_AS(sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, opt), std::invalid_argument);
  CHECK_THROWS_WITH(sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, opt),
                    Catch::Contains("layer \"model.layers.1.self_attn.q_proj\" is already cur, not dense"));
  CHECK(slots_of(*lm) == before);
}

TEST_CASE("stable-rank scores are -sr * r^0.1 with sr from at::linalg_svdvals", "[sensitivity][model]") {
  const std::string model = GENERATE(as<std::string>{}, "llama_gqa", "opt_proj_post");
  INFO(model);
  auto lm = model::CausalLM::load(model_dir(model));
  sensitivity::SweepOptions opt;
  const auto table = sensitivity::stable_rank_sensitivity(*lm, opt);
  CHECK(table.metric() == "stable_rank");
  REQUIRE(table.size() == lm->linears().size() * 9);
  for (const auto& info : lm->linears()) {
    const auto* dense = dynamic_cast<const model::DenseLinear*>(lm->linear_ptr(info.name).get());
    REQUIRE(dense);
    const auto w = dense->weight().to(at::kDouble);
    const double sr = w.norm().item<double>() / at::linalg_svdvals(w)[0].item<double>();
    CHECK(sr >= 1.0);
    for (int i = 1; i <= 9; ++i) {
      const double r = i / 10.0;
      INFO(info.name << " at " << r);
      const auto got = table.score(info.name, r);
      REQUIRE(got);
      CHECK(*got == Approx(-sr * std::pow(r, 0.1)).epsilon(1e-5));
    }
  }
  // KV mode: only k_proj/v_proj, with explicit candidates.
  opt.mode = search::CompressMode::kKvCache;
  opt.candidates = {0.5, 1.5};
  const auto kv = sensitivity::stable_rank_sensitivity(*lm, opt);
  CHECK(kv.size() == 4 * 2);
  for (const auto& e : kv.entries()) {
    CHECK((e.layer.find("k_proj") != std::string::npos || e.layer.find("v_proj") != std::string::npos));
  }
}
