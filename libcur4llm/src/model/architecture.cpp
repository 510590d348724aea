#include "architecture.h"

#include "fused/fused_ops.h"

#include <torch/version.h>

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <utility>
#include <stdexcept>
#include <vector>

namespace cur4llm::model {

const at::Tensor& Architecture::tensor(const CausalLM& lm, const std::string& name) {
  auto it = lm.others_.find(name);
  if (it == lm.others_.end()) throw std::logic_error("internal: tensor " + name + " was not loaded");
  return it->second;
}

const at::Tensor* Architecture::optional_tensor(const CausalLM& lm, const std::string& name) {
  auto it = lm.others_.find(name);
  return it == lm.others_.end() ? nullptr : &it->second;
}

const LinearSlot& Architecture::slot(const CausalLM& lm, const std::string& name) { return lm.linear(name); }

detail::SlotGroup Architecture::group(const CausalLM& lm,
                                      std::initializer_list<std::reference_wrapper<const std::string>> names) {
  detail::SlotGroup g;
  for (const std::string& name : names) g.slots.push_back(&lm.linear(name));
  if (names.size() > 0) g.joint = lm.joint_slot(names.begin()->get());
  return g;
}

at::Tensor Architecture::embed_step(const CausalLM& lm, const at::Tensor& input_ids, const detail::Step&) const {
  return embed(lm, input_ids);
}

at::Tensor Architecture::layer_step(const CausalLM& lm, int64_t, at::Tensor, detail::Step&) const {
  throw std::invalid_argument(
      fmt::format("generation with a KV cache is not supported for model_type \"{}\" yet", lm.config().model_type));
}

std::unique_ptr<Architecture> make_architecture(const ModelConfig& config) {
  switch (config.family) {
    case Family::Opt:
      return make_opt(config);
    case Family::Llama:
      return make_llama(config);
    case Family::Gemma2:
      return make_gemma2(config);
  }
  throw std::logic_error("internal: unknown model family");
}

void add_linear_tensors(std::vector<ExpectedTensor>& out, const std::string& module, int64_t out_f, int64_t in_f,
                        bool bias, int64_t layer, LinearRole role) {
  out.push_back({module + ".weight", {out_f, in_f}, true, false, layer, role});
  if (bias) out.push_back({module + ".bias", {out_f}, false, true, layer, role});
}

std::vector<int> GatedLayerValues::prefix_values(LinearRole role) {
  switch (role) {
    case LinearRole::Q: return {kH, kX, kK, kV};
    case LinearRole::K: return {kH, kX, kQ, kV};
    case LinearRole::V: return {kH, kX, kQ, kK};
    case LinearRole::O: return {kH, kAttn};
    case LinearRole::Gate: return {kH2, kX2, kUp};
    case LinearRole::Up: return {kH2, kX2, kGate};
    case LinearRole::Down: return {kH2, kGated};
    default: return {kH};
  }
}

void GatedLayerValues::release_inputs(std::vector<at::Tensor>& v, int index) {
  if (index == kAttn) v[kX] = v[kQ] = v[kK] = v[kV] = at::Tensor();
  if (index == kH2) v[kH] = v[kAttn] = at::Tensor();
  if (index == kGated) v[kGate] = v[kUp] = v[kX2] = at::Tensor();
}

namespace detail {

at::Tensor inverse_frequencies(const ModelConfig& c) {
  // Computed in float32 exactly as transformers does, so that logits agree to round-off.
  const int64_t dim = c.head_dim;
  auto exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  auto inv_freq = 1.0 / at::pow(c.rope_theta, exponents);
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "linear") {
    inv_freq = inv_freq / s.factor;
  } else if (s.type == "llama3") {
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / s.low_freq_factor;
    const double high_freq_wavelen = old_len / s.high_freq_factor;
    auto wavelen = 2 * M_PI / inv_freq;
    auto scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
    auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    auto medium = at::logical_not(wavelen < high_freq_wavelen).logical_and(at::logical_not(wavelen > low_freq_wavelen));
    inv_freq = at::where(medium, smoothed, scaled);
  }
  return inv_freq;
}

Rotary rotary_tables(const ModelConfig& config, int64_t seq_len, c10::Device device) {
  auto inv_freq = inverse_frequencies(config).to(device);
  auto positions = at::arange(seq_len, at::TensorOptions().dtype(at::kFloat).device(device));
  auto freqs = at::outer(positions, inv_freq);  // [T, head_dim/2]
  auto emb = at::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

namespace {

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

// [B, kv, T, d] -> [B, kv*groups, T, d], each KV head serving `groups` query heads.
at::Tensor repeat_kv(const at::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  auto sizes = x.sizes();
  return x.unsqueeze(2).expand({sizes[0], sizes[1], groups, sizes[2], sizes[3]}).reshape(
      {sizes[0], sizes[1] * groups, sizes[2], sizes[3]});
}

#if TORCH_VERSION_MAJOR >= 2
// softmax(q k^T * scale + mask) v through ATen's fused kernels (mask undefined: none), the
// causal triangle when `causal`. LibTorch 2.0 takes no scale: there it goes into q (the kernels
// scale by 1/sqrt(dk)).
at::Tensor fused_attention(at::Tensor q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, bool causal,
                           double scale) {
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
  if (mask.defined()) return at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale);
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal, scale);
#else
  const double kernel_scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  if (scale != kernel_scale) q = q * (scale / kernel_scale);
  if (mask.defined()) return at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
#endif
}

// Causal attention over whole rows (q, k, v [B, heads, T, d], no padding): cuDNN's kernel where
// it applies (Hopper), else ATen's choice.
at::Tensor causal_triangle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  auto out = fused::causal_attention_cudnn(q, k, v, scale);
  return out.defined() ? out : fused_attention(q, k, v, at::Tensor(), true, scale);
}
#endif

// true where query i may attend to key j.
at::Tensor allowed_mask(int64_t t, int64_t window, c10::Device device) {
  auto i = at::arange(t, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(1);
  auto j = at::arange(t, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(0);
  auto allowed = j <= i;
  if (window > 0) allowed = allowed.logical_and(i - j < window);
  return allowed;
}

}  // namespace

namespace {

// The eager formulation of transformers (softmax in float32) on [B, heads, T, d]
// q, k, v: scores * scale, soft-capped (cap * tanh(scores / cap), cap > 0),
// masked, over groups of (batch x head) rows so that the T x T scores of a group
// stay near 8 MiB: large buffers would each be a fresh mmap on the CPU.
at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window,
                           double scale, double softcap) {
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3), dv = v.size(3);
  const auto blocked = at::logical_not(allowed_mask(t, window, q.device()));
  auto q3 = q.reshape({b * heads, t, d});
  auto k3 = k.reshape({b * heads, t, d});
  auto v3 = v.reshape({b * heads, t, dv});
  const int64_t rows = b * heads;
  const int64_t group = std::max<int64_t>(1, (int64_t{2} << 20) / std::max<int64_t>(1, t * t));
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < rows; start += group) {
    const int64_t n = std::min(group, rows - start);
    auto scores = at::bmm(q3.narrow(0, start, n), k3.narrow(0, start, n).transpose(1, 2)) * scale;
    if (softcap > 0) scores = at::tanh(scores / softcap) * softcap;
    scores.masked_fill_(blocked, -std::numeric_limits<double>::infinity());
    auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    parts.push_back(at::bmm(probs, v3.narrow(0, start, n)));
  }
  return (parts.size() == 1 ? parts.front() : at::cat(parts, 0)).view({b, heads, t, dv});
}

}  // namespace

Rotary narrowed_rotary(const Rotary& full, const std::vector<int64_t>& qk_dims, int64_t num_kv_heads) {
  if (qk_dims.empty()) return full;
  const int64_t dk = static_cast<int64_t>(qk_dims.size()) / num_kv_heads;
  auto idx = at::tensor(qk_dims, at::kLong).to(full.cos.device());
  auto pick = [&](const at::Tensor& table) {  // [T, d] -> [kv, T, dk]
    return table.index_select(1, idx).view({table.size(0), num_kv_heads, dk}).permute({1, 0, 2}).contiguous();
  };
  return {pick(full.cos), pick(full.sin)};
}

at::Tensor causal_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, const Rotary* rotary,
                            int64_t window, int64_t v_head_dim, int64_t qk_head_dim, double scale, double softcap) {
  const int64_t b = q_in.size(0), t = q_in.size(1);
  const int64_t dv = v_head_dim > 0 ? v_head_dim : head_dim;
  const int64_t dk = qk_head_dim > 0 ? qk_head_dim : head_dim;
  const int64_t groups = num_heads / num_kv_heads;
  auto q = q_in.reshape({b, t, num_heads, dk});
  auto k = k_in.reshape({b, t, num_kv_heads, dk});
  auto v = v_in.reshape({b, t, num_kv_heads, dv}).transpose(1, 2);
  const bool per_head_rotary = rotary && rotary->cos.dim() == 3;  // narrowed: [kv, T, dk] tables
  if (rotary && !per_head_rotary && fused::enabled_for(q) && fused::enabled_for(k)) {
    // One pass over q and k instead of ATen's six; the kernels keep the [B, T, heads, dim] layout.
    q = fused::rotary(q, rotary->cos, rotary->sin).transpose(1, 2);
    k = fused::rotary(k, rotary->cos, rotary->sin).transpose(1, 2);
  } else {
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    if (rotary) {
      auto cos = rotary->cos.to(q.scalar_type());
      auto sin = rotary->sin.to(q.scalar_type());
      if (per_head_rotary) {
        // Query head i uses the kept dimensions (and so the frequencies) of its KV head i / groups.
        q = apply_rotary(q, cos.repeat_interleave(groups, 0), sin.repeat_interleave(groups, 0));
      } else {
        q = apply_rotary(q, cos, sin);
      }
      k = apply_rotary(k, cos, sin);
    }
  }
  k = repeat_kv(k, groups);
  v = repeat_kv(v, groups);
  const bool windowed = window > 0 && window < t;
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const double s = scale > 0 ? scale : default_scale;

  at::Tensor out;
#if TORCH_VERSION_MAJOR >= 2
  if (softcap > 0) {
    out = eager_attention(q, k, v, windowed ? window : 0, s, softcap);  // no fused kernel soft-caps
  } else {
    // The scale (Gemma-2's, or 1/sqrt(head_dim) for narrowed queries and keys) goes to the kernel.
    out = windowed ? fused_attention(q, k, v, allowed_mask(t, window, q.device()), false, s)
                   : causal_triangle(q, k, v, s);
  }
#else
  out = eager_attention(q, k, v, windowed ? window : 0, s, softcap);
#endif
  return out.transpose(1, 2).reshape({b, t, num_heads * dv});
}

Rotary RotaryCache::get(const ModelConfig& config, int64_t seq_len, c10::Device device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!rotary_.cos.defined() || length_ != seq_len || rotary_.cos.device() != device) {
    rotary_ = rotary_tables(config, seq_len, device);
    length_ = seq_len;
  }
  return rotary_;
}

Step::Step(KVCache& cache, at::Tensor positions, bool whole_rows, bool keep_keys)
    : cache_(cache), positions_(std::move(positions)), causal_prefill_(whole_rows && cache_.length() == 0),
      keep_keys_(keep_keys) {
  if (!keep_keys_ && cache_.length() != 0) {
    throw std::logic_error("internal: a step that keeps no keys needs an empty cache");
  }
}

const at::Tensor& Step::allowed(int64_t window) {
  for (const auto& [w, mask] : masks_) {
    if (w == window) return mask;
  }
  const int64_t t = tokens(), length = cache_.length(), s = length + t;
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(positions_.device());
  auto key_slot = at::arange(s, long_opts).view({1, 1, s});
  auto query_slot = at::arange(length, s, long_opts).view({1, t, 1});
  auto allowed = (key_slot <= query_slot).logical_and(cache_.valid().narrow(1, 0, s).unsqueeze(1));  // [B, T, S]
  if (window > 0) {
    auto distance = positions_.unsqueeze(2) - cache_.positions().narrow(1, 0, s).unsqueeze(1);
    allowed = allowed.logical_and(distance < window);
  }
  if (cache_.ends().defined()) {
    // A token sees an earlier one only inside that one's subtree.
    allowed = allowed.logical_and(cache_.ends().narrow(1, 0, s).unsqueeze(1) > query_slot);  // [B, 1, S] vs [1, T, 1]
  }
  allowed = allowed.logical_or(key_slot == query_slot);
  masks_.emplace_back(window, allowed.unsqueeze(1));
  return masks_.back().second;
}

const at::Tensor& Step::additive_mask(int64_t window, int64_t groups, at::ScalarType dtype) {
  const auto key = std::make_tuple(window, groups, dtype);
  for (const auto& [k, mask] : additive_) {
    if (k == key) return mask;
  }
  at::Tensor keep = allowed(window);
  if (groups > 1) keep = keep.repeat({1, 1, groups, 1});
  // Rows start 16-element aligned, as the fused attention kernels read them.
  const int64_t s = keep.size(3), aligned = (s + 15) / 16 * 16;
  auto mask = at::zeros({keep.size(0), 1, keep.size(2), aligned}, keep.options().dtype(dtype)).narrow(3, 0, s);
  mask.masked_fill_(at::logical_not(keep), -std::numeric_limits<double>::infinity());
  additive_.emplace_back(key, std::move(mask));
  return additive_.back().second;
}

const Rotary& Step::rotary_at(const Rotary& table) {
  const void* key = table.cos.data_ptr();
  for (const auto& [k, rows] : rotary_rows_) {
    if (k == key) return rows;
  }
  if (table.cos.size(0) < rotary_length()) {
    throw std::logic_error("internal: a rotary table shorter than the cache's capacity");
  }
  const int64_t b = positions_.size(0), t = tokens(), d = table.cos.size(1);
  auto flat = positions_.reshape({-1});
  Rotary rows{table.cos.index_select(0, flat).view({b, t, 1, d}), table.sin.index_select(0, flat).view({b, t, 1, d})};
  rotary_rows_.emplace_back(key, std::move(rows));
  return rotary_rows_.back().second;
}

at::Tensor cached_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, const Rotary* rotary,
                            int64_t window, int64_t v_head_dim, Step& step, int64_t layer, int64_t qk_head_dim,
                            double scale, double softcap) {
  const int64_t b = q_in.size(0), t = q_in.size(1);
  const int64_t dv = v_head_dim > 0 ? v_head_dim : head_dim;
  const int64_t dk = qk_head_dim > 0 ? qk_head_dim : head_dim;
  const int64_t groups = num_heads / num_kv_heads;
  auto q = q_in.reshape({b, t, num_heads, dk});
  auto k = k_in.reshape({b, t, num_kv_heads, dk});
  const auto v = v_in.reshape({b, t, num_kv_heads, dv});
  KVCache& cache = step.cache();
  const bool keep = step.keeps_keys();
  bool written = false;  // k (rotated) and v in the cache
  const bool fused_rotary =
      rotary && rotary->cos.size(-2) >= step.rotary_length() && fused::enabled_for(q) && fused::enabled_for(k);
  if (fused_rotary && t <= 8 && keep) {  // rotary_step takes up to 8 tokens a row
    // A decoding step: q rotated, k rotated and v into the cache's slots, in one launch.
    const auto [keys, values] = cache.writable(layer, k.transpose(1, 2), v.transpose(1, 2));
    auto rotated = fused::rotary_step(q, k, v, rotary->cos, rotary->sin, step.positions(), keys, values,
                                      cache.length());
    if (rotated.defined()) q = std::move(rotated), written = true;
  }
  if (!written) {
    if (fused_rotary) {
      // One kernel each, reading the table rows at the step's positions (narrowed heads: their KV head's table).
      q = fused::rotary_at(q, rotary->cos, rotary->sin, step.positions());
      k = fused::rotary_at(k, rotary->cos, rotary->sin, step.positions());
    } else if (rotary && rotary->cos.dim() == 3) {
      // Narrowed heads: per-KV-head tables [kv, N, dk] at the step's positions -> [B, T, kv, dk].
      const auto flat = step.positions().reshape({-1});
      auto pick = [&](const at::Tensor& table) {
        return table.index_select(1, flat).view({table.size(0), b, t, dk}).permute({1, 2, 0, 3}).to(q.scalar_type());
      };
      const auto cos = pick(rotary->cos), sin = pick(rotary->sin);
      q = apply_rotary(q, cos.repeat_interleave(groups, 2), sin.repeat_interleave(groups, 2));
      k = apply_rotary(k, cos, sin);
    } else if (rotary) {
      const Rotary& rows = step.rotary_at(*rotary);  // [B, T, 1, d], broadcast over the heads
      auto cos = rows.cos.to(q.scalar_type());
      auto sin = rows.sin.to(q.scalar_type());
      q = apply_rotary(q, cos, sin);
      k = apply_rotary(k, cos, sin);
    }
  }
  // Scores are scaled by `scale` (Gemma-2), else 1/sqrt(head_dim), also for narrowed queries and keys.
  const double s_scale = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  if (!written && keep) cache.write(layer, k.transpose(1, 2), v.transpose(1, 2));
  const int64_t s = cache.length() + t;
  // [B, kv, S, d] and [B, kv, S, dv]: the cache's first S slots, or the step's own (an empty cache).
  auto keys = keep ? cache.keys(layer).narrow(2, 0, s) : k.transpose(1, 2);
  auto values = keep ? cache.values(layer).narrow(2, 0, s) : v.transpose(1, 2);
  // The query heads of one KV head side by side: [B, kv, groups*T, d], rows (group, token); no copy of the cache.
  auto q4 = q.transpose(1, 2).reshape({b, num_kv_heads, groups * t, dk});
  at::Tensor out;
  bool eager = softcap > 0;  // no fused kernel soft-caps
#if TORCH_VERSION_MAJOR < 2
  eager = true;
#endif
  const bool triangle = step.causal_prefill() && (window <= 0 || window >= t);
  if (!eager && triangle && t > 1) {
#if TORCH_VERSION_MAJOR >= 2
    // A prompt's first pass: the causal triangle over the new tokens, no mask to read. The
    // step's keys (rotated) and values, as the cache now holds them in its first T slots.
    const auto qh = q.transpose(1, 2);  // [B, heads, T, dk]
    const auto kh = repeat_kv(keys, groups);
    const auto vh = repeat_kv(values, groups);
    return causal_triangle(qh, kh, vh, s_scale).transpose(1, 2).reshape({b, t, num_heads * dv});
#endif
  }
  if (eager) {
    auto allowed = step.allowed(window);  // [B, 1, T, S]
    if (groups > 1) allowed = allowed.repeat({1, 1, groups, 1});
    // As causal_attention's eager formulation: scaled, soft-capped, masked, softmax in float32.
    auto scores = at::matmul(q4, keys.transpose(2, 3)) * s_scale;
    if (softcap > 0) scores = at::tanh(scores / softcap) * softcap;
    scores.masked_fill_(at::logical_not(allowed), -std::numeric_limits<double>::infinity());
    out = at::matmul(at::softmax(scores, -1, at::kFloat).to(q.scalar_type()), values);
  } else {
#if TORCH_VERSION_MAJOR >= 2
    const auto& mask = step.additive_mask(window, groups, q4.scalar_type());
    if (keep) out = fused::decode_attention(q4.contiguous(), cache.keys(layer), cache.values(layer), s, mask, s_scale);
    if (!out.defined()) {
      // The kernel scales by 1/sqrt(dk): another scale goes into q.
      const double kernel_scale = 1.0 / std::sqrt(static_cast<double>(dk));
      if (s_scale != kernel_scale) q4 = q4 * (s_scale / kernel_scale);
      out = fused::masked_attention(q4, keys, values, mask);
      if (!out.defined()) out = at::scaled_dot_product_attention(q4, keys, values, mask, 0.0, false);
    }
#endif
  }
  // [B, kv, groups*T, dv] -> [B, heads, T, dv] -> [B, T, heads*dv]
  return out.reshape({b, num_heads, t, dv}).transpose(1, 2).reshape({b, t, num_heads * dv});
}

at::Tensor linear_activation(const LinearSlot& slot, const std::string& name, const at::Tensor& x) {
#if TORCH_VERSION_MAJOR >= 2
  // ReLU in the matrix product's epilogue (cuBLASLt) instead of a second pass
  // over the [tokens, ffn] output; the result is the same, as ReLU commutes
  // with rounding to the output dtype.
  const auto* dense = dynamic_cast<const DenseLinear*>(&slot);
  if (name == "relu" && dense && dense->bias().defined() && x.is_cuda() && !x.requires_grad() &&
      !dense->weight().requires_grad() && x.size(-1) == dense->weight().size(1)) {
    auto sizes = x.sizes().vec();
    auto x2 = x.reshape({-1, x.size(-1)});
    auto y = at::_addmm_activation(dense->bias(), x2, dense->weight().t(), 1, 1, /*use_gelu=*/false);
    sizes.back() = y.size(1);
    return y.view(sizes);
  }
#endif
  return activation(name, slot.forward(x));
}

at::Tensor residual_linear(at::Tensor residual, const LinearSlot& slot, const at::Tensor& x) {
  // A residual that nothing else holds may take the product in place (LinearSlot::forward_add).
  return slot.forward_add(std::move(residual), x);
}

bool group_fresh(const std::vector<at::Tensor>& values, int first, const SlotGroup& group) {
  if (group.joint == nullptr) return false;
  for (size_t j = 0; j < group.slots.size(); ++j) {
    if (values[first + j].defined()) return false;
  }
  return true;
}

at::Tensor split_group(std::vector<at::Tensor>& values, int first, int index, const SlotGroup& group,
                       const at::Tensor& joint_out, const std::function<at::Tensor(int, at::Tensor)>& finish) {
  auto done = [&](int value, at::Tensor out) { return finish ? finish(value, std::move(out)) : out; };
  std::vector<int64_t> sizes;
  for (const auto* s : group.slots) sizes.push_back(s->out_features());
  auto parts = joint_out.split_with_sizes(sizes, -1);
  for (int j = 0; j < static_cast<int>(group.slots.size()); ++j) {
    if (first + j != index) values[first + j] = done(first + j, std::move(parts[j]));
  }
  return done(index, std::move(parts[index - first]));
}

at::Tensor grouped_value(std::vector<at::Tensor>& values, int first, int index, const SlotGroup& group,
                         const at::Tensor& x, const std::function<at::Tensor(int, at::Tensor)>& finish) {
  if (group_fresh(values, first, group)) {
    return split_group(values, first, index, group, group.joint->forward(x), finish);
  }
  const auto out = group.slots.at(index - first)->forward(x);
  return finish ? finish(index, out) : out;
}

at::Tensor activation(const std::string& name, const at::Tensor& x) {
  if (name == "relu") return at::relu(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return at::gelu(x, "tanh");
  throw std::invalid_argument(fmt::format("activation \"{}\" is not supported", name));
}

}  // namespace detail
}  // namespace cur4llm::model
