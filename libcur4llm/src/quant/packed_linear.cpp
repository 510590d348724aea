// PackedLinear: a dense Linear layer computed from its packed int4/int8 weight;
// PackedFactors: a factorized one computed from its (partly) packed factors.
#include <cur4llm/quant/packed_linear.h>

#include "../fused/fused_ops.h"

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace cur4llm::quant {

PackedLinear::PackedLinear(QuantizedTensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  const int64_t rows = weight_.rows, cols = weight_.cols;
  weight_ = make_quantized_tensor("PackedLinear weight", weight_.qweight, weight_.scales, weight_.zeros, rows, cols,
                                  weight_.format, weight_.input_scales);  // checks shapes and dtypes
  group_ = weight_.format.group_size > 0 && weight_.format.group_size < cols ? weight_.format.group_size : cols;
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != rows)) {
    throw std::invalid_argument(fmt::format("PackedLinear: bias of {} values for {} output features", bias_.numel(), rows));
  }
}

bool PackedLinear::fused_for(const at::Tensor& x) const {
  return fused::packed_linear_applies(x, weight_.qweight, weight_.scales, weight_.zeros, weight_.format.bits,
                                      weight_.cols, group_, bias_, weight_.input_scales);
}

at::Tensor PackedLinear::forward(const at::Tensor& x) const {
  if (fused_for(x)) {
    return fused::packed_linear(x, weight_.qweight, weight_.scales, weight_.zeros, weight_.format.bits, weight_.cols,
                                group_, bias_, weight_.input_scales);
  }
  // More tokens (a prefill): the weight rebuilt for the call, in one launch on CUDA.
  const QuantizedTensor& w = weight_;
  at::Tensor dense;
  if (x.is_cuda()) {
    dense = fused::packed_dequantize(w.qweight, w.scales, w.zeros, w.format.bits, w.cols, group_, w.input_scales,
                                     x.scalar_type());
  }
  return at::linear(x, dense.defined() ? dense : dequantize_tensor(w, x.scalar_type()), bias_);
}

namespace {

// The int4 tensor-core product of the packed weight `w` (columns per group `group`) with
// `extras` in its launch; undefined where it does not apply (packed_linear_mma checks what
// PackedLinear::fused_for checks).
at::Tensor packed_mma(const QuantizedTensor& w, int64_t group, const at::Tensor& bias, const at::Tensor& x,
                      const fused::MmaExtras& extras) {
  return fused::packed_linear_mma(x, w.qweight, w.scales, w.zeros, w.format.bits, w.cols, group, bias,
                                 w.input_scales, extras);
}

}  // namespace

at::Tensor PackedLinear::forward_add(at::Tensor residual, const at::Tensor& x) const {
  if (model::sole_owner(residual)) {
    auto out = packed_mma(weight_, group_, bias_, x, fused::MmaExtras::into(residual));
    if (out.defined()) return out;
  }
  return residual + forward(x);
}

at::Tensor PackedLinear::silu_gate(const at::Tensor& x) const {
  if (weight_.rows % 2 != 0) return {};
  if (!x.is_cuda()) {
    // The reference: the product, then silu(gate) * up as the separate steps compute them.
    const auto parts = forward(x).chunk(2, -1);
    return at::silu(parts[0]) * parts[1];
  }
  return packed_mma(weight_, group_, bias_, x, fused::MmaExtras::gate());
}

// The product with the input's norm in its launch (CUDA, where util::Kernel::norm_in_product is
// on); on the CPU the reference steps.
at::Tensor PackedLinear::normed(const at::Tensor& x, const model::InputNorm& norm, bool gate) const {
  if (!x.is_cuda()) return gate ? silu_gate(norm.apply(x)) : forward(norm.apply(x));
  return packed_mma(weight_, group_, bias_, x, fused::MmaExtras::normed(norm.weight, norm.eps, gate));
}

at::Tensor PackedLinear::forward_normed(const at::Tensor& x, const model::InputNorm& norm) const {
  return normed(x, norm, false);
}

at::Tensor PackedLinear::silu_gate_normed(const at::Tensor& x, const model::InputNorm& norm) const {
  return weight_.rows % 2 == 0 ? normed(x, norm, true) : at::Tensor();
}

std::vector<std::pair<std::string, at::Tensor>> PackedLinear::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"weight", reconstruct_weight()}};
  if (bias_.defined()) out.emplace_back("bias", bias_);
  return out;
}

at::Tensor PackedLinear::reconstruct_weight() const {
  return dequantize_tensor(weight_, bias_.defined() ? bias_.scalar_type() : at::kFloat);
}

std::shared_ptr<model::LinearSlot> PackedLinear::stacked_with(const std::vector<const model::LinearSlot*>& others) const {
  const QuantizedTensor& w = weight_;
  std::vector<at::Tensor> codes{w.qweight}, scales{w.scales}, zeros{w.zeros}, biases;
  if (bias_.defined()) biases.push_back(bias_);
  int64_t rows = w.rows;
  for (const auto* other : others) {
    const auto* p = dynamic_cast<const PackedLinear*>(other);
    if (!p) return nullptr;
    const QuantizedTensor& o = p->weight_;
    const bool same_input_scales = o.input_scales.defined() == w.input_scales.defined() &&
                                   (!w.input_scales.defined() || o.input_scales.is_same(w.input_scales) ||
                                    at::equal(o.input_scales, w.input_scales));
    if (o.cols != w.cols || o.format.name != w.format.name || o.format.bits != w.format.bits ||
        p->group_ != group_ || o.qweight.device() != w.qweight.device() || !same_input_scales ||
        p->bias_.defined() != bias_.defined() || (bias_.defined() && p->bias_.scalar_type() != bias_.scalar_type())) {
      return nullptr;
    }
    codes.push_back(o.qweight);
    scales.push_back(o.scales);
    zeros.push_back(o.zeros);
    if (p->bias_.defined()) biases.push_back(p->bias_);
    rows += o.rows;
  }
  QuantizedTensor stacked{at::cat(codes, 0), at::cat(scales, 0), at::cat(zeros, 0), w.input_scales, rows, w.cols,
                          w.format};
  return std::make_shared<PackedLinear>(std::move(stacked), biases.empty() ? at::Tensor() : at::cat(biases, 0));
}

std::shared_ptr<model::LinearSlot> PackedLinear::rows(int64_t begin, int64_t count) const {
  const QuantizedTensor& w = weight_;
  QuantizedTensor part{w.qweight.narrow(0, begin, count), w.scales.narrow(0, begin, count),
                       w.zeros.narrow(0, begin, count), w.input_scales, count, w.cols, w.format};
  return std::make_shared<PackedLinear>(std::move(part), bias_.defined() ? bias_.narrow(0, begin, count) : at::Tensor());
}

namespace {

// The bias of a factor, or undefined.
at::Tensor factor_bias(const model::LinearSlot& layer) {
  if (const auto* p = dynamic_cast<const PackedLinear*>(&layer)) return p->bias();
  if (const auto* d = dynamic_cast<const model::DenseLinear*>(&layer)) return d->bias();
  throw std::invalid_argument(
      fmt::format("PackedFactors: a factor must be a packed or a dense Linear, not \"{}\"", layer.kind()));
}

}  // namespace

PackedFactors::PackedFactors(std::string kind, model::SlotFields fields, std::vector<Factor> factors,
                             std::string bias_name, std::vector<std::pair<std::string, at::Tensor>> extra)
    : kind_(std::move(kind)),
      fields_(std::move(fields)),
      factors_(std::move(factors)),
      bias_name_(std::move(bias_name)),
      extra_(std::move(extra)) {
  if (factors_.empty()) throw std::invalid_argument("PackedFactors: no factors");
  for (size_t i = 0; i < factors_.size(); ++i) {
    const auto& f = factors_[i];
    if (!f.layer) throw std::invalid_argument(fmt::format("PackedFactors: factor \"{}\" is null", f.name));
    if (i > 0 && f.layer->in_features() != factors_[i - 1].layer->out_features()) {
      throw std::invalid_argument(fmt::format("PackedFactors: factor \"{}\" takes {} features, \"{}\" gives {}", f.name,
                                              f.layer->in_features(), factors_[i - 1].name,
                                              factors_[i - 1].layer->out_features()));
    }
    if (factor_bias(*f.layer).defined() && i + 1 != factors_.size()) {
      throw std::invalid_argument(fmt::format("PackedFactors: only the last factor has a bias, not \"{}\"", f.name));
    }
  }
}

at::Tensor PackedFactors::forward(const at::Tensor& x) const {
  at::Tensor t = x;
  for (const auto& f : factors_) t = f.layer->forward(t);
  return t;
}

int64_t PackedFactors::weight_params() const {
  int64_t n = 0;
  for (const auto& f : factors_) n += f.layer->weight_params();
  return n;
}

int64_t PackedFactors::packed_bytes() const {
  int64_t n = 0;
  for (const auto& f : factors_) {
    if (const auto* p = dynamic_cast<const PackedLinear*>(f.layer.get())) {
      n += p->packed_bytes();
    } else {
      const auto& w = dynamic_cast<const model::DenseLinear&>(*f.layer).weight();
      n += w.numel() * static_cast<int64_t>(w.element_size());
    }
  }
  return n;
}

std::vector<std::pair<std::string, at::Tensor>> PackedFactors::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& f : factors_) {
    for (auto& [key, t] : f.layer->state()) {
      if (key == "weight") out.emplace_back(f.name, t);
    }
  }
  const auto bias = factor_bias(*factors_.back().layer);
  if (bias.defined()) out.emplace_back(bias_name_, bias);
  for (const auto& e : extra_) out.push_back(e);
  return out;
}

at::Tensor PackedFactors::reconstruct_weight() const {
  at::Tensor w;
  for (const auto& f : factors_) {
    const auto fw = f.layer->reconstruct_weight().to(at::kFloat);
    w = w.defined() ? at::matmul(fw, w) : fw;
  }
  return w;
}

model::LinearPtr pack_slot(const model::LinearSlot& slot, const QuantFormat& format) {
  if (format.activation_aware) {
    throw std::invalid_argument(fmt::format("pack_slot: format \"{}\" needs input scales", format.name));
  }
  const std::string kind = slot.kind();
  const auto state = slot.state();
  auto get = [&](const std::string& name) {
    for (const auto& [key, t] : state) {
      if (key == name) return t;
    }
    return at::Tensor();
  };
  // The kind's factors, input side first, and its bias's name.
  std::vector<std::string> names;
  std::string bias_name;
  if (kind == "dense") return std::make_shared<PackedLinear>(quantize_tensor(get("weight"), format), get("bias"));
  if (kind == "svd") {
    names = {"BLinear.weight", "ALinear.weight"}, bias_name = "ALinear.bias";
  } else if (kind == "cur") {
    names = get("U").defined() ? std::vector<std::string>{"R", "U", "C"} : std::vector<std::string>{"R", "CU"};
    bias_name = "bias";
  } else {
    throw std::invalid_argument(fmt::format("pack_slot: a \"{}\" layer cannot be kept packed", kind));
  }
  const auto bias = get(bias_name);
  std::vector<PackedFactors::Factor> factors;
  for (const auto& name : names) {
    const bool last = name == names.back();
    factors.push_back({name, std::make_shared<PackedLinear>(quantize_tensor(get(name), format),
                                                             last ? bias : at::Tensor())});
  }
  // Whatever else the slot stores (CUR's indices) is kept as it is.
  std::vector<std::pair<std::string, at::Tensor>> extra;
  for (const auto& [key, t] : state) {
    if (key != bias_name && std::find(names.begin(), names.end(), key) == names.end()) extra.emplace_back(key, t);
  }
  return std::make_shared<PackedFactors>(kind, model::find_slot_kind(kind).describe(slot), std::move(factors),
                                         bias_name, std::move(extra));
}

}  // namespace cur4llm::quant
