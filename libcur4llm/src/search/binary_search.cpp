#include <cur4llm/search/binary_search.h>

#include <cur4llm/util/progress.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <unordered_map>

namespace cur4llm::search {
namespace {

bool is_kv_layer(const std::string& name) {
  return name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
}

// The ratio of a layer the allocation leaves dense. In KV mode a param ratio of 2
// is a full-rank pair of factors, i.e. the whole KV cache (the reference's default).
double dense_ratio(const std::string& name, CompressMode mode) {
  return mode == CompressMode::kKvCache && is_kv_layer(name) ? 2.0 : 1.0;
}

bool counted(const std::string& name, CompressMode mode) { return mode == CompressMode::kWeights || is_kv_layer(name); }

// NaN (a diverged perplexity) sorts as the most sensitive score.
double sort_key(double score) { return std::isnan(score) ? std::numeric_limits<double>::infinity() : score; }

std::unordered_map<std::string, std::size_t> index_layers(const std::vector<LayerSize>& layers) {
  std::unordered_map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerSize& l = layers[i];
    if (l.name.empty()) throw std::invalid_argument(fmt::format("search: layer {} has an empty name", i));
    if (l.numel <= 0)
      throw std::invalid_argument(fmt::format("search: layer \"{}\" has numel {}, must be > 0", l.name, l.numel));
    if (!index.emplace(l.name, i).second)
      throw std::invalid_argument(fmt::format("search: layer \"{}\" is given twice", l.name));
  }
  return index;
}

// Every layer the sorted entries name must be one of the model's Linear layers.
void check_layers(const std::vector<SensitivityEntry>& sorted, const std::vector<LayerSize>& layers, CompressMode mode) {
  allocation_at(sorted, layers, 0, mode);
}

void check_target(double target, const char* what) {
  if (!std::isfinite(target) || target <= 0)
    throw std::invalid_argument(fmt::format("search: {} target {} must be finite and > 0", what, target));
}

// The reference's loop: low = 0, high = n - 1, mid = (low + high) / 2; `go_lower`
// says whether to keep [low, mid] (high = mid) or [mid + 1, high].
template <class Probe>
SearchResult run_search(const std::vector<SensitivityEntry>& sorted, const std::vector<LayerSize>& layers,
                        const SearchOptions& options, Probe go_lower) {
  SearchResult result;
  const std::size_t n = sorted.size();
  result.num_entries = n;
  std::size_t low = 0, high = n == 0 ? 0 : n - 1;
  std::size_t last_mid = 0;
  bool probed = false;
  while (low < high) {
    const std::size_t mid = (low + high) / 2;
    SearchStep step{low, mid, high, 0, std::numeric_limits<double>::quiet_NaN()};
    const bool lower = go_lower(allocation_at(sorted, layers, mid, options.mode), step);
    result.steps.push_back(step);
    if (lower)
      high = mid;
    else
      low = mid + 1;
    last_mid = mid;
    probed = true;
  }
  // The reference decomposes with the last `mid` it evaluated (a leaked loop
  // variable); with n <= 1 it never sets one and fails, we take `low`.
  result.cut = options.final_cut == FinalCut::kReferenceLastMid && probed ? last_mid : low;
  return result;
}

void finish(SearchResult& result, const std::vector<SensitivityEntry>& sorted, const std::vector<LayerSize>& layers,
            const SearchOptions& options) {
  result.allocation = allocation_at(sorted, layers, result.cut, options.mode);
  result.nominal_ratio = whole_model_ratio(result.allocation, layers, options.mode);
  result.ratio = whole_model_ratio(result.allocation, layers, options.mode, options.stored_params);
}

}  // namespace

std::vector<SensitivityEntry> sorted_entries(const SensitivityTable& table, CompressMode mode) {
  std::unordered_map<std::string, std::size_t> order;
  for (const auto& name : table.layers()) order.emplace(name, order.size());
  std::vector<SensitivityEntry> out;
  for (const auto& e : table.entries()) {
    // Weights mode compresses, so ratios >= 1 are no candidates; KV mode keeps every ratio of k/v layers.
    if (mode == CompressMode::kWeights ? e.ratio >= 1 : !is_kv_layer(e.layer)) continue;
    out.push_back(e);
  }
  // Score descending; ties: the layer's first appearance in the table, then ratio ascending.
  // This equals the reference's stable sort of its dict order when each layer's ratios were
  // added in ascending order, as the sensitivity pass does.
  std::sort(out.begin(), out.end(), [&](const SensitivityEntry& a, const SensitivityEntry& b) {
    const double ka = sort_key(a.score), kb = sort_key(b.score);
    if (ka != kb) return ka > kb;
    const std::size_t la = order.at(a.layer), lb = order.at(b.layer);
    if (la != lb) return la < lb;
    return a.ratio < b.ratio;
  });
  return out;
}

Allocation allocation_at(const std::vector<SensitivityEntry>& sorted, const std::vector<LayerSize>& layers,
                         std::size_t cut, CompressMode mode) {
  if (cut > sorted.size())
    throw std::invalid_argument(fmt::format("search: cut {} is past the {} sorted entries", cut, sorted.size()));
  const auto index = index_layers(layers);
  Allocation alloc;
  alloc.reserve(layers.size());
  for (const auto& l : layers) alloc.push_back({l.name, dense_ratio(l.name, mode), false});
  for (std::size_t i = cut; i < sorted.size(); ++i) {
    const SensitivityEntry& e = sorted[i];
    auto it = index.find(e.layer);
    if (it == index.end())
      throw std::invalid_argument(
          fmt::format("search: sensitivity table layer \"{}\" is not among the model's Linear layers", e.layer));
    LayerRatio& lr = alloc[it->second];
    if (e.ratio < lr.ratio) {
      lr.ratio = e.ratio;
      lr.compressed = true;
    }
  }
  return alloc;
}

double whole_model_ratio(const Allocation& allocation, const std::vector<LayerSize>& layers, CompressMode mode,
                         const StoredParamsFn& stored_params) {
  if (allocation.size() != layers.size())
    throw std::invalid_argument(fmt::format("search: allocation has {} layers, the model {}", allocation.size(), layers.size()));
  double total = 0, kept = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerRatio& a = allocation[i];
    const LayerSize& l = layers[i];
    if (a.layer != l.name)
      throw std::invalid_argument(fmt::format("search: allocation layer {} is \"{}\", the model's \"{}\"", i, a.layer, l.name));
    if (!counted(l.name, mode)) continue;
    if (!l.shared) total += static_cast<double>(l.numel);
    if (l.shared && !a.compressed) continue;
    if (a.compressed && stored_params)
      kept += static_cast<double>(stored_params(a.layer, a.ratio));
    else
      kept += static_cast<double>(l.numel) * a.ratio;
  }
  if (total == 0) {
    throw std::invalid_argument(mode == CompressMode::kKvCache ? "search: KV-cache mode needs k_proj/v_proj layers, the model has none"
                                                                : "search: no layer counts towards the budget");
  }
  const double ratio = kept / total;
  // A KV-mode param ratio covers both factors; the cache holds one rank-sized vector: half.
  return mode == CompressMode::kKvCache ? ratio / 2 : ratio;
}

SearchResult search_param_ratio(const SensitivityTable& table, const std::vector<LayerSize>& layers, double target,
                                const SearchOptions& options) {
  check_target(target, options.mode == CompressMode::kKvCache ? "KV-cache ratio" : "param ratio");
  if (options.mode == CompressMode::kKvCache && options.stored_params)
    throw std::invalid_argument("search: stored_params is for the weights mode, not the KV-cache mode");
  const auto sorted = sorted_entries(table, options.mode);
  check_layers(sorted, layers, options.mode);
  SearchResult result;
  if (options.final_cut == FinalCut::kConverged && target >= 1) {
    // Nothing to compress: the reference's range [0, n-1] would still apply one entry.
    result.num_entries = sorted.size();
    result.cut = sorted.size();
  } else {
    result = run_search(sorted, layers, options, [&](const Allocation& alloc, SearchStep& step) {
      step.ratio = whole_model_ratio(alloc, layers, options.mode, options.stored_params);
      return step.ratio > target;
    });
  }
  finish(result, sorted, layers, options);
  result.target_met = result.ratio <= target * (1 + 1e-12);
  return result;
}

SearchResult search_perplexity(const SensitivityTable& table, const std::vector<LayerSize>& layers, double target,
                               const PerplexityFn& ppl, const SearchOptions& options) {
  check_target(target, "perplexity");
  if (options.mode == CompressMode::kKvCache)
    throw std::invalid_argument("search: a perplexity target is not supported in KV-cache mode (nor by the reference)");
  if (!ppl) throw std::invalid_argument("search: a perplexity target needs a perplexity function");
  const auto sorted = sorted_entries(table, options.mode);
  check_layers(sorted, layers, options.mode);
  // Each probe is a calibration evaluation; the halving interval allows at most ceil(log2 n) of them.
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress && sorted.size() > 1) {
    const auto probes = static_cast<int64_t>(std::ceil(std::log2(static_cast<double>(sorted.size()))));
    progress = std::make_unique<util::Progress>("search", probes, "probes");
  }
  SearchResult result = run_search(sorted, layers, options, [&](const Allocation& alloc, SearchStep& step) {
    step.ratio = whole_model_ratio(alloc, layers, options.mode, options.stored_params);
    step.ppl = ppl(alloc);
    if (progress) progress->advance();
    return step.ppl < target;
  });
  finish(result, sorted, layers, options);
  result.target_met = false;
  for (const auto& step : result.steps) {
    if (step.mid == result.cut) result.target_met = step.ppl < target;
  }
  return result;
}

}  // namespace cur4llm::search
