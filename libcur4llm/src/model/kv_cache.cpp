#include <cur4llm/model/kv_cache.h>

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>
#include <stdexcept>
#include <string>

namespace cur4llm::model {
namespace {
std::string shape(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }
}  // namespace

KVCache::KVCache(int64_t batch, int64_t capacity, c10::Device device)
    : batch_(batch), capacity_(capacity), device_(device) {
  if (batch < 1) throw std::invalid_argument(fmt::format("KVCache: batch must be at least 1, not {}", batch));
  if (capacity < 1) throw std::invalid_argument(fmt::format("KVCache: capacity must be at least 1, not {}", capacity));
  valid_ = at::zeros({batch, capacity}, at::TensorOptions().dtype(at::kBool).device(device));
  positions_ = at::zeros({batch, capacity}, at::TensorOptions().dtype(at::kLong).device(device));
  next_positions_ = at::zeros({batch}, at::TensorOptions().dtype(at::kLong).device(device));
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (const auto* list : {&keys_, &values_}) {
    for (const auto& t : *list) {
      if (t.defined()) total += t.numel() * static_cast<int64_t>(t.element_size());
    }
  }
  return total;
}

void KVCache::truncate(int64_t length) {
  if (step_tokens_ != 0) throw std::logic_error("KVCache::truncate inside a step");
  if (length < 0 || length > length_) {
    throw std::invalid_argument(fmt::format("KVCache::truncate({}): the cache holds {} slots", length, length_));
  }
  if (length == length_) return;
  valid_.narrow(1, length, capacity_ - length).fill_(false);
  // A row's next position is the number of its tokens: positions count the row's tokens only.
  next_positions_.copy_(valid_.narrow(1, 0, std::max<int64_t>(length, 0)).sum(1));
  length_ = length;
}

KVCache KVCache::select_rows(const at::Tensor& rows) const {
  if (step_tokens_ != 0) throw std::logic_error("KVCache::select_rows inside a step");
  if (rows.dim() != 1 || rows.numel() < 1 || rows.scalar_type() != at::kLong) {
    throw std::invalid_argument(fmt::format("KVCache::select_rows: rows must be a non-empty int64 vector, not {} {}",
                                            c10::toString(rows.scalar_type()), shape(rows)));
  }
  const auto index = rows.to(device_);
  const auto lo = index.min().item<int64_t>(), hi = index.max().item<int64_t>();
  if (lo < 0 || hi >= batch_) {
    throw std::invalid_argument(
        fmt::format("KVCache::select_rows: row {} of a cache of {} rows", lo < 0 ? lo : hi, batch_));
  }
  KVCache out(rows.numel(), capacity_, device_);
  out.length_ = length_;
  out.valid_ = valid_.index_select(0, index);
  out.positions_ = positions_.index_select(0, index);
  out.next_positions_ = next_positions_.index_select(0, index);
  if (ends_.defined()) out.ends_ = ends_.index_select(0, index);
  out.keys_.resize(keys_.size());
  out.values_.resize(values_.size());
  for (size_t l = 0; l < keys_.size(); ++l) {
    if (keys_[l].defined()) out.keys_[l] = keys_[l].index_select(0, index);
    if (values_[l].defined()) out.values_[l] = values_[l].index_select(0, index);
  }
  return out;
}

const at::Tensor& KVCache::keys(int64_t layer) const {
  static const at::Tensor none;
  return layer >= 0 && layer < static_cast<int64_t>(keys_.size()) ? keys_[layer] : none;
}

const at::Tensor& KVCache::values(int64_t layer) const {
  static const at::Tensor none;
  return layer >= 0 && layer < static_cast<int64_t>(values_.size()) ? values_[layer] : none;
}

void KVCache::write(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  auto [keys, values] = writable(layer, k, v);
  keys.narrow(2, length_, k.size(2)).copy_(k);
  values.narrow(2, length_, v.size(2)).copy_(v);
}

std::pair<at::Tensor, at::Tensor> KVCache::writable(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  if (layer < 0) throw std::invalid_argument(fmt::format("KVCache::write: layer {}", layer));
  const int64_t t = k.size(2);
  if (k.dim() != 4 || v.dim() != 4 || k.size(0) != batch_ || v.size(0) != batch_ || v.size(2) != t ||
      k.size(1) != v.size(1)) {
    throw std::invalid_argument(fmt::format("KVCache::write: keys {} and values {} do not fit a cache of {} rows",
                                            shape(k), shape(v), batch_));
  }
  if (t != step_tokens_) {
    throw std::logic_error(fmt::format("KVCache::write: {} tokens written in a step of {}", t, step_tokens_));
  }
  if (layer >= static_cast<int64_t>(keys_.size())) {
    keys_.resize(layer + 1);
    values_.resize(layer + 1);
  }
  if (!keys_[layer].defined()) {
    keys_[layer] = at::zeros({batch_, k.size(1), capacity_, k.size(3)}, k.options().device(device_));
    values_[layer] = at::zeros({batch_, v.size(1), capacity_, v.size(3)}, v.options().device(device_));
  } else if (keys_[layer].size(1) != k.size(1) || keys_[layer].size(3) != k.size(3) ||
             values_[layer].size(3) != v.size(3) || keys_[layer].scalar_type() != k.scalar_type()) {
    throw std::invalid_argument(fmt::format("KVCache::write: layer {} changed shape or dtype ({} into {})", layer,
                                            shape(k), shape(keys_[layer])));
  }
  return {keys_[layer], values_[layer]};
}

void KVCache::begin_step(const at::Tensor& positions, const at::Tensor& mask, const at::Tensor& ends) {
  if (step_tokens_ != 0) throw std::logic_error("KVCache::begin_step: the previous step was not ended");
  const int64_t t = positions.size(1);
  if (positions.size(0) != batch_ || mask.sizes() != positions.sizes()) {
    throw std::invalid_argument(fmt::format("KVCache: a step of {} tokens for {} rows does not fit a cache of {} rows",
                                            t, positions.size(0), batch_));
  }
  if (t < 1 || length_ + t > capacity_) {
    throw std::invalid_argument(fmt::format("KVCache: {} more tokens do not fit: {} of {} slots are used", t, length_,
                                            capacity_));
  }
  if (ends.defined() && ends.sizes() != positions.sizes()) {
    throw std::invalid_argument(fmt::format("KVCache: ends {} for a step of positions {}", shape(ends),
                                            shape(positions)));
  }
  constexpr int64_t never = std::numeric_limits<int64_t>::max();  // seen by every later token
  if (ends.defined() && !ends_.defined()) {
    ends_ = at::full({batch_, capacity_}, never, at::TensorOptions().dtype(at::kLong).device(device_));
  }
  if (ends_.defined()) {
    auto slots = ends_.narrow(1, length_, t);
    if (ends.defined()) {
      slots.copy_(ends.to(device_, at::kLong) + length_);
    } else {
      slots.fill_(never);
    }
  }
  valid_.narrow(1, length_, t).copy_(mask);
  positions_.narrow(1, length_, t).copy_(positions);
  step_counts_ = mask.sum(1);
  step_tokens_ = t;
}

void KVCache::cancel_step() {
  step_tokens_ = 0;
  step_counts_ = at::Tensor();
  valid_.narrow(1, length_, capacity_ - length_).fill_(false);
}

void KVCache::end_step() {
  if (step_tokens_ == 0) throw std::logic_error("KVCache::end_step without a step");
  next_positions_.add_(step_counts_);
  length_ += step_tokens_;
  step_tokens_ = 0;
  step_counts_ = at::Tensor();
}

}  // namespace cur4llm::model
