#include <cur4llm/compress/gram.h>

#include <cur4llm/compress/compressor.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace cur4llm::compress {
namespace {

std::string shape_of(const at::Tensor& t) {
  return fmt::format("[{}]", fmt::join(t.sizes().begin(), t.sizes().end(), ", "));
}

at::Tensor symmetrised(const at::Tensor& g) { return (g + g.transpose(0, 1)) * 0.5; }

// One synchronisation: (argmax, max) of a 1-d tensor.
std::pair<int64_t, double> arg_max(const at::Tensor& v) {
  auto both = at::max(v, 0);
  auto host = at::stack({std::get<0>(both), std::get<1>(both).to(v.scalar_type())}).cpu();
  return {static_cast<int64_t>(host[1].item<double>()), host[0].item<double>()};
}

std::vector<double> to_vector(const at::Tensor& t) {
  auto c = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

at::Tensor index_tensor(const std::vector<int64_t>& v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

}  // namespace

at::Tensor whitening_factor(const at::Tensor& gram, const std::string& who, const WhitenOptions& options) {
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != gram.size(1) || gram.size(0) < 1) {
    throw std::invalid_argument(who + ": the Gram matrix must be a non-empty square 2-d tensor");
  }
  c10::NoGradGuard no_grad;
  auto g = symmetrised(gram.detach().to(at::kDouble));
  if (!at::isfinite(g).all().item<bool>()) throw CompressionError(who + ": the Gram matrix holds a non-finite value");
  const double mean_diag = g.diagonal().mean().item<double>();
  if (!(mean_diag > 0)) {
    throw CompressionError(who + ": the Gram matrix is zero (no calibration input reached this layer)");
  }
  auto attempt = [](const at::Tensor& a) -> at::Tensor {
    auto res = at::linalg_cholesky_ex(a);
    const auto& l = std::get<0>(res);
    if (std::get<1>(res).item<int64_t>() != 0 || !at::isfinite(l).all().item<bool>()) return at::Tensor();
    return l;
  };
  auto l = attempt(g);
  if (l.defined()) return l;
  auto eye = at::eye(g.size(0), g.options());
  double jitter = options.first_jitter;
  for (int i = 0; i < options.max_tries; ++i, jitter *= options.growth) {
    l = attempt(g + eye * (jitter * mean_diag));
    if (l.defined()) return l;
  }
  throw CompressionError(fmt::format("{}: Cholesky of the Gram matrix failed even with a diagonal shift of {:g} x mean(diag)",
                                     who, jitter / options.growth));
}

InputMoments input_moments(const at::Tensor& statistic, int64_t in_features, const at::Tensor& device_of,
                           const std::string& who) {
  if (!statistic.defined()) {
    throw std::invalid_argument(who + ": needs the layer's input Gram matrix [in, in] (or a scale [in]); none was given");
  }
  const int64_t n = in_features;
  auto s = statistic.detach().to(device_of.device(), at::kDouble);
  InputMoments out;
  if (s.dim() == 3 && s.size(0) == 3 && s.size(1) == n && s.size(2) == n) {
    out.gram = symmetrised(s[0]);
    out.seen = symmetrised(s[1]);
    out.cross = s[2].contiguous();
    out.sequential = true;
    return out;
  }
  if (s.dim() == 2 && s.size(0) == n && s.size(1) == n) {
    out.gram = symmetrised(s);
  } else if (s.dim() == 1 && s.size(0) == n) {
    out.gram = at::diag(s * s);
  } else {
    throw std::invalid_argument(fmt::format("{}: the input statistic of shape {} matches none of [{}, {}], [{}], [3, {}, {}]",
                                            who, shape_of(statistic), n, n, n, n, n));
  }
  out.seen = out.cross = out.gram;
  return out;
}

at::Tensor gram_from_statistic(const at::Tensor& statistic, int64_t in_features, const at::Tensor& device_of,
                               const std::string& who) {
  return input_moments(statistic, in_features, device_of, who).seen;
}

// ---------------------------------------------------------------------------------------------
RowGreedy greedy_rows(const at::Tensor& weight, const at::Tensor& gram, int64_t k_max, double rtol) {
  c10::NoGradGuard no_grad;
  const auto w = weight.detach().to(at::kDouble);
  const auto g = gram.detach().to(w.device(), at::kDouble);
  const int64_t m = w.size(0);
  const auto p_mat = at::mm(g, w.transpose(0, 1));  // [n, m]: C[:, p] = W P[:, p]
  auto d = (w * p_mat.transpose(0, 1)).sum(1);      // diag(C)
  const double trace = d.sum().item<double>();
  if (!std::isfinite(trace)) throw CompressionError("greedy_rows: the output covariance is not finite");
  k_max = std::clamp<int64_t>(k_max, 0, m);
  auto factor = at::zeros({m, k_max}, w.options());
  auto residual = at::empty({k_max + 1}, w.options());
  residual.select(0, 0).copy_(d.sum());
  const double d_max = k_max > 0 ? d.max().item<double>() : 0;
  std::vector<int64_t> pivots;
  for (int64_t j = 0; j < k_max; ++j) {
    auto [p, dp] = arg_max(d);
    if (!(dp > 0) || !(dp > rtol * d_max)) break;
    auto col = at::mv(w, p_mat.select(1, p));
    if (j > 0) col -= at::mv(factor.narrow(1, 0, j), factor.select(0, p).narrow(0, 0, j));
    col /= std::sqrt(dp);
    factor.select(1, j).copy_(col);
    d -= col * col;
    d.clamp_min_(0);
    d.select(0, p).zero_();
    residual.select(0, j + 1).copy_(d.sum());
    pivots.push_back(p);
  }
  const auto r = static_cast<int64_t>(pivots.size());
  RowGreedy out;
  out.pivots = index_tensor(pivots);
  out.factor = factor.narrow(1, 0, r).contiguous();
  out.residual = to_vector(residual.narrow(0, 0, r + 1));
  return out;
}

at::Tensor RowGreedy::interpolation(int64_t k) const {
  if (k < 0 || k > rank()) throw std::invalid_argument(fmt::format("RowGreedy: k {} is not in [0, {}]", k, rank()));
  auto fk = factor.narrow(1, 0, k);
  auto t = fk.index_select(0, pivots.narrow(0, 0, k).to(fk.device())).tril();
  // X T = F_k with T lower-triangular: X = C[:, I] C[I, I]^{-1}.
  return at::linalg_solve_triangular(t, fk, /*upper=*/false, /*left=*/false);
}

at::Tensor exchange_rows(const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& rows, int64_t max_swaps,
                         double* error) {
  c10::NoGradGuard no_grad;
  const auto w = weight.detach().to(at::kDouble);
  const auto g = gram.detach().to(w.device(), at::kDouble);
  const int64_t m = w.size(0), k = rows.numel();
  auto c = at::mm(w, at::mm(g, w.transpose(0, 1)));
  c = (c + c.transpose(0, 1)) * 0.5;
  auto kept = rows.to(at::kCPU, at::kLong).clone();
  double err = 0, previous = std::numeric_limits<double>::infinity();
  int64_t last_pos = -1, last_row = -1;
  const double inf = std::numeric_limits<double>::infinity();
  const auto c_diag = c.diagonal().unsqueeze(1);
  for (int64_t swap = 0;; ++swap) {
    const auto dev = kept.to(w.device());
    const auto c_mi = c.index_select(1, dev);                        // C[:, I]
    const auto l = at::linalg_cholesky(c_mi.index_select(0, dev));   // C[I, I] = L L^T
    const auto m_inv = at::cholesky_inverse(l);                      // C[I, I]^{-1}
    const auto p = at::mm(c_mi, m_inv);                              // u_i = P[:, i]
    const auto s = c - at::mm(p, c_mi.transpose(0, 1));              // Schur complement
    err = s.diagonal().sum().item<double>();
    if (err > previous) {  // round-off misled the swap: undo it and stop
      kept[last_pos] = last_row;
      err = previous;
      break;
    }
    if (swap >= max_swaps || k == 0 || k >= m) break;
    const auto mii = m_inv.diagonal();                               // [k]
    const auto a = (s * s).sum(0).unsqueeze(1);                      // ||S[:, j]||^2, [m, 1]
    const auto sjj = s.diagonal().unsqueeze(1);                      // [m, 1]
    const auto su = at::mm(s, p);                                    // S u_i, [m, k]
    const auto un = (p * p).sum(0).unsqueeze(0);                     // ||u_i||^2, [1, k]
    const auto t = p / mii.unsqueeze(0);                             // u_i[j] / M_ii
    const auto num = a + 2 * t * su + t * t * un;
    const auto den = sjj + p * t;
    auto gain = num / den;
    // Only rows outside I can come in.
    auto outside = at::ones({m, 1}, c.options().dtype(at::kBool));
    outside.index_fill_(0, dev, false);
    gain = at::where(outside & (den > 1e-9 * c_diag), gain, at::full_like(gain, -inf));
    const auto delta = (un / mii.unsqueeze(0)) - gain;               // error change of swapping i for j
    auto flat = delta.reshape({-1});
    auto [pos, best] = arg_max(-flat);
    if (!(-best < -1e-10 * std::max(err, 0.0))) break;
    previous = err;
    last_pos = pos % k;
    last_row = kept[last_pos].item<int64_t>();
    kept[last_pos] = pos / k;
  }
  if (error) *error = err;
  return kept;
}

// ---------------------------------------------------------------------------------------------
ColumnGreedy greedy_columns(const at::Tensor& weight, const at::Tensor& gram, int64_t k_max, double rtol) {
  c10::NoGradGuard no_grad;
  const auto w = weight.detach().to(at::kDouble);
  const auto g = gram.detach().to(w.device(), at::kDouble);
  const int64_t m = w.size(0), n = w.size(1);
  // B = W G W^T; T = B' R with R = (I - P) W and B' = (I - P) B (I - P), P the projector on the picked columns.
  auto r_mat = w.clone();
  auto t_mat = at::mm(w, at::mm(g, at::mm(w.transpose(0, 1), w)));
  const double trace = (w * at::mm(w, g)).sum().item<double>();
  if (!std::isfinite(trace)) throw CompressionError("greedy_columns: the output covariance is not finite");
  k_max = std::clamp<int64_t>(k_max, 0, std::min(m, n));
  auto basis = at::zeros({m, k_max}, w.options());
  const double norm_max = k_max > 0 ? (w * w).sum(0).max().item<double>() : 0;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<int64_t> pivots;
  std::vector<double> residual{trace};
  for (int64_t j = 0; j < k_max; ++j) {
    auto rn = (r_mat * r_mat).sum(0);
    auto gain = at::where(rn > 1e-10 * norm_max, (r_mat * t_mat).sum(0) / rn, at::full_like(rn, neg_inf));
    auto [p, gp] = arg_max(gain);
    if (!(gp > rtol * trace)) break;
    auto inv_norm = rn.select(0, p).rsqrt();
    auto q = r_mat.select(1, p) * inv_norm;
    auto bq = t_mat.select(1, p) * inv_norm;
    auto qr = at::mv(r_mat.transpose(0, 1), q);  // q^T R
    t_mat -= at::outer(bq, qr);
    t_mat -= at::outer(q, at::mv(t_mat.transpose(0, 1), q));
    r_mat -= at::outer(q, qr);
    basis.select(1, j).copy_(q);
    residual.push_back(std::max(0.0, residual.back() - gp));
    pivots.push_back(p);
  }
  const auto r = static_cast<int64_t>(pivots.size());
  ColumnGreedy out;
  out.pivots = index_tensor(pivots);
  out.basis = basis.narrow(1, 0, r).contiguous();
  out.coords = at::mm(out.basis.transpose(0, 1), w);
  out.residual = std::move(residual);
  return out;
}

at::Tensor ColumnGreedy::interpolation(int64_t k) const {
  if (k < 0 || k > rank()) throw std::invalid_argument(fmt::format("ColumnGreedy: k {} is not in [0, {}]", k, rank()));
  auto ck = coords.narrow(0, 0, k);
  auto s = ck.index_select(1, pivots.narrow(0, 0, k).to(ck.device())).triu();
  // W[:, J] = Q_k S, so Z = S^{-1} Q_k^T W and W[:, J] Z = Q_k Q_k^T W.
  return at::linalg_solve_triangular(s, ck, /*upper=*/true, /*left=*/true);
}

double output_error(const at::Tensor& weight, const at::Tensor& approx, const at::Tensor& gram) {
  c10::NoGradGuard no_grad;
  auto d = weight.detach().to(at::kDouble) - approx.detach().to(weight.device(), at::kDouble);
  return (d * at::mm(d, gram.detach().to(d.device(), at::kDouble))).sum().item<double>();
}

// ---------------------------------------------------------------------------------------------
SubsetSelection parse_subset_selection(const std::string& name) {
  if (name == "leverage") return SubsetSelection::Leverage;
  if (name == "deim") return SubsetSelection::DEIM;
  if (name == "qr") return SubsetSelection::PivotedQR;
  throw std::invalid_argument(fmt::format("unknown subset selection \"{}\" (valid: leverage, deim, qr)", name));
}

std::string to_string(SubsetSelection selection) {
  switch (selection) {
    case SubsetSelection::Leverage: return "leverage";
    case SubsetSelection::DEIM: return "deim";
    case SubsetSelection::PivotedQR: return "qr";
  }
  return "?";
}

namespace {

// Indices by decreasing score, ties to the lower index; `taken` ones skipped.
std::vector<int64_t> by_score(const at::Tensor& scores, const std::vector<int64_t>& taken, size_t count) {
  auto s = to_vector(scores);
  std::vector<int64_t> order(s.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  std::vector<int64_t> out = taken;
  for (int64_t i : order) {
    if (out.size() >= count) break;
    if (std::find(taken.begin(), taken.end(), i) == taken.end()) out.push_back(i);
  }
  return out;
}

// DEIM (Chaturantabut and Sorensen 2010), with the inverse of Q[P, :j] grown by bordering.
std::vector<int64_t> deim(const at::Tensor& q) {
  const int64_t k = q.size(1);
  std::vector<int64_t> picked;
  at::Tensor inv;  // (Q[P, :j])^{-1}, [j, j]
  for (int64_t j = 0; j < k; ++j) {
    auto u = q.select(1, j);
    auto r = u;
    if (j > 0) {
      auto rows = index_tensor(picked).to(q.device());
      auto c = at::mv(inv, u.index_select(0, rows));
      r = u - at::mv(q.narrow(1, 0, j), c);
    }
    auto [p, unused] = arg_max(r.abs());
    (void)unused;
    if (std::find(picked.begin(), picked.end(), p) != picked.end()) break;  // basis not of full rank
    auto s = r.select(0, p);
    if (j == 0) {
      inv = s.reciprocal().reshape({1, 1});
    } else {
      auto rows = index_tensor(picked).to(q.device());
      auto a = u.index_select(0, rows);                          // new column at the old pivots
      auto b = q.select(0, p).narrow(0, 0, j);                   // old columns at the new pivot
      auto ia = at::mv(inv, a), bi = at::mv(inv.transpose(0, 1), b);
      auto top = at::cat({inv + at::outer(ia, bi) / s, (-ia / s).unsqueeze(1)}, 1);
      auto bottom = at::cat({-bi / s, s.reciprocal().reshape({1})}).unsqueeze(0);
      inv = at::cat({top, bottom}, 0);
    }
    picked.push_back(p);
  }
  return picked;
}

}  // namespace

at::Tensor select_subset(const at::Tensor& basis, SubsetSelection selection) {
  c10::NoGradGuard no_grad;
  if (!basis.defined() || basis.dim() != 2 || basis.size(1) > basis.size(0)) {
    throw std::invalid_argument("select_subset: the basis must be [m, k] with k <= m");
  }
  const auto q = basis.detach().to(at::kDouble);
  const auto k = static_cast<size_t>(q.size(1));
  const auto leverage = (q * q).sum(1);
  std::vector<int64_t> picked;
  if (selection == SubsetSelection::DEIM) {
    picked = deim(q);
  } else if (selection == SubsetSelection::PivotedQR) {
    auto rows = greedy_rows(q, at::eye(q.size(1), q.options()), q.size(1), 1e-14);
    auto p = rows.pivots;
    picked.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
  }
  // Leverage, or the rest when a greedy method stopped early on a degenerate basis.
  return index_tensor(by_score(leverage, picked, k));
}

}  // namespace cur4llm::compress
