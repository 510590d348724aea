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
/// candidate ratios (Compressor::prepare).

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

/// What the sweep covers and how.
struct SweepOptions {
  std::vector<double> candidates;          ///< ratios to try; empty: search::candidate_ratios(mode)
  search::CompressMode mode = search::CompressMode::kWeights;  ///< kKvCache: k_proj and v_proj only
  std::vector<std::string> layers;         ///< layers to sweep; empty: every Linear (lm_head included)
  int64_t batch_size = 4;                  ///< calibration samples per forward pass
  bool reuse_hidden_states = true;         ///< false: a full forward per candidate (the reference's way)
  bool show_progress = false;              ///< progress line on stderr
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
