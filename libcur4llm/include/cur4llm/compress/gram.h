#pragma once
/// Data-aware numerics on the input Gram matrix G = sum over calibration
/// tokens of x x^T (or its mean; only its shape matters): the output error of
/// an approximation W' of W on those tokens is
///
///   E(W') = sum_t ||(W - W') x_t||^2 = ||(W - W') L||_F^2,  L L^T = G.
///
/// Everything here runs in float64 on the weight's device.
///
///   auto L = whitening_factor(G);                      // Cholesky, with jitter if needed
///   auto rows = greedy_rows(W, G, 64);                 // pivoted Cholesky of W G W^T
///   rows.residual[k]                                   // E of the best X W[I_k, :] for every k <= 64
///   auto X = rows.interpolation(k);                    // [m, k]: W' = X W[I_k, :]

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// How whitening_factor regularises a singular or indefinite G.
struct WhitenOptions {
  double first_jitter = 1e-10;  ///< first diagonal shift, relative to mean(diag(G)); tried after a plain Cholesky fails
  double growth = 100;          ///< each retry multiplies the shift by this
  int max_tries = 6;            ///< shifts tried before CompressionError (1e-10 ... 1e0 by default)
};

/// The lower-triangular L (float64, G's device or `device_of`'s) with L L^T = G + lambda I,
/// lambda = 0 if G is positive definite, else the first shift of `options` that
/// works. Throws std::invalid_argument if G is not square, CompressionError if
/// it holds a non-finite value, is zero or stays indefinite (the message names `who`).
at::Tensor whitening_factor(const at::Tensor& gram, const std::string& who = "whitening_factor",
                            const WhitenOptions& options = {});

/// What a data-aware compressor knows of a layer's inputs. Normally the
/// calibration inputs x of the dense model: all three are G = E[x x^T]. In a
/// sequential pass (compress/sequential.h) the layer will see the inputs x' of
/// the partly compressed model, and its outputs should still match the dense
/// model's: `seen` = E[x' x'^T], `cross` = E[x x'^T].
struct InputMoments {
  at::Tensor gram;   ///< E[x x^T], float64 [n, n]
  at::Tensor seen;   ///< E[x' x'^T]
  at::Tensor cross;  ///< E[x x'^T]
  bool sequential = false;  ///< false: seen and cross are gram
};

/// Parses a compressor's statistic argument, float64 on `device_of`'s device:
/// [n, n] is G (symmetrised); [n] a diagonal scale s, G = diag(s^2); [3, n, n]
/// the stacked (gram, seen, cross) of a sequential pass. std::invalid_argument
/// (naming `who`) for another shape or an undefined statistic.
InputMoments input_moments(const at::Tensor& statistic, int64_t in_features, const at::Tensor& device_of,
                           const std::string& who);

/// The Gram matrix a method that only fits what the layer sees uses: input_moments(...).seen.
at::Tensor gram_from_statistic(const at::Tensor& statistic, int64_t in_features, const at::Tensor& device_of,
                               const std::string& who);

/// Greedy selection of output rows: pivoted Cholesky of the output covariance
/// C = W G W^T (never formed: columns as W (G W^T)[:, p]). After j pivots the
/// best prediction of all rows from the kept ones, X = C[:, I] C[I, I]^{-1},
/// has error trace(C - C[:, I] C[I, I]^{-1} C[I, :]) = residual[j].
struct RowGreedy {
  at::Tensor pivots;             ///< int64 [r] on the CPU, in the order picked (r <= k_max: stops at numerical rank)
  at::Tensor factor;             ///< [m, r] float64: C[:, I] = factor factor[I, :]^T (lower-triangular on I)
  std::vector<double> residual;  ///< r + 1 values: residual[j] = E after j pivots (residual[0] = trace C)

  int64_t rank() const { return pivots.numel(); }
  /// X [m, k] float64 with W' = X W[pivots[:k], :] the data-optimal row skeleton
  /// (X[pivots[:k], :] = identity up to round-off); k <= rank().
  at::Tensor interpolation(int64_t k) const;
};

/// Pivoted Cholesky of W G W^T up to k_max pivots (fewer when the remaining
/// Schur diagonal falls below rtol * its initial maximum). O(m n^2 + k m n).
RowGreedy greedy_rows(const at::Tensor& weight, const at::Tensor& gram, int64_t k_max, double rtol = 1e-12);

/// Greedy selection of input columns J for W' = W[:, J] Z: each step adds the
/// column that most reduces E(W') = trace((I - P_J) W G W^T) (P_J the
/// projector onto span W[:, J]); for a fixed J the best Z = W[:, J]^+ W does
/// not depend on G. O(m n^2 + n^3 + k m n).
struct ColumnGreedy {
  at::Tensor pivots;             ///< int64 [r] on the CPU, in the order picked
  at::Tensor basis;              ///< [m, r] float64 orthonormal: span of W[:, pivots[:j]] = span basis[:, :j]
  at::Tensor coords;             ///< [r, n] float64: basis^T W (upper-triangular on the pivot columns)
  std::vector<double> residual;  ///< r + 1 values: residual[j] = E after j pivots

  int64_t rank() const { return pivots.numel(); }
  /// Z [k, n] float64 with W' = W[:, pivots[:k]] Z (Z[:, pivots[:k]] = identity up to round-off).
  at::Tensor interpolation(int64_t k) const;
};

/// Local search on a row subset: swaps one kept row for another while that
/// lowers the skeleton's output error (the trace of the Schur complement of
/// C = W G W^T), the best swap first, at most `max_swaps` times. Returns the
/// new subset (int64 [k], CPU) and writes its error to `error` if given.
/// Forms C (m x m); O(m^2 k) per swap.
at::Tensor exchange_rows(const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& rows, int64_t max_swaps,
                         double* error = nullptr);

ColumnGreedy greedy_columns(const at::Tensor& weight, const at::Tensor& gram, int64_t k_max, double rtol = 1e-12);

/// E(W') = trace((W - W') G (W - W')^T), float64, for tests and reports.
double output_error(const at::Tensor& weight, const at::Tensor& approx, const at::Tensor& gram);

/// How rows (or columns) are picked from an orthonormal basis Q [m, k] of a
/// dominant subspace (top-k left singular vectors for rows).
enum class SubsetSelection {
  Leverage,    ///< the k largest ||Q[i, :]||^2 (the reference's top-k leverage)
  DEIM,        ///< discrete empirical interpolation: one index per basis vector, on the interpolation residual
  PivotedQR,   ///< column-pivoted QR of Q^T (greedy volume; equals pivoted Cholesky of Q Q^T)
};

/// "leverage" | "deim" | "qr" -> SubsetSelection; std::invalid_argument naming the valid values otherwise.
SubsetSelection parse_subset_selection(const std::string& name);
std::string to_string(SubsetSelection selection);

/// k = Q.size(1) distinct row indices of Q (int64 [k], CPU, in the order picked;
/// Leverage: by decreasing score, ties to the lower index).
at::Tensor select_subset(const at::Tensor& basis, SubsetSelection selection);

}  // namespace cur4llm::compress
