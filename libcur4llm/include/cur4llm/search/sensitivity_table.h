#pragma once
/// Per-layer sensitivity scores: (layer, param ratio) -> score, with JSON files.
///
/// A score is the calibration perplexity with only that layer compressed at
/// that ratio (metric "ppl"), or a stable-rank score (metric "stable_rank",
/// see stable_rank.h). Higher means more sensitive. Example:
///
///   SensitivityTable t("ppl");
///   for (double r : candidate_ratios(CompressMode::kWeights)) t.add(name, r, ppl_at(r));
///   t.save("cache/opt-125m_sensitivity.json");

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cur4llm::search {

/// What a search budgets: all Linear weights, or the KV cache (k_proj/v_proj).
enum class CompressMode {
  kWeights,  ///< param ratios 0.4 .. 0.9, every Linear layer
  kKvCache,  ///< param ratios 0.1 .. 1.9, k_proj and v_proj only; KV fraction = ratio / 2
};

/// The reference's candidate param ratios: 0.4, 0.5, ..., 0.9 (kWeights) or
/// 0.1, 0.2, ..., 1.9 (kKvCache), each computed as i / 10.0 (no float drift).
std::vector<double> candidate_ratios(CompressMode mode);

/// One measured point.
struct SensitivityEntry {
  std::string layer;  ///< full module name, e.g. "model.layers.0.self_attn.q_proj"
  double ratio = 0;   ///< nominal param ratio of the compressed layer
  double score = 0;   ///< calibration ppl (or stable-rank score); may be +inf or NaN
};

/// Sensitivity scores in insertion order (the order the search breaks ties by).
class SensitivityTable {
 public:
  SensitivityTable() = default;
  /// `metric`: "ppl" or "stable_rank" (free text; stored in the file).
  explicit SensitivityTable(std::string metric) : metric_(std::move(metric)) {}

  /// Adds a point, or replaces the score of an existing (layer, ratio).
  /// Throws std::invalid_argument for an empty layer or a ratio that is not finite and > 0.
  void add(const std::string& layer, double ratio, double score);

  const std::vector<SensitivityEntry>& entries() const { return entries_; }
  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

  /// Layer names in the order of their first entry.
  std::vector<std::string> layers() const;
  /// The score of (layer, ratio) compared exactly, if present.
  std::optional<double> score(const std::string& layer, double ratio) const;

  const std::string& metric() const { return metric_; }
  void set_metric(std::string metric) { metric_ = std::move(metric); }

  /// Free-form string metadata, e.g. the cache key (model, scaling, alpha, n_samples, dataset, method).
  std::map<std::string, std::string>& meta() { return meta_; }
  const std::map<std::string, std::string>& meta() const { return meta_; }

  /// JSON text (format "cur4llm.sensitivity", version 1; docs/search.md).
  std::string to_json() const;
  /// Parses to_json() text; `source` names the file in errors (std::runtime_error naming the key).
  static SensitivityTable from_json(const std::string& text, const std::string& source);

  /// Writes the JSON atomically; std::runtime_error on I/O errors.
  void save(const std::filesystem::path& path) const;
  /// Reads and validates a file written by save(); std::runtime_error naming the file and key.
  static SensitivityTable load(const std::filesystem::path& path);

 private:
  std::string metric_ = "ppl";
  std::map<std::string, std::string> meta_;
  std::vector<SensitivityEntry> entries_;
};

}  // namespace cur4llm::search
