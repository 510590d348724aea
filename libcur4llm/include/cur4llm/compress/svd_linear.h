#pragma once
/// The ASVD baseline: truncated SVD of W diag(s), 1/s folded into the input
/// side, y = A (B x) + b.

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/randomized_svd.h>
#include <cur4llm/model/linear.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// Where the singular values go: A = U Σ (U), B = Σ V^T S^-1 (V), or sqrt(Σ) to both (UV).
enum class SigmaFuse { U, V, UV };

/// "U" | "V" | "UV" -> SigmaFuse; std::invalid_argument naming the valid values otherwise.
SigmaFuse parse_sigma_fuse(const std::string& name);

struct SVDOptions {
  double param_ratio = 0.9;             // rank = floor(floor(out*in*ratio) / (out+in)), see svd_rank_for_ratio
  at::Tensor scale;                     // s [in] (alpha applied, all > 0), or undefined: plain SVD
  int64_t rank_align = 1;               // the rank is rounded UP to a multiple of this
  SigmaFuse sigma_fuse = SigmaFuse::UV;  // which factor carries the singular values
  RandomizedSVDOptions svd;             // how the truncated SVD is computed
};

/// ASVD's rank: floor(floor(out*in*ratio) / (out+in)) rounded up to a multiple
/// of rank_align, then clamped to [1, min(out, in)].
int64_t svd_rank_for_ratio(int64_t out_features, int64_t in_features, double param_ratio, int64_t rank_align);

/// y = A (B x) + b with A [out, k] ("ALinear.weight") and B [k, in] ("BLinear.weight").
class SVDLinear final : public model::LinearSlot {
 public:
  /// Decomposes in fp32 (fp64 if the weight is fp64); factors in the weight's dtype and device.
  static std::shared_ptr<SVDLinear> from_linear(const at::Tensor& weight, const at::Tensor& bias,
                                                const SVDOptions& options);
  /// From stored factors: a [out, k], b [k, in], bias [out] or undefined.
  SVDLinear(at::Tensor a, at::Tensor b, at::Tensor bias);

  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return b_.size(1); }
  int64_t out_features() const override { return a_.size(0); }
  int64_t weight_params() const override { return a_.numel() + b_.numel(); }
  std::string kind() const override { return "svd"; }
  /// The reference's names: "ALinear.weight", "ALinear.bias" (if any), "BLinear.weight". On CUDA
  /// the rank is padded to a multiple of 8 in storage, so A may be a non-contiguous view;
  /// changing the factors in place changes the layer.
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  at::Tensor reconstruct_weight() const override;

  int64_t rank() const { return b_.size(0); }
  const at::Tensor& a() const { return a_; }
  const at::Tensor& b() const { return b_; }
  const at::Tensor& bias() const { return bias_; }

 private:
  at::Tensor a_, b_, bias_;
  at::Tensor a_full_, b_full_;  // what forward() multiplies with (see state())
};

/// One truncated SVD of W diag(s) of rank max_rank; builds SVDLinear of any smaller rank.
class SVDFactory final : public PreparedLayer {
 public:
  SVDFactory(const at::Tensor& weight, at::Tensor bias, SVDOptions options, int64_t max_rank);
  int64_t rank_for(double ratio) const override;
  int64_t max_rank() const override { return subspace_.S.size(0); }
  model::LinearPtr build(double ratio) const override { return build_rank(rank_for(ratio)); }
  std::shared_ptr<SVDLinear> build_rank(int64_t k) const;

 private:
  int64_t out_features_, in_features_;
  at::Tensor bias_, inv_scale_;
  at::ScalarType dtype_;
  SVDOptions options_;
  TruncatedSVD subspace_;
};

/// The "svd" Compressor (ASVD).
class SVDCompressor final : public Compressor {
 public:
  explicit SVDCompressor(SVDOptions options = {});
  std::string name() const override { return "svd"; }
  double prepare_cost() const override { return 5.6; }  // measured on a CPU (docs/distributed.md)
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
