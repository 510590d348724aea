#pragma once
/// Whitened SVD (SVD-LLM's truncation-aware whitening): the best rank-k
/// approximation of W in the data norm ||(W - W') L||_F, L L^T = G the input
/// Gram matrix: W L = U S V^T, W' = (U_k S_k) (V_k^T L^{-1}). Its error is the
/// sum of the squared singular values of W L beyond k. Stored as an SVDLinear
/// (kind "svd", rank and storage as ASVD's: k (m + n)).
///
///   auto f = WhitenedSVDFactory::for_ratios(w, b, gram, SVDOptions{}, {0.9});
///   auto slot = f->build(0.9);

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/compress/svd_linear.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// One whitened SVD of rank max_rank; SVDLinear layers of every smaller rank.
class WhitenedSVDFactory final : public PreparedLayer {
 public:
  /// `gram`: G [in, in] (a scale s [in] is taken as G = diag(s^2)). Uses
  /// options.rank_align, sigma_fuse and svd; options.scale is ignored.
  /// CompressionError if G cannot be factorised (see whitening_factor).
  WhitenedSVDFactory(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gram, SVDOptions options,
                     int64_t max_rank, const WhitenOptions& whiten = {});
  static std::unique_ptr<WhitenedSVDFactory> for_ratios(const at::Tensor& weight, const at::Tensor& bias,
                                                        const at::Tensor& gram, const SVDOptions& options,
                                                        const std::vector<double>& ratios);

  int64_t rank_for(double ratio) const override;
  int64_t max_rank() const override { return s_.size(0); }
  model::LinearPtr build(double ratio) const override { return build_rank(rank_for(ratio)); }
  std::shared_ptr<SVDLinear> build_rank(int64_t k) const;
  /// Singular values of W L (float64, descending, max_rank of them).
  const at::Tensor& singular_values() const { return s_; }

 private:
  int64_t out_features_, in_features_;
  at::Tensor bias_, u_, s_, vt_linv_;  // U [m, r], S [r], V^T L^{-1} [r, n]: float64
  at::ScalarType dtype_;
  SVDOptions options_;
};

/// The "svd_whiten" Compressor (statistic: Gram).
class WhitenedSVDCompressor final : public Compressor {
 public:
  explicit WhitenedSVDCompressor(SVDOptions options = {});
  std::string name() const override { return "svd_whiten"; }
  LayerStatistic statistic() const override { return LayerStatistic::Gram; }
  model::LinearPtr compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                            double param_ratio) const override;
  std::unique_ptr<PreparedLayer> prepare(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                         const std::vector<double>& ratios) const override;
  int64_t rank_for(int64_t out_features, int64_t in_features, double param_ratio) const override;
  int64_t stored_params(int64_t out_features, int64_t in_features, double param_ratio) const override;

 private:
  SVDOptions options_;
};

}  // namespace cur4llm::compress
