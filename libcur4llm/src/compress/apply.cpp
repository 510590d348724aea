#include <cur4llm/compress/apply.h>

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/util/progress.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>

#include <memory>

namespace cur4llm::compress {

search::CompressionPlan apply_allocation(model::CausalLM& lm, const search::Allocation& allocation,
                                         const Compressor& compressor, const ScaleFn& scale,
                                         const ApplyOptions& options) {
  // No grad, but not inference mode: a compressor may make trainable leaves (grad_cur).
  c10::NoGradGuard no_grad;
  // Refuse before changing anything, so that a bad allocation leaves the model as it was.
  int64_t todo = 0;
  for (const auto& a : allocation) {
    if (!a.compressed) continue;
    (void)lm.dense_linear(a.layer);  // refuses a missing or already compressed layer
    ++todo;
  }
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) progress = std::make_unique<util::Progress>("decompose", todo, "layers");

  search::CompressionPlan plan;
  for (const auto& a : allocation) {
    bool compressed = false;
    if (a.compressed) {
      const auto* dense = static_cast<const model::DenseLinear*>(&lm.linear(a.layer));  // checked above
      try {
        auto replacement = compressor.compress(dense->weight(), dense->bias(), scale ? scale(a.layer) : at::Tensor(), a.ratio);
        lm.replace_linear(a.layer, std::move(replacement));
        compressed = true;
      } catch (const CompressionError& e) {
        fmt::print(stderr, "warning: {} stays dense: {}\n", a.layer, e.what());
      }
      if (progress) progress->advance();
    }
    plan.add(detail::planned_layer(a.layer, lm.linear(a.layer), compressed, compressor, a.ratio));
  }
  return plan;
}

int64_t count_layers(const search::CompressionPlan& plan, const std::string& method) {
  int64_t n = 0;
  for (const auto& l : plan.layers()) n += l.method == method ? 1 : 0;
  return n;
}

}  // namespace cur4llm::compress
