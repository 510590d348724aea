#pragma once
/// Data-aware CUR: W' = C U R with C = W[:, J] and R = W[I, :] real columns
/// and rows, chosen and linked for the output error ||(W - W') L||_F
/// (L L^T = G, the input Gram matrix; compress/gram.h):
///  - rows I from the top-k left singular vectors U_k of W L,
///  - columns J from the right singular vectors of U_k^T W (the coordinates of
///    W's columns in the dominant output subspace),
///    each by top-k leverage, DEIM or pivoted QR (SubsetSelection);
///  - U = C^+ (W L) (R L)^+, the best link for that norm (thin fp64 SVDs with
///    the relative cut-off link_rtol).
/// Stored as a CURLinear (kind "cur"): m k + k^2 + k n weights, the rank as "cur".

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/compress/randomized_svd.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cur4llm::compress {

struct DataCUROptions {
  SubsetSelection selection = SubsetSelection::DEIM;  // how I and J are picked
  int64_t rank_align = 1;                             // the rank is a multiple of this
  double link_rtol = -1;                              // pinv cut-off relative to sigma_max; < 0: max(m, n) eps(fp64)
  RandomizedSVDOptions svd;                           // how the top subspace of W L is computed
  WhitenOptions whiten;                               // Cholesky of G
};

/// One whitened top-max_rank SVD per layer; CURLinear layers of every smaller rank.
class DataCURFactory final : public PreparedLayer {
 public:
  /// `gram`: G [in, in] (a scale s [in] is taken as G = diag(s^2)).
  DataCURFactory(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gram, DataCUROptions options,
                 int64_t max_rank);
  static std::unique_ptr<DataCURFactory> for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                    const at::Tensor& gram, const DataCUROptions& options,
                                                    const std::vector<double>& ratios);

  int64_t rank_for(double ratio) const override;
  int64_t max_rank() const override { return u_.size(1); }
  model::LinearPtr build(double ratio) const override;
  /// A rank-k layer (indices ascending), no budget attached.
  std::shared_ptr<CURLinear> build_rank(int64_t k) const { return build_rank_budget(k, -1); }

 private:
  std::shared_ptr<CURLinear> build_rank_budget(int64_t k, int64_t budget) const;

  at::Tensor weight_, bias_, w64_, whitened_, l_, u_;  // whitened_ = W L, u_ = top left singular vectors of W L
  DataCUROptions options_;
};

/// "cur_whiten" (leverage), "cur_deim", "cur_qr": DataCURFactory with one selection (statistic: Gram).
class DataCURCompressor final : public Compressor {
 public:
  explicit DataCURCompressor(DataCUROptions options);
  std::string name() const override;
  LayerStatistic statistic() const override { return LayerStatistic::Gram; }
  model::LinearPtr compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                            double param_ratio) const override;
  std::unique_ptr<PreparedLayer> prepare(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         const std::vector<double>& ratios) const override;
  int64_t rank_for(int64_t out_features, int64_t in_features, double param_ratio) const override;
  int64_t stored_params(int64_t out_features, int64_t in_features, double param_ratio) const override;

 private:
  DataCUROptions options_;
};

}  // namespace cur4llm::compress
