// Applying an allocation (plans against the slots' own counts and hand-computed
// ranks) and RTN fake quantization (hand-computed rows, the error bound, the
// tensors rtn_quantize_model touches and leaves alone).
#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

using namespace cur4llm;
using test::make_samples;
using test::model_dir;

namespace {


at::Tensor row(std::vector<float> v) { return at::tensor(v, at::kFloat).unsqueeze(0); }

void check_values(const at::Tensor& got, const std::vector<double>& want) {
  REQUIRE(got.numel() == static_cast<int64_t>(want.size()));
  auto g = got.to(at::kDouble).reshape({-1});
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("element " << i);
    CHECK(g[i].item<double>() == Approx(want[i]).margin(1e-6));
  }
}

// The per-row step the protocol defines: (max(row max, 0) - min(row min, 0)) / (2^bits - 1); 2 / (2^bits - 1) for zero rows.
at::Tensor row_steps(const at::Tensor& w, int bits) {
  auto x = w.to(at::kDouble);
  auto hi = std::get<0>(x.max(1)).clamp_min(0), lo = std::get<0>(x.min(1)).clamp_max(0);
  auto range = hi - lo;
  range = at::where(range == 0, at::full_like(range, 2.0), range);
  return range / (std::pow(2.0, bits) - 1);
}

}  // namespace

TEST_CASE("rtn_fake_quantize on hand-computed rows", "[quantize][unit]") {
  // [-1, 0, 0.5, 1.5, 2] at 2 bits: xmin -1, xmax 2, scale 3/3 = 1, zero = round(1) = 1;
  // round(w / 1) = -1, 0, 0, 2, 2 (halves to even, as torch.round); q = 0, 1, 1, 3, 3; w' = q - 1.
  check_values(quant::rtn_fake_quantize(row({-1, 0, 0.5f, 1.5f, 2}), 2), {-1, 0, 0, 2, 2});
  // [-1, 0, 0.25, 2] at 8 bits: scale 3/255, zero = round(85) = 85; 0.25 / scale = 21.25 -> 21;
  // 2 / scale = 170 -> q = 255; w' = scale * (q - 85) = -1, 0, 21 * 3/255 = 0.2470588, 2.
  check_values(quant::rtn_fake_quantize(row({-1, 0, 0.25f, 2}), 8), {-1, 0, 21.0 * 3 / 255, 2});
  // Positive row [1, 2.2, 3, 4] at 2 bits: xmin = 0 (not 1), scale 4/3, zero 0;
  // w / scale = 0.75, 1.65, 2.25, 3 -> 1, 2, 2, 3; w' = 4/3, 8/3, 8/3, 4.
  check_values(quant::rtn_fake_quantize(row({1, 2.2f, 3, 4}), 2), {4.0 / 3, 8.0 / 3, 8.0 / 3, 4});
  // Negative row [-4, -2.2, -1] at 2 bits: xmax = 0, scale 4/3, zero round(3) = 3;
  // w / scale = -3, -1.65, -0.75 -> -3, -2, -1; q = 0, 1, 2; w' = -4, -8/3, -4/3.
  check_values(quant::rtn_fake_quantize(row({-4, -2.2f, -1}), 2), {-4, -8.0 / 3, -4.0 / 3});
  // An all-zero row uses -1 .. +1 (scale 2/15 at 4 bits, zero round(7.5) = 8) and stays zero, not NaN.
  check_values(quant::rtn_fake_quantize(row({0, 0, 0}), 4), {0, 0, 0});
  // [0, 0.1, 1] at 2 bits with -1 .. +1 would give a step of 2/3; min-max gives 1/3:
  // w / (1/3) = 0, 0.3, 3 -> 0, 0, 3; w' = 0, 0, 1.
  check_values(quant::rtn_fake_quantize(row({0, 0.1f, 1}), 2), {0, 0, 1});
  // Rows are independent: the same rows stacked give the rows' own results.
  auto stacked = at::cat({row({-1, 0, 0.5f, 2}), row({1, 2.2f, 3, 4}), row({0, 0, 0, 0})});
  check_values(quant::rtn_fake_quantize(stacked, 2), {-1, 0, 0, 2, 4.0 / 3, 8.0 / 3, 8.0 / 3, 4, 0, 0, 0, 0});
}

TEST_CASE("rtn_fake_quantize: error at most half a step, at most 2^bits values a row, dtype kept", "[quantize][unit]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  auto w = at::randn({24, 200}, gen, at::TensorOptions().dtype(at::kFloat));
  w.narrow(0, 0, 4).abs_();            // rows with only positive values
  w.narrow(0, 4, 4).abs_().neg_();     // rows with only negative values
  w.narrow(0, 8, 2).mul_(1e-3);        // tiny rows
  w.narrow(0, 10, 1).zero_();          // a zero row
  for (int bits : {2, 3, 4, 6, 8}) {
    INFO(bits << " bits");
    auto q = quant::rtn_fake_quantize(w, bits);
    REQUIRE(q.scalar_type() == at::kFloat);
    REQUIRE(q.sizes() == w.sizes());
    auto step = row_steps(w, bits).unsqueeze(1);
    auto err = (q.to(at::kDouble) - w.to(at::kDouble)).abs();
    CHECK((err <= step * (0.5 + 1e-4)).all().item<bool>());
    // On the grid: w' / step is an integer.
    auto k = q.to(at::kDouble) / step;
    CHECK(((k - k.round()).abs() < 1e-3).all().item<bool>());
    for (int64_t r = 0; r < w.size(0); ++r) {
      CHECK(std::get<0>(at::_unique(q[r])).numel() <= (int64_t{1} << bits));
    }
  }
  // bf16 in, bf16 out, within half a step (plus bf16 rounding of the result).
  auto wb = w.to(at::kBFloat16);
  auto qb = quant::rtn_fake_quantize(wb, 4);
  CHECK(qb.scalar_type() == at::kBFloat16);
  auto step = row_steps(wb, 4).unsqueeze(1);
  auto err = (qb.to(at::kDouble) - wb.to(at::kDouble)).abs();
  CHECK((err <= step * 0.5 + wb.to(at::kDouble).abs() * (1.0 / 128) + 1e-12).all().item<bool>());
  // fp64 stays fp64.
  CHECK(quant::rtn_fake_quantize(w.to(at::kDouble), 8).scalar_type() == at::kDouble);

  for (int bits : {-1, 0, 1, 17, 32}) {
    INFO(bits << " bits");
    CHECK_THROWS_AS(quant::rtn_fake_quantize(w, bits), std::invalid_argument);
  }
  CHECK_THROWS_AS(quant::rtn_fake_quantize(at::ones({4}), 8), std::invalid_argument);
  CHECK_THROWS_AS(quant::rtn_fake_quantize(at::ones({2, 2, 2}), 8), std::invalid_argument);
}

TEST_CASE("rtn_quantize_model quantizes decoder-layer factors (dense and decomposed), not lm_head", "[quantize][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  // One CUR (C, U, R) and one SVD (A, B) layer among the 14 dense decoder Linears.
  const std::string cur_name = "model.layers.0.self_attn.q_proj", svd_name = "model.layers.1.mlp.up_proj";
  for (const auto& [name, method] : std::vector<std::pair<std::string, std::string>>{{cur_name, "cur"}, {svd_name, "svd"}}) {
    const auto* d = dynamic_cast<const model::DenseLinear*>(lm->linear_ptr(name).get());
    REQUIRE(d);
    lm->replace_linear(name, compress::make_compressor(method)->compress(d->weight(), d->bias(), {}, 0.6));
  }

  std::map<std::string, at::Tensor> before;  // "<layer>.<tensor>" -> copy
  for (const auto& info : lm->linears()) {
    for (const auto& [n, t] : lm->linear(info.name).state()) before[info.name + "." + n] = t.clone();
  }
  std::map<std::string, at::Tensor> others_before;
  for (const auto& [n, t] : lm->other_tensors()) others_before[n] = t.clone();

  const int bits = 2;
  // 12 dense decoder weights + C, U, R + A, B = 17 (not CUR's row/column index
  // vectors); lm_head is outside the decoder layers.
  CHECK(quant::rtn_quantize_model(*lm, bits) == 17);

  for (const auto& info : lm->linears()) {
    for (const auto& [n, t] : lm->linear(info.name).state()) {
      const auto key = info.name + "." + n;
      INFO(key);
      const auto& orig = before.at(key);
      if (info.layer < 0 || t.dim() != 2 || !at::isFloatingType(t.scalar_type())) {  // CUR's index vectors too
        CHECK(at::equal(t, orig));
        continue;
      }
      REQUIRE(t.dim() == 2);
      CHECK_FALSE(at::equal(t, orig));
      // Each row now holds at most 4 values, on the grid of the original row's step, within half a step.
      auto step = row_steps(orig, bits).unsqueeze(1);
      auto k = t.to(at::kDouble) / step;
      CHECK(((k - k.round()).abs() < 1e-3).all().item<bool>());
      CHECK(((t.to(at::kDouble) - orig.to(at::kDouble)).abs() <= step * (0.5 + 1e-4)).all().item<bool>());
      for (int64_t r = 0; r < t.size(0); ++r) CHECK(std::get<0>(at::_unique(t[r])).numel() <= 4);
    }
  }
  for (const auto& [n, t] : lm->other_tensors()) {
    INFO(n);
    CHECK(at::equal(t, others_before.at(n)));
  }
  // The slots compute with the quantized factors: C U R and A B from their state.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(32);
  auto x = at::randn({5, 32}, gen);
  {
    std::map<std::string, at::Tensor> s;
    for (const auto& [n, t] : lm->linear(cur_name).state()) s[n] = t;
    auto w = at::mm(at::mm(s.at("C"), s.at("U")), s.at("R"));
    CHECK(at::allclose(lm->linear(cur_name).forward(x), at::mm(x, w.t()), 1e-4, 1e-5));
  }
  {
    std::map<std::string, at::Tensor> s;
    for (const auto& [n, t] : lm->linear(svd_name).state()) s[n] = t;
    auto w = at::mm(s.at("ALinear.weight"), s.at("BLinear.weight"));
    CHECK(at::allclose(lm->linear(svd_name).forward(x), at::mm(x, w.t()), 1e-4, 1e-5));
  }
}

TEST_CASE("rtn_quantize_model leaves biases, OPT's projections and lm_head alone", "[quantize][model]") {
  SECTION("qwen2_bias: 14 weights; q/k/v biases unchanged") {
    auto lm = model::CausalLM::load(model_dir("qwen2_bias"));
    std::map<std::string, at::Tensor> biases;
    for (const auto& info : lm->linears()) {
      for (const auto& [n, t] : lm->linear(info.name).state()) {
        if (t.dim() == 1) biases[info.name + "." + n] = t.clone();
      }
    }
    REQUIRE(biases.size() == 6);  // q, k, v of 2 layers
    CHECK(quant::rtn_quantize_model(*lm, 8) == 14);
    for (const auto& info : lm->linears()) {
      for (const auto& [n, t] : lm->linear(info.name).state()) {
        if (t.dim() == 1) CHECK(at::equal(t, biases.at(info.name + "." + n)));
      }
    }
  }
  SECTION("opt_proj_post: 12 decoder weights; project_in/out and lm_head unchanged") {
    auto lm = model::CausalLM::load(model_dir("opt_proj_post"));
    std::map<std::string, at::Tensor> outside;
    for (const auto& info : lm->linears()) {
      if (info.layer < 0) outside[info.name] = lm->linear(info.name).reconstruct_weight().clone();
    }
    REQUIRE(outside.size() == 3);
    CHECK(quant::rtn_quantize_model(*lm, 6) == 12);
    for (const auto& [name, w] : outside) {
      INFO(name);
      CHECK(at::equal(lm->linear(name).reconstruct_weight(), w));
    }
  }
  SECTION("bad bits are refused before anything changes") {
    auto lm = model::CausalLM::load(model_dir("llama_gqa"));
    auto w = lm->linear("model.layers.0.mlp.up_proj").reconstruct_weight().clone();
    CHECK_THROWS_AS(quant::rtn_quantize_model(*lm, 1), std::invalid_argument);
    CHECK(at::equal(lm->linear("model.layers.0.mlp.up_proj").reconstruct_weight(), w));
  }
}

TEST_CASE("apply_allocation swaps in compressed layers and plans their real counts", "[apply][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto compressor = compress::make_compressor("cur");
  std::map<std::string, model::LinearPtr> before;
  for (const auto& info : lm->linears()) before[info.name] = lm->linear_ptr(info.name);

  search::Allocation allocation{
      {"model.layers.0.self_attn.q_proj", 0.5, true},  // 32 x 32: k^2 + 64k <= 512 -> k = 7, 497 stored
      {"model.layers.1.self_attn.v_proj", 0.6, true},  // 16 x 32: k^2 + 48k <= 307 -> k = 5, 265 stored
      {"model.layers.1.mlp.down_proj", 1.0, false},    // 32 x 48 dense: 1536
      {"lm_head", 0.7, true},                          // 128 x 32: k^2 + 160k <= 2867 -> k = 16, 2816 stored
  };
  std::vector<std::string> scaled;
  const compress::ScaleFn scale = [&](const std::string& name) {
    scaled.push_back(name);
    return at::ones({lm->linear(name).in_features()});
  };
  const auto plan = compress::apply_allocation(*lm, allocation, *compressor, scale);
  CHECK(scaled == std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "lm_head"});

  REQUIRE(plan.layers().size() == 4);
  const std::map<std::string, std::pair<int64_t, int64_t>> want{  // rank, stored
      {"model.layers.0.self_attn.q_proj", {7, 497}},
      {"model.layers.1.self_attn.v_proj", {5, 265}},
      {"model.layers.1.mlp.down_proj", {0, 1536}},
      {"lm_head", {16, 2816}}};
  int64_t stored = 0, dense = 0;
  for (size_t i = 0; i < allocation.size(); ++i) {
    const auto& p = plan.layers()[i];
    const auto& slot = lm->linear(allocation[i].layer);
    INFO(p.name);
    CHECK(p.name == allocation[i].layer);
    CHECK(p.stored_params == slot.weight_params());
    CHECK(p.stored_params == want.at(p.name).second);
    CHECK(p.rank == want.at(p.name).first);
    CHECK(p.dense_params == slot.in_features() * slot.out_features());
    CHECK(p.method == (allocation[i].compressed ? "cur" : "dense"));
    CHECK(slot.kind() == p.method);
    CHECK(p.ratio == allocation[i].ratio);
    stored += slot.weight_params();
    dense += slot.in_features() * slot.out_features();
  }
  CHECK(stored == 497 + 265 + 1536 + 2816);
  CHECK(dense == 1024 + 512 + 1536 + 4096);
  CHECK(plan.param_ratio() == Approx(static_cast<double>(stored) / static_cast<double>(dense)).epsilon(1e-12));
  CHECK(compress::count_layers(plan, "cur") == 3);
  CHECK(compress::count_layers(plan, "dense") == 1);

  // Layers the allocation keeps dense, and those it does not name, are the very same slots.
  for (const auto& [name, slot] : before) {
    const bool compressed = name == "model.layers.0.self_attn.q_proj" || name == "model.layers.1.self_attn.v_proj" ||
                            name == "lm_head";
    INFO(name);
    CHECK((lm->linear_ptr(name).get() == slot.get()) == !compressed);
  }
  // Applying again to a compressed layer is refused.
  CHECK_THROWS_AS(compress::apply_allocation(*lm, {{"lm_head", 0.5, true}}, *compressor, {}), std::invalid_argument);
  CHECK_THROWS_AS(compress::apply_allocation(*lm, {{"model.layers.5.mlp.up_proj", 0.5, true}}, *compressor, {}),
                  std::invalid_argument);
  // A refused allocation changes nothing, also in the layers listed before the bad one.
  const auto gate = lm->linear_ptr("model.layers.0.mlp.gate_proj");
  CHECK_THROWS_AS(compress::apply_allocation(*lm, {{"model.layers.0.mlp.gate_proj", 0.5, true}, {"lm_head", 0.5, true}},
                                             *compressor, {}),
                  std::invalid_argument);
  CHECK(lm->linear_ptr("model.layers.0.mlp.gate_proj") == gate);
}

TEST_CASE("apply_allocation with SVD: rank floor(m n r / (m + n)) and no scale", "[apply][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto compressor = compress::make_compressor("svd");
  const std::string name = "model.layers.0.mlp.gate_proj";  // 48 x 32
  const auto w = lm->linear(name).reconstruct_weight().clone();
  // floor(1536 * 0.5) / 80 = 9.6 -> 9; stores 9 * (48 + 32) = 720.
  const auto plan = compress::apply_allocation(*lm, {{name, 0.5, true}}, *compressor, {});
  REQUIRE(plan.layers().size() == 1);
  CHECK(plan.layers()[0].rank == 9);
  CHECK(plan.layers()[0].stored_params == 720);
  CHECK(lm->linear(name).weight_params() == 720);
  CHECK(lm->linear(name).kind() == "svd");
  CHECK(plan.param_ratio() == Approx(720.0 / 1536.0));
  // The compressed layer is the best rank-9 approximation of the weight (no scale given).
  auto svd = at::linalg_svd(w.to(at::kDouble), false);
  auto best = at::mm(std::get<0>(svd).narrow(1, 0, 9) * std::get<1>(svd).narrow(0, 0, 9),
                     std::get<2>(svd).narrow(0, 0, 9));
  CHECK(at::allclose(lm->linear(name).reconstruct_weight().to(at::kDouble), best, 1e-4, 1e-5));
}
