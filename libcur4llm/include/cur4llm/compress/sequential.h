#pragma once
/// Sequential decomposition: the layers an allocation compresses are
/// decomposed in model order, each on the calibration inputs x' that the
/// already compressed layers before it produce, and fitted to the dense
/// model's outputs on the same tokens. The compressor receives the [3, n, n]
/// moments (E[x x^T], E[x' x'^T], E[x x'^T]) of compress/gram.h's
/// InputMoments, so that upstream errors are compensated where the method can
/// (the row skeleton's X_rest is a regression of the dense outputs on the kept
/// compressed ones); methods that only fit what they see use E[x' x'^T].
///
///   auto plan = apply_allocation_sequential(*lm, result.allocation, *make_compressor("skeleton"), samples);
///
/// Cost: per compressed Linear of decoder layer i, two forwards of layer i
/// (dense and compressed) over the calibration samples; Linears outside the
/// decoder layers (lm_head, OPT's projections) come last, on full forwards.

#include <cur4llm/compress/compressor.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/compression_plan.h>

#include <cstdint>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::compress {

struct SequentialOptions {
  int64_t batch_size = 4;      ///< calibration samples per forward pass (equal lengths are batched)
  bool show_progress = false;  ///< progress line on stderr
};

/// As apply_allocation, for a data-aware compressor (statistic() == Gram;
/// std::invalid_argument otherwise, for a layer that is not dense, and for no
/// samples or a sample without tokens, naming its index). A layer whose
/// decomposition fails stays dense with a warning.
search::CompressionPlan apply_allocation_sequential(model::CausalLM& lm, const search::Allocation& allocation,
                                                    const Compressor& compressor,
                                                    const std::vector<std::vector<int64_t>>& samples,
                                                    const SequentialOptions& options = {});

}  // namespace cur4llm::compress
