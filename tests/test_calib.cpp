// The calib area: activation statistics against inputs and gradients computed
// in the test from the checkpoint tensors (never by the code under test), the
// scale formula by hand, the safetensors round trip, and the model's slots
// restored after collection (also when it throws).
#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

using namespace cur4llm;
using test::make_samples;
using test::model_dir;
using calib::ScalingMethod;

namespace {



at::Tensor ids_tensor(const std::vector<int64_t>& s) {
  return at::tensor(s, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

double max_rel(const at::Tensor& got, const at::Tensor& want) {
  auto g = got.to(at::kDouble), w = want.to(at::kDouble);
  return ((g - w).abs().max() / w.abs().max()).item<double>();
}

std::map<std::string, model::LinearPtr> slots_of(const model::CausalLM& lm) {
  std::map<std::string, model::LinearPtr> out;
  for (const auto& info : lm.linears()) out[info.name] = lm.linear_ptr(info.name);
  return out;
}

void require_same_slots(const model::CausalLM& lm, const std::map<std::string, model::LinearPtr>& before) {
  for (const auto& [name, slot] : before) {
    INFO(name);
    CHECK(lm.linear_ptr(name).get() == slot.get());
  }
}

// A dense slot whose weight is a leaf the test differentiates.
class LeafSlot final : public model::LinearSlot {
 public:
  LeafSlot(at::Tensor w, at::Tensor b) : w_(std::move(w)), b_(std::move(b)) {}
  at::Tensor forward(const at::Tensor& x) const override { return at::linear(x, w_, b_); }
  int64_t in_features() const override { return w_.size(1); }
  int64_t out_features() const override { return w_.size(0); }
  int64_t weight_params() const override { return w_.numel(); }
  std::string kind() const override { return "dense"; }
  std::vector<std::pair<std::string, at::Tensor>> state() const override { return {{"weight", w_}}; }
  at::Tensor reconstruct_weight() const override { return w_; }

 private:
  at::Tensor w_, b_;
};

// The llama_gqa fixture's RMSNorm (config.json: rms_norm_eps 1e-5), written out.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w) {
  return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + 1e-5) * w;
}

}  // namespace

TEST_CASE("abs_mean, abs_max and gram of layer 0's q/k/v equal the RMS-normed embeddings", "[calib][model]") {
  const auto dir = model_dir("llama_gqa");
  auto lm = model::CausalLM::load(dir);
  // Two equal-length samples share a batch; the third has its own length.
  const auto samples = make_samples({12, 12, 9}, 128, 11);
  calib::CollectOptions opt;
  opt.abs_mean = opt.abs_max = opt.gram = true;
  opt.batch_size = 2;
  const auto stats = calib::collect_statistics(*lm, samples, opt);

  // Layer 0's attention input from the checkpoint itself: embedding rows, then RMSNorm.
  io::SafetensorsFile ckpt(dir / "model.safetensors");
  const auto embed = ckpt.load("model.embed_tokens.weight").to(at::kDouble);
  const auto norm_w = ckpt.load("model.layers.0.input_layernorm.weight").to(at::kDouble);
  auto abs_mean = at::zeros({32}, at::kDouble), abs_max = at::zeros({32}, at::kDouble);
  auto gram = at::zeros({32, 32}, at::kDouble);
  for (const auto& s : samples) {
    auto x = rms_norm(embed.index_select(0, at::tensor(s, at::kLong)), norm_w);  // [T, 32]
    abs_mean += x.abs().mean(0);
    abs_max = at::maximum(abs_max, std::get<0>(x.abs().max(0)));
    gram += at::mm(x.t(), x);
  }

  REQUIRE(stats.layer_names().size() == lm->linears().size());
  for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
    const auto name = std::string("model.layers.0.self_attn.") + proj;
    INFO(name);
    const auto& l = stats.layer(name);
    CHECK(l.samples == 3);
    CHECK(l.tokens == 12 + 12 + 9);
    REQUIRE(l.abs_mean_sum.scalar_type() == at::kFloat);
    REQUIRE(l.gram.scalar_type() == at::kDouble);
    REQUIRE(l.gram.sizes() == at::IntArrayRef({32, 32}));
    CHECK(max_rel(l.abs_mean_sum, abs_mean) < 1e-5);
    CHECK(max_rel(l.abs_max, abs_max) < 1e-5);
    CHECK(max_rel(l.gram, gram) < 1e-5);
    CHECK_FALSE(l.fisher_sq_sum.defined());
    // statistic() hands out exactly what was accumulated.
    CHECK(at::equal(stats.statistic(name, ScalingMethod::AbsMean), l.abs_mean_sum));
    CHECK(at::equal(stats.statistic(name, ScalingMethod::AbsMax), l.abs_max));
  }
  // Fisher was not collected: asking for it names the layer.
  CHECK_THROWS_AS(stats.statistic("lm_head", ScalingMethod::Fisher), std::invalid_argument);
  CHECK_THROWS_AS(stats.layer("model.layers.9.self_attn.q_proj"), std::invalid_argument);
}

TEST_CASE("lm_head's abs statistics equal |final hidden states| whatever the batch size", "[calib][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto samples = make_samples({10, 10, 10, 7}, 128, 12);
  auto abs_mean = at::zeros({32}, at::kDouble), abs_max = at::zeros({32}, at::kDouble);
  for (const auto& s : samples) {
    auto h = lm->embed(ids_tensor(s));
    for (int64_t i = 0; i < lm->num_layers(); ++i) h = lm->layer(i, h);
    auto x = lm->final_hidden(h).squeeze(0).abs().to(at::kDouble);
    abs_mean += x.mean(0);
    abs_max = at::maximum(abs_max, std::get<0>(x.max(0)));
  }
  for (int64_t batch : {1, 3}) {
    INFO("batch_size " << batch);
    calib::CollectOptions opt;
    opt.abs_max = true;
    opt.batch_size = batch;
    const auto stats = calib::collect_statistics(*lm, samples, opt);
    const auto& l = stats.layer("lm_head");
    CHECK(l.samples == 4);
    CHECK(l.tokens == 37);
    CHECK(max_rel(l.abs_mean_sum, abs_mean) < 1e-5);
    CHECK(max_rel(l.abs_max, abs_max) < 1e-5);
    CHECK_FALSE(l.gram.defined());
    // Every decoder layer saw every token too.
    for (const auto& info : lm->linears()) CHECK(stats.layer(info.name).tokens == 37);
  }
}

TEST_CASE("Fisher of lm_head and a down_proj equals gradients of the test's own cross-entropy", "[calib][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto samples = make_samples({9, 14, 6}, 128, 13);
  const std::vector<std::string> names{"lm_head", "model.layers.1.mlp.down_proj"};

  // Leaf copies of the two weights in slots of the test's own; the rest of the model is constant.
  std::map<std::string, at::Tensor> leaves, fisher_sq;
  std::map<std::string, model::LinearPtr> originals;
  for (const auto& name : names) {
    const auto* dense = dynamic_cast<const model::DenseLinear*>(lm->linear_ptr(name).get());
    REQUIRE(dense);
    leaves[name] = dense->weight().detach().clone().requires_grad_(true);
    fisher_sq[name] = at::zeros({dense->in_features()}, at::kDouble);
    originals[name] = lm->replace_linear(name, std::make_shared<LeafSlot>(leaves[name], dense->bias()));
  }
  for (const auto& s : samples) {
    const int64_t t = static_cast<int64_t>(s.size()) - 1;
    auto logits = lm->forward(ids_tensor(s)).squeeze(0).narrow(0, 0, t).to(at::kDouble);  // [T-1, vocab]
    auto labels = at::tensor(std::vector<int64_t>(s.begin() + 1, s.end()), at::kLong);
    // Cross-entropy written out: mean over the T-1 predictions of logsumexp - logit of the label.
    auto loss = (at::logsumexp(logits, 1) - logits.gather(1, labels.unsqueeze(1)).squeeze(1)).mean();
    for (auto& [name, leaf] : leaves) leaf.mutable_grad() = at::Tensor();
    loss.backward();
    for (const auto& name : names) fisher_sq[name] += leaves[name].grad().to(at::kDouble).pow(2).mean(0);
  }
  for (const auto& name : names) lm->replace_linear(name, originals[name]);

  const auto before = slots_of(*lm);
  calib::CollectOptions opt = calib::CollectOptions::for_method(ScalingMethod::Fisher);
  CHECK(opt.fisher);
  CHECK_FALSE(opt.abs_mean);
  const auto stats = calib::collect_statistics(*lm, samples, opt);
  require_same_slots(*lm, before);
  for (const auto& name : names) {
    INFO(name);
    const auto& l = stats.layer(name);
    CHECK(l.samples == 3);
    CHECK(max_rel(l.fisher_sq_sum, fisher_sq[name]) < 1e-4);
    CHECK(max_rel(stats.statistic(name, ScalingMethod::Fisher), (fisher_sq[name] / 3.0).sqrt()) < 1e-4);
  }
  // Every Linear got a gradient, and no weight of the model was left requiring grad.
  for (const auto& info : lm->linears()) {
    INFO(info.name);
    CHECK(stats.layer(info.name).fisher_sq_sum.defined());
    CHECK_FALSE(lm->linear(info.name).reconstruct_weight().requires_grad());
  }
}

TEST_CASE("fisher_abs_mean collects the same abs_mean as abs_mean alone", "[calib][model]") {
  // The reference takes abs_mean from a plain forward of the whole sample; the
  // backward pass for Fisher must not change what lm_head's abs_mean sees.
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto samples = make_samples({11, 8}, 128, 14);
  const auto plain = calib::collect_statistics(*lm, samples, calib::CollectOptions::for_method(ScalingMethod::AbsMean));
  const auto both =
      calib::collect_statistics(*lm, samples, calib::CollectOptions::for_method(ScalingMethod::FisherAbsMean));
  for (const auto& info : lm->linears()) {
    INFO(info.name);
    const auto& a = plain.layer(info.name);
    const auto& b = both.layer(info.name);
    CHECK(a.tokens == 19);
    CHECK(b.tokens == 19);
    CHECK(b.samples == 2);
    CHECK(max_rel(b.abs_mean_sum, a.abs_mean_sum) < 1e-6);
    CHECK(b.fisher_sq_sum.defined());
    CHECK_FALSE(a.fisher_sq_sum.defined());
  }
}

TEST_CASE("scale = stat^alpha (times fisher^alpha) + 1e-6, by hand", "[calib][unit]") {
  calib::ActivationStatistics stats;
  auto& l = stats.mutable_layer("x");
  l.abs_mean_sum = at::tensor({4.0f, 0.0f, 0.25f});
  l.abs_max = at::tensor({9.0f, 1.0f, 16.0f});
  l.fisher_sq_sum = at::tensor({8.0f, 2.0f, 0.0f});  // 2 samples: fisher = sqrt([4, 1, 0]) = [2, 1, 0]
  l.samples = 2;
  auto expect = [](const at::Tensor& got, std::vector<double> want) {
    REQUIRE(got.scalar_type() == at::kFloat);
    REQUIRE(got.numel() == static_cast<int64_t>(want.size()));
    for (size_t i = 0; i < want.size(); ++i) CHECK(got[i].item<double>() == Approx(want[i]).epsilon(1e-6).margin(1e-9));
  };
  expect(stats.scale("x", ScalingMethod::AbsMean, 0.5), {2 + 1e-6, 1e-6, 0.5 + 1e-6});
  expect(stats.scale("x", ScalingMethod::AbsMean, 1.0), {4 + 1e-6, 1e-6, 0.25 + 1e-6});
  expect(stats.scale("x", ScalingMethod::AbsMax, 0.5), {3 + 1e-6, 1 + 1e-6, 4 + 1e-6});
  expect(stats.scale("x", ScalingMethod::Fisher, 0.5), {std::sqrt(2.0) + 1e-6, 1 + 1e-6, 1e-6});
  expect(stats.scale("x", ScalingMethod::Fisher, 2.0), {4 + 1e-6, 1 + 1e-6, 1e-6});
  // fisher_abs_mean: abs_mean^a * fisher^a = [2*sqrt(2), 0, 0] at a = 0.5.
  expect(stats.scale("x", ScalingMethod::FisherAbsMean, 0.5), {2 * std::sqrt(2.0) + 1e-6, 1e-6, 1e-6});
  // alpha 0: stat^0 = 1 everywhere (0^0 = 1 as in torch.pow).
  expect(stats.scale("x", ScalingMethod::AbsMean, 0.0), {1 + 1e-6, 1 + 1e-6, 1 + 1e-6});
  CHECK_THROWS_AS(stats.scale("x", ScalingMethod::AbsMean, -0.5), std::invalid_argument);
  CHECK_THROWS_AS(stats.scale("y", ScalingMethod::AbsMean, 0.5), std::invalid_argument);

  auto& m = stats.mutable_layer("no_fisher");
  m.abs_mean_sum = at::ones({3});
  m.samples = 1;
  CHECK_THROWS_AS(stats.scale("no_fisher", ScalingMethod::FisherAbsMean, 0.5), std::invalid_argument);
  CHECK_THROWS_AS(stats.scale("no_fisher", ScalingMethod::AbsMax, 0.5), std::invalid_argument);
}

TEST_CASE("statistics round trip through safetensors with metadata and malformed files are named", "[calib][io]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto samples = make_samples({8, 8}, 128, 15);
  calib::CollectOptions opt = calib::CollectOptions::for_method(ScalingMethod::FisherAbsMean);
  opt.abs_max = opt.gram = true;
  const auto stats = calib::collect_statistics(*lm, samples, opt);

  const auto dir = std::filesystem::temp_directory_path() / "cur4llm_test_calib_roundtrip";
  io::remove_tree(dir);
  std::filesystem::create_directories(dir);
  const auto path = dir / "stats.safetensors";
  stats.save(path, {{"model", "llama_gqa"}, {"alpha", "0.5"}});
  std::map<std::string, std::string> meta;
  const auto back = calib::ActivationStatistics::load(path, &meta);
  CHECK(meta == std::map<std::string, std::string>{{"model", "llama_gqa"}, {"alpha", "0.5"}});
  REQUIRE(back.layer_names() == stats.layer_names());
  for (const auto& name : stats.layer_names()) {
    INFO(name);
    const auto& a = stats.layer(name);
    const auto& b = back.layer(name);
    CHECK(b.samples == 2);
    CHECK(b.tokens == 16);
    CHECK(b.samples == a.samples);
    CHECK(b.tokens == a.tokens);
    CHECK(at::equal(a.abs_mean_sum, b.abs_mean_sum));
    CHECK(at::equal(a.abs_max, b.abs_max));
    CHECK(at::equal(a.fisher_sq_sum, b.fisher_sq_sum));
    REQUIRE(b.gram.scalar_type() == at::kDouble);
    CHECK(at::equal(a.gram, b.gram));
    CHECK(at::equal(stats.scale(name, ScalingMethod::FisherAbsMean, 0.5), back.scale(name, ScalingMethod::FisherAbsMean, 0.5)));
  }

  // A tensor without counts, an unknown statistic, unparsable counts.
  const auto bad = dir / "bad.safetensors";
  auto expect_error = [&](const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                          const std::map<std::string, std::string>& metadata, const std::string& fragment) {
    io::save_safetensors_checked(bad, tensors, metadata);
    try {
      calib::ActivationStatistics::load(bad);
      FAIL("no error for " << fragment);
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find("bad.safetensors") != std::string::npos);
      CHECK(what.find(fragment) != std::string::npos);
    }
  };
  expect_error({{"lm_head.abs_mean_sum", at::ones({4})}}, {}, "lm_head.abs_mean_sum");
  expect_error({{"lm_head.frobnicate", at::ones({4})}}, {{"counts.lm_head", "1 4"}}, "lm_head.frobnicate");
  expect_error({{"lm_head.abs_mean_sum", at::ones({4})}}, {{"counts.lm_head", "one"}}, "counts.lm_head");

  // A flipped bit anywhere in the data (here near the end of the file) is found by the checksum.
  const std::string good = io::read_file(path);
  for (size_t back_from_end : {size_t(1), size_t(9), size_t(100)}) {
    std::string damaged = good;
    damaged[damaged.size() - back_from_end] ^= 0x10;
    io::write_file_atomic(bad, damaged);
    INFO("bit flipped " << back_from_end << " bytes from the end");
    CHECK_THROWS_WITH(calib::ActivationStatistics::load(bad),
                      Catch::Contains("bad.safetensors") && Catch::Contains("checksum mismatch"));
  }
  // A file written without a checksum (an older cache) is not trusted either.
  io::save_safetensors(bad, {{"lm_head.abs_mean_sum", at::ones({4})}}, {{"counts.lm_head", "1 4"}});
  CHECK_THROWS_WITH(calib::ActivationStatistics::load(bad),
                    Catch::Contains("bad.safetensors") && Catch::Contains("no data checksum"));
  io::remove_tree(dir);
}

TEST_CASE("collection puts the model's own slots back, also when it throws", "[calib][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto before = slots_of(*lm);
  const auto ids = make_samples({10, 10}, 128, 16);

  SECTION("after a normal run") {
    calib::CollectOptions opt;
    opt.abs_max = opt.gram = true;
    (void)calib::collect_statistics(*lm, ids, opt);
    require_same_slots(*lm, before);
  }
  SECTION("after a sample that is too short, mid-run") {
    auto bad = ids;
    bad.push_back({5});
    CHECK_THROWS_AS(calib::collect_statistics(*lm, bad, {}), std::invalid_argument);
    require_same_slots(*lm, before);
  }
  SECTION("no samples") {
    CHECK_THROWS_AS(calib::collect_statistics(*lm, {}, {}), std::invalid_argument);
    require_same_slots(*lm, before);
  }
  SECTION("Fisher refuses a compressed layer (the last slot) and restores the ones already swapped") {
    const auto* head = dynamic_cast<const model::DenseLinear*>(lm->linear_ptr("lm_head").get());
    REQUIRE(head);
    auto cur = compress::make_compressor("cur")->compress(head->weight(), head->bias(), at::Tensor(), 0.5);
    const auto dense_head = lm->replace_linear("lm_head", cur);
    auto with_cur = slots_of(*lm);
    try {
      calib::collect_statistics(*lm, ids, calib::CollectOptions::for_method(ScalingMethod::Fisher));
      FAIL("Fisher on a CUR layer did not throw");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find("lm_head") != std::string::npos);
    }
    require_same_slots(*lm, with_cur);
    lm->replace_linear("lm_head", dense_head);
    require_same_slots(*lm, before);
    // The model still computes what it computed: the same statistics as a fresh load.
    auto fresh = model::CausalLM::load(model_dir("llama_gqa"));
    const auto a = calib::collect_statistics(*lm, ids, {});
    const auto b = calib::collect_statistics(*fresh, ids, {});
    for (const auto& name : a.layer_names()) CHECK(at::equal(a.layer(name).abs_mean_sum, b.layer(name).abs_mean_sum));
  }
}

TEST_CASE("scaling method names", "[calib][unit]") {
  for (auto m : {ScalingMethod::AbsMean, ScalingMethod::AbsMax, ScalingMethod::Fisher, ScalingMethod::FisherAbsMean}) {
    CHECK(calib::parse_scaling_method(calib::to_string(m)) == m);
  }
  CHECK(calib::to_string(ScalingMethod::FisherAbsMean) == "fisher_abs_mean");
  CHECK(calib::parse_scaling_method("abs_max") == ScalingMethod::AbsMax);
  for (const char* bad : {"", "absmean", "ABS_MEAN", "fisher_abs_max", "abs_mean "}) {
    INFO("\"" << bad << "\"");
    try {
      calib::parse_scaling_method(bad);
      FAIL("accepted");
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      CHECK(what.find(std::string("\"") + bad + "\"") != std::string::npos);
      CHECK(what.find("fisher_abs_mean") != std::string::npos);
    }
  }
  const auto fam = calib::CollectOptions::for_method(ScalingMethod::FisherAbsMean);
  CHECK((fam.abs_mean && fam.fisher && !fam.abs_max && !fam.gram));
  const auto am = calib::CollectOptions::for_method(ScalingMethod::AbsMax);
  CHECK((am.abs_max && !am.abs_mean && !am.fisher));
}
