#pragma once
/// Top-k singular subspaces of a weight matrix: a randomized range finder with
/// subspace iterations, or the full at::linalg_svd for small matrices.
///
///   auto t = cur4llm::compress::top_k_svd(w, 64);   // w ≈ t.U diag(t.S) t.V^T

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cur4llm::compress {

/// Which algorithm top_k_svd uses.
enum class SVDAlgorithm {
  Auto,        ///< Full for small matrices or nearly full-rank requests, else Randomized;
               ///< on CUDA, Gram in place of every dense SVD (Full, and Randomized's last step),
               ///< and for every matrix whose shorter side is at most gram_full_below
  Full,        ///< at::linalg_svd of the whole matrix, truncated
  Randomized,  ///< range finder + subspace iterations (Halko, Martinsson and Tropp 2011)
  Gram,        ///< eigendecomposition of the fp64 Gram matrix of the shorter side (A^T A or A A^T);
               ///< exact up to round-off for singular values above ~1e-5 sigma_max, and on a GPU
               ///< much faster than a dense SVD; directions below that get zero vectors
};

struct RandomizedSVDOptions {
  SVDAlgorithm algorithm = SVDAlgorithm::Auto;  // how the subspace is computed
  int64_t oversample = 16;                      // random directions drawn beyond k
  int64_t power_iters = 2;                      // subspace iterations, each re-orthonormalised by QR
  uint64_t seed = 0;                            // seed of the CPU generator that draws the test matrix
  int64_t full_below = 256;                     // Auto: full SVD when min(m, n) <= this
  double full_fraction = 0.5;                   // Auto: full SVD when k + oversample > this * min(m, n)
  int64_t gram_full_below = 1024;               // Auto on CUDA: the whole matrix's Gram when min(m, n) <= this
                                                // (faster there than the range finder's QRs, and exact)
};

/// a ≈ U diag(S) V^T: U [m, k], S [k] descending, V [n, k].
struct TruncatedSVD {
  at::Tensor U;
  at::Tensor S;
  at::Tensor V;
};

/// The top-k singular triplets of a 2-d floating matrix, computed and returned
/// in fp64 if `a` is fp64 and in fp32 otherwise, on a's device. The random test
/// matrix is drawn on the CPU from `options.seed`, so results are deterministic
/// and the same on every device up to round-off. Throws std::invalid_argument
/// when k is not in [1, min(m, n)].
TruncatedSVD top_k_svd(const at::Tensor& a, int64_t k, const RandomizedSVDOptions& options = {});

/// The full at::linalg_svd truncated to k (the reference top_k_svd is tested against).
TruncatedSVD truncated_svd(const at::Tensor& a, int64_t k);

/// The top-k triplets from the eigendecomposition of the fp64 Gram matrix of
/// a's shorter side (SVDAlgorithm::Gram), returned in a's work dtype.
TruncatedSVD gram_svd(const at::Tensor& a, int64_t k);

/// sqrt(||W||_F^2 / sigma_max^2), the "stable_rank" sensitivity metric;
/// sigma_max from top_k_svd(w, 1, options).
double stable_rank(const at::Tensor& weight, const RandomizedSVDOptions& options = {});

}  // namespace cur4llm::compress
