#include <cur4llm/compress/skeleton_linear.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <stdexcept>

namespace cur4llm::compress {
namespace {

std::string shape_of(const at::Tensor& t) {
  return fmt::format("[{}]", fmt::join(t.sizes().begin(), t.sizes().end(), ", "));
}

const char* side_name(SkeletonSide side) { return side == SkeletonSide::Row ? "row" : "col"; }

// index[:k] followed by the other positions of [0, n) in ascending order.
at::Tensor completed_permutation(const at::Tensor& kept, int64_t n) {
  std::vector<char> used(static_cast<size_t>(n), 0);
  const auto* p = kept.data_ptr<int64_t>();
  for (int64_t i = 0; i < kept.numel(); ++i) used[static_cast<size_t>(p[i])] = 1;
  auto out = at::empty({n}, at::kLong);
  auto* o = out.data_ptr<int64_t>();
  std::copy(p, p + kept.numel(), o);
  int64_t at_pos = kept.numel();
  for (int64_t i = 0; i < n; ++i)
    if (!used[static_cast<size_t>(i)]) o[at_pos++] = i;
  return out;
}

bool is_permutation(const at::Tensor& index, int64_t n) {
  if (index.numel() != n) return false;
  std::vector<char> seen(static_cast<size_t>(n), 0);
  const auto* p = index.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] < 0 || p[i] >= n || seen[static_cast<size_t>(p[i])]) return false;
    seen[static_cast<size_t>(p[i])] = 1;
  }
  return true;
}

}  // namespace

SkeletonSide parse_skeleton_side(const std::string& name) {
  if (name == "row") return SkeletonSide::Row;
  if (name == "col") return SkeletonSide::Column;
  if (name == "auto") return SkeletonSide::Auto;
  throw std::invalid_argument(fmt::format("unknown skeleton side \"{}\" (valid: row, col, auto)", name));
}

int64_t skeleton_stored_params(int64_t out_features, int64_t in_features, int64_t rank) {
  return rank * (out_features + in_features - rank);
}

int64_t skeleton_rank_for_ratio(int64_t out_features, int64_t in_features, double param_ratio, int64_t rank_align) {
  detail::check_ratio("skeleton_rank_for_ratio", param_ratio);
  if (out_features < 1 || in_features < 1) throw std::invalid_argument("skeleton_rank_for_ratio: empty layer");
  const int64_t align = std::max<int64_t>(rank_align, 1);
  const int64_t full = std::min(out_features, in_features);
  const int64_t budget = detail::budget_params(out_features, in_features, param_ratio);
  // k (m + n - k) grows with k on [0, min(m, n)], so the largest fitting k is found by stepping down.
  int64_t k = full / align * align;
  while (k > 0 && skeleton_stored_params(out_features, in_features, k) > budget) k -= align;
  return k > 0 ? k : std::min(align, full);
}

// ---------------------------------------------------------------------------------------------
SkeletonLinear::SkeletonLinear(SkeletonSide side, at::Tensor kept, at::Tensor predictor, at::Tensor index,
                               at::Tensor bias, int64_t budget_params)
    : side_(side),
      kept_(std::move(kept)),
      predictor_(std::move(predictor)),
      bias_(std::move(bias)),
      budget_params_(budget_params) {
  if (side_ == SkeletonSide::Auto) throw std::invalid_argument("SkeletonLinear: the side must be Row or Column");
  if (!kept_.defined() || !predictor_.defined() || kept_.dim() != 2 || predictor_.dim() != 2 || !index.defined() ||
      index.dim() != 1) {
    throw std::invalid_argument("SkeletonLinear: kept and predictor must be 2-d and index 1-d");
  }
  index_ = index.to(at::kCPU, at::kLong).contiguous();
  const bool row = side_ == SkeletonSide::Row;
  const int64_t k = row ? kept_.size(0) : kept_.size(1);
  const int64_t full = index_.numel();  // m (row) or n (column)
  const bool shapes_ok = row ? predictor_.size(0) == full - k && predictor_.size(1) == k
                             : predictor_.size(0) == k && predictor_.size(1) == full - k;
  if (!shapes_ok) {
    throw std::invalid_argument(fmt::format(
        "SkeletonLinear ({}): kept {}, predictor {} and index of {} entries do not fit together", side_name(side_),
        shape_of(kept_), shape_of(predictor_), full));
  }
  if (!is_permutation(index_, full)) {
    throw std::invalid_argument(fmt::format("SkeletonLinear ({}): index is not a permutation of 0..{}", side_name(side_), full - 1));
  }
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != out_features())) {
    throw std::invalid_argument(
        fmt::format("SkeletonLinear: bias of {} values does not match {} outputs", bias_.numel(), out_features()));
  }
  auto gather = row ? at::argsort(index_) : index_;
  gather_ = gather.to(kept_.device());
}

std::shared_ptr<SkeletonLinear> SkeletonLinear::from_state(const std::string& kind,
                                                           const std::vector<std::pair<std::string, at::Tensor>>& state) {
  std::map<std::string, at::Tensor> named(state.begin(), state.end());
  const bool row = kind == "skeleton_row";
  if (!row && kind != "skeleton_col") {
    throw std::invalid_argument(fmt::format("SkeletonLinear::from_state: unknown kind \"{}\"", kind));
  }
  const char* names[3] = {row ? "W_I" : "W_J", row ? "X_rest" : "Z_rest", row ? "row_index" : "col_index"};
  for (const char* n : names) {
    if (!named.count(n)) throw std::invalid_argument(fmt::format("SkeletonLinear::from_state ({}): no tensor \"{}\"", kind, n));
  }
  return std::make_shared<SkeletonLinear>(row ? SkeletonSide::Row : SkeletonSide::Column, named[names[0]],
                                          named[names[1]], named[names[2]],
                                          named.count("bias") ? named["bias"] : at::Tensor());
}

int64_t SkeletonLinear::in_features() const {
  return side_ == SkeletonSide::Row ? kept_.size(1) : index_.numel();
}

int64_t SkeletonLinear::out_features() const {
  return side_ == SkeletonSide::Row ? index_.numel() : kept_.size(0);
}

std::string SkeletonLinear::kind() const { return side_ == SkeletonSide::Row ? "skeleton_row" : "skeleton_col"; }

at::Tensor SkeletonLinear::forward(const at::Tensor& x) const {
  if (full_.defined()) {
    return side_ == SkeletonSide::Row ? at::linear(at::linear(x, kept_), full_, bias_)
                                      : at::linear(at::linear(x, full_), kept_, bias_);
  }
  const int64_t k = rank();
  if (side_ == SkeletonSide::Row) {
    auto y_kept = at::linear(x, kept_);
    auto y = at::cat({y_kept, at::linear(y_kept, predictor_)}, -1).index_select(-1, gather_);
    return bias_.defined() ? y.add_(bias_) : y;
  }
  auto xp = x.index_select(-1, gather_);
  auto z = xp.narrow(-1, 0, k) + at::linear(xp.narrow(-1, k, xp.size(-1) - k), predictor_);
  return at::linear(z, kept_, bias_);
}

at::Tensor SkeletonLinear::interpolation_matrix() const {
  const int64_t k = rank(), full = index_.numel();
  const auto device_index = index_.to(kept_.device());
  const auto kept_pos = device_index.narrow(0, 0, k), rest_pos = device_index.narrow(0, k, full - k);
  const auto eye = at::eye(k, predictor_.options());
  if (side_ == SkeletonSide::Row) {  // X [m, k]
    auto x = at::zeros({full, k}, predictor_.options());
    x.index_copy_(0, kept_pos, eye);
    x.index_copy_(0, rest_pos, predictor_);
    return x;
  }
  auto z = at::zeros({k, full}, predictor_.options());  // Z [k, n]
  z.index_copy_(1, kept_pos, eye);
  z.index_copy_(1, rest_pos, predictor_);
  return z;
}

void SkeletonLinear::set_materialized(bool on) {
  c10::NoGradGuard no_grad;
  full_ = on ? interpolation_matrix() : at::Tensor();
}

std::vector<std::pair<std::string, at::Tensor>> SkeletonLinear::state() const {
  const bool row = side_ == SkeletonSide::Row;
  std::vector<std::pair<std::string, at::Tensor>> out{{row ? "W_I" : "W_J", kept_},
                                                      {row ? "X_rest" : "Z_rest", predictor_},
                                                      {row ? "row_index" : "col_index", index_}};
  if (bias_.defined()) out.emplace_back("bias", bias_);
  return out;
}

at::Tensor SkeletonLinear::reconstruct_weight() const {
  c10::NoGradGuard no_grad;
  const auto work = detail::work_dtype(kept_);
  const auto interp = interpolation_matrix().to(work);
  const auto kept = kept_.to(work);
  auto w = side_ == SkeletonSide::Row ? at::mm(interp, kept) : at::mm(kept, interp);
  return w.to(kept_.scalar_type());
}

// ---------------------------------------------------------------------------------------------
SkeletonFactory::SkeletonFactory(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& statistic,
                                 SkeletonOptions options, int64_t max_rank)
    : options_(options) {
  detail::check_layer("SkeletonFactory", weight, bias, at::Tensor());
  const int64_t m = weight.size(0), n = weight.size(1);
  if (max_rank < 1 || max_rank > std::min(m, n)) {
    throw std::invalid_argument(fmt::format("SkeletonFactory: max_rank {} is not in [1, {}]", max_rank, std::min(m, n)));
  }
  c10::NoGradGuard no_grad;
  weight_ = weight.detach();
  bias_ = bias.defined() ? bias.detach() : bias;
  max_rank_ = max_rank;
  InputMoments moments;
  if (statistic.defined()) {
    moments = input_moments(statistic, n, weight_, "SkeletonFactory");
    if (moments.sequential) cross_ = moments.cross;
  } else {
    moments.seen = at::eye(n, weight_.options().dtype(at::kDouble));
  }
  seen_ = moments.seen;
  if (options_.side != SkeletonSide::Column) rows_ = greedy_rows(weight_, moments.seen, max_rank, options_.rtol);
  if (options_.side != SkeletonSide::Row) columns_ = greedy_columns(weight_, moments.seen, max_rank, options_.rtol);
}

std::unique_ptr<SkeletonFactory> SkeletonFactory::for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                             const at::Tensor& statistic,
                                                             const SkeletonOptions& options,
                                                             const std::vector<double>& ratios) {
  detail::check_layer("SkeletonFactory", weight, bias, at::Tensor());
  if (ratios.empty()) throw std::invalid_argument("SkeletonFactory::for_ratios: no ratios");
  int64_t k = 1;
  for (double r : ratios) k = std::max(k, skeleton_rank_for_ratio(weight.size(0), weight.size(1), r, options.rank_align));
  return std::make_unique<SkeletonFactory>(weight, bias, statistic, options, k);
}

int64_t SkeletonFactory::rank_for(double ratio) const {
  return skeleton_rank_for_ratio(weight_.size(0), weight_.size(1), ratio, options_.rank_align);
}

double SkeletonFactory::predicted_error(int64_t k, SkeletonSide side) const {
  if (k < 0 || k > max_rank_) throw std::invalid_argument(fmt::format("SkeletonFactory: rank {} is not in [0, {}]", k, max_rank_));
  if (side == SkeletonSide::Auto) side = best_side(k);
  const std::vector<double>* curve = side == SkeletonSide::Row ? (rows_ ? &rows_->residual : nullptr)
                                                               : (columns_ ? &columns_->residual : nullptr);
  if (!curve) throw std::invalid_argument(fmt::format("SkeletonFactory: the {} side was not prepared", side_name(side)));
  return (*curve)[static_cast<size_t>(std::min<int64_t>(k, static_cast<int64_t>(curve->size()) - 1))];
}

SkeletonSide SkeletonFactory::best_side(int64_t k) const {
  if (!columns_) return SkeletonSide::Row;
  if (!rows_) return SkeletonSide::Column;
  return predicted_error(k, SkeletonSide::Column) < predicted_error(k, SkeletonSide::Row) ? SkeletonSide::Column
                                                                                         : SkeletonSide::Row;
}

std::shared_ptr<SkeletonLinear> SkeletonFactory::build_rank(int64_t k, SkeletonSide side) const {
  if (k < 1 || k > max_rank_) throw std::invalid_argument(fmt::format("SkeletonFactory: rank {} is not in [1, {}]", k, max_rank_));
  if (side == SkeletonSide::Auto) side = best_side(k);
  c10::NoGradGuard no_grad;
  const auto dtype = weight_.scalar_type();
  if (side == SkeletonSide::Row) {
    if (!rows_) throw std::invalid_argument("SkeletonFactory: the row side was not prepared");
    const int64_t kk = std::min(k, rows_->rank());
    auto picked = rows_->pivots.narrow(0, 0, kk).contiguous();
    const bool exchange = options_.exchange > 0 && kk > 0;
    if (exchange) {
      picked = exchange_rows(weight_, seen_, picked, static_cast<int64_t>(options_.exchange * static_cast<double>(kk)));
    }
    const auto index = completed_permutation(picked, weight_.size(0));
    const auto dev = index.to(weight_.device());
    const auto kept = dev.narrow(0, 0, kk), rest = dev.narrow(0, kk, index.numel() - kk);
    at::Tensor x_rest;
    if (cross_.defined() || exchange) {
      // X_rest (T T^T) = W_rest H W_I^T with T T^T = W_I G' W_I^T (H = G' unless sequential).
      const auto w = weight_.to(at::kDouble);
      const auto w_kept = w.index_select(0, kept);
      const auto a = at::mm(w.index_select(0, rest), at::mm(cross_.defined() ? cross_ : seen_, w_kept.transpose(0, 1)));
      at::Tensor t;
      if (exchange) {
        auto b = at::mm(w_kept, at::mm(seen_, w_kept.transpose(0, 1)));
        auto chol = at::linalg_cholesky_ex((b + b.transpose(0, 1)) * 0.5);
        if (std::get<1>(chol).item<int64_t>() != 0) throw CompressionError("skeleton (row): W_I G W_I^T is not positive definite");
        t = std::get<0>(chol);
      } else {
        t = rows_->factor.narrow(1, 0, kk).index_select(0, kept).tril();
      }
      const auto z = at::linalg_solve_triangular(t.transpose(0, 1), a, /*upper=*/true, /*left=*/false);
      x_rest = at::linalg_solve_triangular(t, z, /*upper=*/false, /*left=*/false);
    } else {
      x_rest = rows_->interpolation(kk).index_select(0, rest);
    }
    if (!at::isfinite(x_rest).all().item<bool>()) throw CompressionError("skeleton (row): the interpolation matrix is not finite");
    return std::make_shared<SkeletonLinear>(SkeletonSide::Row, weight_.index_select(0, kept), x_rest.to(dtype), index,
                                            bias_);
  }
  if (!columns_) throw std::invalid_argument("SkeletonFactory: the column side was not prepared");
  const int64_t kk = std::min(k, columns_->rank());
  const auto index = completed_permutation(columns_->pivots.narrow(0, 0, kk).contiguous(), weight_.size(1));
  const auto dev = index.to(weight_.device());
  auto z = columns_->interpolation(kk);
  if (!at::isfinite(z).all().item<bool>()) throw CompressionError("skeleton (col): the interpolation matrix is not finite");
  return std::make_shared<SkeletonLinear>(SkeletonSide::Column, weight_.index_select(1, dev.narrow(0, 0, kk)),
                                          z.index_select(1, dev.narrow(0, kk, index.numel() - kk)).to(dtype), index,
                                          bias_);
}

model::LinearPtr SkeletonFactory::build(double ratio) const {
  const int64_t k = rank_for(ratio);
  if (k > max_rank_) {
    throw std::invalid_argument(fmt::format("SkeletonFactory: ratio {} needs rank {} > max_rank {}", ratio, k, max_rank_));
  }
  auto slot = build_rank(k, options_.side);
  const int64_t budget = detail::budget_params(weight_.size(0), weight_.size(1), ratio);
  return std::make_shared<SkeletonLinear>(slot->side(), slot->kept(), slot->predictor(), slot->index(), slot->bias(),
                                          budget);
}

// ---------------------------------------------------------------------------------------------
SkeletonCompressor::SkeletonCompressor(std::string name, SkeletonOptions options, LayerStatistic statistic)
    : name_(std::move(name)), options_(options), statistic_(statistic) {}

model::LinearPtr SkeletonCompressor::compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                              double param_ratio) const {
  detail::check_ratio(name_, param_ratio);
  return prepare(weight, bias, scale, {param_ratio})->build(param_ratio);
}

std::unique_ptr<PreparedLayer> SkeletonCompressor::prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                           const at::Tensor& scale,
                                                           const std::vector<double>& ratios) const {
  if (statistic_ == LayerStatistic::Gram && !scale.defined()) {
    throw std::invalid_argument(name_ + ": needs the layer's input Gram matrix (collect it with CollectOptions::gram)");
  }
  if (statistic_ == LayerStatistic::Scale && scale.defined()) detail::check_layer(name_, weight, bias, scale);
  return SkeletonFactory::for_ratios(weight, bias, scale, options_, ratios);
}

int64_t SkeletonCompressor::rank_for(int64_t out_features, int64_t in_features, double param_ratio) const {
  return skeleton_rank_for_ratio(out_features, in_features, param_ratio, options_.rank_align);
}

int64_t SkeletonCompressor::stored_params(int64_t out_features, int64_t in_features, double param_ratio) const {
  return skeleton_stored_params(out_features, in_features, rank_for(out_features, in_features, param_ratio));
}

}  // namespace cur4llm::compress
