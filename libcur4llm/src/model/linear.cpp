#include <cur4llm/model/linear.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <stdexcept>

namespace cur4llm::model {

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  if (!weight_.defined() || weight_.dim() != 2) throw std::invalid_argument("DenseLinear: weight must be a 2-d tensor");
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != weight_.size(0))) {
    throw std::invalid_argument(
        fmt::format("DenseLinear: bias of {} values does not match {} outputs", bias_.numel(), weight_.size(0)));
  }
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const { return at::linear(x, weight_, bias_); }
int64_t DenseLinear::in_features() const { return weight_.size(1); }
int64_t DenseLinear::out_features() const { return weight_.size(0); }
int64_t DenseLinear::weight_params() const { return weight_.numel(); }

std::vector<std::pair<std::string, at::Tensor>> DenseLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"weight", weight_}};
  if (bias_.defined()) out.emplace_back("bias", bias_);
  return out;
}

}  // namespace cur4llm::model
