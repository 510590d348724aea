// Data-aware decompositions on the input Gram matrix: skeleton (interpolative)
// layers, whitened SVD, data-aware CUR with DEIM / pivoted-QR selection.
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/data_cur.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/sequential.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/compress/whiten_svd.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/binary_search.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "test_helpers.h"

#include <cmath>
#include <limits>
#include <set>

using namespace cur4llm;
using namespace cur4llm::compress;
using Catch::Matchers::Contains;

namespace {

const auto f64 = at::TensorOptions().dtype(at::kDouble);

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, f64);
}

// Calibration activations with correlated, unevenly scaled channels, as in a real layer input.
at::Tensor activations(int64_t tokens, int64_t n, uint64_t seed) {
  auto mix = randn({n, n}, seed + 1) / std::sqrt(static_cast<double>(n));
  auto scales = at::exp(at::linspace(1.5, -1.5, n, f64));
  return at::mm(randn({tokens, n}, seed) * scales, mix) + 0.3;  // a mean offset, as after a norm
}

// A weight with a decaying but not low-rank spectrum.
at::Tensor weight(int64_t m, int64_t n, uint64_t seed) {
  auto u = std::get<0>(at::linalg_qr(randn({m, std::min(m, n)}, seed)));
  auto v = std::get<0>(at::linalg_qr(randn({n, std::min(m, n)}, seed + 7)));
  auto s = at::pow(at::full({std::min(m, n)}, 0.93, f64), at::arange(std::min(m, n), f64));
  return at::mm(u * s, v.transpose(0, 1));
}

double sq_norm(const at::Tensor& t) { return (t * t).sum().item<double>(); }

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

}  // namespace

TEST_CASE("the closed-form interpolation matrix is the least-squares regression of all outputs on the kept ones",
          "[unit][numerics]") {
  const int64_t m = 24, n = 16, k = 7;
  auto w = weight(m, n, 1);
  auto x = activations(300, n, 2);
  auto g = at::mm(x.transpose(0, 1), x);
  auto rows = greedy_rows(w, g, k);
  REQUIRE(rows.rank() == k);
  auto interp = rows.interpolation(k);  // [m, k]

  // Independent: regress Y = x W^T on its kept columns Y[:, I] by least squares.
  auto y = at::mm(x, w.transpose(0, 1));
  auto kept = rows.pivots;
  auto y_kept = y.index_select(1, kept);
  auto coef = std::get<0>(at::linalg_lstsq(y_kept, y));  // [k, m]
  CHECK(sq_norm(interp - coef.transpose(0, 1)) < 1e-16 * sq_norm(interp));
  // The kept rows predict themselves.
  CHECK(sq_norm(interp.index_select(0, kept) - at::eye(k, f64)) < 1e-20);
}

TEST_CASE("the greedy pivoting's predicted error is the measured output error on the calibration activations",
          "[unit][numerics]") {
  const int64_t m = 30, n = 20;
  auto w = weight(m, n, 3);
  auto bias = randn({m}, 4);
  auto x = activations(400, n, 5);
  auto g = at::mm(x.transpose(0, 1), x);
  SkeletonOptions o;
  o.side = SkeletonSide::Auto;
  SkeletonFactory f(w, bias, g, o, 12);
  auto dense = at::linear(x, w, bias);
  for (int64_t k : {1, 4, 9, 12}) {
    for (auto side : {SkeletonSide::Row, SkeletonSide::Column}) {
      auto slot = f.build_rank(k, side);
      REQUIRE(slot->rank() == k);
      const double measured = sq_norm(dense - slot->forward(x));
      INFO("k " << k << " side " << (side == SkeletonSide::Row ? "row" : "col"));
      CHECK(rel(f.predicted_error(k, side), measured) < 1e-9);
      CHECK(rel(output_error(w, slot->reconstruct_weight(), g), measured) < 1e-9);
    }
    // Auto builds the side with the lower prediction.
    const auto best = f.best_side(k);
    CHECK(f.build_rank(k, SkeletonSide::Auto)->side() == best);
    CHECK(f.predicted_error(k, best) <= std::min(f.predicted_error(k, SkeletonSide::Row),
                                                 f.predicted_error(k, SkeletonSide::Column)));
  }
  // The curves start at the dense output energy and never increase.
  CHECK(rel(f.rows()->residual[0], sq_norm(at::mm(x, w.transpose(0, 1)))) < 1e-12);
  for (const auto* curve : {&f.rows()->residual, &f.columns()->residual}) {
    for (size_t j = 1; j < curve->size(); ++j) CHECK((*curve)[j] <= (*curve)[j - 1] * (1 + 1e-12));
  }
  // No rank-k matrix does better than the truncated SVD of W L.
  auto l = at::linalg_cholesky(g);
  auto s = at::linalg_svdvals(at::mm(w, l));
  for (int64_t k : {4, 9}) {
    const double optimal = sq_norm(s.narrow(0, k, s.size(0) - k));
    CHECK(f.predicted_error(k, SkeletonSide::Row) >= optimal * (1 - 1e-9));
    CHECK(f.predicted_error(k, SkeletonSide::Column) >= optimal * (1 - 1e-9));
  }
}

TEST_CASE("a skeleton layer's forward is x times its reconstructed weight, with exact kept rows and columns",
          "[unit][numerics]") {
  const int64_t m = 18, n = 11, k = 5;
  auto w = weight(m, n, 6).to(at::kFloat);
  auto bias = randn({m}, 7).to(at::kFloat);
  auto g = at::mm(activations(100, n, 8).transpose(0, 1), activations(100, n, 8));
  SkeletonOptions o;
  o.side = SkeletonSide::Auto;
  SkeletonFactory f(w, bias, g, o, k);
  auto x = randn({3, 4, n}, 9).to(at::kFloat);
  for (auto side : {SkeletonSide::Row, SkeletonSide::Column}) {
    auto slot = f.build_rank(k, side);
    CHECK(slot->kept().scalar_type() == at::kFloat);
    auto full = slot->reconstruct_weight();
    auto expect = at::linear(x.to(at::kDouble), full.to(at::kDouble), bias.to(at::kDouble));
    auto y = slot->forward(x);
    CHECK(y.sizes() == expect.sizes());
    CHECK(sq_norm(y.to(at::kDouble) - expect) < 1e-10 * sq_norm(expect));
    auto kept = slot->index().narrow(0, 0, k);
    if (side == SkeletonSide::Row) {
      CHECK(slot->kind() == "skeleton_row");
      CHECK(at::equal(slot->kept(), w.index_select(0, kept)));
      CHECK(at::equal(full.index_select(0, kept), w.index_select(0, kept)));
    } else {
      CHECK(slot->kind() == "skeleton_col");
      CHECK(at::equal(slot->kept(), w.index_select(1, kept)));
      CHECK(at::equal(full.index_select(1, kept), w.index_select(1, kept)));
    }
    // The materialized form computes the same.
    slot->set_materialized(true);
    CHECK(sq_norm(slot->forward(x).to(at::kDouble) - y.to(at::kDouble)) < 1e-10 * sq_norm(expect));
    slot->set_materialized(false);
    // Load-back from kind() and state().
    auto back = SkeletonLinear::from_state(slot->kind(), slot->state());
    CHECK(at::equal(back->forward(x), y));
  }
}

TEST_CASE("skeleton parameter counts are exact", "[unit]") {
  // k (m + n - k) <= floor(ratio m n), k as large as possible (hand-computed).
  CHECK(skeleton_rank_for_ratio(768, 768, 0.9, 1) == 525);   // 525 * 1011 = 530775 <= 530841 < 526 * 1010
  CHECK(skeleton_rank_for_ratio(768, 768, 0.9, 8) == 520);
  CHECK(skeleton_rank_for_ratio(64, 64, 0.9, 1) == 43);      // 43 * 85 = 3655 <= 3686 < 44 * 84
  CHECK(skeleton_rank_for_ratio(64, 64, 0.7, 1) == 28);      // 28 * 100 = 2800 <= 2867 < 29 * 99
  CHECK(skeleton_rank_for_ratio(512, 64, 0.9, 1) == 56);     // 56 * 520 = 29120 <= 29491 < 57 * 519
  CHECK(skeleton_rank_for_ratio(172, 64, 0.4, 1) == 20);     // 20 * 216 = 4320 <= 4403 < 21 * 215
  CHECK(skeleton_rank_for_ratio(10, 10, 0.01, 4) == 4);      // nothing fits: the smallest allowed rank
  CHECK(skeleton_stored_params(512, 64, 56) == 29120);

  const int64_t m = 40, n = 24;
  auto w = weight(m, n, 10);
  auto g = at::eye(n, f64);
  for (const std::string method : {"skeleton_row", "skeleton_col", "skeleton"}) {
    auto c = make_compressor(method);
    CHECK(c->statistic() == LayerStatistic::Gram);
    auto slot = c->compress(w, at::Tensor(), g, 0.6);
    // floor(0.6 * 960) = 576: 10 * 54 = 540 fits, 11 * 53 = 583 does not.
    CHECK(c->rank_for(m, n, 0.6) == 10);
    CHECK(c->stored_params(m, n, 0.6) == 540);
    CHECK(slot->weight_params() == 540);
    int64_t stored = 0;
    for (const auto& [name, t] : slot->state()) {
      if (name == "W_I" || name == "X_rest" || name == "W_J" || name == "Z_rest") stored += t.numel();
    }
    CHECK(stored == 540);
  }
}

TEST_CASE("apply_allocation with a Gram compressor plans the skeleton's real storage", "[model]") {
  auto lm = model::CausalLM::load(test::model_dir("tiny-shakespeare-opt"));
  calib::CollectOptions copts;
  copts.abs_mean = false;
  copts.gram = true;
  auto stats = calib::collect_statistics(*lm, test::make_samples({32, 32}, lm->config().vocab_size, 3), copts);
  auto c = make_compressor("skeleton");
  ScaleFn gram = [&](const std::string& layer) { return stats.mean_gram(layer); };
  search::Allocation alloc;
  for (const auto& info : lm->linears()) alloc.push_back({info.name, info.layer == 0 ? 0.7 : 1.0, info.layer == 0});
  auto plan = apply_allocation(*lm, alloc, *c, gram);
  int64_t compressed = 0;
  for (const auto& l : plan.layers()) {
    const auto& slot = lm->linear(l.name);
    CHECK(l.stored_params == slot.weight_params());
    if (l.method != "skeleton") continue;
    ++compressed;
    const auto* s = dynamic_cast<const SkeletonLinear*>(&slot);
    REQUIRE(s != nullptr);
    CHECK(l.rank == s->rank());
    CHECK(l.stored_params == s->rank() * (slot.out_features() + slot.in_features() - s->rank()));
    CHECK(l.stored_params <= static_cast<int64_t>(0.7 * slot.out_features() * slot.in_features()));
  }
  CHECK(compressed == 6);  // q, k, v, out_proj, fc1, fc2 of layer 0
}

TEST_CASE("whitened SVD is the best rank-k approximation in the data norm and beats plain SVD there",
          "[unit][numerics]") {
  const int64_t m = 32, n = 20, k = 6;
  auto w = weight(m, n, 11);
  auto x = activations(500, n, 12);
  auto g = at::mm(x.transpose(0, 1), x);
  WhitenedSVDFactory f(w, at::Tensor(), g, SVDOptions{}, k);
  auto whitened = f.build_rank(k);
  CHECK(whitened->kind() == "svd");
  CHECK(whitened->weight_params() == k * (m + n));
  const double err = output_error(w, whitened->reconstruct_weight(), g);
  // Independently: the tail of W L's spectrum, L = cholesky(G).
  auto s = at::linalg_svdvals(at::mm(w, at::linalg_cholesky(g)));
  CHECK(rel(err, sq_norm(s.narrow(0, k, n - k))) < 1e-9);
  SVDOptions plain;
  plain.param_ratio = 1;
  auto svd = SVDFactory(w, at::Tensor(), plain, k).build_rank(k);
  CHECK(err < 0.8 * output_error(w, svd->reconstruct_weight(), g));
}

TEST_CASE("singular, zero and non-finite Gram matrices", "[unit][numerics]") {
  const int64_t m = 12, n = 8;
  auto w = weight(m, n, 13);
  auto x = activations(50, n, 14);
  x.select(1, 3).zero_();  // a dead input channel: G is singular
  auto g = at::mm(x.transpose(0, 1), x);
  REQUIRE_THROWS(at::linalg_cholesky(g));
  auto l = whitening_factor(g);
  CHECK(at::isfinite(l).all().item<bool>());
  CHECK(sq_norm(at::mm(l, l.transpose(0, 1)) - g) < 1e-12 * sq_norm(g));
  for (const std::string method : {"svd_whiten", "skeleton", "cur_deim"}) {
    auto slot = make_compressor(method)->compress(w, at::Tensor(), g, 0.6);
    CHECK(at::isfinite(slot->reconstruct_weight()).all().item<bool>());
  }
  // Nothing reached the layer, or a NaN got in: CompressionError, so the caller keeps it dense.
  auto zero = at::zeros({n, n}, f64);
  auto nan = g.clone();
  nan[0][0] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(whitening_factor(zero), CompressionError);
  CHECK_THROWS_AS(whitening_factor(nan), CompressionError);
  CHECK_THROWS_AS(make_compressor("svd_whiten")->compress(w, at::Tensor(), zero, 0.6), CompressionError);
  CHECK_THROWS_AS(make_compressor("skeleton_row")->compress(w, at::Tensor(), nan, 0.6), CompressionError);
  // A zero Gram matrix leaves a skeleton nothing to keep: it predicts zeros (plus the bias).
  auto bias = randn({m}, 15);
  auto empty = SkeletonFactory(w, bias, zero, SkeletonOptions{}, 3).build_rank(3, SkeletonSide::Row);
  CHECK(empty->rank() == 0);
  CHECK(at::allclose(empty->forward(x), bias.expand({50, m})));
  // User mistakes name the method and what is missing.
  CHECK_THROWS_WITH(make_compressor("skeleton")->compress(w, at::Tensor(), at::Tensor(), 0.6), Contains("Gram"));
  CHECK_THROWS_AS(make_compressor("svd_whiten")->compress(w, at::Tensor(), at::eye(n + 1, f64), 0.6),
                  std::invalid_argument);
  CHECK_THROWS_AS(SkeletonLinear(SkeletonSide::Row, w.narrow(0, 0, 3), at::zeros({m - 3, 3}, f64),
                                 at::zeros({m}, at::kLong), at::Tensor()),
                  std::invalid_argument);  // index is no permutation
}

TEST_CASE("the diagonal skeleton uses G = diag(s^2)", "[unit][numerics]") {
  const int64_t m = 20, n = 12;
  auto w = weight(m, n, 16);
  auto s = at::exp(randn({n}, 17));
  auto c = make_compressor("skeleton_diag");
  CHECK(c->statistic() == LayerStatistic::Scale);
  auto slot = c->compress(w, at::Tensor(), s, 0.7);
  auto expect = SkeletonFactory(w, at::Tensor(), at::diag(s * s), SkeletonOptions{}, 6).build_rank(6, SkeletonSide::Row);
  REQUIRE(c->rank_for(m, n, 0.7) == 6);  // floor(0.7 * 240) = 168; 6 * 26 = 156 <= 168 < 7 * 25
  CHECK(at::allclose(slot->reconstruct_weight(), expect->reconstruct_weight()));
}

TEST_CASE("subset selections: distinct indices, and DEIM / pivoted QR beat top-k leverage on a steep spectrum",
          "[unit][numerics]") {
  const int64_t m = 120, n = 90, k = 20;
  auto u = std::get<0>(at::linalg_qr(randn({m, n}, 18)));
  auto v = std::get<0>(at::linalg_qr(randn({n, n}, 19)));
  auto w = at::mm(u * at::pow(at::full({n}, 0.75, f64), at::arange(n, f64)), v.transpose(0, 1));
  auto g = at::eye(n, f64);
  auto basis = std::get<0>(at::linalg_svd(w, false)).narrow(1, 0, k);
  std::map<SubsetSelection, double> err;
  for (auto sel : {SubsetSelection::Leverage, SubsetSelection::DEIM, SubsetSelection::PivotedQR}) {
    auto idx = select_subset(basis, sel);
    REQUIRE(idx.numel() == k);
    std::set<int64_t> distinct(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + k);
    CHECK(distinct.size() == static_cast<size_t>(k));
    DataCUROptions o;
    o.selection = sel;
    auto slot = DataCURFactory(w, at::Tensor(), g, o, k).build_rank(k);
    CHECK(slot->kind() == "cur");
    CHECK(slot->weight_params() == m * k + k * k + k * n);
    err[sel] = output_error(w, slot->reconstruct_weight(), g);
  }
  const double optimal = sq_norm(at::linalg_svdvals(w).narrow(0, k, n - k));
  INFO("leverage " << err[SubsetSelection::Leverage] / optimal << " deim " << err[SubsetSelection::DEIM] / optimal
                   << " qr " << err[SubsetSelection::PivotedQR] / optimal);
  CHECK(err[SubsetSelection::DEIM] < err[SubsetSelection::Leverage]);
  CHECK(err[SubsetSelection::PivotedQR] < err[SubsetSelection::Leverage]);
  CHECK(err[SubsetSelection::PivotedQR] < 20 * optimal);
  // A matrix of rank k is recovered exactly by every selection.
  auto low = at::mm(randn({m, k}, 20), randn({k, n}, 21));
  for (auto sel : {SubsetSelection::Leverage, SubsetSelection::DEIM, SubsetSelection::PivotedQR}) {
    DataCUROptions o;
    o.selection = sel;
    auto slot = DataCURFactory(low, at::Tensor(), g, o, k).build_rank(k);
    CHECK(sq_norm(slot->reconstruct_weight() - low) < 1e-16 * sq_norm(low));
  }
}

TEST_CASE("exchange refinement never raises the error and predicts what the layer does", "[unit][numerics]") {
  const int64_t m = 40, n = 24, k = 8;
  auto w = weight(m, n, 22);
  auto x = activations(300, n, 23);
  auto g = at::mm(x.transpose(0, 1), x);
  auto rows = greedy_rows(w, g, k);
  double swapped = 0;
  auto kept = exchange_rows(w, g, rows.pivots, 2 * k, &swapped);
  REQUIRE(kept.numel() == k);
  std::set<int64_t> distinct(kept.data_ptr<int64_t>(), kept.data_ptr<int64_t>() + k);
  CHECK(distinct.size() == static_cast<size_t>(k));
  CHECK(swapped <= rows.residual[k] * (1 + 1e-12));
  SkeletonOptions o;
  o.exchange = 2;
  auto slot = SkeletonFactory(w, at::Tensor(), g, o, k).build_rank(k, SkeletonSide::Row);
  const double measured = sq_norm(at::mm(x, (w - slot->reconstruct_weight()).transpose(0, 1)));
  CHECK(rel(measured, swapped) < 1e-8);
  // Zero swaps: the greedy subset, its error.
  double greedy = 0;
  CHECK(at::equal(exchange_rows(w, g, rows.pivots, 0, &greedy), rows.pivots));
  CHECK(rel(greedy, rows.residual[k]) < 1e-9);
}

TEST_CASE("sequential moments: X_rest regresses the dense outputs on the kept compressed outputs", "[unit][numerics]") {
  const int64_t m = 20, n = 12, k = 5, t = 400;
  auto w = weight(m, n, 24);
  auto x = activations(t, n, 25);                     // the dense model's inputs
  auto xs = x + 0.3 * activations(t, n, 26) - 0.1;    // what the compressed model feeds the layer
  auto g = at::mm(x.transpose(0, 1), x) / t, gs = at::mm(xs.transpose(0, 1), xs) / t, h = at::mm(x.transpose(0, 1), xs) / t;
  SkeletonFactory f(w, at::Tensor(), at::stack({g, gs, h}), SkeletonOptions{}, k);
  auto slot = f.build_rank(k, SkeletonSide::Row);
  // Rows are picked on E[x' x'^T]: the same as a plain factory on gs.
  auto plain = SkeletonFactory(w, at::Tensor(), gs, SkeletonOptions{}, k).build_rank(k, SkeletonSide::Row);
  CHECK(at::equal(slot->index(), plain->index()));
  CHECK(at::equal(slot->kept(), w.index_select(0, slot->index().narrow(0, 0, k))));
  // Independent: least squares of y_rest = x W_rest^T on y'_I = x' W_I^T.
  auto kept = slot->index().narrow(0, 0, k), rest = slot->index().narrow(0, k, m - k);
  auto y_rest = at::mm(x, w.index_select(0, rest).transpose(0, 1));
  auto ys_kept = at::mm(xs, w.index_select(0, kept).transpose(0, 1));
  auto coef = std::get<0>(at::linalg_lstsq(ys_kept, y_rest)).transpose(0, 1);  // [m - k, k]
  CHECK(sq_norm(slot->predictor() - coef) < 1e-16 * sq_norm(coef));
  // It fits the dense outputs better than the plain skeleton does.
  auto dense = at::mm(x, w.transpose(0, 1));
  CHECK(sq_norm(dense - slot->forward(xs)) < sq_norm(dense - plain->forward(xs)));
}

TEST_CASE("sequential decomposition: a calibration sample without tokens is refused, naming it", "[model]") {
  auto lm = model::CausalLM::load(test::model_dir("tiny-shakespeare-opt"));
  search::Allocation alloc;
  for (const auto& info : lm->linears()) alloc.push_back({info.name, 0.6, info.layer >= 0});
  const auto compressor = make_compressor("skeleton_row");
  // Only empty samples: moments of 0 tokens would be 0/0.
  const std::vector<std::vector<int64_t>> none{{}, {}};
  CHECK_THROWS_MATCHES(apply_allocation_sequential(*lm, alloc, *compressor, none), std::invalid_argument,
                       Catch::Matchers::Message("sequential decomposition: calibration sample 0 has no tokens"));
  // One empty sample among others.
  auto samples = test::make_samples({16, 16, 16}, lm->config().vocab_size, 5);
  samples[2].clear();
  CHECK_THROWS_MATCHES(apply_allocation_sequential(*lm, alloc, *compressor, samples), std::invalid_argument,
                       Catch::Matchers::Message("sequential decomposition: calibration sample 2 has no tokens"));
  // Refused before any layer was replaced.
  for (const auto& info : lm->linears()) CHECK(lm->linear(info.name).kind() == "dense");
}

TEST_CASE("sequential decomposition of a model: every planned layer compressed, counts as stored", "[model]") {
  auto lm = model::CausalLM::load(test::model_dir("tiny-shakespeare-opt"));
  auto samples = test::make_samples({32, 32, 32}, lm->config().vocab_size, 4);
  search::Allocation alloc;
  for (const auto& info : lm->linears()) alloc.push_back({info.name, 0.6, info.layer >= 0 || info.name == "lm_head"});
  CHECK_THROWS_WITH(apply_allocation_sequential(*lm, alloc, *make_compressor("svd"), samples), Contains("data-aware"));
  auto plan = apply_allocation_sequential(*lm, alloc, *make_compressor("skeleton_row"), samples);
  int64_t compressed = 0;
  for (const auto& l : plan.layers()) {
    const auto& slot = lm->linear(l.name);
    CHECK(l.stored_params == slot.weight_params());
    if (l.method == "skeleton_row") {
      ++compressed;
      CHECK(slot.kind() == "skeleton_row");
      CHECK(l.stored_params <= static_cast<int64_t>(0.6 * l.dense_params));
    }
  }
  CHECK(compressed == static_cast<int64_t>(lm->linears().size()));
  // The compressed model still predicts: finite logits.
  auto ids = at::tensor(std::vector<int64_t>(samples[0].begin(), samples[0].end())).unsqueeze(0);
  CHECK(at::isfinite(lm->forward(ids)).all().item<bool>());
}
