// Scale optimisation: the search allocates, the chosen layers become
// GradCURLinear with trainable scales, gradient steps lower the calibration
// loss, and freezing gives CURLinear layers that compute the same function.
#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/grad_cur_linear.h>
#include <cur4llm/compress/optimize_scale.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/binary_search.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

using namespace cur4llm;
using test::make_samples;
using test::model_dir;

TEST_CASE("search with grad_cur gives trainable scales that gradient steps improve", "[compress][search]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  const auto samples = make_samples({16, 16, 16, 16}, lm->config().vocab_size, 7);
  auto ids = at::empty({4, 16}, at::kLong);
  for (int64_t r = 0; r < 4; ++r) std::copy(samples[r].begin(), samples[r].end(), ids[r].data_ptr<int64_t>());

  // A hand-made table: both q_proj and down_proj of layer 1 are the least
  // sensitive at 0.5, so a cut that applies the last two entries compresses them.
  search::SensitivityTable table("ppl");
  table.add("model.layers.1.self_attn.q_proj", 0.5, 10.0);
  table.add("model.layers.1.mlp.down_proj", 0.5, 11.0);
  table.add("model.layers.0.self_attn.o_proj", 0.5, 50.0);
  std::vector<search::LayerSize> sizes;
  for (const auto& info : lm->linears()) sizes.push_back({info.name, info.in_features * info.out_features});
  // Linear weights: 2 x (32*32 + 16*32 + 16*32 + 32*32 + 3 * 48*32) + 128*32 = 19456.
  // Compressing q_proj (1024) and down_proj (1536) at 0.5 gives (19456 - 1280) / 19456 = 0.934;
  // adding o_proj gives (19456 - 1792) / 19456 = 0.908. A target of 0.92 stops at the first.
  const auto result = search::search_param_ratio(table, sizes, 0.92);
  auto grad = compress::make_compressor("grad_cur");
  auto plan = compress::apply_allocation(*lm, result.allocation, *grad, {});
  CHECK(compress::count_layers(plan, "grad_cur") == 2);
  CHECK(lm->linear("model.layers.1.self_attn.q_proj").kind() == "grad_cur");
  CHECK(lm->linear("model.layers.0.self_attn.o_proj").kind() == "dense");

  auto scales = compress::trainable_scales(*lm);
  REQUIRE(scales.size() == 2);
  for (auto& s : scales) CHECK(s.requires_grad());

  auto loss_of = [&] { return eval::sequence_nll(*lm, ids).mean(); };
  const double before = loss_of().item<double>();
  // A few steps of plain gradient descent on the scales (no optimiser library needed).
  for (int step = 0; step < 5; ++step) {
    auto loss = loss_of();
    loss.backward();
    at::NoGradGuard no_grad;
    for (auto& s : scales) {
      REQUIRE(s.grad().defined());
      CHECK(at::isfinite(s.grad()).all().item<bool>());
      s.sub_(s.grad() * 0.05);
      s.clamp_min_(1e-3);
      s.mutable_grad() = at::Tensor();
    }
  }
  const double after = loss_of().item<double>();
  CHECK(after < before);

  // Freezing keeps the function: CURLinear with the trained scales.
  at::Tensor logits_grad;
  {
    c10::InferenceMode guard;
    logits_grad = lm->forward(ids);
  }
  CHECK(compress::freeze_scales(*lm) == 2);
  CHECK(lm->linear("model.layers.1.self_attn.q_proj").kind() == "cur");
  CHECK(compress::trainable_scales(*lm).empty());
  c10::InferenceMode guard;
  auto logits_cur = lm->forward(ids);
  CHECK((logits_cur - logits_grad).abs().max().item<double>() < 1e-3);
}
