#pragma once
/// Activation-aware CUR: W ≈ C U R with C real columns and R real rows of W,
/// chosen on the scaled problem W diag(s).
///
///   CUROptions o;
///   o.param_ratio = 0.8;
///   o.scale = stat.pow(0.5) + 1e-6;          // or undefined for plain CUR
///   auto slot = CURLinear::from_linear(w, b, o);
///   slot->col_indices();                     // which input channels were kept

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/randomized_svd.h>
#include <cur4llm/model/linear.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// How CUR picks its k rows and k columns from the top-k singular subspace.
enum class CURSelection {
  TopKLeverage,     ///< the k largest leverage scores ||U_k[i,:]||², ||V_k[j,:]||² (deterministic; the reference)
  SampledLeverage,  ///< k draws without replacement, probability proportional to leverage (seeded)
};

/// "topk" | "sampled" -> CURSelection; std::invalid_argument naming the valid values otherwise.
CURSelection parse_cur_selection(const std::string& name);

/// How the linking matrix U = pinv(C) A pinv(R) is computed (A = W diag(s)); both
/// drop the singular values of C and R at or below link_rtol * sigma_max.
enum class CURLinkSolver {
  Auto,  ///< SVD on the CPU, Gram on CUDA
  SVD,   ///< thin fp64 SVDs of C [out, k] and R [k, in]
  Gram,  ///< their fp64 k x k Gram matrices: a Cholesky inverse where a bound proves that nothing
         ///< is cut, else an eigendecomposition; fast on a GPU, where dense SVDs are slow. Used for
         ///< cut-offs >= 1e-6 (fp32 work); below that (fp64 weights) a Gram matrix cannot resolve
         ///< the cut, and SVD is used instead
};

struct CUROptions {
  double param_ratio = 0.9;                            // stored weights / (out*in); rank = largest that fits
  at::Tensor scale;                                    // s [in] (alpha applied, all > 0), or undefined: plain CUR
  int64_t rank_align = 1;                              // the rank is a multiple of this
  CURSelection selection = CURSelection::TopKLeverage;  // how rows and columns are chosen
  bool fold_u = false;                                 // store C·U [out,k] and R: out*k + k*in instead of + k*k
  uint64_t seed = 0;                                   // seed of SampledLeverage
  double link_rtol = -1;                               // pinv cut-off relative to sigma_max; < 0: max(m,n)*eps(work dtype)
  RandomizedSVDOptions svd;                            // how the leverage subspace is computed
  CURLinkSolver link_solver = CURLinkSolver::Auto;     // how pinv(C) A pinv(R) is computed
};

/// Weights a CUR layer of rank k stores: out*k + k*k + k*in, or out*k + k*in with fold_u.
int64_t cur_stored_params(int64_t out_features, int64_t in_features, int64_t rank, const CUROptions& options);

/// The largest multiple of options.rank_align (at most min(out, in)) whose
/// cur_stored_params fits floor(param_ratio * out * in); if none fits, the
/// smallest allowed rank, min(rank_align, out, in), and the layer is over budget.
int64_t cur_rank_for_ratio(int64_t out_features, int64_t in_features, double param_ratio, const CUROptions& options);

/// y = C (U (R x)) + b: C [out,k] = W[:, J], U [k,k], R [k,in] = W[I, :]
/// (the original, unscaled weight), all in the model dtype. With fold_u,
/// C holds C·U and U is undefined.
class CURLinear final : public model::LinearSlot {
 public:
  /// Decomposes `weight` ([out, in], any floating dtype) in fp32 (fp64 if it
  /// is fp64; the pseudo-inverses in fp64) and stores the factors in its dtype
  /// and device. std::invalid_argument for bad shapes, ratios or scales;
  /// CompressionError if the linking matrix is not finite.
  static std::shared_ptr<CURLinear> from_linear(const at::Tensor& weight, const at::Tensor& bias,
                                                const CUROptions& options);

  /// Assembles a layer from stored factors (e.g. a saved model). `u` undefined
  /// means folded; indices are int64 [k]; `budget_params` < 0 means unknown.
  CURLinear(at::Tensor c, at::Tensor u, at::Tensor r, at::Tensor bias, at::Tensor row_indices,
            at::Tensor col_indices, int64_t budget_params = -1);

  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  int64_t weight_params() const override;
  std::string kind() const override { return "cur"; }
  /// "C", "U", "R" (folded: "CU", "R"), "bias" (if any), "row_indices", "col_indices" (int64, CPU).
  /// On CUDA the factors are stored with the rank padded to a multiple of 8 (aligned rows for the
  /// tensor cores), so C and U may be non-contiguous views; changing them in place changes the layer.
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  at::Tensor reconstruct_weight() const override;

  int64_t rank() const { return r_.size(0); }
  bool folded() const { return !u_.defined(); }
  /// I (int64 [k], ascending, CPU): R = W[I, :].
  const at::Tensor& row_indices() const { return row_indices_; }
  /// J (int64 [k], ascending, CPU): C = W[:, J] unless folded.
  const at::Tensor& col_indices() const { return col_indices_; }
  const at::Tensor& c() const { return c_; }
  const at::Tensor& u() const { return u_; }
  const at::Tensor& r() const { return r_; }
  const at::Tensor& bias() const { return bias_; }
  /// floor(param_ratio * out * in) it was built for, or -1.
  int64_t budget_params() const { return budget_params_; }
  /// True when even the smallest allowed rank stores more than the budget.
  bool over_budget() const { return budget_params_ >= 0 && weight_params() > budget_params_; }

 private:
  at::Tensor c_, u_, r_, bias_, row_indices_, col_indices_;
  at::Tensor c_full_, u_full_, r_full_;  // what forward() multiplies with (see state())
  int64_t budget_params_;
};

/// One decomposition of W diag(s) (the top-max_rank subspace), from which CUR
/// layers of any rank up to max_rank are built: sensitivity sweeps decompose
/// once per layer. options.param_ratio is ignored.
class CURFactory final : public PreparedLayer {
 public:
  CURFactory(at::Tensor weight, at::Tensor bias, CUROptions options, int64_t max_rank);
  /// Prepared for every ratio in `ratios`: max_rank = the largest cur_rank_for_ratio.
  static std::unique_ptr<CURFactory> for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                const CUROptions& options, const std::vector<double>& ratios);

  int64_t rank_for(double ratio) const override;
  int64_t max_rank() const override { return subspace_.S.size(0); }
  model::LinearPtr build(double ratio) const override { return build_cur(ratio); }
  /// All ratios with a few device synchronisations in total (not a few per ratio).
  std::vector<model::LinearPtr> build_many(const std::vector<double>& ratios,
                                           std::vector<std::string>* errors = nullptr) const override;
  std::shared_ptr<CURLinear> build_cur(double ratio) const;
  /// A rank-k layer (k <= max_rank), with no budget attached.
  std::shared_ptr<CURLinear> build_rank(int64_t k) const;

  /// The top-max_rank singular triplets of W diag(s) (work dtype).
  const TruncatedSVD& subspace() const { return subspace_; }

 private:
  std::shared_ptr<CURLinear> build_rank_budget(int64_t k, int64_t budget) const;
  // Layers of ranks ks (budgets alongside); a rank whose linking matrix is not
  // finite gets nullptr and its message in errors.
  std::vector<std::shared_ptr<CURLinear>> build_ranks(const std::vector<int64_t>& ks, const std::vector<int64_t>& budgets,
                                                      std::vector<std::string>& errors) const;

  at::Tensor weight_, bias_, scaled_;
  CUROptions options_;
  TruncatedSVD subspace_;
};

/// The "cur" Compressor: CURLinear with fixed options (param_ratio and scale per call).
class CURCompressor final : public Compressor {
 public:
  explicit CURCompressor(CUROptions options = {});
  std::string name() const override { return "cur"; }
  model::LinearPtr compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                            double param_ratio) const override;
  std::unique_ptr<PreparedLayer> prepare(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         const std::vector<double>& ratios) const override;
  int64_t rank_for(int64_t out_features, int64_t in_features, double param_ratio) const override;
  int64_t stored_params(int64_t out_features, int64_t in_features, double param_ratio) const override;

 private:
  CUROptions options_;
};

}  // namespace cur4llm::compress
