#include <cur4llm/compress/optimize_scale.h>

#include <cur4llm/compress/grad_cur_linear.h>
#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace cur4llm::compress {
namespace {

class OnDemand final : public PreparedLayer {
 public:
  OnDemand(const GradCURCompressor& compressor, at::Tensor weight, at::Tensor bias, at::Tensor scale,
           std::vector<double> ratios)
      : compressor_(compressor), weight_(std::move(weight)), bias_(std::move(bias)), scale_(std::move(scale)),
        ratios_(std::move(ratios)) {}
  int64_t rank_for(double ratio) const override { return compressor_.rank_for(weight_.size(0), weight_.size(1), ratio); }
  int64_t max_rank() const override {
    int64_t k = 0;
    for (double r : ratios_) k = std::max(k, rank_for(r));
    return k;
  }
  model::LinearPtr build(double ratio) const override {
    const bool prepared = std::any_of(ratios_.begin(), ratios_.end(), [&](double r) { return std::abs(r - ratio) < 1e-12; });
    if (!prepared) throw std::invalid_argument(fmt::format("grad_cur: ratio {} was not among the prepared ratios", ratio));
    return compressor_.compress(weight_, bias_, scale_, ratio);
  }

 private:
  const GradCURCompressor& compressor_;
  at::Tensor weight_, bias_, scale_;
  std::vector<double> ratios_;
};

}  // namespace

GradCURCompressor::GradCURCompressor(CUROptions options) : options_(std::move(options)) {}

model::LinearPtr GradCURCompressor::compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                             double param_ratio) const {
  CUROptions o = options_;
  o.param_ratio = param_ratio;
  o.scale = scale;
  return GradCURLinear::from_linear(weight, bias, o);
}

std::unique_ptr<PreparedLayer> GradCURCompressor::prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                          const at::Tensor& scale,
                                                          const std::vector<double>& ratios) const {
  return std::make_unique<OnDemand>(*this, weight, bias, scale, ratios);
}

int64_t GradCURCompressor::rank_for(int64_t out_features, int64_t in_features, double param_ratio) const {
  return cur_rank_for_ratio(out_features, in_features, param_ratio, options_);
}

int64_t GradCURCompressor::stored_params(int64_t out_features, int64_t in_features, double param_ratio) const {
  return cur_stored_params(out_features, in_features, rank_for(out_features, in_features, param_ratio), options_);
}

std::vector<at::Tensor> trainable_scales(const model::CausalLM& lm) {
  std::vector<at::Tensor> out;
  for (const auto& info : lm.linears()) {
    if (const auto* g = dynamic_cast<const GradCURLinear*>(lm.linear_ptr(info.name).get())) out.push_back(g->scale());
  }
  return out;
}

int64_t freeze_scales(model::CausalLM& lm) {
  int64_t n = 0;
  for (const auto& info : lm.linears()) {
    auto slot = lm.linear_ptr(info.name);
    if (const auto* g = dynamic_cast<const GradCURLinear*>(slot.get())) {
      lm.replace_linear(info.name, g->to_cur(lm.dtype()));
      ++n;
    }
  }
  return n;
}

}  // namespace cur4llm::compress
