#pragma once
// Helpers shared by the compress sources (not installed).

#include <cur4llm/compress/compressor.h>
#include <cur4llm/model/linear.h>
#include <cur4llm/search/compression_plan.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace cur4llm::compress::detail {

// A factor whose rank dimensions are padded with zeros to a multiple of 8 in
// storage. On CUDA a rank that is not a multiple of 8 leaves rows that are not
// 16-byte aligned, and the matrix products fall off the tensor-core kernels
// (4-7x slower at 2048 tokens on an H100, docs/performance.md). `full` is the
// padded buffer the forward multiplies with (the zeros add nothing); `view` is
// the exact factor inside it, a view, so that in-place changes of the factor
// (e.g. RTN quantization through state()) reach the buffer. Off CUDA, or for a
// rank that is already a multiple of 8, both are the tensor itself.
struct PaddedFactor {
  at::Tensor full;
  at::Tensor view;
};
PaddedFactor pad_rank(const at::Tensor& factor, bool pad_rows, bool pad_cols);

// Decompositions run in fp32, or fp64 when the weight already is fp64.
inline at::ScalarType work_dtype(const at::Tensor& weight) {
  return weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The plan entry of `layer` as `slot` now stands: compressed by `compressor` at
// `ratio` (rank as the compressor counts it) or dense; stored counts from the slot.
search::PlannedLayer planned_layer(const std::string& layer, const model::LinearSlot& slot, bool compressed,
                                   const Compressor& compressor, double ratio);

// std::invalid_argument naming `who` unless weight is a 2-d floating matrix,
// bias [out] or undefined, scale [in] of finite positive values or undefined.
void check_layer(const std::string& who, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale);

// std::invalid_argument unless 0 < ratio and it is finite.
void check_ratio(const std::string& who, double ratio);

// floor(out * in * ratio): the parameter budget of a layer.
int64_t budget_params(int64_t out_features, int64_t in_features, double ratio);

// W diag(s) in the work dtype (W itself, converted, when s is undefined).
at::Tensor scaled_weight(const at::Tensor& weight, const at::Tensor& scale);

// Relative singular-value cut-off: `requested` if >= 0, else max(m, n) * eps(dtype)
// (the rank tolerance of numpy.linalg.matrix_rank).
double link_rtol(double requested, int64_t m, int64_t n, at::ScalarType dtype);

// Pseudo-inverse of a tall or wide matrix via its thin SVD in fp64: singular
// values <= rtol * sigma_max (or zero) are dropped, so the result is finite
// for rank-deficient and zero matrices. Returns (left, inv_sigma, right^T) with
// pinv(M) = right diag(inv_sigma) left^T, i.e. M = left diag(sigma) right^T.
struct PinvFactors {
  at::Tensor left;       // [rows, r]
  at::Tensor inv_sigma;  // [r], zero where dropped
  at::Tensor right;      // [cols, r]
};
PinvFactors pinv_factors(const at::Tensor& m, double rtol);

// The same cut-off through a Gram matrix g = M^T M (or M M^T), fp64 k x k: the
// pseudo-inverse of g keeping eigenvalues > rtol^2 * lambda_max and > 0, i.e.
// the singular values of M that pinv_factors keeps. Then pinv(M) = g^+ M^T for
// g = M^T M, and pinv(M) = M^T g^+ for g = M M^T. Eigendecomposition.
at::Tensor gram_pinv_eigh(const at::Tensor& g, double rtol);

// The fast path of gram_pinv_eigh: g^-1 by Cholesky and a 0-d bool on g's
// device that is true only when every eigenvalue of g provably exceeds the
// cut-off, so that g^+ = g^-1 (nothing is cut). The proof uses
// lambda_max <= trace(g^4)^(1/4) and lambda_min >= trace(g^-4)^(-1/4) with a
// 1% margin; it fails safe (false) for a nearly singular g. No host synchronisation.
struct CertifiedInverse {
  at::Tensor inverse;    // [k, k] fp64 (meaningless where certified is false)
  at::Tensor certified;  // 0-d bool
};
CertifiedInverse gram_inverse_certified(const at::Tensor& g, double rtol);

}  // namespace cur4llm::compress::detail
