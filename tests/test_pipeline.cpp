// Text -> tokens -> perplexity, end to end, against transformers' figures
// (tests/data/reference.json and tiny_opt_reference.json, made by the scripts
// in tests/fixtures on the GPU host).
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/repo/acur_repo.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <fstream>

using cur4llm::data::Purpose;
using cur4llm::model::CausalLM;
namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// stories260K's perplexity at seqlen 512 on `text_spec` with `tokenizer`.
cur4llm::eval::PerplexityResult stories_perplexity(const fs::path& shared, const cur4llm::tokenize::Tokenizer& tokenizer,
                                                   const std::string& text_spec, std::vector<int64_t>* ids_out = nullptr) {
  auto lm = CausalLM::load(shared / "models" / "stories260K-hf");
  auto text = cur4llm::data::load_text(text_spec, Purpose::Evaluation, shared / "text");
  auto ids = tokenizer.encode(text.text);
  if (ids_out) *ids_out = ids;
  cur4llm::eval::PerplexityOptions options;
  options.seqlen = 512;
  options.batch_size = 2;
  return cur4llm::eval::evaluate_perplexity(*lm, ids, options);
}

std::string tinystories_eval(const fs::path& shared) {
  return (shared / "text" / "tinystories" / "tinystories_eval.txt").string();
}

// The carried Shakespeare text, tokenized by the tiny OPT's own tokenizer.
std::vector<int64_t> tiny_opt_tail_ids() {
  auto tokenizer = cur4llm::tokenize::load_tokenizer(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  auto text = cur4llm::data::load_text((cur4llm::test::fixture_dir() / "text" / "shakespeare_tail.txt").string(),
                                       Purpose::Evaluation, "unused");
  return tokenizer->encode(text.text);
}

}  // namespace

TEST_CASE("trained tiny OPT: perplexity equals transformers' on the carried text", "[pipeline][model]") {
  const auto ref = read_json(cur4llm::test::fixture_dir() / "tiny_opt_reference.json");
  auto lm = CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  const auto ids = tiny_opt_tail_ids();
  CHECK(static_cast<int64_t>(ids.size()) == ref.at("tail_tokens").get<int64_t>());
  cur4llm::eval::PerplexityOptions options;
  options.seqlen = 128;
  options.batch_size = 8;
  auto r = cur4llm::eval::evaluate_perplexity(*lm, ids, options);
  CHECK(r.windows == ref.at("tail_windows_seqlen128").get<int64_t>());
  CHECK(r.perplexity == Approx(ref.at("tail_ppl_seqlen128").get<double>()).epsilon(1e-4));
}

TEST_CASE("batching windows does not change the perplexity", "[pipeline]") {
  auto lm = CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  const auto ids = tiny_opt_tail_ids();
  cur4llm::eval::PerplexityOptions one, many;
  one.seqlen = many.seqlen = 64;
  one.max_windows = many.max_windows = 12;
  many.batch_size = 5;  // 5 + 5 + 2
  auto a = cur4llm::eval::evaluate_perplexity(*lm, ids, one);
  auto b = cur4llm::eval::evaluate_perplexity(*lm, ids, many);
  REQUIRE(a.windows == 12);
  REQUIRE(b.windows == 12);
  for (size_t i = 0; i < 12; ++i) CHECK(a.window_nll[i] == Approx(b.window_nll[i]).epsilon(1e-6));
  // Calibration-style scoring of the same windows as separate samples agrees too.
  std::vector<std::vector<int64_t>> samples;
  for (int i = 0; i < 12; ++i) samples.emplace_back(ids.begin() + i * 64, ids.begin() + (i + 1) * 64);
  auto c = cur4llm::eval::samples_perplexity(*lm, samples, many);
  CHECK(c.perplexity == Approx(a.perplexity).epsilon(1e-6));
  // Vocabulary projections of 7 tokens at a time (9 chunks per window) change nothing either.
  many.logits_chunk_tokens = 7;
  auto d = cur4llm::eval::evaluate_perplexity(*lm, ids, many);
  for (size_t i = 0; i < 12; ++i) CHECK(d.window_nll[i] == Approx(a.window_nll[i]).epsilon(1e-6));
}

TEST_CASE("token_nll equals -log_softmax of the logits at the label, in any chunking", "[pipeline]") {
  auto lm = CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  const auto& head = lm->linear("lm_head");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  auto hidden = at::randn({23, head.in_features()}, gen, at::TensorOptions().dtype(at::kFloat));
  auto labels = at::randint(head.out_features(), {23}, gen, at::TensorOptions().dtype(at::kLong));
  // The reference in float64 from the whole logits matrix.
  auto logp = at::log_softmax(head.forward(hidden).to(at::kDouble), -1);
  auto want = logp.gather(1, labels.unsqueeze(1)).squeeze(1).neg();
  for (int64_t chunk : {0, 1, 5, 23, 100}) {
    CAPTURE(chunk);
    auto got = cur4llm::eval::token_nll(head, hidden, labels, chunk);
    REQUIRE(got.sizes() == at::IntArrayRef({23}));
    CHECK(got.scalar_type() == at::kFloat);
    CHECK((got.to(at::kDouble) - want).abs().max().item<double>() < 1e-5 * want.abs().max().item<double>());
  }
}

TEST_CASE("stories260K: perplexity on TinyStories equals transformers' within 0.1%", "[pipeline][model][shared]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto ref = read_json(cur4llm::test::fixture_dir() / "reference.json").at("stories260K");
  auto tokenizer = cur4llm::tokenize::load_tokenizer(shared / "models" / "stories260K-hf");
  auto r = stories_perplexity(shared, *tokenizer, tinystories_eval(shared));
  CHECK(r.windows == ref.at("tinystories_eval_windows").get<int64_t>());
  CHECK(r.perplexity == Approx(ref.at("tinystories_eval_ppl_seqlen512").get<double>()).epsilon(1e-3));
}

TEST_CASE("stories260K: with transformers' own token ids the perplexity agrees to 1e-5", "[pipeline][model][shared]") {
  // transformers tokenizes stories260K with the tokenizer.json it converts from
  // tokenizer.model (committed under tests/data); with those exact ids only the
  // model's arithmetic is compared.
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto ref = read_json(cur4llm::test::fixture_dir() / "reference.json").at("stories260K");
  const auto tok_dir = cur4llm::test::fixture_dir() / "tokenizers" / "stories260K";
  auto tokenizer = cur4llm::tokenize::load_tokenizer_json(tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json");
  std::vector<int64_t> ids;
  auto r = stories_perplexity(shared, *tokenizer, tinystories_eval(shared), &ids);
  CHECK(static_cast<int64_t>(ids.size()) == ref.at("tinystories_eval_tokens").get<int64_t>());
  CHECK(r.perplexity == Approx(ref.at("tinystories_eval_ppl_seqlen512").get<double>()).epsilon(1e-5));
}

TEST_CASE("stories260K: wikitext2 test perplexity equals transformers' within 0.1%", "[pipeline][model][shared]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto ref = read_json(cur4llm::test::fixture_dir() / "reference.json").at("stories260K");
  auto tokenizer = cur4llm::tokenize::load_tokenizer(shared / "models" / "stories260K-hf");
  auto r = stories_perplexity(shared, *tokenizer, "wikitext2");
  CHECK(r.perplexity == Approx(ref.at("wikitext2_test_ppl_seqlen512").get<double>()).epsilon(1e-3));
}

TEST_CASE("stories260K: calibration samples equal the reference sampler's", "[pipeline][data][shared]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto ref = read_json(cur4llm::test::fixture_dir() / "reference.json").at("stories260K");
  auto tokenizer = cur4llm::tokenize::load_tokenizer(shared / "models" / "stories260K-hf");
  auto text = cur4llm::data::load_text((shared / "text" / "tinystories" / "tinystories_calib.txt").string(),
                                       Purpose::Calibration, shared / "text");
  cur4llm::data::CalibrationOptions options;
  options.n_samples = 4;
  options.seqlen = 512;
  options.seed = 233;
  auto samples = cur4llm::data::sample_calibration(text.text, *tokenizer, options);
  REQUIRE(samples.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    INFO("sample " << i);
    CHECK(static_cast<int64_t>(samples[i].size()) == ref.at("calib_seed233_lengths")[i].get<int64_t>());
    std::vector<int64_t> head(samples[i].begin(), samples[i].begin() + 32);
    CHECK(head == ref.at("calib_seed233_first_ids")[i].get<std::vector<int64_t>>());
  }
}

TEST_CASE("compress_model: a saved plan rebuilds the model its search made", "[pipeline][model]") {
  namespace pipeline = cur4llm::pipeline;
  const auto tail = (cur4llm::test::fixture_dir() / "text" / "shakespeare_tail.txt").string();
  pipeline::PipelineOptions o;
  o.param_ratio_target = 0.8;
  o.act_aware = true;
  o.method = "svd";
  o.calib_dataset = tail;
  o.n_calib_samples = 4;
  o.seqlen = 64;
  o.batch_size = 4;
  o.show_progress = false;
  auto tokenizer = cur4llm::tokenize::load_tokenizer(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  auto searched = CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  const auto a = pipeline::compress_model(*searched, *tokenizer, o);
  REQUIRE(a.searched);
  CHECK(a.target_label == "ratio0.8");
  REQUIRE(cur4llm::compress::count_layers(a.plan, "svd") > 0);
  // Every timed stage has its memory peaks, in the same order.
  REQUIRE(a.memory.size() == a.timings.size());
  for (std::size_t i = 0; i < a.timings.size(); ++i) {
    CHECK(a.memory[i].first == a.timings[i].first);
    CHECK(a.memory[i].second.host_bytes > 0);
  }
  cur4llm::test::TempDir dir("pipeline_plan");
  a.plan.save(dir / "plan.json");

  auto o2 = o;
  o2.param_ratio_target = -1;
  o2.plan_file = dir / "plan.json";
  auto applied = CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  const auto b = pipeline::compress_model(*applied, *tokenizer, o2);
  CHECK_FALSE(b.searched);
  CHECK(b.target_label == "plan");
  REQUIRE(b.plan.layers().size() == a.plan.layers().size());
  for (size_t i = 0; i < a.plan.layers().size(); ++i) {
    CHECK(b.plan.layers()[i].method == a.plan.layers()[i].method);
    CHECK(b.plan.layers()[i].rank == a.plan.layers()[i].rank);
  }
  auto ids = at::arange(40, at::kLong).view({1, 40});
  c10::InferenceMode guard;
  CHECK(at::equal(searched->forward(ids), applied->forward(ids)));

  // A plan made with another method, a plan and a target together, two targets: refused before any work.
  auto o3 = o2;
  o3.method = "cur";
  auto fresh = CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  CHECK_THROWS_WITH(pipeline::compress_model(*fresh, *tokenizer, o3), Catch::Contains("--method"));
  auto o4 = o2;
  o4.param_ratio_target = 0.5;
  CHECK_THROWS_WITH(pipeline::validate(o4), Catch::Contains("not both"));
  auto o5 = o;
  o5.ppl_target = 20;
  CHECK_THROWS_WITH(pipeline::validate(o5), Catch::Contains("only one of"));
}

TEST_CASE("method_cache_options: each method is keyed on the options it reads, and on no other", "[pipeline][unit]") {
  using cur4llm::pipeline::method_cache_options;
  cur4llm::pipeline::PipelineOptions a, b;
  b.sigma_fuse = "U";
  b.cur_selection = "sampled";
  const std::map<std::string, std::pair<std::string, std::string>> expected{
      {"cur", {"selection=topk", "selection=sampled"}},
      {"grad_cur", {"selection=topk", "selection=sampled"}},
      {"svd", {"sigma_fuse=UV", "sigma_fuse=U"}},
      {"svd_whiten", {"sigma_fuse=UV", "sigma_fuse=U"}}};
  // Every method the factory knows is classified; those not listed above read neither option.
  for (const auto& method : cur4llm::compress::compressor_names()) {
    a.method = b.method = method;
    INFO(method);
    const auto it = expected.find(method);
    CHECK(method_cache_options(a) == (it == expected.end() ? "" : it->second.first));
    CHECK(method_cache_options(b) == (it == expected.end() ? "" : it->second.second));
  }
  // Folding U into C changes CUR's layers (and their ranks): its own key, for both CUR methods.
  b.cur_fold_u = true;
  b.method = "cur";
  CHECK(method_cache_options(b) == "selection=sampled,fold_u");
  b.method = "grad_cur";
  CHECK(method_cache_options(b) == "selection=sampled,fold_u");
  a.method = "qr";
  CHECK_THROWS_AS(method_cache_options(a), std::invalid_argument);
}

TEST_CASE("CUR's fold_u option is refused for methods that have no U", "[pipeline][unit]") {
  cur4llm::pipeline::PipelineOptions o;
  o.cur_fold_u = true;
  o.method = "cur";
  CHECK_NOTHROW(cur4llm::pipeline::validate_settings(o));
  o.method = "svd";
  CHECK_THROWS_WITH(cur4llm::pipeline::validate_settings(o),
                    Catch::Contains("--cur_fold_u applies to --method cur or grad_cur, not svd"));
}

TEST_CASE("presets: the best configuration by default, the reference's exactly on request", "[pipeline][unit]") {
  namespace pipeline = cur4llm::pipeline;
  pipeline::PipelineOptions o;
  o.param_ratio_target = 0.8;
  // A parameter target: each module narrowed or factorized by whitened SVD, one Lagrangian
  // allocation on the module grid.
  auto best = pipeline::resolve(o);
  CHECK(best.method == "mixed+svd_whiten");
  CHECK_FALSE(*best.sequential);  // module methods refit from the dense inputs
  CHECK_FALSE(*best.act_aware);
  CHECK(best.search == "lagrangian");
  CHECK(best.candidates == std::vector<double>{0.5, 0.6, 0.7, 0.8, 0.9, 0.95});
  CHECK(best.final_cut == cur4llm::search::FinalCut::kConverged);
  CHECK(best.lm_head == pipeline::LmHeadPolicy::kAuto);
  CHECK_NOTHROW(pipeline::validate_settings(best));

  // A method on the Gram matrix given by name: the sequential pass and the fine per-layer grid.
  auto skeleton = o;
  skeleton.method = "skeleton_swap";
  const auto skel = pipeline::resolve(skeleton);
  CHECK(*skel.sequential);
  CHECK_FALSE(*skel.act_aware);  // skeleton_swap reads the Gram matrix, not an activation scale
  REQUIRE(skel.candidates.size() == 12);
  CHECK(skel.candidates.front() == Approx(0.4));
  CHECK(skel.candidates.back() == Approx(0.95));

  // Defaults that do not apply to the method or target give way; explicit values stay.
  auto cur = o;
  cur.method = "cur";
  CHECK_FALSE(*pipeline::resolve(cur).sequential);
  CHECK(*pipeline::resolve(cur).act_aware);
  auto ppl = o;
  ppl.param_ratio_target = -1;
  ppl.ppl_target = 30;
  CHECK(pipeline::resolve(ppl).search == "reference");
  CHECK(pipeline::resolve(ppl).method == "skeleton_swap");  // module methods take a parameter target only
  CHECK(*pipeline::resolve(ppl).sequential);
  auto planned = o;
  planned.plan_file = "plan.json";
  CHECK(pipeline::resolve(planned).method == "skeleton_swap");
  auto kv = o;
  kv.param_ratio_target = -1;
  kv.compress_kv_cache = true;
  kv.kv_cache_ratio_target = 0.5;
  CHECK(pipeline::resolve(kv).candidates.empty());
  auto forced = cur;
  forced.sequential = true;
  CHECK(*pipeline::resolve(forced).sequential);
  CHECK_THROWS_WITH(pipeline::validate_settings(forced), Catch::Contains("--sequential needs a data-aware method"));

  auto ref = o;
  ref.preset = pipeline::parse_preset("reference");
  const auto r = pipeline::resolve(ref);
  CHECK(r.method == "cur");
  CHECK_FALSE(*r.sequential);
  CHECK_FALSE(*r.act_aware);
  CHECK(r.search == "reference");
  CHECK(r.candidates.empty());  // the sweep's own: the reference's 0.4 .. 0.9
  CHECK(r.final_cut == cur4llm::search::FinalCut::kReferenceLastMid);
  CHECK(r.lm_head == pipeline::LmHeadPolicy::kReference);
  CHECK_THROWS_WITH(pipeline::parse_preset("fast"), Catch::Contains("--preset"));
  // resolve() is idempotent.
  CHECK(pipeline::resolve(r).method == r.method);
}

namespace {

// Small, fast settings for compressing the carried tiny OPT on its own text.
cur4llm::pipeline::PipelineOptions tiny_opt_options(double target, std::vector<double> candidates) {
  cur4llm::pipeline::PipelineOptions o;
  o.param_ratio_target = target;
  o.calib_dataset = (cur4llm::test::fixture_dir() / "text" / "shakespeare_tail.txt").string();
  o.n_calib_samples = 4;
  o.seqlen = 64;
  o.batch_size = 4;
  o.candidates = std::move(candidates);
  o.show_progress = false;
  return o;
}

// Compresses `folder` at each target with the default (best) configuration, exports it and
// checks that the exported weights are smaller than the source's and that the tied lm_head stayed dense.
void check_tied_exports_shrink(const fs::path& folder, const std::string& calib) {
  namespace pipeline = cur4llm::pipeline;
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  const auto source_bytes = fs::file_size(folder / "model.safetensors");
  for (double target : {0.9, 0.7, 0.5}) {
    CAPTURE(folder.string(), target);
    pipeline::PipelineOptions o;
    o.param_ratio_target = target;
    o.calib_dataset = calib;
    o.n_calib_samples = 4;
    o.seqlen = 64;
    o.batch_size = 4;
    o.candidates = {0.3, 0.5, 0.7, 0.9};
    o.show_progress = false;
    auto lm = CausalLM::load(folder);
    REQUIRE(lm->config().tie_word_embeddings);
    const auto result = pipeline::compress_model(*lm, *tokenizer, o);
    CHECK(result.plan.find("lm_head") == std::nullopt);  // not a candidate: it stays dense and tied
    CHECK(lm->linear("lm_head").kind() == "dense");
    CHECK(result.budget_ratio <= target + 1e-3);
    CHECK(result.target_met);
    const auto counts = cur4llm::model::count_params(*lm);
    CHECK(counts.total_stored < counts.total_dense);
    cur4llm::test::TempDir out("tied_export");
    const auto written = cur4llm::repo::write_acur_repo(*lm, out / "repo", {});
    CHECK(static_cast<std::uintmax_t>(written.weight_bytes) < source_bytes);
    CHECK(fs::file_size(out / "repo" / "model.safetensors") < source_bytes);
  }
}

}  // namespace

TEST_CASE("a tied lm_head stays dense and tied: exports of a tied OPT are smaller for every target", "[pipeline][model]") {
  const auto tail = (cur4llm::test::fixture_dir() / "text" / "shakespeare_tail.txt").string();
  check_tied_exports_shrink(cur4llm::test::model_dir("tiny-shakespeare-opt"), tail);
}

TEST_CASE("a tied lm_head stays dense and tied: exports of a tied LLaMA are smaller for every target",
          "[pipeline][model][shared]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  // stories260K with its lm_head tied to the embedding: the checkpoint without lm_head.weight.
  cur4llm::test::TempDir dir("tied_llama");
  const fs::path src = shared / "models" / "stories260K-hf";
  for (const char* f : {"tokenizer.model", "tokenizer_config.json"}) fs::copy_file(src / f, dir / f);
  auto config = read_json(src / "config.json");
  config["tie_word_embeddings"] = true;
  std::ofstream(dir / "config.json") << config.dump(1);
  cur4llm::io::SafetensorsFile weights(src / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : weights.names()) {
    if (name != "lm_head.weight") tensors.emplace_back(name, weights.load(name));
  }
  cur4llm::io::save_safetensors(dir / "model.safetensors", tensors);
  check_tied_exports_shrink(dir.path, (shared / "text" / "tinystories" / "tinystories_calib.txt").string());
}

TEST_CASE("a tied lm_head the search may compress (--compress_lm_head) counts in full", "[pipeline][model]") {
  namespace pipeline = cur4llm::pipeline;
  const auto folder = cur4llm::test::model_dir("tiny-shakespeare-opt");
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  auto o = tiny_opt_options(0.8, {0.5, 0.9});
  o.lm_head = pipeline::LmHeadPolicy::kCompress;
  auto lm = CausalLM::load(folder);
  const auto result = pipeline::compress_model(*lm, *tokenizer, o);
  // The head is a candidate but compressing it only adds parameters: the search keeps it dense.
  REQUIRE(result.plan.find("lm_head"));
  CHECK(result.plan.find("lm_head")->method == "dense");
  CHECK(result.budget_ratio <= 0.8 + 1e-3);
  const auto counts = cur4llm::model::count_params(*lm);
  CHECK(counts.total_stored < counts.total_dense);
}

TEST_CASE("a missed target is reported, not silent", "[pipeline][model]") {
  namespace pipeline = cur4llm::pipeline;
  const auto folder = cur4llm::test::model_dir("tiny-shakespeare-opt");
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  const auto o = tiny_opt_options(0.2, {0.6, 0.8});  // 0.2: below what the smallest candidate gives
  auto lm = CausalLM::load(folder);
  const auto result = pipeline::compress_model(*lm, *tokenizer, o);
  CHECK_FALSE(result.target_met);
  CHECK(result.budget_ratio > 0.2);
  CHECK_THAT(result.target_note, Catch::Contains("--param_ratio_target 0.2 not reached") && Catch::Contains("--candidates"));
}

TEST_CASE("memory peaks: a stage's host peak counts what it touched, and the next stage starts afresh", "[pipeline][unit]") {
  namespace util = cur4llm::util;
  CHECK(util::format_bytes(512) == "512 B");
  CHECK(util::format_bytes(3 * 1024 * 1024 / 2) == "1.50 MiB");
  CHECK(util::format_bytes(int64_t{40} << 30) == "40.0 GiB");
  CHECK(util::format_bytes(-1) == "?");

  util::reset_memory_peaks();
  const auto before = util::memory_peaks();
  REQUIRE(before.host_bytes > 0);
  constexpr int64_t kBytes = int64_t{256} << 20;
  {
    auto t = at::ones({kBytes / 4}, at::kFloat);  // 256 MiB, every page written
    CHECK(t.sum().item<double>() == Approx(static_cast<double>(kBytes / 4)));
  }
  const auto during = util::memory_peaks();
  CHECK(during.host_bytes >= before.host_bytes + kBytes * 9 / 10);
  CHECK(during.devices.empty());  // no CUDA device used on this path
  util::reset_memory_peaks();
  const auto after = util::memory_peaks();
  if (!after.host_since_reset) {
    WARN("SKIPPED: this kernel does not reset the peak resident set (/proc/self/clear_refs)");
    return;
  }
  CHECK(after.host_bytes < during.host_bytes - kBytes / 2);  // the freed tensor is not in the new peak
}
