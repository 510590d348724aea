#pragma once
/// The keys and values of past tokens, so that a causal LM computes only the
/// new tokens of a sequence (text generation: a prefill, then one token at a time).
///
///   model::KVCache cache(batch, prompt_len + max_new_tokens, lm->device());
///   auto logits = lm->forward_cached(prompt_ids, cache, attention_mask);  // [B, 1, vocab]
///   logits = lm->forward_cached(next_ids, cache);                         // [B, 1] -> [B, 1, vocab]
///
/// The cache holds `capacity` slots per row. Each forward_cached() call writes
/// its T new tokens into the next T slots of every layer. A slot is either a
/// token of the row (valid, with its position) or padding (left padding of a
/// batch of prompts of different lengths); padding slots are never attended
/// to. Every layer's keys and values are allocated at their first write, full
/// size, in the shape the layer gives them (per-layer head counts and widths,
/// e.g. values narrowed by a module method), so nothing grows afterwards.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace cur4llm::model {

/// Keys and values of the tokens a causal LM has seen, per decoder layer.
class KVCache {
 public:
  /// An empty cache for `batch` rows of up to `capacity` tokens (padding included) on `device`.
  KVCache(int64_t batch, int64_t capacity, c10::Device device);

  /// Rows.
  int64_t batch() const { return batch_; }
  /// Slots per row.
  int64_t capacity() const { return capacity_; }
  /// Slots filled (the same for every row; padding counts).
  int64_t length() const { return length_; }
  /// The device of every tensor of the cache.
  c10::Device device() const { return device_; }
  /// Bytes the keys and values allocated so far take.
  int64_t bytes() const;

  /// Forgets the slots from `length` on (0: empty), so that they are written again.
  void truncate(int64_t length);
  /// A new cache whose row i is a copy of row `rows[i]` of this one (`rows`: int64 [n], values in
  /// [0, batch())), same capacity and length: e.g. a prompt's keys computed once and given to
  /// several continuations. Not inside a step.
  KVCache select_rows(const at::Tensor& rows) const;

  // The parts below are what the families' attention (and CausalLM) use.

  /// Layer `layer`'s keys [batch, kv_heads, capacity, head_dim]; undefined before its first write.
  const at::Tensor& keys(int64_t layer) const;
  /// Layer `layer`'s values [batch, kv_heads, capacity, v_head_dim]; undefined before its first write.
  const at::Tensor& values(int64_t layer) const;
  /// Stores k [batch, kv_heads, T, head_dim] and v [batch, kv_heads, T, v_head_dim] of layer `layer`
  /// in slots [length(), length() + T), allocating the layer's tensors at its first write.
  void write(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  /// What write(layer, k, v) checks and allocates, without the copy: layer `layer`'s keys and
  /// values, whose slots [length(), length() + T) the caller fills itself (a fused kernel).
  std::pair<at::Tensor, at::Tensor> writable(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  /// [batch, capacity] bool: true where a slot holds a token of the row (false: padding or unwritten).
  const at::Tensor& valid() const { return valid_; }
  /// [batch, capacity] int64: the position (index in its row, padding not counted) of each slot's token.
  const at::Tensor& positions() const { return positions_; }
  /// [batch] int64: the position the next token of each row will have.
  const at::Tensor& next_positions() const { return next_positions_; }

  /// [batch, capacity] int64: for each slot, the first slot whose token no longer sees it. A token
  /// at slot i sees an earlier slot j only where i < ends()[j]: tokens laid out as a tree, depth
  /// first, each slot's end the end of its subtree. Undefined unless a step gave ends (then every
  /// token sees every earlier one of its row).
  const at::Tensor& ends() const { return ends_; }

  /// Starts a step of T tokens: slots [length(), length() + T) hold tokens at `positions` [batch, T]
  /// (int64), of the row where `mask` [batch, T] (bool) is true, padding elsewhere, with the ends
  /// `ends` [batch, T] (int64, see ends(), counted from the step's first slot; undefined: seen by
  /// every later token). Called by CausalLM::forward_cached before the layers write;
  /// std::invalid_argument if T slots are not free.
  void begin_step(const at::Tensor& positions, const at::Tensor& mask, const at::Tensor& ends = {});
  /// Ends the step begun last: length() and next_positions() move past its tokens.
  void end_step();
  /// Drops the step begun last (after an error): the cache is as before it.
  void cancel_step();
  /// Tokens of the step begun and not yet ended (0 outside a step).
  int64_t step_tokens() const { return step_tokens_; }

 private:
  int64_t batch_;
  int64_t capacity_;
  c10::Device device_;
  int64_t length_ = 0;
  int64_t step_tokens_ = 0;
  at::Tensor step_counts_;  // [batch]: valid tokens of the step, per row
  std::vector<at::Tensor> keys_, values_;
  at::Tensor valid_, positions_, next_positions_;
  at::Tensor ends_;  // undefined until a step has ends
};

}  // namespace cur4llm::model
