#pragma once
/// Perplexity, measured as the reference pipeline measures it.
///
/// Evaluation text: the ids of the whole text are cut into floor(N/seqlen)
/// windows; each window's loss is the mean cross-entropy of its shifted labels
/// (seqlen-1 predictions); perplexity = exp(mean of the window losses).
/// Calibration samples (possibly of different lengths) are scored the same way.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace cur4llm::model {
class CausalLM;
class LinearSlot;
struct LayerPrefix;
}

namespace cur4llm::eval {

/// How windows are batched and reported.
struct PerplexityOptions {
  int64_t seqlen = 2048;        ///< window length in tokens (evaluate_perplexity only)
  int64_t batch_size = 1;       ///< windows per forward pass
  int64_t max_windows = -1;     ///< evaluate only the first windows (-1: all)
  bool show_progress = false;   ///< a progress line on stderr
  const char* label = "ppl";    ///< the progress line's label
  int64_t logits_chunk_tokens = 0;  ///< tokens per vocabulary-projection chunk (0: by memory, see NllOptions)
  int64_t offload_group_bytes = int64_t{1} << 30;  ///< with offloaded layers: host memory for the hidden states of batches run together
};

/// What an evaluation measured.
struct PerplexityResult {
  double perplexity = 0;        ///< exp(mean_nll)
  double mean_nll = 0;          ///< mean over windows of each window's mean token NLL
  int64_t windows = 0;          ///< windows evaluated
  int64_t tokens = 0;           ///< tokens in the text (before cutting)
  std::vector<double> window_nll;  ///< each window's mean NLL
};

/// Perplexity of `ids` (a whole tokenized text) cut into windows.
///
/// A model with layers offloaded to host memory (LoadOptions::max_memory) runs
/// the batches in groups (PerplexityOptions::offload_group_bytes): the batches
/// of a group pass each offloaded layer together, their hidden states waiting
/// in host memory, so that the layer is copied to its device once per group
/// rather than once per batch. Each batch is computed as it is alone.
PerplexityResult evaluate_perplexity(const model::CausalLM& lm, const std::vector<int64_t>& ids,
                                     const PerplexityOptions& options = {});

/// Perplexity over separate samples (calibration): exp(mean over samples of the
/// sample's mean token NLL). Samples of equal length are batched; offloaded
/// layers are run as by evaluate_perplexity.
PerplexityResult samples_perplexity(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                    const PerplexityOptions& options = {});

}  // namespace cur4llm::eval

namespace cur4llm::eval {

/// How the per-token cross-entropy is computed.
struct NllOptions {
  /// Tokens per chunk of the vocabulary projection; 0: about 256 MiB of fp32
  /// logits on the CPU, 1 GiB of model-dtype logits on CUDA.
  int64_t logits_chunk_tokens = 0;
};

/// Mean next-token NLL of each row of `input_ids` [B, T] (float64 [B], on the
/// model's device; no host synchronisation), with the vocabulary projection
/// done in token chunks so that no full fp32 [B, T, vocab] logits tensor is
/// ever made.
at::Tensor sequence_nll(const model::CausalLM& lm, const at::Tensor& input_ids, const NllOptions& options = {});

/// As sequence_nll, starting from the hidden states entering decoder layer
/// `first_layer` (num_layers(): only the final norm and lm_head run).
at::Tensor sequence_nll_from(const model::CausalLM& lm, int64_t first_layer, const at::Tensor& hidden,
                             const at::Tensor& input_ids, const NllOptions& options = {});

/// sequence_nll_from for several batches (hidden[b] entering `first_layer`, input_ids[b]), through
/// CausalLM::layers (a layer offloaded to host memory is copied in once for all of them; with
/// `park_on_host` the states wait in host memory between layers). Returns each batch's per-row
/// NLL, as sequence_nll_from does.
std::vector<at::Tensor> sequence_nll_from_batches(const model::CausalLM& lm, int64_t first_layer,
                                                  std::vector<at::Tensor> hidden,
                                                  const std::vector<at::Tensor>& input_ids,
                                                  const NllOptions& options = {}, bool park_on_host = false);

/// As sequence_nll, finishing the layer of `prefix` (CausalLM::layer_prefix)
/// with the slots as they are now, then the layers after it.
at::Tensor sequence_nll_resume(const model::CausalLM& lm, const model::LayerPrefix& prefix,
                               const at::Tensor& input_ids, const NllOptions& options = {});

/// -log softmax(head(hidden))[label] per row (float32 [n]) for hidden states
/// [n, width] and labels [n], `chunk_tokens` rows at a time (0: by memory).
/// On CUDA the cross-entropy reads each chunk's logits once (a fused kernel
/// where built, else log_softmax in float32).
at::Tensor token_nll(const model::LinearSlot& head, const at::Tensor& hidden, const at::Tensor& labels,
                     int64_t chunk_tokens = 0);

}  // namespace cur4llm::eval
