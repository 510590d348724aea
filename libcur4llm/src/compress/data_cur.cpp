#include <cur4llm/compress/data_cur.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace cur4llm::compress {
namespace {

CUROptions cur_layout(int64_t rank_align) {
  CUROptions o;
  o.rank_align = rank_align;
  return o;
}

// pinv(M) B or B pinv(M) through pinv_factors, in fp64.
at::Tensor pinv_left(const at::Tensor& m, const at::Tensor& b, double rtol) {
  auto f = detail::pinv_factors(m, rtol);  // pinv = right diag(inv) left^T
  return at::mm(f.right * f.inv_sigma.unsqueeze(0), at::mm(f.left.transpose(0, 1), b));
}
at::Tensor pinv_right(const at::Tensor& b, const at::Tensor& m, double rtol) {
  auto f = detail::pinv_factors(m, rtol);
  return at::mm(at::mm(b, f.right) * f.inv_sigma.unsqueeze(0), f.left.transpose(0, 1));
}

}  // namespace

DataCURFactory::DataCURFactory(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gram,
                               DataCUROptions options, int64_t max_rank)
    : options_(std::move(options)) {
  detail::check_layer("DataCURFactory", weight, bias, at::Tensor());
  const int64_t r = std::min(weight.size(0), weight.size(1));
  if (max_rank < 1 || max_rank > r) {
    throw std::invalid_argument(fmt::format("DataCURFactory: max_rank {} is not in [1, {}]", max_rank, r));
  }
  c10::NoGradGuard no_grad;
  weight_ = weight.detach();
  bias_ = bias.defined() ? bias.detach() : bias;
  w64_ = weight_.to(at::kDouble);
  l_ = whitening_factor(gram_from_statistic(gram, weight.size(1), w64_, "DataCURFactory"), "DataCURFactory",
                        options_.whiten);
  whitened_ = at::mm(w64_, l_);
  u_ = top_k_svd(whitened_, max_rank, options_.svd).U;
  if (!at::isfinite(u_).all().item<bool>()) throw CompressionError("DataCURFactory: the SVD of W L is not finite");
}

std::unique_ptr<DataCURFactory> DataCURFactory::for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                           const at::Tensor& gram, const DataCUROptions& options,
                                                           const std::vector<double>& ratios) {
  detail::check_layer("DataCURFactory", weight, bias, at::Tensor());
  if (ratios.empty()) throw std::invalid_argument("DataCURFactory::for_ratios: no ratios");
  int64_t k = 1;
  const auto layout = cur_layout(options.rank_align);
  for (double r : ratios) k = std::max(k, cur_rank_for_ratio(weight.size(0), weight.size(1), r, layout));
  return std::make_unique<DataCURFactory>(weight, bias, gram, options, k);
}

int64_t DataCURFactory::rank_for(double ratio) const {
  return cur_rank_for_ratio(weight_.size(0), weight_.size(1), ratio, cur_layout(options_.rank_align));
}

model::LinearPtr DataCURFactory::build(double ratio) const {
  const int64_t k = rank_for(ratio);
  if (k > max_rank()) {
    throw std::invalid_argument(fmt::format("DataCURFactory: ratio {} needs rank {} > max_rank {}", ratio, k, max_rank()));
  }
  return build_rank_budget(k, detail::budget_params(weight_.size(0), weight_.size(1), ratio));
}

std::shared_ptr<CURLinear> DataCURFactory::build_rank_budget(int64_t k, int64_t budget) const {
  if (k < 1 || k > max_rank()) throw std::invalid_argument(fmt::format("DataCURFactory: rank {} is not in [1, {}]", k, max_rank()));
  c10::NoGradGuard no_grad;
  const auto uk = u_.narrow(1, 0, k);
  auto rows = std::get<0>(at::sort(select_subset(uk, options_.selection)));
  // Columns: W's columns in the top-k output subspace, U_k^T W [k, n]; their right singular vectors.
  auto coords = at::mm(uk.transpose(0, 1), w64_);
  auto vh = std::get<2>(at::linalg_svd(coords, /*full_matrices=*/false));
  auto cols = std::get<0>(at::sort(select_subset(vh.transpose(0, 1).contiguous(), options_.selection)));
  const auto dev_rows = rows.to(w64_.device()), dev_cols = cols.to(w64_.device());
  const auto c = w64_.index_select(1, dev_cols);
  const auto r = w64_.index_select(0, dev_rows);
  const double rtol = detail::link_rtol(options_.link_rtol, weight_.size(0), weight_.size(1), at::kDouble);
  auto link = pinv_right(pinv_left(c, whitened_, rtol), at::mm(r, l_), rtol);
  if (!at::isfinite(link).all().item<bool>()) throw CompressionError("data-aware CUR: the linking matrix is not finite");
  const auto dtype = weight_.scalar_type();
  return std::make_shared<CURLinear>(weight_.index_select(1, dev_cols), link.to(dtype).contiguous(),
                                     weight_.index_select(0, dev_rows), bias_, rows, cols, budget);
}

// ---------------------------------------------------------------------------------------------
DataCURCompressor::DataCURCompressor(DataCUROptions options) : options_(std::move(options)) {}

std::string DataCURCompressor::name() const {
  switch (options_.selection) {
    case SubsetSelection::Leverage: return "cur_whiten";
    case SubsetSelection::DEIM: return "cur_deim";
    case SubsetSelection::PivotedQR: return "cur_qr";
  }
  return "cur_whiten";
}

model::LinearPtr DataCURCompressor::compress(const at::Tensor& weight, const at::Tensor& bias,
                                             const at::Tensor& scale, double param_ratio) const {
  detail::check_ratio(name(), param_ratio);
  return prepare(weight, bias, scale, {param_ratio})->build(param_ratio);
}

std::unique_ptr<PreparedLayer> DataCURCompressor::prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                          const at::Tensor& scale,
                                                          const std::vector<double>& ratios) const {
  if (!scale.defined()) {
    throw std::invalid_argument(name() + ": needs the layer's input Gram matrix (collect it with CollectOptions::gram)");
  }
  return DataCURFactory::for_ratios(weight, bias, scale, options_, ratios);
}

int64_t DataCURCompressor::rank_for(int64_t out_features, int64_t in_features, double param_ratio) const {
  return cur_rank_for_ratio(out_features, in_features, param_ratio, cur_layout(options_.rank_align));
}

int64_t DataCURCompressor::stored_params(int64_t out_features, int64_t in_features, double param_ratio) const {
  return cur_stored_params(out_features, in_features, rank_for(out_features, in_features, param_ratio),
                           cur_layout(options_.rank_align));
}

}  // namespace cur4llm::compress
