// Module methods (modules/): MLP Nyström numerics against closed forms, the
// narrowed layers a model installs, exact parameter accounting.
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/files.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/modules/mlp_nystrom.h>
#include <cur4llm/modules/modules.h>
#include <cur4llm/modules/qk_cr.h>
#include <cur4llm/modules/vo_svd.h>
#include <cur4llm/repo/acur_repo.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <set>
#include <string>

using namespace cur4llm;

namespace {

at::Tensor randn64(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble));
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

const char* kLlama = R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
    "intermediate_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "hidden_act": "silu"})";
const char* kOpt = R"({"model_type": "opt", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
    "ffn_dim": 24, "num_attention_heads": 4, "max_position_embeddings": 64, "word_embed_proj_dim": 16,
    "do_layer_norm_before": true, "activation_function": "relu", "enable_bias": true})";

std::unique_ptr<model::CausalLM> random_model(const char* json) {
  return model::CausalLM::random(model::ModelConfig::from_json(json, "test config"), {}, 3);
}

calib::ActivationStatistics gram_stats(model::CausalLM& lm) {
  calib::CollectOptions o;
  o.gram = true;
  return calib::collect_statistics(lm, test::make_samples({32, 32, 32}, lm.config().vocab_size, 5), o);
}

}  // namespace

TEST_CASE("nystrom_refit is the least-squares fit of the kept channels, and the ridge fit with lambda") {
  const auto a = randn64({200, 12}, 1);     // activations, one row per token
  const auto w = randn64({5, 12}, 2);       // W_down [h, f]
  const auto g = a.t().mm(a);
  const auto kept = at::tensor(std::vector<int64_t>{1, 4, 7, 8, 11}, at::kLong);
  const auto a_s = a.index_select(1, kept);
  const auto target = a.mm(w.t());          // the dense outputs
  const auto lstsq = std::get<0>(at::linalg_lstsq(a_s, target)).t();  // [h, k]
  CHECK(max_abs(modules::nystrom_refit(w, g, kept, 0.0) - lstsq) < 1e-9);

  // Ridge: min ||a_S X - target||^2 + lambda ||X||^2 as an augmented least-squares problem.
  const double lambda = 3.5;
  const auto augmented = at::cat({a_s, std::sqrt(lambda) * at::eye(5, a.options())}, 0);
  const auto rhs = at::cat({target, at::zeros({5, 5}, a.options())}, 0);
  const auto ridge = std::get<0>(at::linalg_lstsq(augmented, rhs)).t();
  CHECK(max_abs(modules::nystrom_refit(w, g, kept, lambda) - ridge) < 1e-9);

  // All channels and no ridge: the weight itself.
  CHECK(max_abs(modules::nystrom_refit(w, g, at::arange(12, at::kLong), 0.0) - w) < 1e-9);
}

TEST_CASE("activations of rank k are reproduced exactly from k channels chosen by either selection") {
  const auto a = randn64({300, 4}, 3).mm(randn64({4, 10}, 4));  // rank 4 in 10 channels
  const auto w = randn64({6, 10}, 5);
  const auto g = a.t().mm(a) / 300.0;
  for (auto selection : {modules::ChannelSelection::Greedy, modules::ChannelSelection::RidgeLeverage}) {
    modules::NystromOptions o;
    o.selection = selection;
    o.ridge = 1e-9;
    const auto kept = modules::select_channels(g, w, 4, o);
    REQUIRE(kept.numel() == 4);
    REQUIRE(std::get<0>(at::_unique(kept)).numel() == 4);
    const auto refit = modules::nystrom_refit(w, g, kept, 0.0);
    const auto approx = a.index_select(1, kept).mm(refit.t());
    INFO(modules::to_string(selection));
    CHECK(max_abs(approx - a.mm(w.t())) < 1e-6 * max_abs(a.mm(w.t())));
  }
}

TEST_CASE("the greedy selection's first channel is the best single channel for the refit") {
  const auto a = randn64({100, 8}, 6) * at::linspace(0.5, 2.0, 8, at::kDouble);
  const auto w = randn64({3, 8}, 7);
  const auto g = a.t().mm(a);
  double best = 1e300;
  int64_t best_p = -1;
  for (int64_t p = 0; p < 8; ++p) {  // the output error of each single channel, by brute force
    const auto x = std::get<0>(at::linalg_lstsq(a.select(1, p).unsqueeze(1), a.mm(w.t())));
    const double err = (a.select(1, p).unsqueeze(1).mm(x) - a.mm(w.t())).pow(2).sum().item<double>();
    if (err < best) best = err, best_p = p;
  }
  const auto kept = modules::select_channels(g, w, 1, {});
  CHECK(kept.item<int64_t>() == best_p);
}

TEST_CASE("ridge leverage scores are diag(G (G + lambda I)^-1)") {
  const auto a = randn64({50, 7}, 8);
  const auto g = a.t().mm(a);
  const double lambda = 2.0;
  const auto expected = at::linalg_solve(g + lambda * at::eye(7, g.options()), g).diagonal();  // symmetric
  CHECK(max_abs(modules::ridge_leverage_scores(g, lambda) - expected) < 1e-9);
  CHECK_THROWS_AS(modules::ridge_leverage_scores(g, 0.0), std::invalid_argument);
  CHECK_THROWS_AS(modules::select_channels(g, randn64({3, 6}, 1), 2, {}), std::invalid_argument);
  CHECK_THROWS_AS(modules::select_channels(g, randn64({3, 7}, 1), 8, {}), std::invalid_argument);
  CHECK_THROWS_AS(modules::parse_channel_selection("random"), std::invalid_argument);
}

TEST_CASE("compress_mlp narrows LLaMA and OPT MLPs with exact shapes and parameter counts") {
  for (const char* json : {kLlama, kOpt}) {
    auto lm = random_model(json);
    const bool llama = lm->config().family == model::Family::Llama;
    const auto stats = gram_stats(*lm);
    const auto ids = at::tensor(test::make_samples({20}, 64, 9).front(), at::kLong).unsqueeze(0);
    const auto dense_logits = lm->forward(ids);
    const auto dense_counts = model::count_params(*lm);
    auto mods = modules::mlp_modules(*lm);
    REQUIRE(mods.size() == 2);
    const auto& m = mods[1];
    CHECK(m.producers.size() == (llama ? 2u : 1u));
    CHECK(m.width == 24);
    CHECK(m.hidden == 16);

    // Every channel kept: the model computes what it did.
    auto rows = modules::compress_mlp(*lm, m, 24, stats.mean_gram(m.consumer));
    CHECK(at::equal(lm->forward(ids), dense_logits));
    CHECK(model::count_params(*lm).linear_stored == dense_counts.linear_stored);

    rows = modules::compress_mlp(*lm, m, 10, stats.mean_gram(m.consumer));
    const int64_t saved = static_cast<int64_t>(m.producers.size() + 1) * 16 * (24 - 10);
    const auto counts = model::count_params(*lm);
    CHECK(counts.linear_stored == dense_counts.linear_stored - saved);
    CHECK(counts.linear_dense == dense_counts.linear_dense);  // linears() keep the base shapes
    CHECK(modules::mlp_weight_params(m, 10) == modules::mlp_dense_params(m) - saved);
    CHECK(lm->config().layer_shape(1).intermediate_size == 10);
    CHECK(lm->config().layer_shape(0).intermediate_size == 24);
    int64_t planned = 0;
    for (const auto& row : rows) {
      const auto& slot = lm->linear(row.name);
      CHECK(row.stored_params == slot.weight_params());
      CHECK(row.rank == 10);
      CHECK(row.method == "mlp_nystrom");
      planned += row.stored_params;
    }
    CHECK(planned == modules::mlp_weight_params(m, 10));
    for (const auto& name : m.producers) {
      CHECK(lm->linear(name).out_features() == 10);
      CHECK(lm->linear(name).in_features() == 16);
      if (!llama) CHECK(lm->dense_linear(name).bias().size(0) == 10);
    }
    CHECK(lm->linear(m.consumer).in_features() == 10);
    CHECK(lm->linear(m.consumer).out_features() == 16);
    const auto logits = lm->forward(ids);
    CHECK(logits.sizes() == dense_logits.sizes());
    CHECK(at::isfinite(logits).all().item<bool>());
    CHECK_FALSE(at::equal(logits, dense_logits));
    // Narrowed once: a second compression of the same module is refused.
    CHECK_THROWS_AS(modules::compress_mlp(*lm, m, 8, stats.mean_gram(m.consumer)), std::invalid_argument);
  }
}

TEST_CASE("reshape_layer checks every slot against the new widths and changes nothing on error") {
  auto lm = random_model(kLlama);
  const auto ids = at::tensor(test::make_samples({12}, 64, 2).front(), at::kLong).unsqueeze(0);
  const auto before = lm->forward(ids);
  model::LayerShapes narrow;
  narrow.intermediate_size = 8;
  auto dense = [](int64_t out, int64_t in) {
    return std::make_shared<model::DenseLinear>(at::zeros({out, in}), at::Tensor());
  };
  const std::string p = "model.layers.0.mlp.";
  // A slot left out whose shape changes.
  CHECK_THROWS_AS(lm->reshape_layer(0, narrow, {{p + "gate_proj", dense(8, 16)}, {p + "up_proj", dense(8, 16)}}),
                  std::invalid_argument);
  // A slot of the wrong shape.
  CHECK_THROWS_AS(lm->reshape_layer(0, narrow, {{p + "gate_proj", dense(8, 16)}, {p + "up_proj", dense(9, 16)},
                                                {p + "down_proj", dense(16, 8)}}),
                  std::invalid_argument);
  // A slot of another layer.
  CHECK_THROWS_AS(lm->reshape_layer(0, narrow, {{p + "gate_proj", dense(8, 16)}, {p + "up_proj", dense(8, 16)},
                                                {p + "down_proj", dense(16, 8)},
                                                {"model.layers.1.mlp.up_proj", dense(24, 16)}}),
                  std::invalid_argument);
  // Wider than the model.
  model::LayerShapes wide;
  wide.intermediate_size = 30;
  CHECK_THROWS_AS(lm->reshape_layer(0, wide, {}), std::invalid_argument);
  CHECK(lm->config().layer_shapes.empty());
  CHECK(at::equal(lm->forward(ids), before));
  // And replace_linear keeps refusing a narrower slot.
  CHECK_THROWS_AS(lm->replace_linear(p + "up_proj", dense(8, 16)), std::invalid_argument);

  const auto previous = lm->reshape_layer(
      0, narrow, {{p + "gate_proj", dense(8, 16)}, {p + "up_proj", dense(8, 16)}, {p + "down_proj", dense(16, 8)}});
  CHECK(previous.size() == 3);
  CHECK(lm->config().layer_shape(0).intermediate_size == 8);
  // Back to the base widths with the displaced slots: the original model.
  lm->reshape_layer(0, {}, previous);
  CHECK(lm->config().layer_shapes.empty());
  CHECK(at::equal(lm->forward(ids), before));
}

TEST_CASE("config.json layer_shapes: parsed per layer, bad values named") {
  const std::string base = R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
      "intermediate_size": 24, "num_attention_heads": 4, "max_position_embeddings": 64)";
  const auto c = model::ModelConfig::from_json(base + R"(, "layer_shapes": [{"intermediate_size": 10}, {}]})", "c");
  CHECK(c.layer_shape(0).intermediate_size == 10);
  CHECK(c.layer_shape(1).intermediate_size == 24);
  CHECK(c.layer_shape(1).qk_head_dim == 4);
  CHECK(c.has_layer_shapes());
  CHECK_THROWS_WITH(model::ModelConfig::from_json(base + R"(, "layer_shapes": [{}]})", "c"),
                    Catch::Contains("layer_shapes"));
  CHECK_THROWS_WITH(model::ModelConfig::from_json(base + R"(, "layer_shapes": [{"intermediate_size": 30}, {}]})", "c"),
                    Catch::Contains("exceeds"));
  // Narrowed queries and keys name their kept dimensions, per KV head (4 heads of width 4 here), in rotary pairs.
  const auto q = model::ModelConfig::from_json(
      base + R"(, "layer_shapes": [{"qk_head_dim": 2, "qk_dims": [0, 2, 1, 3, 1, 3, 0, 2]}, {}]})", "c");
  CHECK(q.layer_shape(0).qk_head_dim == 2);
  CHECK(q.layer_shape(0).qk_dims == std::vector<int64_t>{0, 2, 1, 3, 1, 3, 0, 2});
  CHECK(q.layer_shape(1).qk_dims.empty());
  CHECK_THROWS_WITH(model::ModelConfig::from_json(base + R"(, "layer_shapes": [{"qk_head_dim": 2}, {}]})", "c"),
                    Catch::Contains("qk_dims must list 8"));
  CHECK_THROWS_WITH(model::ModelConfig::from_json(
                        base + R"(, "layer_shapes": [{"qk_head_dim": 2, "qk_dims": [0, 1, 1, 3, 1, 3, 0, 2]}, {}]})", "c"),
                    Catch::Contains("rotary pairs"));
  const std::string opt = R"({"model_type": "opt", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
      "ffn_dim": 24, "num_attention_heads": 4, "max_position_embeddings": 64)";
  CHECK(model::ModelConfig::from_json(
            opt + R"(, "layer_shapes": [{"qk_head_dim": 2, "qk_dims": [0, 1, 3, 1, 2, 0, 1, 2]}, {}]})", "c")
            .layer_shape(0)
            .qk_dims.size() == 8);  // no rotary: any dimensions
  CHECK_THROWS_WITH(model::ModelConfig::from_json(
                        opt + R"(, "layer_shapes": [{"qk_head_dim": 2, "qk_dims": [0, 0, 1, 3, 1, 3, 0, 2]}, {}]})", "c"),
                    Catch::Contains("repeats"));
  CHECK_THROWS_WITH(model::ModelConfig::from_json(base + R"(, "layer_shapes": [{"qk_dims": [0, 2]}, {}]})", "c"),
                    Catch::Contains("qk_dims is given"));
  CHECK_THROWS_WITH(model::ModelConfig::from_json(base + R"(, "layer_shapes": [{"qk_head_dim": 6}, {}]})", "c"),
                    Catch::Contains("exceeds head_dim"));
  CHECK_THROWS_WITH(model::ModelConfig::from_json(base + R"(, "layer_shapes": [{"width": 2}, {}]})", "c"),
                    Catch::Contains("unknown key"));
}

TEST_CASE("compress_modules with uniform widths meets the target with the widest width that fits") {
  auto lm = random_model(kLlama);
  const auto stats = gram_stats(*lm);
  const auto samples = test::make_samples({16, 16}, 64, 4);
  const auto dense = model::count_params(*lm).linear_dense;
  const double target = 0.8;
  auto result = modules::compress_modules(*lm, stats, samples, target, {});
  // Hand count: attention 2 * (16*16*2 + 8*16*2) = 1536, lm_head 64*16 = 1024, MLP 2 * 3*16*k.
  REQUIRE(dense == 1536 + 1024 + 2 * 3 * 16 * 24);
  int64_t k = -1;
  for (int64_t c = 24; c >= 1; --c) {
    if (1536 + 1024 + 2 * 3 * 16 * c <= target * dense) {
      k = c;
      break;
    }
  }
  REQUIRE(k > 0);
  CHECK(result.widths.at("model.layers.0.mlp") == k);
  CHECK(result.widths.at("model.layers.1.mlp") == k);
  CHECK(result.plan.stored_params() == 1536 + 1024 + 2 * 3 * 16 * k);
  CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored);
  CHECK(result.plan.dense_params() == dense);
  CHECK(result.plan.param_ratio() <= target);
  CHECK_THROWS_AS(modules::compress_modules(*lm, stats, samples, 1.5, {}), std::invalid_argument);
  modules::ModuleOptions bad;
  bad.allocation = "greedy";
  CHECK_THROWS_AS(modules::compress_modules(*lm, stats, samples, 0.8, bad), std::invalid_argument);
}

TEST_CASE("compress_modules with the lagrangian allocation stays within the target") {
  auto lm = random_model(kOpt);
  const auto stats = gram_stats(*lm);
  const auto samples = test::make_samples({16, 16}, 64, 4);
  modules::ModuleOptions o;
  o.allocation = "lagrangian";
  o.candidates = {0.25, 0.5, 0.75};
  auto result = modules::compress_modules(*lm, stats, samples, 0.85, o);
  CHECK(result.sensitivity.size() == 6);  // 2 modules x 3 ratios
  CHECK(result.dense_calibration_ppl > 0);
  CHECK(result.plan.param_ratio() <= 0.85);
  // Every slot's weights but those of a tied lm_head, which the plan leaves out (it stores nothing).
  const int64_t head = lm->config().tie_word_embeddings ? lm->linear("lm_head").weight_params() : 0;
  CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored - head);
  CHECK(result.plan.find("lm_head").has_value() == !lm->config().tie_word_embeddings);
  for (const auto& [name, k] : result.widths) {
    const bool candidate = k == 6 || k == 12 || k == 18 || k == 24;
    CHECK(candidate);
  }
  // A table given beforehand is used instead of measuring: its scores steer the allocation.
  search::SensitivityTable given("ppl");
  auto fresh = random_model(kOpt);
  const auto mods = modules::mlp_modules(*fresh);
  for (double r : o.candidates) {
    given.add(mods[0].name(), r, 1000.0 / r);  // layer 0 very sensitive
    given.add(mods[1].name(), r, 1.0);          // layer 1 not at all
  }
  o.sensitivity = &given;
  auto steered = modules::compress_modules(*fresh, gram_stats(*fresh), samples, 0.85, o);
  CHECK(steered.widths.at(mods[0].name()) > steered.widths.at(mods[1].name()));
  CHECK(steered.sensitivity.score(mods[1].name(), 0.25).value() == 1.0);
}

TEST_CASE("compress_modules: modular allocates MLPs and value-output pairs together within the target") {
  auto lm = random_model(kLlama);
  const auto stats = gram_stats(*lm);
  const auto samples = test::make_samples({16, 16}, 64, 4);
  auto result = modules::compress_modules(*lm, stats, samples, 0.8, {"modular"});
  CHECK(result.widths.size() == 6);  // 2 MLPs + 2 value-output pairs + 2 query-key pairs
  CHECK(result.widths.count("model.layers.1.self_attn.vo") == 1);
  CHECK(result.widths.count("model.layers.1.self_attn.qk") == 1);
  CHECK(result.widths.at("model.layers.1.self_attn.qk") % 2 == 0);  // rotary pairs
  CHECK(result.plan.param_ratio() <= 0.8);
  CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored);
  CHECK(lm->config().layer_shape(0).v_head_dim < lm->config().head_dim);
  CHECK(at::isfinite(lm->forward(at::tensor(samples.front(), at::kLong).unsqueeze(0))).all().item<bool>());
}

TEST_CASE("compress_modules: head_align keeps query/key and value head widths in its multiples") {
  // Heads of 8 dimensions (hidden 32, 4 heads, 2 KV heads): aligned to 4, a head keeps 4 or 8.
  const char* wide = R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
      "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
      "hidden_act": "silu"})";
  const auto samples = test::make_samples({16, 16}, 64, 4);
  bool unaligned_seen = false;
  for (const double target : {0.5, 0.6, 0.7, 0.8, 0.9}) {
    for (const int64_t align : {1, 4}) {
      auto lm = random_model(wide);
      const auto stats = gram_stats(*lm);
      modules::ModuleOptions o{"modular"};
      o.head_align = align;
      const auto result = modules::compress_modules(*lm, stats, samples, target, o);
      INFO("target " << target << ", head_align " << align);
      CHECK(result.plan.param_ratio() <= target);
      CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored);
      for (const auto& [name, k] : result.widths) {
        if (name.find(".mlp") != std::string::npos) continue;
        if (align == 4) {
          CHECK((k == 4 || k == 8));
        } else if (k % 4 != 0) {
          unaligned_seen = true;  // what the option rules out
        }
      }
      if (align == 4) {
        for (int64_t layer = 0; layer < 2; ++layer) {
          const auto shape = lm->config().layer_shape(layer);
          CHECK((shape.qk_head_dim == 0 || shape.qk_head_dim % 4 == 0));
          CHECK((shape.v_head_dim == 0 || shape.v_head_dim % 4 == 0));
        }
      }
    }
  }
  CHECK(unaligned_seen);
  auto lm = random_model(wide);
  modules::ModuleOptions bad{"modular"};
  bad.head_align = 0;
  CHECK_THROWS_AS(modules::compress_modules(*lm, gram_stats(*lm), samples, 0.8, bad), std::invalid_argument);
}

TEST_CASE("acur repository round trip of narrowed MLPs: the same logits, bit for bit, and the widths in config.json") {
  for (const char* fixture : {"llama_gqa", "tiny-shakespeare-opt"}) {
    DYNAMIC_SECTION(fixture) {
      auto lm = model::CausalLM::load(test::model_dir(fixture));
      const auto stats = gram_stats(*lm);
      const auto mods = modules::mlp_modules(*lm);
      const int64_t k = mods[0].width / 2 + 1;
      modules::compress_mlp(*lm, mods[0], k, stats.mean_gram(mods[0].consumer));
      // A factorized slot elsewhere in the same repository: module methods combine with per-layer ones.
      const std::string q = mods[0].producers.size() == 2 ? "model.layers.1.self_attn.q_proj"
                                                          : "model.decoder.layers.1.self_attn.q_proj";
      const auto& dense_q = lm->dense_linear(q);
      lm->replace_linear(q, compress::make_compressor("svd")->compress(dense_q.weight(), dense_q.bias(),
                                                                       at::ones({dense_q.in_features()}), 0.5));
      const auto ids = at::tensor(test::make_samples({24}, lm->config().vocab_size, 7).front(), at::kLong).unsqueeze(0);
      const auto before = lm->forward(ids);
      test::TempDir dir("modules_export");
      repo::write_acur_repo(*lm, dir / "repo", {});

      const auto config = nlohmann::json::parse(io::read_file(dir / "repo" / "config.json"));
      REQUIRE(config.contains("layer_shapes"));
      REQUIRE(config.at("layer_shapes").size() == static_cast<size_t>(lm->config().num_layers));
      CHECK(config.at("layer_shapes")[0].at("intermediate_size").get<int64_t>() == k);
      CHECK(config.at("layer_shapes")[1].empty());
      CHECK(config.at("acur").at("layers").contains(q));

      auto back = model::CausalLM::load(dir / "repo");
      CHECK(back->config().layer_shape(0).intermediate_size == k);
      CHECK(back->config().layer_shape(1).intermediate_size == mods[0].width);
      CHECK(back->linear(mods[0].consumer).in_features() == k);
      CHECK(back->linear(q).kind() == "svd");
      CHECK(model::count_params(*back).linear_stored == model::count_params(*lm).linear_stored);
      CHECK(model::count_params(*back).linear_dense == model::count_params(*lm).linear_dense);
      CHECK(at::equal(back->forward(ids), before));
    }
  }
}

TEST_CASE("vo_svd: exact at full width, and the Eckart-Young error per group on white inputs") {
  const int64_t heads = 4, kv = 2, d = 5, h = 7;
  const auto wv = randn64({kv * d, h}, 11), wo = randn64({h, heads * d}, 12);
  const auto x = randn64({300, h}, 13);
  const auto g = x.t().mm(x) / 300.0;
  auto head_product = [&](const at::Tensor& o, const at::Tensor& v, int64_t i, int64_t width) {
    return o.narrow(1, i * width, width).mm(v.narrow(0, (i / (heads / kv)) * width, width));
  };
  const auto full = modules::vo_svd(wv, {}, wo, {}, g, heads, kv, d);
  for (int64_t i = 0; i < heads; ++i) {
    CHECK(max_abs(head_product(full.output_weight, full.value_weight, i, d) - head_product(wo, wv, i, d)) < 1e-9);
  }
  const int64_t dv = 2;
  const auto eye = at::eye(h, g.options());
  const auto cut = modules::vo_svd(wv, {}, wo, {}, eye, heads, kv, dv);
  CHECK(cut.value_weight.sizes() == at::IntArrayRef({kv * dv, h}));
  CHECK(cut.output_weight.sizes() == at::IntArrayRef({h, heads * dv}));
  for (int64_t j = 0; j < kv; ++j) {
    double err = 0;
    std::vector<at::Tensor> stacked;
    for (int64_t i = j * 2; i < j * 2 + 2; ++i) {
      const auto exact = head_product(wo, wv, i, d);
      err += (exact - head_product(cut.output_weight, cut.value_weight, i, dv)).pow(2).sum().item<double>();
      stacked.push_back(exact);
    }
    const auto sv = at::linalg_svdvals(at::cat(stacked, 0));  // the group's best rank-dv error: the tail
    CHECK(err == Approx(sv.narrow(0, dv, sv.size(0) - dv).pow(2).sum().item<double>()).epsilon(1e-9));
  }
  CHECK_THROWS_AS(modules::vo_svd(wv, at::ones({kv * d}), wo, {}, g, heads, kv, 2), std::invalid_argument);
  CHECK_THROWS_AS(modules::vo_svd(wv, {}, wo, {}, g, heads, kv, d + 1), std::invalid_argument);
  CHECK_THROWS_AS(modules::vo_svd(wv, {}, wo, {}, g, 3, kv, 2), std::invalid_argument);
}

TEST_CASE("compress_vo: narrower value heads give the same logits when the values have that rank (GQA, OPT biases)") {
  for (const char* json : {kLlama, kOpt}) {
    auto lm = random_model(json);
    const auto& c = lm->config();
    const int64_t d = c.head_dim, dv = 2;
    auto mods = modules::vo_modules(*lm);
    REQUIRE(mods.size() == 2);
    const auto& m = mods[0];
    CHECK(m.heads == c.num_heads);
    CHECK(m.kv_heads == c.num_kv_heads);
    // Each value head of rank dv; biases on both sides where the family has them (folded into o_proj).
    const auto& v = lm->dense_linear(m.value);
    const auto& o = lm->dense_linear(m.output);
    std::vector<at::Tensor> blocks;
    for (int64_t j = 0; j < m.kv_heads; ++j) {
      blocks.push_back(randn64({d, dv}, 20 + j).mm(randn64({dv, m.hidden}, 30 + j)).to(at::kFloat) * 0.3);
    }
    const auto v_bias = v.bias().defined() ? randn64({v.out_features()}, 40).to(at::kFloat) : at::Tensor();
    const auto o_bias = o.bias().defined() ? randn64({o.out_features()}, 41).to(at::kFloat) : at::Tensor();
    lm->replace_linear(m.value, std::make_shared<model::DenseLinear>(at::cat(blocks, 0), v_bias));
    lm->replace_linear(m.output, std::make_shared<model::DenseLinear>(o.weight(), o_bias));
    const auto stats = gram_stats(*lm);
    const auto ids = at::tensor(test::make_samples({20}, 64, 9).front(), at::kLong).unsqueeze(0);
    const auto before = lm->forward(ids);
    const auto counts = model::count_params(*lm);

    const auto rows = modules::compress_vo(*lm, m, dv, stats.mean_gram(m.value));
    CHECK(lm->config().layer_shape(0).v_head_dim == dv);
    CHECK(lm->config().layer_shape(1).v_head_dim == d);
    CHECK(lm->linear(m.value).out_features() == m.kv_heads * dv);
    CHECK(lm->linear(m.output).in_features() == m.heads * dv);
    const int64_t saved = m.hidden * (d - dv) * (m.kv_heads + m.heads);
    CHECK(model::count_params(*lm).linear_stored == counts.linear_stored - saved);
    CHECK(modules::vo_weight_params(m, dv) == modules::vo_dense_params(m) - saved);
    CHECK(rows[0].stored_params + rows[1].stored_params == modules::vo_weight_params(m, dv));
    const auto after = lm->forward(ids);
    CHECK(max_abs(after - before) < 1e-4 * std::max(1.0, max_abs(before)));
    // At one less than the values' rank the model changes.
    auto lm2 = random_model(json);
    modules::compress_vo(*lm2, modules::vo_modules(*lm2)[0], 1, gram_stats(*lm2).mean_gram(m.value));
    CHECK(lm2->forward(ids).sizes() == before.sizes());
  }
}

TEST_CASE("acur repository round trip of narrowed query-key and value-output heads: the same logits, the shapes in config.json") {
  for (const char* fixture : {"llama_gqa", "tiny-shakespeare-opt"}) {
    DYNAMIC_SECTION(fixture) {
      auto lm = model::CausalLM::load(test::model_dir(fixture));
      const auto stats = gram_stats(*lm);
      const auto qk = modules::qk_modules(*lm);
      const auto vo = modules::vo_modules(*lm);
      const int64_t d = lm->config().head_dim, dk = d / 2 - (d / 2) % 2, dv = d / 2 + 1;
      modules::compress_qk(*lm, qk[0], dk, stats.mean_gram(qk[0].query));
      modules::compress_vo(*lm, vo[0], dv, stats.mean_gram(vo[0].value));
      modules::compress_vo(*lm, vo[1], dv - 1, stats.mean_gram(vo[1].value));
      const auto dims = lm->config().layer_shape(0).qk_dims;
      const auto ids = at::tensor(test::make_samples({24}, lm->config().vocab_size, 7).front(), at::kLong).unsqueeze(0);
      const auto before = lm->forward(ids);
      test::TempDir dir("modules_attention_export");
      repo::write_acur_repo(*lm, dir / "repo", {});

      const auto config = nlohmann::json::parse(io::read_file(dir / "repo" / "config.json"));
      REQUIRE(config.contains("layer_shapes"));
      const auto& shapes = config.at("layer_shapes");
      CHECK(shapes[0].at("qk_head_dim").get<int64_t>() == dk);
      CHECK(shapes[0].at("qk_dims").get<std::vector<int64_t>>() == dims);
      CHECK(shapes[0].at("v_head_dim").get<int64_t>() == dv);
      CHECK(shapes[1].at("v_head_dim").get<int64_t>() == dv - 1);
      CHECK_FALSE(shapes[1].contains("qk_head_dim"));

      auto back = model::CausalLM::load(dir / "repo");
      CHECK(back->config().layer_shape(0) == lm->config().layer_shape(0));
      CHECK(back->config().layer_shape(1) == lm->config().layer_shape(1));
      CHECK(back->linear(qk[0].query).out_features() == qk[0].heads * dk);
      CHECK(model::count_params(*back).linear_stored == model::count_params(*lm).linear_stored);
      CHECK(at::equal(back->forward(ids), before));
    }
  }
}

namespace {

// The model with the query and key rows of layer `layer` outside `dims` (LayerShapes::qk_dims) zeroed: what the
// narrowed attention must compute (same scale, same rotary frequencies for the kept dimensions).
void zero_dropped_qk(model::CausalLM& lm, const modules::QkModule& m, const std::vector<int64_t>& dims) {
  const int64_t dk = static_cast<int64_t>(dims.size()) / m.kv_heads, group = m.heads / m.kv_heads;
  for (const auto& [name, heads] : {std::pair<std::string, int64_t>{m.query, m.heads}, {m.key, m.kv_heads}}) {
    const auto& slot = lm.dense_linear(name);
    auto keep = at::zeros({slot.out_features()}, slot.weight().options());
    for (int64_t i = 0; i < heads; ++i) {
      const int64_t j = name == m.query ? i / group : i;
      for (int64_t r = 0; r < dk; ++r) keep[i * m.width + dims[static_cast<size_t>(j * dk + r)]] = 1.0;
    }
    auto b = slot.bias().defined() ? slot.bias() * keep : at::Tensor();
    lm.replace_linear(name, std::make_shared<model::DenseLinear>(slot.weight() * keep.unsqueeze(1), b));
  }
}

}  // namespace

TEST_CASE("compress_qk: the narrowed attention equals the full one with the dropped dimensions zeroed (rotary pairs, GQA, OPT biases)") {
  for (const char* json : {kLlama, kOpt}) {
    auto lm = random_model(json);
    const auto& c = lm->config();
    const auto mods = modules::qk_modules(*lm);
    REQUIRE(mods.size() == 2);
    const auto& m = mods[0];
    CHECK(m.rotary == (c.family == model::Family::Llama));
    const auto stats = gram_stats(*lm);
    const auto ids = at::tensor(test::make_samples({20}, 64, 9).front(), at::kLong).unsqueeze(0);
    const auto before = lm->forward(ids);
    const auto counts = model::count_params(*lm);

    // Every dimension kept: nothing changes.
    modules::compress_qk(*lm, m, m.width, stats.mean_gram(m.query));
    CHECK(at::equal(lm->forward(ids), before));

    const int64_t dk = 2;
    const auto rows = modules::compress_qk(*lm, m, dk, stats.mean_gram(m.query));
    const auto shape = lm->config().layer_shape(0);
    CHECK(shape.qk_head_dim == dk);
    REQUIRE(shape.qk_dims.size() == static_cast<size_t>(m.kv_heads * dk));
    if (m.rotary) {
      for (int64_t j = 0; j < m.kv_heads; ++j) {  // a rotary pair: dims p and p + d/2
        CHECK(shape.qk_dims[j * dk + 1] == shape.qk_dims[j * dk] + m.width / 2);
      }
    }
    CHECK(lm->config().layer_shape(1).qk_head_dim == m.width);
    CHECK(lm->linear(m.query).out_features() == m.heads * dk);
    CHECK(lm->linear(m.key).out_features() == m.kv_heads * dk);
    const int64_t saved = m.hidden * (m.width - dk) * (m.heads + m.kv_heads);
    CHECK(model::count_params(*lm).linear_stored == counts.linear_stored - saved);
    CHECK(rows[0].stored_params + rows[1].stored_params == modules::qk_weight_params(m, dk));
    const auto after = lm->forward(ids);
    CHECK(max_abs(after - before) > 1e-4);  // the selection changed the model

    auto reference = random_model(json);
    zero_dropped_qk(*reference, m, shape.qk_dims);
    CHECK(max_abs(after - reference->forward(ids)) < 1e-5 * std::max(1.0, max_abs(before)));
    CHECK_THROWS_AS(modules::compress_qk(*lm, m, dk, stats.mean_gram(m.query)), std::invalid_argument);
    if (m.rotary) CHECK_THROWS_AS(modules::compress_qk(*reference, m, 3, stats.mean_gram(m.query)), std::invalid_argument);
  }
}

TEST_CASE("qk_cr: the unit scores are RMS bounds of the score contributions, the kept units the highest, and the "
          "mean-square score error the dropped block's") {
  const int64_t h = 9, d = 6, n = 400;
  const auto x = randn64({n, h}, 51);
  const auto g = x.t().mm(x) / static_cast<double>(n);
  for (int64_t heads : {2, 4}) {  // 2 KV heads: without and with GQA (2 query heads per KV head)
    const int64_t kv = 2, group = heads / kv;
    const auto wq = randn64({heads * d, h}, 52), wk = randn64({kv * d, h}, 53);
    const auto bq = randn64({heads * d}, 54) * 0.1;
    const auto q = x.mm(wq.t()) + bq, k = x.mm(wk.t());  // [n, heads * d], [n, kv * d]
    // sqrt(E q_p^2) sqrt(E k_p^2) per dimension, from the activations (the bias enters as b^2: x has mean ~0).
    const auto rms_q = (x.mm(wq.t()).pow(2).mean(0) + bq.pow(2)).sqrt().view({kv, group, d}).sum(1);
    const auto rms_k = k.pow(2).mean(0).sqrt().view({kv, d});
    const auto scores = modules::qk_unit_scores(wq, bq, wk, {}, g, heads, kv, false);
    CHECK(max_abs(scores - rms_q * rms_k) < 1e-9);

    const int64_t dk = 4;
    const auto dims = modules::select_qk_dims(scores, d, dk, false);
    for (int64_t j = 0; j < kv; ++j) {
      std::vector<bool> kept(d, false);
      for (int64_t r = 0; r < dk; ++r) kept[dims[j * dk + r]] = true;
      double lowest_kept = 1e300, highest_dropped = -1;
      for (int64_t p = 0; p < d; ++p) {
        const double s = scores[j][p].item<double>();
        if (kept[p]) {
          lowest_kept = std::min(lowest_kept, s);
        } else {
          highest_dropped = std::max(highest_dropped, s);
        }
      }
      CHECK(lowest_kept >= highest_dropped);
      // Per query head of the group: the score error over all token pairs, against the dropped block.
      for (int64_t r = 0; r < group; ++r) {
        const int64_t i = j * group + r;
        auto drop = at::ones({d}, x.options());
        for (int64_t p = 0; p < d; ++p) drop[p] = kept[p] ? 0.0 : 1.0;
        const auto qi = q.narrow(1, i * d, d) * drop, kj = k.narrow(1, j * d, d) * drop;
        const auto err = qi.mm(kj.t());  // [n, n]: the full score minus the kept one
        const double mse = err.pow(2).mean().item<double>();
        const auto gq = qi.t().mm(qi) / static_cast<double>(n), gk = kj.t().mm(kj) / static_cast<double>(n);
        CHECK(mse == Approx((gq * gk).sum().item<double>()).epsilon(1e-9));
        // The bound the selection minimised: RMS <= the sum of the dropped units' sqrt(E q^2) sqrt(E k^2).
        const double bound = (q.narrow(1, i * d, d).pow(2).mean(0).sqrt() * rms_k[j] * drop).sum().item<double>();
        CHECK(std::sqrt(mse) <= bound * (1 + 1e-9));
      }
    }
  }
  // Rotary units are pairs (p, p + d/2): kept together, first halves then second halves.
  const auto pair_scores = at::tensor(std::vector<double>{0.1, 0.9, 0.5, 0.7, 0.2, 0.8}, at::kDouble).view({2, 3});
  CHECK(modules::select_qk_dims(pair_scores, 6, 4, true) == std::vector<int64_t>{1, 2, 4, 5, 0, 2, 3, 5});
  CHECK_THROWS_AS(modules::select_qk_dims(pair_scores, 6, 3, true), std::invalid_argument);
}

TEST_CASE("the module sensitivity table measured layer by layer equals the calibration perplexity of full forwards") {
  for (const char* json : {kLlama, kOpt}) {
    auto lm = random_model(json);
    const auto stats = gram_stats(*lm);
    const auto samples = test::make_samples({16, 16, 12}, 64, 4);  // two lengths: two batches
    modules::ModuleOptions o;
    o.method = "modular";
    o.allocation = "lagrangian";
    o.candidates = {0.5};
    o.batch_size = 2;
    auto reference = random_model(json);
    auto result = modules::compress_modules(*lm, stats, samples, 0.9, o);
    REQUIRE(result.sensitivity.size() == 6);  // 2 layers x (MLP, qk, vo)
    eval::PerplexityOptions popts;
    CHECK(result.dense_calibration_ppl == Approx(eval::samples_perplexity(*reference, samples, popts).perplexity)
                                              .epsilon(1e-5));
    // Layer 1's query-key pair at 0.5, measured with a whole forward of the model with only that pair narrowed.
    const auto qk = modules::qk_modules(*reference)[1];
    modules::compress_qk(*reference, qk, qk.width / 2 - (qk.width / 2) % qk.unit(), stats.mean_gram(qk.query));
    const auto measured = result.sensitivity.score(qk.name(), 0.5);
    REQUIRE(measured);
    CHECK(*measured == Approx(eval::samples_perplexity(*reference, samples, popts).perplexity).epsilon(1e-5));
  }
}

TEST_CASE("a module method plus a Gram compressor allocates the other Linears in the same search, counted exactly") {
  CHECK(modules::is_module_method("mlp_nystrom+svd_whiten"));
  CHECK(modules::is_module_method("qk_cr"));
  CHECK_FALSE(modules::is_module_method("mlp_nystrom+nonsense"));
  CHECK_FALSE(modules::is_module_method("mlp_nystrom+"));
  CHECK(modules::split_module_method("modular+skeleton_swap") ==
        std::pair<std::string, std::string>{"modular", "skeleton_swap"});
  auto lm = random_model(kLlama);
  const auto stats = gram_stats(*lm);
  const auto samples = test::make_samples({16, 16}, 64, 4);
  modules::ModuleOptions o;
  o.method = "mlp_nystrom+svd_whiten";
  o.allocation = "lagrangian";
  o.candidates = {0.5, 0.75};
  auto result = modules::compress_modules(*lm, stats, samples, 0.7, o);
  // 2 MLPs, 8 attention Linears and the untied lm_head, each at 2 ratios.
  CHECK(result.sensitivity.size() == 22);
  CHECK(result.sensitivity.score("lm_head", 0.5));
  CHECK(result.plan.param_ratio() <= 0.7);
  CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored);
  bool any_svd = false;
  for (const auto& row : result.plan.layers()) any_svd = any_svd || row.method == "svd_whiten";
  CHECK(any_svd);
  o.method = "mlp_nystrom+cur";  // a compressor on the activation scale, not the Gram matrix
  CHECK_THROWS_WITH(modules::compress_modules(*random_model(kLlama), stats, samples, 0.7, o),
                    Catch::Contains("Gram compressor"));
}

TEST_CASE("mixed: each module is either narrowed or has its Linears factorized, whichever the table finds cheaper") {
  const auto samples = test::make_samples({16, 16}, 64, 4);
  modules::ModuleOptions o;
  o.method = "mixed+svd_whiten";
  o.allocation = "lagrangian";
  o.candidates = {0.5, 0.75};
  // Tables that make one side harmless (a score below any perplexity: no cost) and the other ruinous.
  auto table_for = [&](const model::CausalLM& lm, bool modules_cheap) {
    search::SensitivityTable t("ppl");
    std::set<std::string> structural;
    for (const auto& m : modules::mlp_modules(lm)) structural.insert(m.name());
    for (const auto& m : modules::vo_modules(lm)) structural.insert(m.name());
    for (const auto& m : modules::qk_modules(lm)) structural.insert(m.name());
    std::set<std::string> names = structural;
    for (const auto& info : lm.linears()) names.insert(info.name);
    for (const auto& name : names) {
      const bool cheap = structural.count(name) ? modules_cheap : !modules_cheap;
      for (double r : o.candidates) t.add(name, r, cheap ? 1e-3 : 1e9);
    }
    return t;
  };
  for (const bool modules_cheap : {true, false}) {
    INFO("modules cheap: " << modules_cheap);
    auto lm = random_model(kLlama);
    const auto stats = gram_stats(*lm);
    const auto table = table_for(*lm, modules_cheap);
    o.sensitivity = &table;
    const auto result = modules::compress_modules(*lm, stats, samples, 0.7, o);
    CHECK(result.plan.param_ratio() <= 0.7);
    CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored);
    int narrowed = 0, factorized = 0;
    for (const auto& row : result.plan.layers()) {
      if (row.method == "svd_whiten") ++factorized;
      if (row.ratio < 1 && row.method != "svd_whiten" && row.method != "dense") ++narrowed;
    }
    if (modules_cheap) {
      CHECK(narrowed > 0);
      CHECK(factorized == 0);
    } else {
      CHECK(narrowed == 0);
      CHECK(factorized > 0);
      for (const auto& [name, k] : result.widths) {
        const bool mlp = name.size() > 4 && name.compare(name.size() - 4, 4, ".mlp") == 0;
        if (mlp) CHECK(k == lm->config().intermediate_size);
      }
    }
  }
  // Measured rather than given: within the target, and every Linear counted once.
  o.sensitivity = nullptr;
  auto lm = random_model(kLlama);
  const auto result = modules::compress_modules(*lm, gram_stats(*lm), samples, 0.7, o);
  CHECK(result.plan.param_ratio() <= 0.7);
  CHECK(result.plan.stored_params() == model::count_params(*lm).linear_stored);
  CHECK(result.sensitivity.score("model.layers.0.mlp", 0.5));
  CHECK(result.sensitivity.score("model.layers.0.mlp.down_proj", 0.5));
  // It needs a Gram method and the lagrangian allocation.
  modules::ModuleOptions bare = o;
  bare.method = "mixed";
  CHECK_THROWS_WITH(modules::compress_modules(*random_model(kLlama), gram_stats(*lm), samples, 0.7, bare),
                    Catch::Contains("mixed+svd_whiten"));
  modules::ModuleOptions uniform = o;
  uniform.allocation = "uniform";
  CHECK_THROWS_AS(modules::compress_modules(*random_model(kLlama), gram_stats(*lm), samples, 0.7, uniform),
                  std::invalid_argument);
}
