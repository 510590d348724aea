#pragma once
/// Applying a search's allocation to a model: every layer the allocation
/// compresses is decomposed and swapped in; the result is the plan that says
/// what each layer now stores.

#include <cur4llm/compress/compressor.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/compression_plan.h>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::compress {

/// How apply_allocation reports.
struct ApplyOptions {
  bool show_progress = false;  ///< progress line on stderr
};

/// Replaces each layer the allocation compresses by compressor.compress(weight,
/// bias, scale(layer), ratio) and returns the plan of every layer of the
/// allocation (dense ones included, with their real stored counts). A layer
/// whose decomposition fails (CompressionError) stays dense, with a warning on
/// stderr naming it; the plan records it as dense.
search::CompressionPlan apply_allocation(model::CausalLM& lm, const search::Allocation& allocation,
                                         const Compressor& compressor, const ScaleFn& scale,
                                         const ApplyOptions& options = {});

/// The plan's layers of one method, for a summary.
int64_t count_layers(const search::CompressionPlan& plan, const std::string& method);

}  // namespace cur4llm::compress
