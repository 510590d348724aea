#pragma once
/// How much each Linear layer suffers from compression: the reference's
/// sensitivity table, one calibration perplexity per (layer, candidate ratio)
/// with only that layer compressed ("ppl"), or the stable-rank score with no
/// forward pass ("stable_rank").
///
/// The ppl sweep is exact but does less work than the reference: replacing a
/// Linear in decoder layer L changes nothing before L, so the calibration
/// hidden states entering each layer are computed once and every candidate of
/// that layer runs from L onward; each layer is decomposed once for all its
/// candidate ratios (Compressor::prepare, PreparedLayer::build_many). The
/// samples run in large batches, the cross-entropy sums stay on the device,
/// and the host waits for the device once per layer, not once per entry.

#include <ATen/core/Tensor.h>

#include <cur4llm/compress/compressor.h>
#include <cur4llm/search/sensitivity_table.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::sensitivity {

using compress::ScaleFn;

/// One swept layer's share of a profiled sweep.
struct SweepLayerTime {
  std::string name;
  int64_t first_layer = -1;  ///< decoder layer its entries start from (-1: full forward)
  double decompose_s = 0;
  double forward_s = 0;
  int64_t entries = 0;
};

/// Where a sweep's time went. When SweepOptions::profile points at one, the
/// sweep synchronises the device at each phase boundary (slightly slower).
struct SweepProfile {
  double advance_s = 0;     ///< embedding and moving the cached hidden states forward
  double decompose_s = 0;   ///< Compressor::prepare and building every candidate
  double forward_s = 0;     ///< the entries' forward passes and cross-entropy
  int64_t entries = 0;      ///< (layer, candidate) entries evaluated
  int64_t batches = 0;      ///< forward passes per entry
  int64_t batch_size = 0;   ///< samples in the largest batch
  std::vector<SweepLayerTime> layers;  ///< per swept layer, in sweep order
};

/// What the sweep covers and how.
struct SweepOptions {
  std::vector<double> candidates;          ///< ratios to try; empty: search::candidate_ratios(mode)
  search::CompressMode mode = search::CompressMode::kWeights;  ///< kKvCache: k_proj and v_proj only
  std::vector<std::string> layers;         ///< layers to sweep; empty: every Linear (lm_head included)
  int64_t batch_size = 0;                  ///< calibration samples per forward pass; 0: as many as batch_tokens allows
  int64_t batch_tokens = 65536;            ///< token budget of one forward pass when batch_size is 0
  int64_t logits_chunk_tokens = 0;         ///< tokens per vocabulary-projection chunk (0: by memory, eval::NllOptions)
  bool reuse_hidden_states = true;         ///< false: a full forward per candidate (the reference's way)
  bool overlap = true;                     ///< on CUDA: decompose the next layer while this one's forwards run
  bool show_progress = false;              ///< progress line on stderr
  SweepProfile* profile = nullptr;         ///< if set, filled with the time per phase
};

/// The "ppl" table: for every layer and candidate, exp(mean over samples of the
/// sample's mean next-token NLL) with only that layer compressed. The model is
/// left as it was (also on exceptions). A layer whose decomposition fails
/// (compress::CompressionError) scores +inf at every candidate, with a warning.
search::SensitivityTable ppl_sensitivity(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                         const compress::Compressor& compressor, const ScaleFn& scale,
                                         const SweepOptions& options);

/// The "stable_rank" table: score(r) = -sr * r^0.1 with sr = sqrt(||W||_F^2 / sigma_max^2)
/// of each layer's (unscaled) weight, as the reference's sensitivity.py.
search::SensitivityTable stable_rank_sensitivity(const model::CausalLM& lm, const SweepOptions& options);

/// The layers a sweep covers: options.layers, or every Linear (KV mode: k_proj/v_proj).
std::vector<std::string> sweep_layers(const model::CausalLM& lm, const SweepOptions& options);

}  // namespace cur4llm::sensitivity
