#include <cur4llm/eval/perplexity.h>

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/util/progress.h>

#include "fused/fused_ops.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <stdexcept>

namespace cur4llm::eval {
namespace {

// Tokens per chunk of the vocabulary projection. CPU: about 256 MiB of fp32
// logits. CUDA: about 1 GiB of logits in the model dtype, so that each chunk
// is one large matrix product and the cross-entropy reads it once.
int64_t logits_chunk_tokens(int64_t vocab, const at::Tensor& hidden, int64_t requested) {
  if (requested > 0) return requested;
  const int64_t budget = hidden.is_cuda() ? (int64_t{1} << 30) / hidden.element_size() : (int64_t{64} << 20);
  return std::max<int64_t>(1, budget / std::max<int64_t>(vocab, 1));
}

// -log softmax(logits)[label] per row, in float32.
at::Tensor chunk_nll(const at::Tensor& logits, const at::Tensor& labels) {
  if (fused::enabled_for(logits)) return fused::token_nll(logits, labels);  // one read of the logits
  if (logits.is_cuda()) {
    // One fused pass that reads the model-dtype logits and writes float log-probabilities.
    return at::log_softmax(logits, -1, at::kFloat).gather(1, labels.unsqueeze(1)).squeeze(1).neg();
  }
  auto l = logits.to(at::kFloat);
  return at::logsumexp(l, -1) - l.gather(1, labels.unsqueeze(1)).squeeze(1);
}

PerplexityResult finish(std::vector<double> nll, int64_t tokens) {
  PerplexityResult r;
  r.windows = static_cast<int64_t>(nll.size());
  r.tokens = tokens;
  double sum = 0;
  for (double v : nll) sum += v;
  r.mean_nll = nll.empty() ? 0.0 : sum / nll.size();
  r.perplexity = std::exp(r.mean_nll);
  r.window_nll = std::move(nll);
  return r;
}

void check_ids(const at::Tensor& input_ids) {
  if (input_ids.dim() != 2 || input_ids.size(1) < 2) {
    throw std::invalid_argument("sequence_nll: input ids must be [batch, tokens] with at least 2 tokens");
  }
}

}  // namespace

at::Tensor token_nll(const model::LinearSlot& head, const at::Tensor& hidden, const at::Tensor& labels,
                     int64_t chunk_tokens) {
  if (hidden.dim() != 2 || labels.dim() != 1 || labels.size(0) != hidden.size(0)) {
    throw std::invalid_argument("token_nll: hidden states [n, width] and labels [n]");
  }
  const int64_t n = hidden.size(0);
  int64_t chunk = logits_chunk_tokens(head.out_features(), hidden, chunk_tokens);
  if (chunk_tokens <= 0 && n > chunk) {
    // Equal chunks: no small last product (a few hundred tokens runs far below the GPU's rate).
    const int64_t pieces = (n + chunk - 1) / chunk;
    chunk = (n + pieces - 1) / pieces;
  }
  auto lab = labels.to(hidden.device(), at::kLong);
  if (n <= chunk) return chunk_nll(head.forward(hidden), lab);
  auto total = at::empty({n}, hidden.options().dtype(at::kFloat));
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t m = std::min(chunk, n - start);
    total.narrow(0, start, m).copy_(chunk_nll(head.forward(hidden.narrow(0, start, m)), lab.narrow(0, start, m)));
  }
  return total;
}

at::Tensor sequence_nll(const model::CausalLM& lm, const at::Tensor& input_ids, const NllOptions& options) {
  check_ids(input_ids);  // before embed() sees them
  return sequence_nll_from(lm, 0, lm.embed(input_ids), input_ids, options);
}

namespace {

// The NLL per row from the hidden states entering layer `next_layer`.
at::Tensor nll_after(const model::CausalLM& lm, int64_t next_layer, at::Tensor h, const at::Tensor& input_ids,
                     const NllOptions& options) {
  auto ids = input_ids.to(lm.device(), at::kLong);
  for (int64_t i = next_layer; i < lm.num_layers(); ++i) h = lm.layer(i, h);
  const int64_t b = ids.size(0), t = ids.size(1) - 1;
  // The last position predicts nothing: only the first t hidden states meet lm_head.
  auto hidden = lm.final_hidden(h).narrow(1, 0, t).reshape({b * t, -1});
  auto labels = ids.narrow(1, 1, t).reshape({b * t});
  auto nll = token_nll(*lm.logits_slot(), hidden, labels, options.logits_chunk_tokens);
  return nll.view({b, t}).to(at::kDouble).mean(1);
}

}  // namespace

at::Tensor sequence_nll_from(const model::CausalLM& lm, int64_t first_layer, const at::Tensor& hidden,
                             const at::Tensor& input_ids, const NllOptions& options) {
  check_ids(input_ids);
  return nll_after(lm, first_layer, hidden, input_ids, options);
}

std::vector<at::Tensor> sequence_nll_from_batches(const model::CausalLM& lm, int64_t first_layer,
                                                  std::vector<at::Tensor> hidden,
                                                  const std::vector<at::Tensor>& input_ids, const NllOptions& options,
                                                  bool park_on_host) {
  if (hidden.size() != input_ids.size()) {
    throw std::invalid_argument(fmt::format("sequence_nll_from_batches: {} hidden states for {} id batches",
                                            hidden.size(), input_ids.size()));
  }
  for (const auto& ids : input_ids) check_ids(ids);
  lm.layers(first_layer, lm.num_layers(), hidden, park_on_host);
  std::vector<at::Tensor> out;
  for (size_t b = 0; b < hidden.size(); ++b) out.push_back(nll_after(lm, lm.num_layers(), hidden[b], input_ids[b], options));
  return out;
}

at::Tensor sequence_nll_resume(const model::CausalLM& lm, const model::LayerPrefix& prefix, const at::Tensor& input_ids,
                               const NllOptions& options) {
  check_ids(input_ids);
  return nll_after(lm, prefix.layer + 1, lm.layer_resume(prefix), input_ids, options);
}

namespace {

// Each batch's per-row NLL (float64 [rows] on the head's device), in order. A model whose layers
// are all resident runs the batches one after another (sequence_nll). With offloaded layers, the
// batches go in groups whose hidden states take at most options.offload_group_bytes (at least
// one batch), each group through sequence_nll_from_batches with its states parked in host memory,
// so that an offloaded layer is copied to its device once per group instead of once per batch.
std::vector<at::Tensor> batches_nll(const model::CausalLM& lm, const std::vector<at::Tensor>& ids,
                                    const PerplexityOptions& options, util::Progress* progress) {
  const NllOptions nll_options{options.logits_chunk_tokens};
  std::vector<at::Tensor> out;
  if (!lm.offloads_layers()) {
    for (const auto& batch : ids) {
      out.push_back(sequence_nll(lm, batch, nll_options));
      if (progress) progress->advance(batch.size(0));
    }
    return out;
  }
  const int64_t row_bytes = lm.config().hidden_size * static_cast<int64_t>(c10::elementSize(lm.dtype()));
  for (size_t first = 0; first < ids.size();) {
    size_t end = first;
    int64_t bytes = 0, rows = 0;
    while (end < ids.size()) {
      const int64_t b = ids[end].numel() * row_bytes;
      if (end > first && bytes + b > options.offload_group_bytes) break;
      bytes += b;
      rows += ids[end].size(0);
      ++end;
    }
    std::vector<at::Tensor> hidden, group(ids.begin() + static_cast<std::ptrdiff_t>(first),
                                          ids.begin() + static_cast<std::ptrdiff_t>(end));
    for (const auto& batch : group) {
      check_ids(batch);
      hidden.push_back(lm.embed(batch).to(at::kCPU));
    }
    for (auto& nll : sequence_nll_from_batches(lm, 0, std::move(hidden), group, nll_options, /*park_on_host=*/true)) {
      out.push_back(std::move(nll));
    }
    if (progress) progress->advance(rows);
    first = end;
  }
  return out;
}

}  // namespace

PerplexityResult evaluate_perplexity(const model::CausalLM& lm, const std::vector<int64_t>& ids,
                                     const PerplexityOptions& options) {
  if (options.seqlen < 2) throw std::invalid_argument(fmt::format("seqlen must be at least 2, not {}", options.seqlen));
  int64_t windows = static_cast<int64_t>(ids.size()) / options.seqlen;
  if (windows == 0) {
    throw std::invalid_argument(fmt::format("the text has {} tokens, fewer than one window of seqlen {}",
                                            ids.size(), options.seqlen));
  }
  if (options.max_windows >= 0) windows = std::min(windows, options.max_windows);
  auto all = at::from_blob(const_cast<int64_t*>(ids.data()), {windows, options.seqlen}, at::kLong);

  c10::InferenceMode guard;
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) progress = std::make_unique<util::Progress>(options.label, windows, "windows");
  const int64_t batch = std::max<int64_t>(1, options.batch_size);
  std::vector<at::Tensor> batches;
  for (int64_t start = 0; start < windows; start += batch) {
    batches.push_back(all.narrow(0, start, std::min(batch, windows - start)));
  }
  // One host synchronisation, at the end.
  auto nll = at::cat(batches_nll(lm, batches, options, progress.get())).to(at::kCPU).contiguous();
  const double* p = nll.data_ptr<double>();
  return finish(std::vector<double>(p, p + nll.numel()), static_cast<int64_t>(ids.size()));
}

PerplexityResult samples_perplexity(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                    const PerplexityOptions& options) {
  if (samples.empty()) throw std::invalid_argument("samples_perplexity: no samples");
  c10::InferenceMode guard;
  // Batch samples of equal length; keep each sample's NLL in its original slot.
  std::map<size_t, std::vector<size_t>> by_length;
  int64_t tokens = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].size() < 2) throw std::invalid_argument(fmt::format("calibration sample {} has fewer than 2 tokens", i));
    by_length[samples[i].size()].push_back(i);
    tokens += static_cast<int64_t>(samples[i].size());
  }
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) {
    progress = std::make_unique<util::Progress>(options.label, static_cast<int64_t>(samples.size()), "samples");
  }
  const int64_t batch = std::max<int64_t>(1, options.batch_size);
  std::vector<std::vector<size_t>> which;  // each batch's samples
  std::vector<at::Tensor> batches;
  for (const auto& [length, members] : by_length) {
    for (size_t start = 0; start < members.size(); start += batch) {
      const size_t n = std::min<size_t>(batch, members.size() - start);
      auto ids = at::empty({static_cast<int64_t>(n), static_cast<int64_t>(length)}, at::kLong);
      which.emplace_back(members.begin() + start, members.begin() + start + n);
      for (size_t r = 0; r < n; ++r) {
        std::copy(samples[which.back()[r]].begin(), samples[which.back()[r]].end(), ids[r].data_ptr<int64_t>());
      }
      batches.push_back(ids);
    }
  }
  const auto parts = batches_nll(lm, batches, options, progress.get());
  std::vector<double> nll(samples.size());
  for (size_t b = 0; b < parts.size(); ++b) {
    auto cpu = parts[b].to(at::kCPU).contiguous();
    for (size_t r = 0; r < which[b].size(); ++r) nll[which[b][r]] = cpu.data_ptr<double>()[r];
  }
  return finish(std::move(nll), tokens);
}

}  // namespace cur4llm::eval
