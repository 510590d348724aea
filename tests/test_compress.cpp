// The compress area: CUR and SVD layers against at::linalg_svd, hand-computed
// ranks and budgets, exactness of the stored rows and columns, gradients
// against finite differences.
#include "test_paths.h"

#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/grad_cur_linear.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

using namespace cur4llm::compress;

namespace {

at::Generator make_gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

at::Tensor randn(std::vector<int64_t> shape, at::Generator& gen, at::ScalarType dtype = at::kDouble) {
  return at::randn(shape, gen, at::TensorOptions().dtype(dtype));
}

// An [m, k] matrix with orthonormal columns.
at::Tensor orthonormal(int64_t m, int64_t k, at::Generator& gen) {
  return std::get<0>(at::linalg_qr(randn({m, k}, gen), "reduced"));
}

// U diag(sigma) V^T with random orthonormal U, V (fp64).
at::Tensor with_spectrum(int64_t m, int64_t n, const at::Tensor& sigma, at::Generator& gen) {
  const int64_t r = sigma.numel();
  return at::matmul(orthonormal(m, r, gen) * sigma.unsqueeze(0), orthonormal(n, r, gen).transpose(0, 1));
}

// A scale vector in [lo, hi].
at::Tensor random_scale(int64_t n, at::Generator& gen, double lo = 0.1, double hi = 3.0) {
  return at::rand({n}, gen, at::TensorOptions().dtype(at::kDouble)) * (hi - lo) + lo;
}

double fro(const at::Tensor& a) { return a.to(at::kDouble).pow(2).sum().sqrt().item<double>(); }
double rel_err(const at::Tensor& got, const at::Tensor& want) {
  return fro(got.to(at::kDouble) - want.to(at::kDouble)) / fro(want);
}
double max_abs(const at::Tensor& a) { return a.to(at::kDouble).abs().max().item<double>(); }

// The best rank-k approximation from the full SVD (the reference, not the code under test).
at::Tensor svd_truncate(const at::Tensor& a, int64_t k) {
  auto svd = at::linalg_svd(a.to(at::kDouble), false);
  return at::matmul(std::get<0>(svd).narrow(1, 0, k) * std::get<1>(svd).narrow(0, 0, k).unsqueeze(0),
                    std::get<2>(svd).narrow(0, 0, k));
}

// A ratio whose budget is exactly the given parameter count.
double ratio_for_params(int64_t params, int64_t m, int64_t n) {
  return (static_cast<double>(params) + 0.5) / static_cast<double>(m * n);
}

bool ascending_unique_in_range(const at::Tensor& idx, int64_t bound) {
  auto v = idx.contiguous();
  const int64_t* p = v.data_ptr<int64_t>();
  for (int64_t i = 0; i < v.numel(); ++i) {
    if (p[i] < 0 || p[i] >= bound) return false;
    if (i > 0 && p[i] <= p[i - 1]) return false;
  }
  return true;
}

int64_t state_weight_params(const cur4llm::model::LinearSlot& slot) {
  int64_t total = 0;
  for (const auto& [name, t] : slot.state()) {
    if (name == "C" || name == "U" || name == "R" || name == "CU" || name == "ALinear.weight" ||
        name == "BLinear.weight") {
      total += t.numel();
    }
  }
  return total;
}

}  // namespace

TEST_CASE("CUR recovers an exactly rank-k matrix to round-off", "[compress][cur][numerics]") {
  auto gen = make_gen(1);
  const int64_t m = 60, n = 45, k = 7;
  auto w = at::matmul(randn({m, k}, gen), randn({k, n}, gen));
  auto bias = randn({m}, gen);
  for (bool with_scale : {false, true}) {
    for (bool fold : {false, true}) {
      CAPTURE(with_scale, fold);
      CUROptions o;
      o.fold_u = fold;
      // Budget of exactly k: m*k + k*n (+ k*k unfolded).
      o.param_ratio = ratio_for_params(m * k + k * n + (fold ? 0 : k * k), m, n);
      if (with_scale) o.scale = random_scale(n, gen);
      auto cur = CURLinear::from_linear(w, bias, o);
      REQUIRE(cur->rank() == k);
      CHECK(rel_err(cur->reconstruct_weight(), w) < 1e-10);
    }
  }
}

TEST_CASE("CUR error on a decaying spectrum is within 3x of the optimal rank-k error", "[compress][cur][numerics]") {
  // Stated bound: ||W - CUR||_F <= 3 * min_{rank k} ||W - W_k||_F for top-k
  // leverage, on spectra that decay like trained weights' (power law sigma_i =
  // 1/i, and geometric 0.95^i). Not a theorem: k columns by top-k leverage can
  // do worse on steep spectra (about 4x to 9x measured for 0.85^i and 0.7^i at
  // k = 24..48, docs/methods.md).
  auto gen = make_gen(2);
  const int64_t m = 200, n = 150;
  const auto power_law = at::pow(at::arange(1, n + 1, at::kDouble), -1.0);
  const auto geometric = at::pow(0.95, at::arange(n, at::kDouble));
  CUROptions o;
  o.param_ratio = 0.3;  // m*k + k*k + k*n <= 9000 -> k = 24 (8976)
  for (const auto& sigma : {power_law, geometric}) {
    auto w = with_spectrum(m, n, sigma, gen);
    // Optimal error from the constructed spectrum, and the same from at::linalg_svd.
    const double optimal = sigma.narrow(0, 24, n - 24).pow(2).sum().sqrt().item<double>();
    REQUIRE(fro(w - svd_truncate(w, 24)) == Approx(optimal).epsilon(1e-8));
    for (auto dtype : {at::kDouble, at::kFloat}) {
      CAPTURE(sigma[1].item<double>(), dtype);
      auto cur = CURLinear::from_linear(w.to(dtype), at::Tensor(), o);
      REQUIRE(cur->rank() == 24);
      const double err = fro(cur->reconstruct_weight().to(at::kDouble) - w);
      CAPTURE(err, optimal, err / optimal);
      CHECK(err <= 3.0 * optimal);
      CHECK(err >= optimal * (1 - 1e-5));  // no rank-k matrix beats the SVD
    }
  }

  auto w = with_spectrum(m, n, power_law, gen);
  SECTION("act-aware: the error in the scaled norm ||(W - W_hat) S||_F") {
    auto s = random_scale(n, gen);
    o.scale = s;
    auto cur = CURLinear::from_linear(w, at::Tensor(), o);
    auto ws = w * s.unsqueeze(0);
    const double optimal = fro(ws - svd_truncate(ws, cur->rank()));
    const double err = fro((cur->reconstruct_weight() - w) * s.unsqueeze(0));
    CAPTURE(err, optimal, err / optimal);
    CHECK(err <= 3.0 * optimal);
    // The scale matters: plain CUR is worse in the scaled norm.
    o.scale = at::Tensor();
    auto plain = CURLinear::from_linear(w, at::Tensor(), o);
    CHECK(fro((plain->reconstruct_weight() - w) * s.unsqueeze(0)) > err);
  }

  SECTION("sampled leverage: seeded, within 6x") {
    o.selection = CURSelection::SampledLeverage;
    o.seed = 7;
    auto a = CURLinear::from_linear(w, at::Tensor(), o);
    auto b = CURLinear::from_linear(w, at::Tensor(), o);
    CHECK(at::equal(a->row_indices(), b->row_indices()));
    CHECK(at::equal(a->col_indices(), b->col_indices()));
    const double optimal = power_law.narrow(0, 24, n - 24).pow(2).sum().sqrt().item<double>();
    const double err = fro(a->reconstruct_weight() - w);
    CAPTURE(err / optimal);
    CHECK(err <= 6.0 * optimal);
    CHECK(ascending_unique_in_range(a->row_indices(), m));
    CHECK(ascending_unique_in_range(a->col_indices(), n));
  }
}

TEST_CASE("act-aware CUR stores real rows and columns and forward equals x W_hat^T + b",
          "[compress][cur][numerics]") {
  auto gen = make_gen(3);
  const int64_t m = 48, n = 80;
  auto w = with_spectrum(m, n, at::pow(0.8, at::arange(m, at::kDouble)), gen).to(at::kFloat);
  auto bias = randn({m}, gen, at::kFloat);
  auto x = randn({2, 5, n}, gen, at::kFloat);
  CUROptions o;
  o.param_ratio = 0.5;
  o.scale = random_scale(n, gen).to(at::kFloat);
  auto cur = CURLinear::from_linear(w, bias, o);
  const auto& rows = cur->row_indices();
  const auto& cols = cur->col_indices();
  REQUIRE(rows.numel() == cur->rank());
  CHECK(ascending_unique_in_range(rows, m));
  CHECK(ascending_unique_in_range(cols, n));
  // Bit-exact copies of the original (unscaled) weight.
  CHECK(at::equal(cur->c(), w.index_select(1, cols)));
  CHECK(at::equal(cur->r(), w.index_select(0, rows)));

  auto want = at::matmul(x.to(at::kDouble), cur->reconstruct_weight().to(at::kDouble).transpose(0, 1)) + bias.to(at::kDouble);
  auto got = cur->forward(x);
  CHECK(got.scalar_type() == at::kFloat);
  CHECK(got.sizes() == want.sizes());
  CHECK(rel_err(got, want) < 1e-5);

  SECTION("fold_u keeps R exact and stores C*U") {
    o.fold_u = true;
    auto folded = CURLinear::from_linear(w, bias, o);
    CHECK(folded->folded());
    CHECK(!folded->u().defined());
    // Folding needs fewer parameters, so the same budget allows at least the same rank.
    REQUIRE(folded->rank() >= cur->rank());
    CHECK(at::equal(folded->r(), w.index_select(0, folded->row_indices())));
    CHECK(rel_err(folded->forward(x), at::linear(x, folded->reconstruct_weight(), bias)) < 1e-5);
    auto fact = CURFactory(w, bias, o, folded->rank());
    auto same_rank_unfolded = [&] {
      CUROptions u = o;
      u.fold_u = false;
      return CURFactory(w, bias, u, cur->rank()).build_rank(cur->rank());
    }();
    auto folded_same_rank = fact.build_rank(cur->rank());
    CHECK(rel_err(folded_same_rank->c(), at::matmul(same_rank_unfolded->c(), same_rank_unfolded->u())) < 1e-5);
  }
}

TEST_CASE("CUR's stored parameter count equals the formula and never exceeds the budget", "[compress][cur]") {
  // Hand-computed: 768x768 at 0.5, budget 294912: k^2 + 1536k <= 294912 -> 172
  // (293776; 173 gives 295657); folded 1536k <= 294912 -> 192; aligned to 8: 168 and 192.
  CUROptions o;
  CHECK(cur_rank_for_ratio(768, 768, 0.5, o) == 172);
  o.rank_align = 8;
  CHECK(cur_rank_for_ratio(768, 768, 0.5, o) == 168);
  o.fold_u = true;
  CHECK(cur_rank_for_ratio(768, 768, 0.5, o) == 192);
  o.rank_align = 1;
  CHECK(cur_rank_for_ratio(768, 768, 0.5, o) == 192);

  auto gen = make_gen(4);
  const std::vector<std::pair<int64_t, int64_t>> shapes{{64, 64}, {96, 40}, {40, 128}, {7, 13}, {1, 5}};
  const std::vector<double> ratios{0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.5};
  for (auto [m, n] : shapes) {
    auto w = randn({m, n}, gen, at::kFloat);
    for (int64_t align : {1, 4, 8}) {
      for (bool fold : {false, true}) {
        CUROptions opts;
        opts.rank_align = align;
        opts.fold_u = fold;
        auto factory = CURFactory::for_ratios(w, at::Tensor(), opts, ratios);
        CURCompressor compressor(opts);
        for (double ratio : ratios) {
          CAPTURE(m, n, align, fold, ratio);
          auto cur = factory->build_cur(ratio);
          const int64_t k = cur->rank();
          const int64_t formula = m * k + k * n + (fold ? 0 : k * k);
          const auto budget = static_cast<int64_t>(std::floor(static_cast<double>(m * n) * ratio));
          CHECK(cur->weight_params() == formula);
          CHECK(state_weight_params(*cur) == formula);
          CHECK(compressor.stored_params(m, n, ratio) == formula);
          CHECK((k % align == 0 || k == std::min(m, n)));
          if (cur->over_budget()) {
            CHECK(k == std::min(align, std::min(m, n)));
            CHECK(formula > budget);
          } else {
            CHECK(formula <= budget);
            // Maximal: the next aligned rank does not fit or does not exist.
            const int64_t next = k + align;
            const int64_t next_params = m * next + next * n + (fold ? 0 : next * next);
            CHECK((next > std::min(m, n) || next_params > budget));
          }
        }
      }
    }
  }
}

TEST_CASE("SVD rank formula matches hand-computed examples", "[compress][svd]") {
  // floor(floor(m*n*r)/(m+n)), rounded up to rank_align.
  CHECK(svd_rank_for_ratio(768, 768, 0.9, 1) == 345);     // floor(530841.6)/1536 = 345.6
  CHECK(svd_rank_for_ratio(4096, 11008, 0.8, 1) == 2388);  // 36071014/15104 = 2388.2
  CHECK(svd_rank_for_ratio(4096, 11008, 0.8, 8) == 2392);
  CHECK(svd_rank_for_ratio(768, 3072, 0.5, 1) == 307);     // 1179648/3840 = 307.2
  CHECK(svd_rank_for_ratio(768, 3072, 0.5, 16) == 320);
  CHECK(svd_rank_for_ratio(10, 10, 0.01, 1) == 1);         // 0, clamped to 1
  CHECK(make_compressor("svd")->stored_params(768, 768, 0.9) == 345 * 1536);
  CHECK_THROWS_AS(svd_rank_for_ratio(768, 768, 0.0, 1), std::invalid_argument);
}

TEST_CASE("SVDLinear equals a truncated at::linalg_svd reconstruction", "[compress][svd][numerics]") {
  auto gen = make_gen(5);
  const int64_t m = 50, n = 70;
  auto w = randn({m, n}, gen);
  auto bias = randn({m}, gen);
  auto x = randn({9, n}, gen);
  SVDOptions o;
  o.param_ratio = 0.3;  // floor(1050 / 120) = 8
  for (auto fuse : {SigmaFuse::U, SigmaFuse::V, SigmaFuse::UV}) {
    CAPTURE(static_cast<int>(fuse));
    o.sigma_fuse = fuse;
    o.scale = at::Tensor();
    auto svd = SVDLinear::from_linear(w, bias, o);
    REQUIRE(svd->rank() == 8);
    CHECK(svd->kind() == "svd");
    CHECK(svd->weight_params() == 8 * (m + n));
    CHECK(rel_err(svd->reconstruct_weight(), svd_truncate(w, 8)) < 1e-10);
    CHECK(rel_err(svd->forward(x), at::matmul(x, svd_truncate(w, 8).transpose(0, 1)) + bias) < 1e-10);
    auto eye = at::eye(8, at::kDouble);
    if (fuse == SigmaFuse::V) CHECK(max_abs(at::matmul(svd->a().transpose(0, 1), svd->a()) - eye) < 1e-10);
    if (fuse == SigmaFuse::U) CHECK(max_abs(at::matmul(svd->b(), svd->b().transpose(0, 1)) - eye) < 1e-10);
    if (fuse == SigmaFuse::UV) {
      CHECK(max_abs(at::matmul(svd->a().transpose(0, 1), svd->a()) - at::matmul(svd->b(), svd->b().transpose(0, 1))) <
            1e-10);
    }

    // Act-aware: trunc_k(W S) S^-1.
    auto s = random_scale(n, gen);
    o.scale = s;
    auto aware = SVDLinear::from_linear(w, bias, o);
    auto want = svd_truncate(w * s.unsqueeze(0), 8) / s.unsqueeze(0);
    CHECK(rel_err(aware->reconstruct_weight(), want) < 1e-10);
  }
  CHECK_THROWS_AS(parse_sigma_fuse("W"), std::invalid_argument);
  CHECK(parse_sigma_fuse("UV") == SigmaFuse::UV);
}

TEST_CASE("randomized SVD finds the subspace of the full SVD for a gapped spectrum", "[compress][numerics]") {
  auto gen = make_gen(6);
  const int64_t m = 400, n = 300, k = 10;
  // Ten values in [50, 100], then a gap of three orders of magnitude.
  auto sigma = at::cat({at::linspace(100, 50, k, at::kDouble), 0.05 * at::pow(0.97, at::arange(n - k, at::kDouble))});
  auto w = with_spectrum(m, n, sigma, gen);
  auto ref = at::linalg_svd(w, false);
  auto u_ref = std::get<0>(ref).narrow(1, 0, k), v_ref = std::get<2>(ref).narrow(0, 0, k).transpose(0, 1);
  RandomizedSVDOptions o;
  o.algorithm = SVDAlgorithm::Randomized;
  o.oversample = 10;
  o.power_iters = 2;
  for (auto dtype : {at::kDouble, at::kFloat}) {
    CAPTURE(dtype);
    const double tol = dtype == at::kDouble ? 1e-9 : 1e-4;
    auto t = top_k_svd(w.to(dtype), k, o);
    REQUIRE(t.U.sizes() == at::IntArrayRef({m, k}));
    REQUIRE(t.V.sizes() == at::IntArrayRef({n, k}));
    CHECK(t.S.scalar_type() == dtype);
    auto proj = [](const at::Tensor& q) { return at::matmul(q, q.transpose(0, 1)); };
    CHECK(max_abs(proj(t.U.to(at::kDouble)) - proj(u_ref)) < tol);
    CHECK(max_abs(proj(t.V.to(at::kDouble)) - proj(v_ref)) < tol);
    CHECK(max_abs((t.S.to(at::kDouble) - sigma.narrow(0, 0, k)) / sigma.narrow(0, 0, k)) < tol);
  }
  // Deterministic for a seed; another seed draws another test matrix but finds the same subspace.
  auto a = top_k_svd(w, k, o), b = top_k_svd(w, k, o);
  CHECK(at::equal(a.U, b.U));
  o.seed = 99;
  auto c = top_k_svd(w, k, o);
  CHECK(!at::equal(a.U, c.U));
  CHECK(max_abs(at::matmul(a.U, a.U.transpose(0, 1)) - at::matmul(c.U, c.U.transpose(0, 1))) < 1e-9);
  CHECK_THROWS_AS(top_k_svd(w, 0, o), std::invalid_argument);
  CHECK_THROWS_AS(top_k_svd(w, n + 1, o), std::invalid_argument);

  // stable_rank = sqrt(sum sigma^2) / sigma_max from the constructed spectrum.
  const double want = sigma.pow(2).sum().sqrt().item<double>() / 100.0;
  CHECK(stable_rank(w) == Approx(want).epsilon(1e-9));
  CHECK(stable_rank(w.to(at::kFloat)) == Approx(want).epsilon(1e-4));
}

TEST_CASE("ill-conditioned input (duplicated or zero columns) gives finite results", "[compress][cur][numerics]") {
  auto gen = make_gen(7);
  const int64_t m = 40;
  auto half = at::matmul(randn({m, 6}, gen), randn({6, 25}, gen));  // rank 6
  auto w = at::cat({half, half, at::zeros({m, 5}, at::kDouble)}, 1);   // every column twice, 5 zero columns
  auto x = randn({3, w.size(1)}, gen);
  for (auto dtype : {at::kDouble, at::kFloat}) {
    for (bool with_scale : {false, true}) {
      CAPTURE(dtype, with_scale);
      CUROptions o;
      o.param_ratio = 0.8;  // k^2 + 95k <= 1760 -> k = 15
      if (with_scale) {
        // Tiny scales (dead channels) as s = 0 + 1e-6 produces.
        auto s = random_scale(w.size(1), gen);
        s.narrow(0, 0, 10).fill_(1e-6);
        o.scale = s.to(dtype);
      }
      auto cur = CURLinear::from_linear(w.to(dtype), at::Tensor(), o);
      REQUIRE(cur->rank() > 12);  // more than twice the rank: duplicates must be chosen
      CHECK(at::isfinite(cur->u()).all().item<bool>());
      CHECK(at::isfinite(cur->forward(x.to(dtype))).all().item<bool>());
      // C U R is a projection of W: never worse than the zero matrix.
      CHECK(fro(cur->reconstruct_weight().to(at::kDouble) - w) <= fro(w) * (1 + 1e-4));
      if (!with_scale) CHECK(rel_err(cur->reconstruct_weight(), w) < (dtype == at::kDouble ? 1e-10 : 1e-4));
      auto svd = SVDLinear::from_linear(w.to(dtype), at::Tensor(), SVDOptions{});
      CHECK(at::isfinite(svd->forward(x.to(dtype))).all().item<bool>());
    }
  }
  // The zero matrix gives zeros, not NaN.
  auto zero = at::zeros({20, 30}, at::kFloat);
  auto cur = CURLinear::from_linear(zero, at::Tensor(), CUROptions{});
  CHECK(at::isfinite(cur->u()).all().item<bool>());
  CHECK(max_abs(cur->reconstruct_weight()) == 0.0);
}

TEST_CASE("GradCURLinear gradient with respect to the scale matches central finite differences",
          "[compress][cur][numerics]") {
  auto gen = make_gen(8);
  const int64_t m = 14, n = 11;
  auto w = randn({m, n}, gen);
  auto bias = randn({m}, gen);
  auto x = randn({6, n}, gen);
  auto g = randn({6, m}, gen);
  CUROptions o;
  o.param_ratio = 0.45;  // 25k + k^2 <= 69 -> k = 2
  o.scale = random_scale(n, gen, 0.5, 2.0);
  auto grad_cur = GradCURLinear::from_linear(w, bias, o);
  REQUIRE(grad_cur->row_indices().numel() == 2);

  // At the initial scale it computes what CURLinear stores.
  auto cur = CURLinear::from_linear(w, bias, o);
  CHECK(at::equal(cur->row_indices(), grad_cur->row_indices()));
  CHECK(rel_err(grad_cur->forward(x), cur->forward(x)) < 1e-10);
  CHECK(rel_err(grad_cur->to_cur(at::kDouble)->reconstruct_weight(), cur->reconstruct_weight()) < 1e-10);
  CHECK(grad_cur->weight_params() == cur->weight_params());

  auto loss_at = [&](const at::Tensor& s) {
    GradCURLinear probe(w, bias, s, grad_cur->row_indices(), grad_cur->col_indices(), o);
    return (probe.forward(x) * g).sum().item<double>();
  };
  auto loss = (grad_cur->forward(x) * g).sum();
  loss.backward();
  auto grad = grad_cur->scale().grad();
  REQUIRE(grad.defined());
  const auto s0 = grad_cur->scale().detach().clone();
  const double h = 1e-6;
  auto fd = at::zeros({n}, at::kDouble);
  for (int64_t j = 0; j < n; ++j) {
    auto plus = s0.clone(), minus = s0.clone();
    plus[j] += h;
    minus[j] -= h;
    fd[j] = (loss_at(plus) - loss_at(minus)) / (2 * h);
  }
  CAPTURE(grad, fd);
  CHECK(max_abs(grad) > 1e-3);  // the test would be vacuous with a zero gradient
  CHECK(max_abs(grad - fd) < 1e-6 * std::max(1.0, max_abs(fd)));
}

TEST_CASE("bf16 weights give bf16 factors and a bf16 forward", "[compress][numerics]") {
  auto gen = make_gen(9);
  const int64_t m = 64, n = 96;
  auto w32 = with_spectrum(m, n, at::pow(0.9, at::arange(m, at::kDouble)), gen).to(at::kFloat);
  auto w = w32.to(at::kBFloat16);
  auto bias = randn({m}, gen, at::kFloat).to(at::kBFloat16);
  auto x = randn({4, n}, gen, at::kFloat).to(at::kBFloat16);
  auto scale = random_scale(n, gen).to(at::kFloat);
  auto nmse = [](const at::Tensor& got, const at::Tensor& want) {
    return (got.to(at::kDouble) - want.to(at::kDouble)).pow(2).sum().item<double>() /
           want.to(at::kDouble).pow(2).sum().item<double>();
  };
  for (bool fold : {false, true}) {
    CAPTURE(fold);
    CUROptions o;
    o.param_ratio = 0.6;
    o.scale = scale;
    o.fold_u = fold;
    auto cur = CURLinear::from_linear(w, bias, o);
    CHECK(cur->c().scalar_type() == at::kBFloat16);
    CHECK(cur->r().scalar_type() == at::kBFloat16);
    if (!fold) CHECK(cur->u().scalar_type() == at::kBFloat16);
    if (!fold) CHECK(at::equal(cur->c(), w.index_select(1, cur->col_indices())));
    CHECK(at::equal(cur->r(), w.index_select(0, cur->row_indices())));
    auto y = cur->forward(x);
    CHECK(y.scalar_type() == at::kBFloat16);
    // Against the same decomposition of the same (bf16-valued) weight in fp32.
    auto ref = CURLinear::from_linear(w.to(at::kFloat), bias.to(at::kFloat), o);
    CHECK(nmse(y, ref->forward(x.to(at::kFloat))) < 1e-3);
  }
  SVDOptions so;
  so.param_ratio = 0.6;
  so.scale = scale;
  auto svd = SVDLinear::from_linear(w, bias, so);
  CHECK(svd->a().scalar_type() == at::kBFloat16);
  CHECK(svd->b().scalar_type() == at::kBFloat16);
  auto y = svd->forward(x);
  CHECK(y.scalar_type() == at::kBFloat16);
  auto ref = SVDLinear::from_linear(w.to(at::kFloat), bias.to(at::kFloat), so);
  CHECK(nmse(y, ref->forward(x.to(at::kFloat))) < 1e-3);
}

TEST_CASE("one decomposition serves several ratios", "[compress][cur][svd]") {
  auto gen = make_gen(10);
  const int64_t m = 90, n = 70;
  auto w = with_spectrum(m, n, at::pow(0.9, at::arange(n, at::kDouble)), gen).to(at::kFloat);
  auto bias = randn({m}, gen, at::kFloat);
  auto scale = random_scale(n, gen).to(at::kFloat);
  const std::vector<double> ratios{0.3, 0.5, 0.8};
  CompressorOptions options;
  options.cur.svd.algorithm = SVDAlgorithm::Full;
  options.svd.svd.algorithm = SVDAlgorithm::Full;
  for (const auto& method : compressor_names()) {
    CAPTURE(method);
    auto compressor = make_compressor(method, options);
    auto prepared = compressor->prepare(w, bias, scale, ratios);
    CHECK(prepared->max_rank() == compressor->rank_for(m, n, 0.8));
    for (double ratio : ratios) {
      CAPTURE(ratio);
      auto once = prepared->build(ratio);
      auto direct = compressor->compress(w, bias, scale, ratio);
      // The slot kind is the method's for the reference methods; data-aware ones build "svd", "cur" or skeleton slots.
      CHECK(once->kind() == direct->kind());
      if (method == "cur" || method == "svd" || method == "grad_cur") CHECK(once->kind() == method);
      CHECK(once->weight_params() == direct->weight_params());
      CHECK(rel_err(once->reconstruct_weight(), direct->reconstruct_weight()) < 1e-4);
    }
    CHECK_THROWS_AS(prepared->build(0.95), std::invalid_argument);
  }
}

TEST_CASE("Gram SVD gives the full SVD's top-k triplets, and zero vectors for unresolved directions",
          "[compress][numerics]") {
  auto gen = make_gen(11);
  const int64_t k = 12;
  for (auto shape : {std::pair<int64_t, int64_t>{120, 50}, std::pair<int64_t, int64_t>{50, 120}}) {
    const auto [m, n] = shape;
    auto sigma = at::cat({at::linspace(10, 5, k, at::kDouble), 0.5 * at::pow(0.9, at::arange(50 - k, at::kDouble))});
    auto w = with_spectrum(m, n, sigma, gen);
    auto ref = at::linalg_svd(w, false);
    auto u_ref = std::get<0>(ref).narrow(1, 0, k), v_ref = std::get<2>(ref).narrow(0, 0, k).transpose(0, 1);
    auto proj = [](const at::Tensor& q) { return at::matmul(q, q.transpose(0, 1)); };
    for (auto dtype : {at::kDouble, at::kFloat}) {
      CAPTURE(m, n, dtype);
      const double tol = dtype == at::kDouble ? 1e-10 : 1e-5;
      RandomizedSVDOptions o;
      o.algorithm = SVDAlgorithm::Gram;
      auto t = top_k_svd(w.to(dtype), k, o);
      REQUIRE(t.U.sizes() == at::IntArrayRef({m, k}));
      REQUIRE(t.V.sizes() == at::IntArrayRef({n, k}));
      CHECK(t.S.scalar_type() == dtype);
      CHECK(max_abs((t.S.to(at::kDouble) - sigma.narrow(0, 0, k)) / sigma.narrow(0, 0, k)) < tol);
      CHECK(max_abs(proj(t.U.to(at::kDouble)) - proj(u_ref)) < tol * 10);
      CHECK(max_abs(proj(t.V.to(at::kDouble)) - proj(v_ref)) < tol * 10);
      // w V = U diag(S): the pairs belong together.
      CHECK(max_abs(at::matmul(w, t.V.to(at::kDouble)) - t.U.to(at::kDouble) * t.S.to(at::kDouble).unsqueeze(0)) <
            tol * 100);
    }
  }
  // Rank 5 asked for 8: the three missing directions are zero, not NaN.
  auto low = at::matmul(randn({30, 5}, gen), randn({5, 20}, gen));
  auto t = gram_svd(low, 8);
  CHECK(at::isfinite(t.U).all().item<bool>());
  CHECK(max_abs(t.U.narrow(1, 5, 3)) == 0.0);
  CHECK(max_abs(t.S.narrow(0, 5, 3)) < 1e-6 * t.S[0].item<double>());
  CHECK(rel_err(at::matmul(t.U * t.S.unsqueeze(0), t.V.transpose(0, 1)), low) < 1e-10);
}

TEST_CASE("CUR's Gram link solver gives the SVD solver's layer, well- and ill-conditioned", "[compress][cur][numerics]") {
  auto gen = make_gen(12);
  const int64_t m = 80, n = 60;
  auto good = with_spectrum(m, n, at::linspace(3, 1, n, at::kDouble), gen);
  // Every column twice and five zero columns: the Gram matrices are singular,
  // so the Cholesky proof fails and the eigendecomposition cuts as the SVD does.
  auto half = at::matmul(randn({m, 8}, gen), randn({8, 25}, gen));
  auto bad = at::cat({half, half, at::zeros({m, 10}, at::kDouble)}, 1);
  for (const auto& w : {good, bad}) {
    for (auto dtype : {at::kDouble, at::kFloat}) {
      for (bool with_scale : {false, true}) {
        CAPTURE(w.size(1), dtype, with_scale);
        CUROptions o;
        if (with_scale) o.scale = random_scale(w.size(1), gen).to(dtype);
        o.link_solver = CURLinkSolver::SVD;
        auto factory_svd = CURFactory::for_ratios(w.to(dtype), at::Tensor(), o, {0.4, 0.7});
        o.link_solver = CURLinkSolver::Gram;
        auto factory_gram = CURFactory::for_ratios(w.to(dtype), at::Tensor(), o, {0.4, 0.7});
        std::vector<std::string> errors;
        auto many = factory_gram->build_many({0.4, 0.7}, &errors);
        REQUIRE(many.size() == 2);
        for (size_t i = 0; i < 2; ++i) {
          const double ratio = i == 0 ? 0.4 : 0.7;
          CAPTURE(ratio);
          CHECK(errors[i].empty());
          auto want = factory_svd->build_cur(ratio);
          auto got = std::dynamic_pointer_cast<CURLinear>(many[i]);
          REQUIRE(got);
          CHECK(at::equal(got->row_indices(), want->row_indices()));
          CHECK(at::equal(got->col_indices(), want->col_indices()));
          CHECK(got->budget_params() == want->budget_params());
          CHECK(rel_err(got->reconstruct_weight(), want->reconstruct_weight()) < (dtype == at::kDouble ? 1e-8 : 1e-4));
          // build() takes the same path as build_many().
          CHECK(rel_err(factory_gram->build_cur(ratio)->u(), got->u()) < 1e-12);
        }
      }
    }
  }
}

TEST_CASE("CUDA: factors with an odd rank are padded in storage, and views, forwards and in-place changes stay exact",
          "[compress][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  auto gen = make_gen(13);
  const int64_t out = 40, in = 56, k = 13;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    CAPTURE(dtype);
    const auto cuda = at::TensorOptions().device(at::kCUDA).dtype(dtype);
    auto c = randn({out, k}, gen, at::kFloat).to(cuda), u = randn({k, k}, gen, at::kFloat).to(cuda);
    auto r = randn({k, in}, gen, at::kFloat).to(cuda), bias = randn({out}, gen, at::kFloat).to(cuda);
    auto idx = at::arange(k, at::kLong);
    CURLinear cur(c, u, r, bias, idx, idx);
    SVDLinear svd(c, r, bias);
    REQUIRE(cur.rank() == k);
    CHECK(at::equal(cur.c(), c));
    CHECK(at::equal(cur.u(), u));
    CHECK(at::equal(cur.r(), r));
    CHECK(at::equal(svd.a(), c));
    CHECK(cur.weight_params() == out * k + k * k + k * in);
    const double tol = dtype == at::kFloat ? 1e-4 : 3e-2;
    for (int64_t tokens : {1, 3, 300}) {
      CAPTURE(tokens);
      auto x = randn({tokens, in}, gen, at::kFloat).to(cuda);
      auto xd = x.to(at::kDouble);
      auto want_cur = at::matmul(at::matmul(at::matmul(xd, r.to(at::kDouble).t()), u.to(at::kDouble).t()),
                                 c.to(at::kDouble).t()) + bias.to(at::kDouble);
      auto want_svd = at::matmul(at::matmul(xd, r.to(at::kDouble).t()), c.to(at::kDouble).t()) + bias.to(at::kDouble);
      CHECK(rel_err(cur.forward(x).cpu(), want_cur.cpu()) < tol);
      CHECK(rel_err(svd.forward(x).cpu(), want_svd.cpu()) < tol);
    }
    // state() hands out the stored factors: an in-place change reaches the forward.
    for (auto& [name, t] : cur.state()) {
      if (name == "C") t.mul_(2);
    }
    auto x = randn({5, in}, gen, at::kFloat).to(cuda);
    auto base = at::matmul(at::matmul(at::matmul(x.to(at::kDouble), r.to(at::kDouble).t()), u.to(at::kDouble).t()),
                           c.to(at::kDouble).t());
    CHECK(rel_err(cur.forward(x).cpu(), (2 * base + bias.to(at::kDouble)).cpu()) < tol);
  }
}

TEST_CASE("compressor factory and option errors", "[compress]") {
  CHECK(make_compressor("cur")->name() == "cur");
  CHECK(make_compressor("svd")->name() == "svd");
  try {
    make_compressor("qr");
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("qr") != std::string::npos);
    CHECK(what.find("cur") != std::string::npos);
    CHECK(what.find("svd") != std::string::npos);
  }
  CHECK_THROWS_AS(parse_cur_selection("best"), std::invalid_argument);
  CHECK(parse_cur_selection("sampled") == CURSelection::SampledLeverage);

  auto w = at::ones({6, 4}, at::kFloat);
  auto cur = make_compressor("cur");
  CHECK_THROWS_AS(cur->compress(w, at::Tensor(), at::ones({5}), 0.5), std::invalid_argument);         // scale size
  CHECK_THROWS_AS(cur->compress(w, at::Tensor(), -at::ones({4}), 0.5), std::invalid_argument);        // scale sign
  CHECK_THROWS_AS(cur->compress(w, at::ones({4}), at::Tensor(), 0.5), std::invalid_argument);         // bias size
  CHECK_THROWS_AS(cur->compress(w, at::Tensor(), at::Tensor(), 0.0), std::invalid_argument);          // ratio
  CHECK_THROWS_AS(cur->compress(at::ones({6}), at::Tensor(), at::Tensor(), 0.5), std::invalid_argument);  // 1-d
  CHECK_THROWS_AS(make_compressor("svd")->compress(w, at::Tensor(), at::ones({3}), 0.5), std::invalid_argument);
}

