#pragma once
/// What the apps do to each Linear layer: method, ratio, rank and real parameter counts.
///
///   CompressionPlan plan;
///   plan.add({"model.layers.0.mlp.up_proj", "cur", 0.6, 1024, 6291456, 11272192});
///   std::cout << plan.table();           // fixed-width, one row per layer + total
///   plan.save("opt-125m-acur90/plan.json");

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cur4llm::search {

/// One Linear layer of the plan.
struct PlannedLayer {
  std::string name;               ///< full module name
  /// "dense" or the compression method that made the layer (compress::compressor_names()):
  /// cur, svd, grad_cur, svd_whiten, skeleton, skeleton_row, skeleton_col, skeleton_diag,
  /// skeleton_swap, cur_whiten, cur_deim, cur_qr. The slot kind it is stored as (dense, cur,
  /// svd, skeleton_row, skeleton_col; model/slot_registry.h) follows from the layer itself.
  std::string method = "dense";
  double ratio = 1;               ///< nominal param ratio chosen by the search
  std::int64_t rank = 0;          ///< rank of the factorization (0 for dense)
  std::int64_t stored_params = 0; ///< parameters the layer really stores
  std::int64_t dense_params = 0;  ///< out_features * in_features
};

class CompressionPlan {
 public:
  /// Appends a layer; std::invalid_argument for a duplicate or empty name, an unknown
  /// method, dense_params <= 0, negative rank/stored_params or a ratio that is not finite and > 0.
  void add(PlannedLayer layer);

  const std::vector<PlannedLayer>& layers() const { return layers_; }
  /// The layer named `name`, if any.
  std::optional<PlannedLayer> find(const std::string& name) const;

  std::int64_t stored_params() const;  ///< sum over layers
  std::int64_t dense_params() const;   ///< sum over layers
  /// Real whole-model param ratio over Linear weights: stored / dense (1 for an empty plan).
  double param_ratio() const;

  /// Free-form string metadata (model, target, metric, ...).
  std::map<std::string, std::string>& meta() { return meta_; }
  const std::map<std::string, std::string>& meta() const { return meta_; }

  /// A readable fixed-width table: layer, method, ratio, rank, stored, dense, stored/dense, and a total row.
  std::string table() const;

  /// JSON text (format "cur4llm.compression_plan", version 1; docs/search.md).
  std::string to_json() const;
  /// Parses to_json() text; std::runtime_error naming `source` and the key.
  static CompressionPlan from_json(const std::string& text, const std::string& source);
  /// Atomic write; std::runtime_error on I/O errors.
  void save(const std::filesystem::path& path) const;
  /// Reads and validates; std::runtime_error naming the file and key.
  static CompressionPlan load(const std::filesystem::path& path);

 private:
  std::vector<PlannedLayer> layers_;
  std::map<std::string, std::string> meta_;
};

}  // namespace cur4llm::search
