#pragma once
/// The compressor strategy shared by every decomposition method: a dense
/// weight, its activation scale and a parameter budget in, a LinearSlot out.

#include <cur4llm/model/linear.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// A decomposition that failed numerically (for example a non-finite linking
/// matrix). The caller can keep the layer dense and warn.
class CompressionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One layer decomposed once, from which slots for several parameter ratios
/// are built cheaply (sensitivity sweeps): the top-k_max singular subspace
/// contains the answers for every smaller rank.
class PreparedLayer {
 public:
  virtual ~PreparedLayer() = default;
  /// The rank a slot built for `ratio` has.
  virtual int64_t rank_for(double ratio) const = 0;
  /// The largest rank this preparation can build.
  virtual int64_t max_rank() const = 0;
  /// The compressed slot for `ratio`; std::invalid_argument if rank_for(ratio) > max_rank().
  virtual model::LinearPtr build(double ratio) const = 0;
  /// Slots for several ratios at once; implementations may share work and
  /// device synchronisations between them. A ratio whose decomposition fails
  /// numerically (CompressionError) gets a null slot and, if `errors` is
  /// given, its message at the same index. The default calls build() per ratio.
  virtual std::vector<model::LinearPtr> build_many(const std::vector<double>& ratios,
                                                   std::vector<std::string>* errors = nullptr) const;
};

/// What a compressor reads per layer through its `scale` argument (and ScaleFn).
enum class LayerStatistic {
  Scale,  ///< s [in] = stat^alpha + 1e-6 (activation-aware), or undefined
  Gram,   ///< G [in, in], float64: the sum (or mean) of x x^T over calibration tokens (data-aware; calib::CollectOptions::gram)
};

/// Strategy: (weight [out, in], bias [out] or undefined, scale s [in] or
/// undefined, param_ratio) -> compressed LinearSlot. The scale is s =
/// stat^alpha + 1e-6 as the caller built it: the method decomposes W diag(s)
/// and folds 1/s back into the input side. A data-aware compressor
/// (statistic() == Gram) takes the input Gram matrix G [in, in] in place of s.
/// Other options are fixed at construction.
class Compressor {
 public:
  virtual ~Compressor() = default;
  /// "cur", "svd", ...: the method's name (the slots' kind may differ, e.g. "svd_whiten" builds "svd" slots).
  virtual std::string name() const = 0;
  /// What the `scale` argument must hold.
  virtual LayerStatistic statistic() const { return LayerStatistic::Scale; }
  /// Compresses one layer. std::invalid_argument for bad shapes or ratios,
  /// CompressionError when the numerics fail.
  virtual model::LinearPtr compress(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                    double param_ratio) const = 0;
  /// Decomposes once for all `ratios` (the largest rank among them).
  virtual std::unique_ptr<PreparedLayer> prepare(const at::Tensor& weight, const at::Tensor& bias,
                                                 const at::Tensor& scale, const std::vector<double>& ratios) const = 0;
  /// The rank compress() would use for an out x in layer, without decomposing.
  virtual int64_t rank_for(int64_t out_features, int64_t in_features, double param_ratio) const = 0;
  /// The weight parameters compress() would store, without decomposing.
  virtual int64_t stored_params(int64_t out_features, int64_t in_features, double param_ratio) const = 0;
  /// What prepare() costs on an out x in weight, in multiply-adds of a forward pass per
  /// out * in * min(out, in): the weight dist::sweep_costs gives a sweep's decompositions against
  /// its forward passes. Measured on a CPU for "cur" (this default) and "svd" (docs/distributed.md).
  virtual double prepare_cost() const { return 40.0; }
};

using CompressorPtr = std::unique_ptr<Compressor>;

/// A layer name -> its scale vector s (undefined tensor: not activation-aware),
/// or its Gram matrix G for a compressor whose statistic() is Gram.
using ScaleFn = std::function<at::Tensor(const std::string& layer)>;

}  // namespace cur4llm::compress
