#include <cur4llm/compress/grad_cur_linear.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>

#include <stdexcept>

namespace cur4llm::compress {

namespace {

// pinv with a relative cut-off; the float overload exists in LibTorch 1.13 and 2.x.
at::Tensor pinv(const at::Tensor& m, double rtol) {
  return at::linalg_pinv(m, c10::optional<double>(), c10::optional<double>(rtol), /*hermitian=*/false);
}

}  // namespace

std::shared_ptr<GradCURLinear> GradCURLinear::from_linear(const at::Tensor& weight, const at::Tensor& bias,
                                                          const CUROptions& options) {
  detail::check_layer("GradCURLinear::from_linear", weight, bias, options.scale);
  auto cur = CURLinear::from_linear(weight, bias, options);
  auto scale = options.scale.defined() ? options.scale : at::ones({weight.size(1)}, weight.options());
  return std::make_shared<GradCURLinear>(weight, bias, scale, cur->row_indices(), cur->col_indices(), options);
}

GradCURLinear::GradCURLinear(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                             at::Tensor row_indices, at::Tensor col_indices, CUROptions options)
    : options_(std::move(options)) {
  detail::check_layer("GradCURLinear", weight, bias, scale);
  const auto work = detail::work_dtype(weight);
  weight_ = weight.detach().to(work).contiguous();
  bias_ = bias.defined() ? bias.detach().to(work) : at::Tensor();
  scale_ = scale.detach().to(weight_.options()).clone();
  scale_.set_requires_grad(true);
  options_.scale = at::Tensor();
  row_indices_ = row_indices.to(at::kCPU, at::kLong).contiguous();
  col_indices_ = col_indices.to(at::kCPU, at::kLong).contiguous();
  const int64_t k = row_indices_.numel();
  if (k < 1 || col_indices_.numel() != k) {
    throw std::invalid_argument("GradCURLinear: need the same positive number of row and column indices");
  }
  if (row_indices_.min().item<int64_t>() < 0 || row_indices_.max().item<int64_t>() >= weight_.size(0) ||
      col_indices_.min().item<int64_t>() < 0 || col_indices_.max().item<int64_t>() >= weight_.size(1)) {
    throw std::invalid_argument("GradCURLinear: row or column index out of range");
  }
}

at::Tensor GradCURLinear::reconstruct_weight() const {
  const auto device = weight_.device();
  auto rows = row_indices_.to(device), cols = col_indices_.to(device);
  auto a = weight_ * scale_.unsqueeze(0);
  auto cs = a.index_select(1, cols);
  auto rs = a.index_select(0, rows);
  const double rtol = detail::link_rtol(options_.link_rtol, weight_.size(0), weight_.size(1), weight_.scalar_type());
  auto us = at::matmul(at::matmul(pinv(cs, rtol), a), pinv(rs, rtol));
  // R_s S^-1 = W[I, :] exactly, so 1/s never has to be applied.
  return at::matmul(at::matmul(cs, us), weight_.index_select(0, rows));
}

at::Tensor GradCURLinear::forward(const at::Tensor& x) const {
  return at::linear(x.to(weight_.scalar_type()), reconstruct_weight(), bias_).to(x.scalar_type());
}

int64_t GradCURLinear::weight_params() const {
  return cur_stored_params(weight_.size(0), weight_.size(1), row_indices_.numel(), options_);
}

std::vector<std::pair<std::string, at::Tensor>> GradCURLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"weight", weight_}};
  if (bias_.defined()) out.emplace_back("bias", bias_);
  out.emplace_back("scale", scale_.detach());
  out.emplace_back("row_indices", row_indices_);
  out.emplace_back("col_indices", col_indices_);
  return out;
}

std::shared_ptr<CURLinear> GradCURLinear::to_cur(at::ScalarType dtype) const {
  c10::NoGradGuard no_grad;
  const auto device = weight_.device();
  auto rows = row_indices_.to(device), cols = col_indices_.to(device);
  auto w = weight_.to(at::kDouble);
  auto s = scale_.detach().to(at::kDouble);
  auto a = w * s.unsqueeze(0);
  const double rtol = detail::link_rtol(options_.link_rtol, w.size(0), w.size(1), weight_.scalar_type());
  auto us = at::matmul(at::matmul(pinv(a.index_select(1, cols), rtol), a), pinv(a.index_select(0, rows), rtol));
  auto u = s.index_select(0, cols).unsqueeze(1) * us;
  if (!at::isfinite(u).all().item<bool>()) throw CompressionError("GradCURLinear::to_cur: linking matrix not finite");
  auto c = weight_.index_select(1, cols);
  auto r = weight_.index_select(0, rows).to(dtype).contiguous();
  auto bias = bias_.defined() ? bias_.to(dtype) : at::Tensor();
  if (options_.fold_u) {
    return std::make_shared<CURLinear>(at::matmul(c.to(at::kDouble), u).to(dtype).contiguous(), at::Tensor(), r, bias,
                                       row_indices_, col_indices_);
  }
  return std::make_shared<CURLinear>(c.to(dtype).contiguous(), u.to(dtype).contiguous(), r, bias, row_indices_,
                                     col_indices_);
}

}  // namespace cur4llm::compress
