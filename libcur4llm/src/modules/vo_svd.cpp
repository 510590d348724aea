#include <cur4llm/modules/vo_svd.h>

#include <cur4llm/compress/gram.h>
#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <map>
#include <stdexcept>

namespace cur4llm::modules {

VoFactors vo_svd(const at::Tensor& value_weight, const at::Tensor& value_bias, const at::Tensor& output_weight,
                 const at::Tensor& output_bias, const at::Tensor& gram, int64_t heads, int64_t kv_heads, int64_t dv) {
  if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0) {
    throw std::invalid_argument(fmt::format("vo_svd: {} heads are not groups of {} value heads", heads, kv_heads));
  }
  if (!value_weight.defined() || value_weight.dim() != 2 || value_weight.size(0) % kv_heads != 0) {
    throw std::invalid_argument("vo_svd: the value weight must be [kv * d, h]");
  }
  const int64_t d = value_weight.size(0) / kv_heads, h = value_weight.size(1), group = heads / kv_heads;
  if (!output_weight.defined() || output_weight.dim() != 2 || output_weight.size(1) != heads * d) {
    throw std::invalid_argument(fmt::format("vo_svd: the output weight must be [h_out, {}]", heads * d));
  }
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != h || gram.size(1) != h) {
    throw std::invalid_argument(fmt::format("vo_svd: the Gram matrix must be [{}, {}]", h, h));
  }
  if (dv < 1 || dv > d) throw std::invalid_argument(fmt::format("vo_svd: dv = {} is outside [1, {}]", dv, d));
  if (value_bias.defined() && !output_bias.defined()) {
    throw std::invalid_argument("vo_svd: a value bias needs an output bias to be folded into");
  }
  const auto opts = value_weight.options().dtype(at::kDouble);
  const auto wv = value_weight.to(at::kDouble);
  const auto wo = output_weight.to(at::kDouble);
  const int64_t h_out = wo.size(0);
  VoFactors out;
  if (output_bias.defined()) {
    out.output_bias = output_bias.to(at::kDouble);
    if (value_bias.defined()) {
      // The bias of head i's values reaches the output as W_o^i b_v^j: all of them, as one product.
      const auto bv = value_bias.to(at::kDouble).view({kv_heads, 1, d}).expand({kv_heads, group, d}).reshape({heads * d});
      out.output_bias = out.output_bias + wo.mv(bv);
    }
  }
  auto g = gram.to(wv.device(), at::kDouble);
  g = (g + g.t()) / 2;
  const auto l = compress::whitening_factor(g, "vo_svd");  // [h, h] lower-triangular
  out.value_weight = at::empty({kv_heads * dv, h}, opts);
  out.output_weight = at::empty({h_out, heads * dv}, opts);
  for (int64_t j = 0; j < kv_heads; ++j) {
    const auto wv_j = wv.narrow(0, j * d, d);                      // [d, h]
    std::vector<at::Tensor> blocks;
    for (int64_t r = 0; r < group; ++r) blocks.push_back(wo.narrow(1, (j * group + r) * d, d));  // [h_out, d]
    const auto o_j = at::cat(blocks, 0);                             // [group * h_out, d]
    const auto m = o_j.mm(wv_j.mm(l));                               // [group * h_out, h]
    auto [u, s, vh] = at::linalg_svd(m, /*full_matrices=*/false);
    const auto us = u.narrow(1, 0, dv) * s.narrow(0, 0, dv).unsqueeze(0);  // [group * h_out, dv]
    // W_v^j' = V_dv^T L^-1, i.e. the solution Y of L^T Y = V_dv, transposed.
    const auto v_dv = vh.narrow(0, 0, dv).t();                       // [h, dv]
    const auto y = at::linalg_solve_triangular(l.t(), v_dv, /*upper=*/true);
    out.value_weight.narrow(0, j * dv, dv).copy_(y.t());
    for (int64_t r = 0; r < group; ++r) {
      out.output_weight.narrow(1, (j * group + r) * dv, dv).copy_(us.narrow(0, r * h_out, h_out));
    }
  }
  return out;
}

std::string VoModule::name() const { return value.substr(0, value.rfind('.')) + ".vo"; }

std::vector<VoModule> vo_modules(const model::CausalLM& lm) {
  std::map<int64_t, VoModule> by_layer;
  const auto& c = lm.config();
  for (const auto& info : lm.linears()) {
    if (!info.role || (*info.role != model::LinearRole::V && *info.role != model::LinearRole::O)) continue;
    VoModule& m = by_layer[info.layer];
    m.layer = info.layer;
    m.heads = c.num_heads;
    m.kv_heads = c.num_kv_heads;
    m.width = c.head_dim;
    if (*info.role == model::LinearRole::V) {
      m.value = info.name;
      m.hidden = info.in_features;
    } else {
      m.output = info.name;
    }
  }
  std::vector<VoModule> out;
  for (auto& [layer, m] : by_layer) out.push_back(std::move(m));
  return out;
}

int64_t vo_weight_params(const VoModule& m, int64_t dv) { return m.hidden * dv * (m.kv_heads + m.heads); }

int64_t vo_dense_params(const VoModule& m) { return vo_weight_params(m, m.width); }

std::vector<search::PlannedLayer> compress_vo(model::CausalLM& lm, const VoModule& m, int64_t dv,
                                              const at::Tensor& gram) {
  const std::string who = fmt::format("vo_svd({})", m.name());
  if (dv < 1 || dv > m.width) throw std::invalid_argument(fmt::format("{}: dv = {} is outside [1, {}]", who, dv, m.width));
  const auto& v = lm.dense_linear(m.value);
  const auto& o = lm.dense_linear(m.output);
  if (v.out_features() != m.kv_heads * m.width || o.in_features() != m.heads * m.width) {
    throw std::invalid_argument(fmt::format("{}: the value heads are already narrowed", who));
  }
  const double ratio = static_cast<double>(dv) / static_cast<double>(m.width);
  std::vector<search::PlannedLayer> rows{
      {m.value, "vo_svd", ratio, dv, m.kv_heads * dv * m.hidden, v.out_features() * v.in_features()},
      {m.output, "vo_svd", ratio, dv, o.out_features() * m.heads * dv, o.out_features() * o.in_features()}};
  if (dv == m.width) return rows;  // full width: the pair is exact as it is

  const auto f = vo_svd(v.weight(), v.bias(), o.weight(), o.bias(), gram, m.heads, m.kv_heads, dv);
  const auto dtype = v.weight().scalar_type();
  // The value bias now lives in o_proj's; a family that stores one keeps a zero vector.
  const auto v_bias = v.bias().defined() ? at::zeros({m.kv_heads * dv}, v.bias().options()) : at::Tensor();
  const auto o_bias = f.output_bias.defined() ? f.output_bias.to(dtype) : at::Tensor();
  std::map<std::string, model::LinearPtr> slots{
      {m.value, std::make_shared<model::DenseLinear>(f.value_weight.to(dtype), v_bias)},
      {m.output, std::make_shared<model::DenseLinear>(f.output_weight.to(dtype), o_bias)}};
  model::LayerShapes shapes = lm.config().layer_shape(m.layer);
  shapes.v_head_dim = dv;
  lm.reshape_layer(m.layer, shapes, slots);
  return rows;
}

}  // namespace cur4llm::modules
