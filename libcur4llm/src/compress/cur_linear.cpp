#include <cur4llm/compress/cur_linear.h>

#include "common.h"
#include "fused/fused_ops.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace cur4llm::compress {

namespace {

// k indices (ascending, int64, CPU) chosen from leverage scores (fp64, CPU).
at::Tensor select_indices(const at::Tensor& leverage, int64_t k, CURSelection selection, at::Generator& gen) {
  at::Tensor chosen;
  if (selection == CURSelection::TopKLeverage) {
    // A stable descending sort breaks ties by the lower index, so the choice
    // is the same on every device and run.
    chosen = std::get<1>(at::sort(leverage, /*stable=*/true, /*dim=*/0, /*descending=*/true)).narrow(0, 0, k);
  } else {
    // A small floor keeps every index drawable, so k distinct ones always exist.
    auto p = leverage.clamp_min(0);
    const double top = p.max().item<double>();
    p = p + (top > 0 ? top * 1e-12 : 1.0);
    chosen = at::multinomial(p, k, /*replacement=*/false, gen);
  }
  return std::get<0>(at::sort(chosen.to(at::kLong))).contiguous();
}

}  // namespace

CURSelection parse_cur_selection(const std::string& name) {
  if (name == "topk") return CURSelection::TopKLeverage;
  if (name == "sampled") return CURSelection::SampledLeverage;
  throw std::invalid_argument(fmt::format("unknown CUR selection \"{}\" (valid: topk, sampled)", name));
}

int64_t cur_stored_params(int64_t out_features, int64_t in_features, int64_t rank, const CUROptions& options) {
  return out_features * rank + rank * in_features + (options.fold_u ? 0 : rank * rank);
}

int64_t cur_rank_for_ratio(int64_t out_features, int64_t in_features, double param_ratio, const CUROptions& options) {
  detail::check_ratio("cur_rank_for_ratio", param_ratio);
  if (out_features < 1 || in_features < 1) throw std::invalid_argument("cur_rank_for_ratio: empty layer");
  const int64_t align = std::max<int64_t>(options.rank_align, 1);
  const int64_t max_rank = std::min(out_features, in_features);
  const int64_t budget = detail::budget_params(out_features, in_features, param_ratio);
  int64_t best = 0;
  // The stored count grows with k, so the first k that does not fit ends the search.
  for (int64_t k = align; k <= max_rank; k += align) {
    if (cur_stored_params(out_features, in_features, k, options) > budget) break;
    best = k;
  }
  return best > 0 ? best : std::min(align, max_rank);
}

// ---------------------------------------------------------------------------------------------
CURLinear::CURLinear(at::Tensor c, at::Tensor u, at::Tensor r, at::Tensor bias, at::Tensor row_indices,
                     at::Tensor col_indices, int64_t budget_params)
    : c_(std::move(c)), u_(std::move(u)), r_(std::move(r)), bias_(std::move(bias)), budget_params_(budget_params) {
  if (!c_.defined() || !r_.defined() || c_.dim() != 2 || r_.dim() != 2 || c_.size(1) != r_.size(0)) {
    throw std::invalid_argument("CURLinear: C [out, k] and R [k, in] must be 2-d with the same k");
  }
  const int64_t k = r_.size(0);
  if (u_.defined() && (u_.dim() != 2 || u_.size(0) != k || u_.size(1) != k)) {
    throw std::invalid_argument(fmt::format("CURLinear: U must be [{0}, {0}]", k));
  }
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != c_.size(0))) {
    throw std::invalid_argument(
        fmt::format("CURLinear: bias of {} values does not match {} outputs", bias_.numel(), c_.size(0)));
  }
  row_indices_ = row_indices.defined() ? row_indices.to(at::kCPU, at::kLong).contiguous() : row_indices;
  col_indices_ = col_indices.defined() ? col_indices.to(at::kCPU, at::kLong).contiguous() : col_indices;
  if ((row_indices_.defined() && row_indices_.numel() != k) || (col_indices_.defined() && col_indices_.numel() != k)) {
    throw std::invalid_argument(fmt::format("CURLinear: row and column indices must have {} entries", k));
  }
  // The rank padded to a multiple of 8 in storage (CUDA): C [out, k] and U [k, k] become views.
  auto pc = detail::pad_rank(c_, false, true);
  auto pu = detail::pad_rank(u_, true, true);
  auto pr = detail::pad_rank(r_, true, false);
  c_full_ = pc.full, c_ = pc.view;
  u_full_ = pu.full, u_ = pu.view;
  r_full_ = pr.full, r_ = pr.view;
}

at::Tensor CURLinear::forward(const at::Tensor& x) const {
  // Decoding on CUDA: the three products in one kernel launch.
  if (fused::lowrank_applies(x, r_full_, u_full_, c_full_, bias_)) {
    return fused::lowrank_forward(x, r_full_, u_full_, c_full_, bias_);
  }
  // Three thin GEMMs; the out x in matrix is never formed.
  auto t = at::linear(x, r_full_);
  if (u_full_.defined()) t = at::linear(t, u_full_);
  return at::linear(t, c_full_, bias_);
}

int64_t CURLinear::in_features() const { return r_.size(1); }
int64_t CURLinear::out_features() const { return c_.size(0); }
int64_t CURLinear::weight_params() const { return c_.numel() + r_.numel() + (u_.defined() ? u_.numel() : 0); }

std::vector<std::pair<std::string, at::Tensor>> CURLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (u_.defined()) {
    out.emplace_back("C", c_);
    out.emplace_back("U", u_);
  } else {
    out.emplace_back("CU", c_);
  }
  out.emplace_back("R", r_);
  if (bias_.defined()) out.emplace_back("bias", bias_);
  if (row_indices_.defined()) out.emplace_back("row_indices", row_indices_);
  if (col_indices_.defined()) out.emplace_back("col_indices", col_indices_);
  return out;
}

at::Tensor CURLinear::reconstruct_weight() const {
  const auto work = detail::work_dtype(c_);
  auto cu = u_.defined() ? at::matmul(c_.to(work), u_.to(work)) : c_.to(work);
  return at::matmul(cu, r_.to(work)).to(c_.scalar_type());
}

std::shared_ptr<CURLinear> CURLinear::from_linear(const at::Tensor& weight, const at::Tensor& bias,
                                                  const CUROptions& options) {
  detail::check_layer("CURLinear::from_linear", weight, bias, options.scale);
  const int64_t k = cur_rank_for_ratio(weight.size(0), weight.size(1), options.param_ratio, options);
  return CURFactory(weight, bias, options, k).build_cur(options.param_ratio);
}

// ---------------------------------------------------------------------------------------------
CURFactory::CURFactory(at::Tensor weight, at::Tensor bias, CUROptions options, int64_t max_rank)
    : options_(std::move(options)) {
  detail::check_layer("CURFactory", weight, bias, options_.scale);
  const int64_t r = std::min(weight.size(0), weight.size(1));
  if (max_rank < 1 || max_rank > r) {
    throw std::invalid_argument(fmt::format("CURFactory: max_rank {} is not in [1, {}]", max_rank, r));
  }
  c10::NoGradGuard no_grad;
  weight_ = weight.detach();
  bias_ = bias.defined() ? bias.detach() : bias;
  if (options_.scale.defined()) options_.scale = options_.scale.detach();
  scaled_ = detail::scaled_weight(weight_, options_.scale);
  subspace_ = top_k_svd(scaled_, max_rank, options_.svd);
}

std::unique_ptr<CURFactory> CURFactory::for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                   const CUROptions& options, const std::vector<double>& ratios) {
  detail::check_layer("CURFactory::for_ratios", weight, bias, options.scale);
  if (ratios.empty()) throw std::invalid_argument("CURFactory::for_ratios: no ratios");
  int64_t k = 0;
  for (double ratio : ratios) k = std::max(k, cur_rank_for_ratio(weight.size(0), weight.size(1), ratio, options));
  return std::make_unique<CURFactory>(weight, bias, options, k);
}

int64_t CURFactory::rank_for(double ratio) const {
  return cur_rank_for_ratio(weight_.size(0), weight_.size(1), ratio, options_);
}

std::shared_ptr<CURLinear> CURFactory::build_cur(double ratio) const {
  const int64_t k = rank_for(ratio);
  if (k > max_rank()) {
    throw std::invalid_argument(
        fmt::format("CURFactory: ratio {} needs rank {}, prepared for at most {}", ratio, k, max_rank()));
  }
  return build_rank_budget(k, detail::budget_params(weight_.size(0), weight_.size(1), ratio));
}

std::shared_ptr<CURLinear> CURFactory::build_rank(int64_t k) const {
  if (k < 1 || k > max_rank()) {
    throw std::invalid_argument(fmt::format("CURFactory: rank {} is not in [1, {}]", k, max_rank()));
  }
  return build_rank_budget(k, -1);
}

std::shared_ptr<CURLinear> CURFactory::build_rank_budget(int64_t k, int64_t budget) const {
  std::vector<std::string> errors;
  auto built = build_ranks({k}, {budget}, errors);
  if (!built.front()) throw CompressionError(errors.front());
  return built.front();
}

std::vector<model::LinearPtr> CURFactory::build_many(const std::vector<double>& ratios,
                                                     std::vector<std::string>* errors) const {
  std::vector<int64_t> ks, budgets;
  for (double ratio : ratios) {
    const int64_t k = rank_for(ratio);
    if (k > max_rank()) {
      throw std::invalid_argument(
          fmt::format("CURFactory: ratio {} needs rank {}, prepared for at most {}", ratio, k, max_rank()));
    }
    ks.push_back(k);
    budgets.push_back(detail::budget_params(weight_.size(0), weight_.size(1), ratio));
  }
  std::vector<std::string> messages;
  auto built = build_ranks(ks, budgets, messages);
  if (errors) *errors = messages;
  return std::vector<model::LinearPtr>(built.begin(), built.end());
}

std::vector<std::shared_ptr<CURLinear>> CURFactory::build_ranks(const std::vector<int64_t>& ks,
                                                                const std::vector<int64_t>& budgets,
                                                                std::vector<std::string>& errors) const {
  c10::NoGradGuard no_grad;
  const int64_t m = weight_.size(0), n = weight_.size(1);
  const auto work = scaled_.scalar_type();
  const auto device = scaled_.device();
  const size_t count = ks.size();
  errors.assign(count, std::string());

  // 1. Leverage of each rank's top-k subspace (nested in the prepared
  // top-max_rank one), copied to the host together: one synchronisation.
  std::vector<at::Tensor> leverage;
  for (int64_t k : ks) {
    leverage.push_back(subspace_.U.narrow(1, 0, k).pow(2).sum(1));
    leverage.push_back(subspace_.V.narrow(1, 0, k).pow(2).sum(1));
  }
  const auto host_leverage = at::cat(leverage).to(at::kCPU, at::kDouble);

  // 2. Rows and columns on the host, each rank with a generator fresh from the seed.
  std::vector<at::Tensor> rows(count), cols(count), rows_d(count), cols_d(count);
  for (size_t i = 0, offset = 0; i < count; ++i) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options_.seed);
    rows[i] = select_indices(host_leverage.narrow(0, offset, m), ks[i], options_.selection, gen);
    offset += m;
    cols[i] = select_indices(host_leverage.narrow(0, offset, n), ks[i], options_.selection, gen);
    offset += n;
    rows_d[i] = rows[i].to(device);
    cols_d[i] = cols[i].to(device);
  }

  // 3. U_s = pinv(C_s) A pinv(R_s) for A = W S, C_s = A[:, J], R_s = A[I, :].
  const double rtol = detail::link_rtol(options_.link_rtol, m, n, work);
  // A Gram matrix resolves singular values down to about sqrt(k * eps64) *
  // sigma_max, so it serves cut-offs of fp32 work (rtol >= 1e-6), not fp64's.
  const bool gram = rtol >= 1e-6 && (options_.link_solver == CURLinkSolver::Gram ||
                                     (options_.link_solver == CURLinkSolver::Auto && device.is_cuda()));
  std::vector<at::Tensor> links(count);
  if (!gram) {
    // Thin SVDs of C_s and R_s in fp64 with a relative cut-off (rank-revealing:
    // duplicated or zero columns give zeros, never NaN). Only U_c^T A V_r, a
    // k x k product, touches A.
    for (size_t i = 0; i < count; ++i) {
      auto pc = detail::pinv_factors(scaled_.index_select(1, cols_d[i]), rtol);
      auto pr = detail::pinv_factors(scaled_.index_select(0, rows_d[i]), rtol);
      auto core = at::matmul(at::matmul(pc.left.to(work).transpose(0, 1), scaled_), pr.right.to(work)).to(at::kDouble);
      links[i] = at::matmul(at::matmul(pc.right * pc.inv_sigma.unsqueeze(0), core),
                            (pr.left * pr.inv_sigma.unsqueeze(0)).transpose(0, 1));
    }
  } else {
    // Through fp64 Gram matrices: pinv(C) = Gc^+ C^T and pinv(R) = R^T Gr^+ with
    // Gc = C^T C = (A^T A)[J, J] and Gr = R R^T, so U_s = Gc^+ (A^T A)[J, :] R^T Gr^+.
    // Cholesky inverses where they provably cut nothing; all proofs are read
    // back together, and the rare failure takes the eigendecomposition.
    auto a = scaled_.to(at::kDouble);
    auto ata = at::matmul(a.transpose(0, 1), a);  // [n, n]
    std::vector<at::Tensor> gc(count), gr(count), mid(count), flags;
    std::vector<detail::CertifiedInverse> ic(count), ir(count);
    for (size_t i = 0; i < count; ++i) {
      auto r = a.index_select(0, rows_d[i]);                       // [k, n]
      auto ct_a = ata.index_select(0, cols_d[i]);                   // C^T A, [k, n]
      gc[i] = ct_a.index_select(1, cols_d[i]);                      // C^T C
      gr[i] = at::matmul(r, r.transpose(0, 1));                     // R R^T
      mid[i] = at::matmul(ct_a, r.transpose(0, 1));                 // C^T A R^T
      ic[i] = detail::gram_inverse_certified(gc[i], rtol);
      ir[i] = detail::gram_inverse_certified(gr[i], rtol);
      flags.push_back(ic[i].certified.reshape({1}));
      flags.push_back(ir[i].certified.reshape({1}));
    }
    const auto proven = at::cat(flags).to(at::kCPU);
    for (size_t i = 0; i < count; ++i) {
      auto left = proven[2 * i].item<bool>() ? ic[i].inverse : detail::gram_pinv_eigh(gc[i], rtol);
      auto right = proven[2 * i + 1].item<bool>() ? ir[i].inverse : detail::gram_pinv_eigh(gr[i], rtol);
      links[i] = at::matmul(at::matmul(left, mid[i]), right);
    }
  }
  // W_hat S = C_s U_s R_s with C_s = W[:, J] S_J and R_s S^-1 = W[I, :], so
  // W_hat = W[:, J] (S_J U_s) W[I, :]: the stored C and R are the original weight.
  std::vector<at::Tensor> finite;
  for (size_t i = 0; i < count; ++i) {
    if (options_.scale.defined()) {
      links[i] = options_.scale.to(device, at::kDouble).index_select(0, cols_d[i]).unsqueeze(1) * links[i];
    }
    finite.push_back(at::isfinite(links[i]).all().reshape({1}));
  }
  const auto all_finite = at::cat(finite).to(at::kCPU);

  std::vector<std::shared_ptr<CURLinear>> out(count);
  const auto dtype = weight_.scalar_type();
  for (size_t i = 0; i < count; ++i) {
    const int64_t k = ks[i];
    if (!all_finite[static_cast<int64_t>(i)].item<bool>()) {
      errors[i] = fmt::format("CUR: the {}x{} linking matrix of a [{}, {}] weight is not finite", k, k, m, n);
      continue;
    }
    auto c = weight_.index_select(1, cols_d[i]).contiguous();
    auto r = weight_.index_select(0, rows_d[i]).contiguous();
    if (options_.fold_u) {
      auto cu = at::matmul(c.to(at::kDouble), links[i]).to(dtype).contiguous();
      out[i] = std::make_shared<CURLinear>(cu, at::Tensor(), r, bias_, rows[i], cols[i], budgets[i]);
    } else {
      out[i] = std::make_shared<CURLinear>(c, links[i].to(dtype).contiguous(), r, bias_, rows[i], cols[i], budgets[i]);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
CURCompressor::CURCompressor(CUROptions options) : options_(std::move(options)) {}

model::LinearPtr CURCompressor::compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         double param_ratio) const {
  CUROptions o = options_;
  o.param_ratio = param_ratio;
  o.scale = scale;
  return CURLinear::from_linear(weight, bias, o);
}

std::unique_ptr<PreparedLayer> CURCompressor::prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                      const at::Tensor& scale, const std::vector<double>& ratios) const {
  CUROptions o = options_;
  o.scale = scale;
  return CURFactory::for_ratios(weight, bias, o, ratios);
}

int64_t CURCompressor::rank_for(int64_t out_features, int64_t in_features, double param_ratio) const {
  return cur_rank_for_ratio(out_features, in_features, param_ratio, options_);
}

int64_t CURCompressor::stored_params(int64_t out_features, int64_t in_features, double param_ratio) const {
  return cur_stored_params(out_features, in_features, rank_for(out_features, in_features, param_ratio), options_);
}

}  // namespace cur4llm::compress
