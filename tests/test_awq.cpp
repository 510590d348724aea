// AWQ (quant/awq.h): the activation-aware formats, the scale search, the
// inputs of each factor of a decomposed layer, and a whole model quantized,
// written and read back.
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/quant/awq.h>
#include <cur4llm/quant/packed_model.h>
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/repo/acur_repo.h>
#include <cur4llm/io/safetensors.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "test_helpers.h"
#include "test_paths.h"

#include <catch2/catch.hpp>

using cur4llm::model::CausalLM;
using cur4llm::test::model_dir;
namespace compress = cur4llm::compress;
namespace quant = cur4llm::quant;

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
}

// Mean squared output error of the weight wq against w on inputs x, written out here.
double output_error(const at::Tensor& x, const at::Tensor& w, const at::Tensor& wq) {
  const auto d = at::matmul(x, wq.t()) - at::matmul(x, w.t());
  return (d * d).mean().item<double>();
}

}  // namespace

TEST_CASE("awq formats: names, groups, and refusal where no calibration data can reach", "[quantize][awq]") {
  const auto a8 = quant::parse_quant_format("awq_int8");
  const auto a4 = quant::parse_quant_format("awq_int4");
  CHECK((a8.bits == 8 && a8.group_size == 0 && a8.activation_aware));
  CHECK((a4.bits == 4 && a4.group_size == 128 && a4.activation_aware));
  CHECK_FALSE(quant::parse_quant_format("rtn_int4").activation_aware);
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  CHECK_THROWS_WITH(quant::quantize_model_packed(*lm, a4), Catch::Contains("awq_int4") && Catch::Contains("calibration"));
  CHECK_THROWS_WITH(quant::rtn_quantize_model(*lm, a8), Catch::Contains("awq_int8") && Catch::Contains("calibration"));
  CHECK_THROWS_WITH(quant::awq_quantize_model(*lm, {}, a4), Catch::Contains("calibration samples"));
  CHECK_THROWS_WITH(quant::awq_quantize_model(*lm, {{1, 2, 3}}, quant::parse_quant_format("rtn_int4")),
                    Catch::Contains("not activation-aware"));
  // An RTN format takes no input scales.
  CHECK_THROWS_WITH(quant::quantize_tensor(randn({4, 8}, 1), quant::parse_quant_format("rtn_int8"), at::ones({8})),
                    Catch::Contains("takes no input scales"));
}

TEST_CASE("awq storage: w' = dequant(codes of w / m) * m, with m stored in fp16 beside the codes", "[quantize][awq]") {
  const auto w = randn({6, 200}, 2);
  // Multipliers exactly representable in fp16 (powers of two and small integers).
  auto m = at::pow(2.0, at::arange(200, at::kFloat).remainder(5) - 2.0);  // 1/4 .. 4
  const auto a4 = quant::parse_quant_format("awq_int4");
  const auto q = quant::quantize_tensor(w, a4, m);
  REQUIRE(q.input_scales.defined());
  CHECK(q.input_scales.scalar_type() == at::kHalf);
  CHECK(at::equal(q.input_scales.to(at::kFloat), m));
  // The codes are RTN's codes of w / m (same groups and fp16 scales): computed through the RTN format.
  const auto r4 = quant::parse_quant_format("rtn_int4");
  const auto rtn = quant::quantize_tensor(w / m.unsqueeze(0), r4);
  CHECK(at::equal(q.qweight, rtn.qweight));
  CHECK(at::equal(q.scales, rtn.scales));
  CHECK(at::equal(q.zeros, rtn.zeros));
  const auto expected = quant::dequantize_tensor(rtn, at::kFloat) * m.unsqueeze(0);
  CHECK(at::equal(quant::dequantize_tensor(q, at::kFloat), expected));
  CHECK(at::equal(quant::fake_quantize(w, a4, m), expected));
  CHECK(q.nbytes() == rtn.nbytes() + 200 * 2);
  // Without multipliers: all ones, the codes of RTN.
  CHECK(at::equal(quant::quantize_tensor(w, a4).qweight, quant::quantize_tensor(w, r4).qweight));
  // Stored triples are checked with their input scales.
  CHECK_NOTHROW(quant::make_quantized_tensor("t", q.qweight, q.scales, q.zeros, 6, 200, a4, q.input_scales));
  CHECK_THROWS_WITH(quant::make_quantized_tensor("t", q.qweight, q.scales, q.zeros, 6, 200, a4),
                    Catch::Contains("input_scales is missing"));
  CHECK_THROWS_WITH(
      quant::make_quantized_tensor("t", q.qweight, q.scales, q.zeros, 6, 200, a4, -q.input_scales),
      Catch::Contains("finite and positive"));
  CHECK_THROWS_WITH(quant::quantize_tensor(w, a4, at::zeros({200})), Catch::Contains("finite and positive"));
}

TEST_CASE("awq search: a = 0 is RTN, and outlier channels make a larger a win", "[quantize][awq]") {
  const auto a4 = quant::parse_quant_format("awq_int4");
  const auto w = randn({32, 64}, 3);
  // Inputs whose channels differ in size by up to 100x, as LLM activations do.
  auto x = randn({512, 64}, 4);
  const auto size = at::ones({64});
  size.narrow(0, 0, 4).fill_(100.0);
  size.narrow(0, 4, 20).fill_(0.05);
  x = x * size.unsqueeze(0);
  const auto choice = quant::awq_search(w, x, a4);
  const double rtn = output_error(x, w, quant::fake_quantize(w, quant::parse_quant_format("rtn_int4")));
  CHECK(choice.rtn_error == Approx(rtn).epsilon(1e-6));
  CHECK(choice.alpha > 0);
  CHECK(choice.error < 0.8 * rtn);
  CHECK(choice.error == Approx(output_error(x, w, quant::fake_quantize(w, a4, choice.input_scales))).epsilon(1e-6));
  // Uniform channels: nothing to gain, and the search never does worse than RTN.
  const auto flat = randn({512, 64}, 5);
  const auto plain = quant::awq_search(w, flat, a4);
  CHECK(plain.error <= plain.rtn_error);
  CHECK_THROWS_WITH(quant::awq_search(w, randn({8, 10}, 6), a4), Catch::Contains("do not fit"));
}

TEST_CASE("awq factor inputs: each factor's input, chained through the factors, gives the layer's output",
          "[quantize][awq]") {
  const auto w = randn({24, 40}, 7);
  const auto bias = randn({24}, 8);
  const auto x = randn({16, 40}, 9);
  const auto scale = at::linspace(0.5, 2.0, 40, at::kFloat);
  for (const std::string method : {"cur", "svd", "skeleton_row", "skeleton_col"}) {
    DYNAMIC_SECTION(method) {
      const auto slot = compress::make_compressor(method)->compress(w, bias, scale, 0.6);
      const auto y = slot->forward(x);
      const auto inputs = quant::factor_inputs(*slot, x);
      std::map<std::string, at::Tensor> in(inputs.begin(), inputs.end());
      std::map<std::string, at::Tensor> st;
      for (const auto& [name, t] : slot->state()) st[name] = t;
      // Every 2-d factor has an input of its width.
      for (const auto& [name, t] : st) {
        if (t.dim() != 2) continue;
        INFO(name);
        REQUIRE(in.count(name));
        CHECK(in.at(name).size(1) == t.size(1));
        CHECK(in.at(name).size(0) == 16);
      }
      if (method == "svd") {
        CHECK(at::allclose(at::linear(in.at("ALinear.weight"), st.at("ALinear.weight"), bias), y, 1e-5, 1e-5));
        CHECK(at::equal(in.at("BLinear.weight"), x));
      } else if (method == "cur") {
        CHECK(at::allclose(at::linear(in.at("C"), st.at("C"), bias), y, 1e-5, 1e-5));
        CHECK(at::allclose(in.at("U"), at::matmul(x, st.at("R").t()), 1e-5, 1e-5));
      } else if (method == "skeleton_row") {
        // The predicted rows of the output are X_rest applied to its input.
        const auto index = st.at("row_index");
        const int64_t k = st.at("W_I").size(0);
        const auto rest = index.narrow(0, k, 24 - k);
        CHECK(at::allclose(at::linear(in.at("X_rest"), st.at("X_rest")) + bias.index_select(0, rest),
                           y.index_select(1, rest), 1e-4, 1e-4));
      } else {
        CHECK(at::allclose(at::linear(in.at("W_J"), st.at("W_J"), bias), y, 1e-4, 1e-4));
        const auto index = st.at("col_index");
        const int64_t k = st.at("W_J").size(1);
        CHECK(at::equal(in.at("Z_rest"), x.index_select(1, index.narrow(0, k, 40 - k))));
      }
    }
  }
}

TEST_CASE("awq model: every decoder tensor packed with input scales, dense and factors, written and read back",
          "[quantize][awq][export]") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  // Half the layers CUR (lm_head untouched), the rest dense.
  const auto cur = compress::make_compressor("cur");
  int i = 0;
  for (const auto& info : lm->linears()) {
    if (info.layer < 0 || i++ % 2) continue;
    const auto& d = lm->dense_linear(info.name);
    lm->replace_linear(info.name, cur->compress(d.weight(), d.bias(), at::Tensor(), 0.6));
  }
  const auto samples = cur4llm::test::make_samples({20, 12, 16}, lm->config().vocab_size, 11);
  const auto a4 = quant::parse_quant_format("awq_int4");
  // The names RTN would quantize: the same tensors.
  std::set<std::string> expected;
  for (const auto& [name, t] : quant::decoder_weight_tensors(*lm)) expected.insert(name);
  const auto result = quant::awq_quantize_model(*lm, samples, a4);
  std::set<std::string> got;
  for (const auto& [name, q] : result.packed) got.insert(name);
  CHECK(got == expected);
  for (const auto& [name, c] : result.choices) {
    INFO(name);
    CHECK(c.error <= c.rtn_error);
  }
  // The model holds exactly the dequantized packed tensors.
  for (const auto& [name, t] : quant::decoder_weight_tensors(*lm)) {
    INFO(name);
    const auto& q = result.packed.at(name);
    REQUIRE(q.input_scales.defined());
    CHECK(at::equal(t, quant::dequantize_tensor(q, t.scalar_type())));
  }
  at::Tensor before;
  const auto ids = at::tensor(std::vector<int64_t>{1, 5, 9, 3, 7, 2}).unsqueeze(0);
  {
    c10::InferenceMode guard;
    before = lm->forward(ids);
  }
  cur4llm::test::TempDir dir("awq_repo");
  cur4llm::repo::ExportOptions o;
  o.packed = &result.packed;
  cur4llm::repo::write_acur_repo(*lm, dir / "repo", o);
  cur4llm::io::SafetensorsFile st(dir / "repo" / "model.safetensors");
  CHECK(st.info("model.layers.0.self_attn.k_proj.weight.input_scales").dtype == "F16");
  auto back = CausalLM::load(dir / "repo");
  CHECK(back->stored_form().quantization == "awq_int4");
  c10::InferenceMode guard;
  CHECK(at::equal(back->forward(ids), before));
}
