#include <cur4llm/modules/qk_cr.h>

#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <stdexcept>

namespace cur4llm::modules {
namespace {

// E[(W x + b)_p^2] per output row p, on the Gram matrix G = E[x x^T] (the cross
// term 2 b_p W[p] E[x] is left out: the statistics hold no mean).
at::Tensor row_energy(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gram) {
  const auto w = weight.to(at::kDouble);
  auto e = (w.mm(gram) * w).sum(1).clamp_min(0);
  if (bias.defined()) e = e + bias.to(w.device(), at::kDouble).pow(2);
  return e;
}

// [rows, d] -> [rows, units]: the energy of each unit (a dimension, or pair u, u + d/2).
at::Tensor unit_energy(const at::Tensor& e, int64_t d, bool rotary) {
  if (!rotary) return e;
  return e.narrow(1, 0, d / 2) + e.narrow(1, d / 2, d / 2);
}

}  // namespace

std::string QkModule::name() const { return query.substr(0, query.rfind('.')) + ".qk"; }

std::vector<QkModule> qk_modules(const model::CausalLM& lm) {
  std::map<int64_t, QkModule> by_layer;
  const auto& c = lm.config();
  for (const auto& info : lm.linears()) {
    if (!info.role || (*info.role != model::LinearRole::Q && *info.role != model::LinearRole::K)) continue;
    QkModule& m = by_layer[info.layer];
    m.layer = info.layer;
    m.heads = c.num_heads;
    m.kv_heads = c.num_kv_heads;
    m.width = c.head_dim;
    m.rotary = c.family == model::Family::Llama;
    m.hidden = info.in_features;
    (*info.role == model::LinearRole::Q ? m.query : m.key) = info.name;
  }
  std::vector<QkModule> out;
  for (auto& [layer, m] : by_layer) out.push_back(std::move(m));
  return out;
}

int64_t qk_weight_params(const QkModule& m, int64_t dk) { return m.hidden * dk * (m.heads + m.kv_heads); }

int64_t qk_dense_params(const QkModule& m) { return qk_weight_params(m, m.width); }

at::Tensor qk_unit_scores(const at::Tensor& query_weight, const at::Tensor& query_bias, const at::Tensor& key_weight,
                          const at::Tensor& key_bias, const at::Tensor& gram, int64_t heads, int64_t kv_heads,
                          bool rotary) {
  if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0) {
    throw std::invalid_argument(fmt::format("qk_cr: {} heads are not groups of {} key heads", heads, kv_heads));
  }
  if (!key_weight.defined() || key_weight.dim() != 2 || key_weight.size(0) % kv_heads != 0) {
    throw std::invalid_argument("qk_cr: the key weight must be [kv * d, h]");
  }
  const int64_t d = key_weight.size(0) / kv_heads, h = key_weight.size(1);
  if (!query_weight.defined() || query_weight.dim() != 2 || query_weight.size(0) != heads * d ||
      query_weight.size(1) != h) {
    throw std::invalid_argument(fmt::format("qk_cr: the query weight must be [{}, {}]", heads * d, h));
  }
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != h || gram.size(1) != h) {
    throw std::invalid_argument(fmt::format("qk_cr: the Gram matrix must be [{}, {}]", h, h));
  }
  if (rotary && d % 2 != 0) throw std::invalid_argument(fmt::format("qk_cr: rotary heads of odd width {}", d));
  auto g = gram.to(key_weight.device(), at::kDouble);
  g = (g + g.t()) / 2;
  const auto eq = unit_energy(row_energy(query_weight, query_bias, g).view({heads, d}), d, rotary);
  const auto ek = unit_energy(row_energy(key_weight, key_bias, g).view({kv_heads, d}), d, rotary);
  const int64_t group = heads / kv_heads;
  // sum over the group's query heads of sqrt(Eq) sqrt(Ek)
  return eq.sqrt().view({kv_heads, group, -1}).sum(1) * ek.sqrt();
}

std::vector<int64_t> select_qk_dims(const at::Tensor& scores, int64_t head_dim, int64_t dk, bool rotary) {
  const int64_t unit = rotary ? 2 : 1;
  const int64_t units = head_dim / unit;
  if (!scores.defined() || scores.dim() != 2 || scores.size(1) != units) {
    throw std::invalid_argument(fmt::format("select_qk_dims: the scores must be [kv, {}]", units));
  }
  if (dk < unit || dk > head_dim || dk % unit != 0) {
    throw std::invalid_argument(
        fmt::format("select_qk_dims: dk = {} must be a multiple of {} in [{}, {}]", dk, unit, unit, head_dim));
  }
  const auto s = scores.to(at::kCPU, at::kDouble).contiguous();
  const int64_t keep = dk / unit;
  std::vector<int64_t> out;
  for (int64_t j = 0; j < s.size(0); ++j) {
    const auto row = s.select(0, j);
    std::vector<int64_t> order(static_cast<size_t>(units));
    for (int64_t u = 0; u < units; ++u) order[static_cast<size_t>(u)] = u;
    const double* p = row.data_ptr<double>();
    // Highest score first; ties to the lower index (deterministic).
    std::stable_sort(order.begin(), order.end(), [p](int64_t a, int64_t b) { return p[a] > p[b]; });
    std::vector<int64_t> kept(order.begin(), order.begin() + keep);
    std::sort(kept.begin(), kept.end());
    out.insert(out.end(), kept.begin(), kept.end());
    if (rotary) {
      for (int64_t u : kept) out.push_back(u + head_dim / 2);
    }
  }
  return out;
}

std::vector<search::PlannedLayer> compress_qk(model::CausalLM& lm, const QkModule& m, int64_t dk,
                                              const at::Tensor& gram) {
  const std::string who = fmt::format("qk_cr({})", m.name());
  if (dk < m.unit() || dk > m.width || dk % m.unit() != 0) {
    throw std::invalid_argument(
        fmt::format("{}: dk = {} must be a multiple of {} in [{}, {}]", who, dk, m.unit(), m.unit(), m.width));
  }
  const auto& q = lm.dense_linear(m.query);
  const auto& k = lm.dense_linear(m.key);
  if (q.out_features() != m.heads * m.width || k.out_features() != m.kv_heads * m.width) {
    throw std::invalid_argument(fmt::format("{}: the query and key heads are already narrowed", who));
  }
  const double ratio = static_cast<double>(dk) / static_cast<double>(m.width);
  std::vector<search::PlannedLayer> rows{
      {m.query, "qk_cr", ratio, dk, m.heads * dk * m.hidden, q.out_features() * q.in_features()},
      {m.key, "qk_cr", ratio, dk, m.kv_heads * dk * m.hidden, k.out_features() * k.in_features()}};
  if (dk == m.width) return rows;  // every dimension kept: the pair is exact as it is

  const auto scores = qk_unit_scores(q.weight(), q.bias(), k.weight(), k.bias(), gram, m.heads, m.kv_heads, m.rotary);
  const auto dims = select_qk_dims(scores, m.width, dk, m.rotary);
  const int64_t group = m.heads / m.kv_heads;
  std::vector<int64_t> q_rows, k_rows;
  for (int64_t j = 0; j < m.kv_heads; ++j) {
    for (int64_t r = 0; r < dk; ++r) k_rows.push_back(j * m.width + dims[static_cast<size_t>(j * dk + r)]);
  }
  for (int64_t i = 0; i < m.heads; ++i) {
    const int64_t j = i / group;
    for (int64_t r = 0; r < dk; ++r) q_rows.push_back(i * m.width + dims[static_cast<size_t>(j * dk + r)]);
  }
  auto narrow = [](const model::DenseLinear& slot, const std::vector<int64_t>& keep) {
    const auto idx = at::tensor(keep, at::kLong).to(slot.weight().device());
    auto w = slot.weight().index_select(0, idx).contiguous();
    auto b = slot.bias().defined() ? slot.bias().index_select(0, idx).contiguous() : at::Tensor();
    return std::make_shared<model::DenseLinear>(w, b);
  };
  std::map<std::string, model::LinearPtr> slots{{m.query, narrow(q, q_rows)}, {m.key, narrow(k, k_rows)}};
  model::LayerShapes shapes = lm.config().layer_shape(m.layer);
  shapes.qk_head_dim = dk;
  shapes.qk_dims = dims;
  lm.reshape_layer(m.layer, shapes, slots);
  return rows;
}

}  // namespace cur4llm::modules
