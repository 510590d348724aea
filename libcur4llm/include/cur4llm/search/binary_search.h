#pragma once
/// Per-layer param ratios from a sensitivity table by the reference's binary search.
///
/// The table's entries (weights mode: only ratio < 1; KV mode: k_proj/v_proj only)
/// are sorted by score, most sensitive first (ties: the layer's first appearance in
/// the table, then ratio ascending). A cut position p applies the entries at
/// positions >= p: each layer takes the smallest ratio among them, or stays dense.
/// The search moves p over [0, n-1] as ASVD4LLM's binary_search.py does; docs/search.md
/// has the details. Example:
///
///   std::vector<LayerSize> layers = ...;  // every Linear, lm_head included
///   SearchResult r = search_param_ratio(table, layers, 0.9);
///   for (const LayerRatio& l : r.allocation) if (l.compressed) compress(l.layer, l.ratio);

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <cur4llm/search/sensitivity_table.h>

namespace cur4llm::search {

/// One Linear layer of the model and its weight's element count (out * in).
struct LayerSize {
  std::string name;
  std::int64_t numel = 0;
  /// The layer stores nothing of its own while dense (an lm_head tied to the embedding):
  /// it is not part of the budget's total, and compressing it costs every parameter its
  /// factors store, since the embedding must then be kept as well.
  bool shared = false;
};

/// The ratio a search gives one layer.
struct LayerRatio {
  std::string layer;
  double ratio = 1;         ///< nominal param ratio (dense: 1, or 2 for k_proj/v_proj in KV mode)
  bool compressed = false;  ///< false: keep the layer dense
};

/// Every layer passed to the search, in the caller's order.
using Allocation = std::vector<LayerRatio>;

/// Which cut the search returns once low >= high.
enum class FinalCut {
  kConverged,        ///< `low` (== high): deterministic; param target >= 1 keeps everything dense
  kReferenceLastMid, ///< the last `mid` evaluated, as binary_search.py does (b or b - 1)
};

/// (layer, nominal ratio) -> parameters the compressed layer really stores.
using StoredParamsFn = std::function<std::int64_t(const std::string& layer, double ratio)>;
/// Allocation -> calibration perplexity with that allocation applied.
using PerplexityFn = std::function<double(const Allocation& allocation)>;

struct SearchOptions {
  CompressMode mode = CompressMode::kWeights;     ///< kKvCache: budget k_proj/v_proj, ratio counted as half
  FinalCut final_cut = FinalCut::kConverged;     ///< kReferenceLastMid reproduces the reference exactly
  StoredParamsFn stored_params;                   ///< set: whole-model ratio from real stored counts (weights mode)
  bool show_progress = false;                     ///< search_perplexity: a progress line of its probes on stderr
};

/// One probe of the search.
struct SearchStep {
  std::size_t low = 0, mid = 0, high = 0;
  double ratio = 0;  ///< whole-model ratio at `mid` as the search counts it
  double ppl = 0;    ///< calibration ppl at `mid` (NaN for a ratio search)
};

struct SearchResult {
  Allocation allocation;         ///< every layer, in the caller's order
  std::size_t cut = 0;           ///< entries at sorted positions >= cut are applied
  std::size_t num_entries = 0;   ///< n, the length of the sorted list
  double ratio = 1;              ///< whole-model ratio of `allocation` as the search counts it
  double nominal_ratio = 1;      ///< sum(numel * ratio) / sum(numel) (KV mode: halved, k/v only)
  std::vector<SearchStep> steps; ///< every probe, in order
  /// Whether the allocation reaches the target: ratio <= target for a param (or KV) target,
  /// calibration ppl < target for a perplexity target (false where its cut was never probed).
  /// A search ends on its best cut either way; callers report a miss.
  bool target_met = true;
};

/// The entries the search orders, most sensitive first (see the file comment).
/// NaN scores count as +inf. KV mode keeps only layers whose name contains "k_proj" or "v_proj".
std::vector<SensitivityEntry> sorted_entries(const SensitivityTable& table, CompressMode mode);

/// The allocation at cut position `cut` (0 .. sorted.size()) of sorted_entries().
/// Throws std::invalid_argument for a sorted layer missing from `layers`.
Allocation allocation_at(const std::vector<SensitivityEntry>& sorted, const std::vector<LayerSize>& layers,
                         std::size_t cut, CompressMode mode);

/// Whole-model ratio over `layers` (KV mode: k_proj/v_proj only, halved). With
/// `stored_params`, compressed layers count what it returns; dense ones their numel.
/// A `shared` layer counts nothing while dense and is left out of the total.
double whole_model_ratio(const Allocation& allocation, const std::vector<LayerSize>& layers, CompressMode mode,
                         const StoredParamsFn& stored_params = {});

/// Binary search for a whole-model param ratio (KV mode: KV-cache fraction) `target` > 0:
/// ratio(mid) > target -> high = mid, else low = mid + 1. std::invalid_argument for a bad target,
/// duplicate or non-positive layers, or table layers missing from `layers`.
SearchResult search_param_ratio(const SensitivityTable& table, const std::vector<LayerSize>& layers, double target,
                                const SearchOptions& options = {});

/// Binary search for a calibration perplexity `target` > 0: ppl(mid) < target -> high = mid,
/// else low = mid + 1. `ppl` is called once per probe. Weights mode only, as the reference.
SearchResult search_perplexity(const SensitivityTable& table, const std::vector<LayerSize>& layers, double target,
                               const PerplexityFn& ppl, const SearchOptions& options = {});

}  // namespace cur4llm::search
