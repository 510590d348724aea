#include <cur4llm/quant/awq.h>

#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/linear.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/util/progress.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>
#include <memory>
#include <set>
#include <stdexcept>

namespace cur4llm::quant {

namespace {

// Keeps every stride-th row of the inputs it sees (fp32, flattened to [rows, in]).
class InputRecorder final : public model::ForwardingSlot {
 public:
  InputRecorder(model::LinearPtr inner, int64_t stride) : ForwardingSlot(std::move(inner)), stride_(stride) {}
  at::Tensor forward(const at::Tensor& x) const override {
    auto flat = x.reshape({-1, x.size(-1)});
    if (stride_ > 1) flat = flat.slice(0, 0, flat.size(0), stride_);
    rows_.push_back(flat.to(at::kFloat).contiguous());
    return ForwardingSlot::forward(x);
  }
  at::Tensor inputs() const { return at::cat(rows_, 0); }

 private:
  int64_t stride_;
  mutable std::vector<at::Tensor> rows_;
};

const model::LinearSlot& unwrapped(const model::LinearSlot& slot) {
  const auto* forwarding = dynamic_cast<const model::ForwardingSlot*>(&slot);
  return forwarding ? unwrapped(*forwarding->inner()) : slot;
}

double mean_squared(const at::Tensor& t) { return t.pow(2).mean().item<double>(); }

}  // namespace

AWQChoice awq_search(const at::Tensor& w, const at::Tensor& x, const QuantFormat& format, const AWQOptions& options) {
  detail::check_quant_format("awq_search", format);
  if (!format.activation_aware) {
    throw std::invalid_argument(fmt::format("awq_search: format \"{}\" is not activation-aware", format.name));
  }
  if (options.grid < 1) throw std::invalid_argument(fmt::format("awq_search: grid must be >= 1, not {}", options.grid));
  if (w.dim() != 2 || x.dim() != 2 || x.size(1) != w.size(1) || x.size(0) < 1) {
    throw std::invalid_argument(fmt::format("awq_search: inputs [{}] do not fit a weight [{}]",
                                            fmt::join(x.sizes(), ", "), fmt::join(w.sizes(), ", ")));
  }
  detail::check_quantizable("awq_search", w, format);
  c10::NoGradGuard no_grad;
  const auto w32 = w.to(at::kFloat);
  const auto x32 = x.to(w.device(), at::kFloat);
  const auto reference = at::matmul(x32, w32.t());
  // AWQ's statistic: the mean magnitude of each input channel, floored so that
  // dead channels keep a finite scale.
  const auto magnitude = x32.abs().mean(0).clamp_min(1e-4);
  AWQChoice best;
  best.error = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i <= options.grid; ++i) {
    const double a = static_cast<double>(i) / static_cast<double>(options.grid);
    auto s = magnitude.pow(a);
    s = s / (s.max() * s.min()).sqrt();
    // m = 1/s, kept inside fp16's normal range.
    const auto m = s.reciprocal().clamp(std::ldexp(1.0, -14), std::ldexp(1.0, 14)).to(at::kHalf);
    at::Tensor wq;
    try {
      wq = fake_quantize(w32, format, m);
    } catch (const std::invalid_argument&) {
      continue;  // this grid point would need a scale beyond fp16; a = 0 never does (checked above)
    }
    const double error = mean_squared(at::matmul(x32, wq.t()) - reference);
    if (i == 0) best.rtn_error = error;
    if (error < best.error) {
      best.error = error;
      best.alpha = a;
      best.input_scales = m;
    }
  }
  return best;
}

std::vector<std::pair<std::string, at::Tensor>> factor_inputs(const model::LinearSlot& any_slot, const at::Tensor& x) {
  const auto& slot = unwrapped(any_slot);
  const std::string kind = slot.kind();
  std::vector<std::pair<std::string, at::Tensor>> out;
  const auto to_x = [&](const at::Tensor& t) { return t.to(x.device(), x.scalar_type()); };
  if (dynamic_cast<const model::DenseLinear*>(&slot) != nullptr) {
    out.emplace_back("weight", x);
  } else if (const auto* svd = dynamic_cast<const compress::SVDLinear*>(&slot)) {
    out.emplace_back("BLinear.weight", x);
    out.emplace_back("ALinear.weight", at::matmul(x, to_x(svd->b()).t()));
  } else if (const auto* cur = dynamic_cast<const compress::CURLinear*>(&slot)) {
    const auto rx = at::matmul(x, to_x(cur->r()).t());
    out.emplace_back("R", x);
    if (cur->folded()) {
      out.emplace_back("CU", rx);
    } else {
      out.emplace_back("U", rx);
      out.emplace_back("C", at::matmul(rx, to_x(cur->u()).t()));
    }
  } else if (const auto* sk = dynamic_cast<const compress::SkeletonLinear*>(&slot)) {
    const int64_t k = sk->rank();
    if (sk->side() == compress::SkeletonSide::Row) {
      out.emplace_back("W_I", x);
      out.emplace_back("X_rest", at::matmul(x, to_x(sk->kept()).t()));
    } else {
      const auto xp = x.index_select(1, sk->index().to(x.device()));
      const auto rest = xp.narrow(1, k, xp.size(1) - k);
      out.emplace_back("Z_rest", rest);
      out.emplace_back("W_J", xp.narrow(1, 0, k) + at::matmul(rest, to_x(sk->predictor()).t()));
    }
  } else {
    throw std::invalid_argument(fmt::format("AWQ does not know the factors of a \"{}\" layer", kind));
  }
  return out;
}

AWQResult awq_quantize_model(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                             const QuantFormat& format, const AWQOptions& options) {
  detail::check_quant_format("awq_quantize_model", format);
  if (!format.activation_aware) {
    throw std::invalid_argument(fmt::format("awq_quantize_model: format \"{}\" is not activation-aware (use "
                                            "quantize_model_packed)", format.name));
  }
  if (samples.empty()) throw std::invalid_argument("awq_quantize_model: AWQ needs calibration samples");
  int64_t tokens = 0;
  for (const auto& s : samples) {
    if (s.empty()) throw std::invalid_argument("awq_quantize_model: a calibration sample is empty");
    tokens += static_cast<int64_t>(s.size());
  }
  if (options.max_rows < 1) throw std::invalid_argument("awq_quantize_model: max_rows must be >= 1");
  if (options.grid < 1) throw std::invalid_argument("awq_quantize_model: grid must be >= 1");
  c10::InferenceMode guard;

  // Every tensor is checked, and every slot kind known, before anything changes.
  const auto tensors = decoder_weight_tensors(lm);
  for (const auto& [name, t] : tensors) detail::check_quantizable(name, t, format);
  std::map<int64_t, std::vector<std::string>> layer_slots;
  for (const auto& info : lm.linears()) {
    if (info.layer < 0) continue;
    const auto& slot = lm.linear(info.name);
    const auto probe = at::zeros({1, slot.in_features()}, at::TensorOptions().dtype(lm.dtype()).device(lm.device()));
    std::set<std::string> covered;
    try {
      for (const auto& [rel, input] : factor_inputs(slot, probe)) covered.insert(rel);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("layer \"{}\": {}", info.name, e.what()));
    }
    for (const auto& [rel, t] : slot.state()) {
      if (t.dim() == 2 && at::isFloatingType(t.scalar_type()) && !covered.count(rel)) {
        throw std::invalid_argument(fmt::format("layer \"{}\": AWQ knows no input of its tensor \"{}\"", info.name, rel));
      }
    }
    layer_slots[info.layer].push_back(info.name);
  }

  const int64_t stride = std::max<int64_t>(1, (tokens + options.max_rows - 1) / options.max_rows);
  std::vector<at::Tensor> hidden;
  hidden.reserve(samples.size());
  for (const auto& s : samples) {
    auto ids = at::tensor(at::ArrayRef<int64_t>(s), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
    hidden.push_back(lm.embed(ids.to(lm.device())));
  }

  AWQResult result;
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) progress = std::make_unique<util::Progress>("awq", lm.num_layers(), "layers");
  for (int64_t layer = 0; layer < lm.num_layers(); ++layer) {
    std::map<std::string, std::shared_ptr<InputRecorder>> recorders;
    {
      model::ScopedSlots scoped(lm);
      for (const auto& name : layer_slots[layer]) {
        auto recorder = std::make_shared<InputRecorder>(lm.linear_ptr(name), stride);
        scoped.replace(name, recorder);
        recorders[name] = recorder;
      }
      // The next layer sees this layer's unquantized outputs, as in AWQ.
      for (auto& h : hidden) h = lm.layer(layer, h);
    }
    for (const auto& [name, recorder] : recorders) {
      const auto x = recorder->inputs();
      const auto& slot = lm.linear(name);
      std::map<std::string, at::Tensor> states;
      for (auto& [rel, t] : slot.state()) states[rel] = t;
      for (const auto& [rel, input] : factor_inputs(slot, x.to(lm.dtype()))) {
        auto t = states.at(rel);  // shares the slot's storage
        const std::string full = name + "." + rel;
        auto choice = awq_search(t, input, format, options);
        QuantizedTensor q = quantize_tensor(t, format, choice.input_scales);
        t.copy_(dequantize_tensor(q, t.scalar_type()));
        q.qweight = q.qweight.cpu();
        q.scales = q.scales.cpu();
        q.zeros = q.zeros.cpu();
        q.input_scales = q.input_scales.cpu();
        choice.input_scales = q.input_scales;
        result.packed.emplace(full, std::move(q));
        result.choices.emplace(full, std::move(choice));
      }
    }
    if (progress) progress->advance();
  }
  return result;
}

}  // namespace cur4llm::quant
