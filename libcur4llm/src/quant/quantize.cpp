#include <cur4llm/quant/quantize.h>

#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/model/causal_lm.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <stdexcept>

namespace cur4llm::quant {

at::Tensor rtn_fake_quantize(const at::Tensor& w, int bits) {
  if (bits < 2 || bits > 16) throw std::invalid_argument(fmt::format("rtn: {} bits is not supported", bits));
  if (w.dim() != 2) throw std::invalid_argument("rtn: the weight must be 2-d");
  const double levels = std::ldexp(1.0, bits) - 1;
  auto x = w.to(at::kFloat);
  auto xmin = at::clamp_max(std::get<0>(x.min(1, /*keepdim=*/true)), 0.0);
  auto xmax = at::clamp_min(std::get<0>(x.max(1, /*keepdim=*/true)), 0.0);
  const auto both_zero = (xmin == 0).logical_and(xmax == 0);
  xmin = at::where(both_zero, at::full_like(xmin, -1.0), xmin);
  xmax = at::where(both_zero, at::full_like(xmax, 1.0), xmax);
  auto scale = (xmax - xmin) / levels;
  auto zero = at::round(-xmin / scale);
  auto q = at::clamp(at::round(x / scale) + zero, 0.0, levels);
  return (scale * (q - zero)).to(w.scalar_type());
}

namespace {

// Calls f(name, tensor) for every 2-d floating tensor of the Linear slots inside
// the decoder layers; the tensors share the slots' storage.
template <class F>
int64_t for_each_decoder_weight(const model::CausalLM& lm, F&& f) {
  int64_t count = 0;
  for (const auto& info : lm.linears()) {
    if (info.layer < 0) continue;
    for (auto& [name, t] : lm.linear(info.name).state()) {
      if (t.dim() != 2 || !at::isFloatingType(t.scalar_type())) continue;
      f(info.name + "." + name, t);
      ++count;
    }
  }
  return count;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> decoder_weight_tensors(const model::CausalLM& lm) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for_each_decoder_weight(lm, [&](const std::string& name, const at::Tensor& t) { out.emplace_back(name, t); });
  return out;
}

int64_t rtn_quantize_model(model::CausalLM& lm, int bits) {
  c10::InferenceMode guard;
  return for_each_decoder_weight(lm, [&](const std::string&, at::Tensor t) { t.copy_(rtn_fake_quantize(t, bits)); });
}

int64_t rtn_quantize_model(model::CausalLM& lm, const QuantFormat& format) {
  detail::check_quant_format("rtn_quantize_model", format);
  detail::refuse_activation_aware("rtn_quantize_model", format);
  c10::InferenceMode guard;
  for_each_decoder_weight(lm, [&](const std::string& name, const at::Tensor& t) {
    detail::check_quantizable(name, t, format);
  });
  return for_each_decoder_weight(lm, [&](const std::string&, at::Tensor t) { t.copy_(fake_quantize(t, format)); });
}

}  // namespace cur4llm::quant
