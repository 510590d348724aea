#include <cur4llm/modules/mlp_nystrom.h>

#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

namespace cur4llm::modules {
namespace {

at::Tensor as_float64(const at::Tensor& t, const at::Tensor& device_of) {
  return t.to(device_of.device(), at::kDouble).contiguous();
}

void check_gram(const at::Tensor& gram, const std::string& who) {
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != gram.size(1)) {
    throw std::invalid_argument(fmt::format("{}: the Gram matrix must be square [f, f]", who));
  }
}

}  // namespace

ChannelSelection parse_channel_selection(const std::string& name) {
  if (name == "ridge_leverage") return ChannelSelection::RidgeLeverage;
  if (name == "greedy") return ChannelSelection::Greedy;
  throw std::invalid_argument(fmt::format("channel selection \"{}\" is not known (use ridge_leverage or greedy)", name));
}

std::string to_string(ChannelSelection selection) {
  return selection == ChannelSelection::RidgeLeverage ? "ridge_leverage" : "greedy";
}

double ridge_lambda(const at::Tensor& gram, double ridge) {
  check_gram(gram, "ridge_lambda");
  if (!(ridge >= 0)) throw std::invalid_argument(fmt::format("ridge must be >= 0, not {}", ridge));
  return ridge * gram.to(at::kDouble).diagonal().sum().item<double>() / static_cast<double>(gram.size(0));
}

at::Tensor ridge_leverage_scores(const at::Tensor& gram, double lambda) {
  check_gram(gram, "ridge_leverage_scores");
  if (!(lambda > 0)) throw std::invalid_argument(fmt::format("ridge_leverage_scores: lambda must be > 0, not {}", lambda));
  auto g = gram.to(at::kDouble);
  g = (g + g.t()) / 2;
  auto [values, vectors] = at::linalg_eigh(g);
  auto shrink = values.clamp_min(0) / (values.clamp_min(0) + lambda);  // e / (e + lambda)
  return (vectors * vectors * shrink.unsqueeze(0)).sum(1);
}

at::Tensor select_channels(const at::Tensor& gram, const at::Tensor& down_weight, int64_t k,
                           const NystromOptions& options) {
  check_gram(gram, "select_channels");
  const int64_t f = gram.size(0);
  if (!down_weight.defined() || down_weight.dim() != 2 || down_weight.size(1) != f) {
    throw std::invalid_argument(fmt::format("select_channels: the output weight must be [h, {}]", f));
  }
  if (k < 1 || k > f) throw std::invalid_argument(fmt::format("select_channels: k = {} is outside [1, {}]", k, f));
  auto g = as_float64(gram, down_weight);
  g = (g + g.t()) / 2;
  at::Tensor picked;
  if (options.selection == ChannelSelection::RidgeLeverage) {
    double lambda = ridge_lambda(g, options.ridge);
    if (!(lambda > 0)) lambda = 1e-12 * std::max(1e-300, g.diagonal().mean().item<double>());
    auto scores = ridge_leverage_scores(g, lambda);
    picked = std::get<1>(at::topk(scores, k)).cpu();
  } else {
    // Greedy Nyström: with R = G - L L^T the Schur complement of the kept set,
    // adding channel p lowers the refit's output error trace(B R B^T) by
    // ||B R[:, p]||^2 / R[p, p]. B R is kept up to date by rank-one updates.
    const auto b = as_float64(down_weight, down_weight);
    auto schur = g.diagonal().clone();
    auto br = b.mm(g);  // [h, f]
    auto factor = at::zeros({f, k}, g.options());
    const double tol = 1e-12 * std::max(1e-300, schur.max().item<double>());
    auto taken = at::zeros({f}, g.options().dtype(at::kBool));
    std::vector<int64_t> order;
    for (int64_t j = 0; j < k; ++j) {
      auto gain = (br * br).sum(0) / schur.clamp_min(tol);
      gain = gain.masked_fill(at::logical_or(taken, schur <= tol), -1.0);
      int64_t p = gain.argmax().item<int64_t>();
      if (gain[p].item<double>() < 0) {
        // The kept channels already span the rest (rank deficient G): fill with the largest diagonals left.
        auto rest = g.diagonal().masked_fill(taken, -std::numeric_limits<double>::infinity());
        p = rest.argmax().item<int64_t>();
        taken[p] = true;
        order.push_back(p);
        continue;
      }
      auto column = g.select(1, p) - factor.narrow(1, 0, j).mv(factor.select(0, p).narrow(0, 0, j));
      auto l = column / std::sqrt(schur[p].item<double>());
      factor.select(1, j).copy_(l);
      schur = schur - l * l;
      schur[p] = 0.0;
      br = br - at::outer(b.mv(l), l);
      taken[p] = true;
      order.push_back(p);
    }
    picked = at::tensor(order, at::kLong);
  }
  return std::get<0>(at::sort(picked.to(at::kLong)));
}

at::Tensor nystrom_refit(const at::Tensor& down_weight, const at::Tensor& gram, const at::Tensor& channels,
                         double lambda) {
  check_gram(gram, "nystrom_refit");
  if (!down_weight.defined() || down_weight.dim() != 2 || down_weight.size(1) != gram.size(0)) {
    throw std::invalid_argument(fmt::format("nystrom_refit: the output weight must be [h, {}]", gram.size(0)));
  }
  if (!(lambda >= 0)) throw std::invalid_argument(fmt::format("nystrom_refit: lambda must be >= 0, not {}", lambda));
  const auto b = as_float64(down_weight, down_weight);
  auto g = as_float64(gram, down_weight);
  g = (g + g.t()) / 2;
  const auto idx = channels.to(g.device(), at::kLong);
  auto g_cols = g.index_select(1, idx);                          // G[:, S]
  auto a = g_cols.index_select(0, idx);                          // G[S, S]
  a = a + lambda * at::eye(a.size(0), a.options());
  auto rhs = b.mm(g_cols).t();                                   // (B G[:, S])^T, [k, h]
  at::Tensor x;
  try {
    x = at::linalg_solve(a, rhs);
  } catch (const c10::Error&) {
    x = at::linalg_pinv(a, 1e-12, /*hermitian=*/true).mm(rhs);  // singular G[S, S] without a ridge
  }
  return x.t().contiguous();  // [h, k]
}

std::string MlpModule::name() const {
  const std::string& first = consumer;
  return first.substr(0, first.rfind('.'));
}

std::vector<MlpModule> mlp_modules(const model::CausalLM& lm) {
  std::map<int64_t, MlpModule> by_layer;
  for (const auto& info : lm.linears()) {
    if (!info.role) continue;
    using model::LinearRole;
    const LinearRole r = *info.role;
    if (r != LinearRole::Gate && r != LinearRole::Up && r != LinearRole::Fc1 && r != LinearRole::Down &&
        r != LinearRole::Fc2) {
      continue;
    }
    MlpModule& m = by_layer[info.layer];
    m.layer = info.layer;
    if (r == LinearRole::Down || r == LinearRole::Fc2) {
      m.consumer = info.name;
      m.hidden = info.out_features;
      m.width = info.in_features;
    } else {
      m.producers.push_back(info.name);
    }
  }
  std::vector<MlpModule> out;
  for (auto& [layer, m] : by_layer) out.push_back(std::move(m));
  return out;
}

int64_t mlp_weight_params(const MlpModule& m, int64_t k) {
  return static_cast<int64_t>(m.producers.size() + 1) * m.hidden * k;
}

int64_t mlp_dense_params(const MlpModule& m) { return mlp_weight_params(m, m.width); }

int64_t channels_for_ratio(const MlpModule& m, double ratio, int64_t channel_align) {
  if (!(ratio > 0)) throw std::invalid_argument(fmt::format("channels_for_ratio: ratio {} must be > 0", ratio));
  if (channel_align < 1) throw std::invalid_argument("channels_for_ratio: channel_align must be positive");
  int64_t k = static_cast<int64_t>(std::llround(ratio * static_cast<double>(m.width)));
  k = k / channel_align * channel_align;
  k = std::max(k, std::min(channel_align, m.width));
  return std::min(k, m.width);
}

std::vector<search::PlannedLayer> compress_mlp(model::CausalLM& lm, const MlpModule& m, int64_t k,
                                               const at::Tensor& gram, const NystromOptions& options) {
  const std::string who = fmt::format("mlp_nystrom({})", m.name());
  if (k < 1 || k > m.width) throw std::invalid_argument(fmt::format("{}: k = {} is outside [1, {}]", who, k, m.width));
  check_gram(gram, who);
  if (gram.size(0) != m.width) {
    throw std::invalid_argument(fmt::format("{}: the Gram matrix is {} wide, the MLP {}", who, gram.size(0), m.width));
  }
  const auto& down = lm.dense_linear(m.consumer);
  if (down.in_features() != m.width) {
    throw std::invalid_argument(fmt::format("{}: \"{}\" is already narrowed to {} channels", who, m.consumer,
                                            down.in_features()));
  }
  std::vector<search::PlannedLayer> rows;
  const double ratio = static_cast<double>(k) / static_cast<double>(m.width);
  for (const auto& name : m.producers) {
    const auto& slot = lm.dense_linear(name);
    rows.push_back({name, "mlp_nystrom", ratio, k, k * slot.in_features(), slot.out_features() * slot.in_features()});
  }
  rows.push_back({m.consumer, "mlp_nystrom", ratio, k, down.out_features() * k, down.out_features() * m.width});
  if (k == m.width) return rows;  // every channel kept: the module is exact as it is

  const auto channels = select_channels(gram, down.weight(), k, options);
  const auto idx = channels.to(down.weight().device());
  std::map<std::string, model::LinearPtr> slots;
  for (const auto& name : m.producers) {
    const auto& slot = lm.dense_linear(name);
    auto w = slot.weight().index_select(0, idx).contiguous();
    auto b = slot.bias().defined() ? slot.bias().index_select(0, idx).contiguous() : at::Tensor();
    slots[name] = std::make_shared<model::DenseLinear>(w, b);
  }
  const double lambda = ridge_lambda(gram, options.ridge);
  auto w_down = nystrom_refit(down.weight(), gram, channels, lambda).to(down.weight().scalar_type());
  slots[m.consumer] = std::make_shared<model::DenseLinear>(w_down, down.bias());
  model::LayerShapes shapes = lm.config().layer_shape(m.layer);
  shapes.intermediate_size = k;
  lm.reshape_layer(m.layer, shapes, slots);
  return rows;
}

}  // namespace cur4llm::modules
