#pragma once
/// Data-aware skeleton (interpolative) layers: k real rows of W are kept and the
/// other outputs are predicted from them, W' = X W[I, :] with X[I, :] = identity
/// (row side), or k real columns are kept, W' = W[:, J] Z with Z[:, J] =
/// identity (column side). The identity block is not stored, so a rank-k
/// skeleton stores k (m + n - k) weights instead of k (m + n) for a rank-k SVD.
///
/// X (Z) and the kept rows (columns) minimise the output error on the
/// calibration inputs, ||(W - W') L||_F^2 with L L^T = G (compress/gram.h):
/// rows by pivoted Cholesky of W G W^T with the closed form
/// X = W G W_I^T (W_I G W_I^T)^{-1}; columns greedily with Z = W_J^+ W.
///
///   SkeletonOptions o;
///   o.side = SkeletonSide::Auto;                       // per layer, the side with the lower predicted error
///   auto f = SkeletonFactory::for_ratios(w, b, gram, o, {0.9, 0.7});
///   auto slot = f->build(0.9);                         // a SkeletonLinear
///   f->predicted_error(f->rank_for(0.7), SkeletonSide::Auto);

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/model/linear.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::compress {

/// Which side a skeleton keeps.
enum class SkeletonSide {
  Row,     ///< real output rows W[I, :]; the other outputs predicted from them
  Column,  ///< real input columns W[:, J]; the input folded onto them first
  Auto,    ///< per layer, whichever has the lower predicted output error at the same rank (ties: Row)
};

/// "row" | "col" | "auto" -> SkeletonSide; std::invalid_argument naming the valid values otherwise.
SkeletonSide parse_skeleton_side(const std::string& name);

struct SkeletonOptions {
  SkeletonSide side = SkeletonSide::Row;  // which side to keep
  int64_t rank_align = 1;                 // the rank is a multiple of this
  double rtol = 1e-12;                    // pivoting stops when the best gain falls below rtol * the initial one
  double exchange = 0;                    // row side: after the greedy pick, up to exchange * k swaps of a kept row
                                          // for another that lower the error (exchange_rows; forms the m x m C)
};

/// Weights a rank-k skeleton stores: k n + (m - k) k (row) = m k + k (n - k) (column) = k (m + n - k).
int64_t skeleton_stored_params(int64_t out_features, int64_t in_features, int64_t rank);

/// The largest multiple of rank_align (at most min(m, n)) whose skeleton_stored_params
/// fits floor(ratio m n); if none fits, min(rank_align, m, n) (over budget).
int64_t skeleton_rank_for_ratio(int64_t out_features, int64_t in_features, double param_ratio, int64_t rank_align);

/// Row side:    y = P^T [y_I ; X_rest y_I] + b with y_I = W_I x.
/// Column side: y = W_J (x_J + Z_rest x_rest) + b.
/// P is the stored permutation `index` (kept rows / columns first). The kept
/// block is an exact copy of W's rows (columns); all factors in the model dtype.
class SkeletonLinear final : public model::LinearSlot {
 public:
  /// Row side: kept = W_I [k, n], predictor = X_rest [m - k, k], index [m].
  /// Column side: kept = W_J [m, k], predictor = Z_rest [k, n - k], index [n].
  /// `index` is a permutation (int64): index[:k] are the kept rows (columns) in
  /// the order of kept's rows (columns), index[k:] the others in the order of
  /// the predictor's rows (columns). `budget_params` < 0: unknown.
  /// std::invalid_argument for inconsistent shapes or an index that is no permutation.
  SkeletonLinear(SkeletonSide side, at::Tensor kept, at::Tensor predictor, at::Tensor index, at::Tensor bias,
                 int64_t budget_params = -1);
  /// Rebuilds a layer from kind() and state() (e.g. a saved model).
  static std::shared_ptr<SkeletonLinear> from_state(const std::string& kind,
                                                    const std::vector<std::pair<std::string, at::Tensor>>& state);

  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  int64_t weight_params() const override { return kept_.numel() + predictor_.numel(); }
  /// "skeleton_row" or "skeleton_col".
  std::string kind() const override;
  /// Row: "W_I", "X_rest", "row_index"; column: "W_J", "Z_rest", "col_index"; "bias" if any.
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  at::Tensor reconstruct_weight() const override;

  SkeletonSide side() const { return side_; }
  int64_t rank() const { return side_ == SkeletonSide::Row ? kept_.size(0) : kept_.size(1); }
  const at::Tensor& kept() const { return kept_; }
  const at::Tensor& predictor() const { return predictor_; }
  /// The permutation (int64, CPU); index()[:rank()] are the kept rows or columns.
  const at::Tensor& index() const { return index_; }
  const at::Tensor& bias() const { return bias_; }
  int64_t budget_params() const { return budget_params_; }
  bool over_budget() const { return budget_params_ >= 0 && weight_params() > budget_params_; }

  /// true: forward through the full interpolation matrix (identity block
  /// included, built once in memory; not stored): two plain GEMMs, k^2 more
  /// values in memory. false (default): the stored factors with a gather.
  void set_materialized(bool on);
  bool materialized() const { return full_.defined(); }

 private:
  at::Tensor interpolation_matrix() const;  // X [m, k] or Z [k, n] in the original order, identity included

  SkeletonSide side_;
  at::Tensor kept_, predictor_, index_, bias_;
  at::Tensor gather_;  // on the factors' device: row side the inverse permutation, column side the permutation
  at::Tensor full_;    // materialized interpolation matrix, or undefined
  int64_t budget_params_;
};

/// One greedy pivoting per layer (and side) up to max_rank, from which skeleton
/// layers of every smaller rank are built; the predicted output error of each
/// rank comes with it.
class SkeletonFactory final : public PreparedLayer {
 public:
  /// `statistic`: G [in, in], or a scale s [in] (G = diag(s^2)), or undefined
  /// (G = identity), or the [3, in, in] moments of a sequential pass
  /// (input_moments): then rows and columns are picked on what the layer sees,
  /// E[x' x'^T], and the row side's X_rest regresses the dense model's outputs
  /// on the kept outputs, X_rest = W_rest E[x x'^T] W_I^T (W_I E[x' x'^T] W_I^T)^{-1}.
  SkeletonFactory(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& statistic,
                  SkeletonOptions options, int64_t max_rank);
  static std::unique_ptr<SkeletonFactory> for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                     const at::Tensor& statistic, const SkeletonOptions& options,
                                                     const std::vector<double>& ratios);

  int64_t rank_for(double ratio) const override;
  int64_t max_rank() const override { return max_rank_; }
  model::LinearPtr build(double ratio) const override;
  /// A rank-k layer on `side` (Auto: the better one), no budget attached. Beyond
  /// the numerical rank of the problem the layer keeps only that many rows (columns).
  std::shared_ptr<SkeletonLinear> build_rank(int64_t k, SkeletonSide side) const;

  /// ||(W - W') L||_F^2 of the rank-k layer on `side` (Auto: the smaller), as
  /// the greedy pivoting predicts it (an upper bound when exchange > 0).
  double predicted_error(int64_t k, SkeletonSide side) const;
  /// Row or Column: the side Auto picks at rank k (or the only one prepared).
  SkeletonSide best_side(int64_t k) const;
  /// The greedy pivotings (nullptr for a side not prepared).
  const RowGreedy* rows() const { return rows_ ? &*rows_ : nullptr; }
  const ColumnGreedy* columns() const { return columns_ ? &*columns_ : nullptr; }

 private:
  at::Tensor weight_, bias_;
  at::Tensor cross_;  // E[x x'^T] of a sequential pass, else undefined
  at::Tensor seen_;   // E[x' x'^T] (the Gram matrix the rows are picked on)
  SkeletonOptions options_;
  int64_t max_rank_;
  std::optional<RowGreedy> rows_;
  std::optional<ColumnGreedy> columns_;
};

/// The skeleton Compressors: "skeleton_row", "skeleton_col", "skeleton" (Auto)
/// on the Gram matrix, and "skeleton_diag" (row side on G = diag(s^2)).
class SkeletonCompressor final : public Compressor {
 public:
  SkeletonCompressor(std::string name, SkeletonOptions options, LayerStatistic statistic);
  std::string name() const override { return name_; }
  LayerStatistic statistic() const override { return statistic_; }
  model::LinearPtr compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                            double param_ratio) const override;
  std::unique_ptr<PreparedLayer> prepare(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         const std::vector<double>& ratios) const override;
  int64_t rank_for(int64_t out_features, int64_t in_features, double param_ratio) const override;
  int64_t stored_params(int64_t out_features, int64_t in_features, double param_ratio) const override;

 private:
  std::string name_;
  SkeletonOptions options_;
  LayerStatistic statistic_;
};

}  // namespace cur4llm::compress
