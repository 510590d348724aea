#pragma once
/// Activation statistics of every Linear layer on calibration samples, keyed by
/// the layer's Hugging Face name and independent of any compressor (as
/// llama.cpp's imatrix). What the compressors read from it:
///
///   abs_mean  sum over samples of each sample's mean |x| per input channel
///   abs_max   max over samples and tokens of |x| per input channel
///   fisher    sqrt(mean over samples of mean over output rows of (dL/dW)^2)
///   gram      sum over samples and tokens of x x^T, for data-aware methods
///             (each batch's product in float32, the running sum in float64)
///
/// The scale vector of activation-aware decompositions is
///   s = stat^alpha (times fisher^alpha for fisher_abs_mean) + 1e-6.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::calib {

/// The reference's --scaling_method.
enum class ScalingMethod { AbsMean, AbsMax, Fisher, FisherAbsMean };

/// Parses "abs_mean", "abs_max", "fisher", "fisher_abs_mean"; throws std::invalid_argument.
ScalingMethod parse_scaling_method(const std::string& name);
std::string to_string(ScalingMethod method);

/// What to collect.
struct CollectOptions {
  bool abs_mean = true;        ///< per-channel mean |x| per sample, summed
  bool abs_max = false;        ///< per-channel max |x|
  bool fisher = false;         ///< gradient-based Fisher information (one backward pass per sample;
                               ///< the other statistics then come from a separate plain forward)
  bool gram = false;           ///< input Gram matrix x x^T (float64, in x in per layer)
  int64_t batch_size = 1;      ///< samples per forward pass (equal-length samples only)
  bool show_progress = false;  ///< progress line on stderr
  /// Options that cover what `method` needs.
  static CollectOptions for_method(ScalingMethod method);
};

/// One layer's accumulated statistics (undefined tensors where not collected).
struct LayerStatistics {
  at::Tensor abs_mean_sum;   ///< [in] float32
  at::Tensor abs_max;        ///< [in] float32
  at::Tensor fisher_sq_sum;  ///< [in] float32: sum over samples of mean over rows of G^2
  at::Tensor gram;           ///< [in, in] float64 running sum of float32 batch products
  int64_t samples = 0;
  int64_t tokens = 0;
};

/// Statistics of all layers, on the CPU.
class ActivationStatistics {
 public:
  bool contains(const std::string& layer) const { return layers_.count(layer) > 0; }
  const LayerStatistics& layer(const std::string& name) const;
  LayerStatistics& mutable_layer(const std::string& name) { return layers_[name]; }
  std::vector<std::string> layer_names() const;

  /// The statistic `method` relies on, per input channel (fisher: sqrt of the mean).
  at::Tensor statistic(const std::string& layer, ScalingMethod method) const;
  /// s = stat^alpha (+ fisher^alpha factor) + 1e-6, float32 [in].
  at::Tensor scale(const std::string& layer, ScalingMethod method, double alpha) const;
  /// The mean input Gram matrix E[x x^T] = gram / tokens, float64 [in, in], for
  /// data-aware compressors (LayerStatistic::Gram); std::invalid_argument if not collected.
  at::Tensor mean_gram(const std::string& layer) const;

  /// Saves to / loads from a safetensors file (atomic write; tensors named
  /// "<layer>.<what>", counts in the metadata). load() throws
  /// std::runtime_error naming the file if it is malformed.
  void save(const std::filesystem::path& path, const std::map<std::string, std::string>& metadata = {}) const;
  static ActivationStatistics load(const std::filesystem::path& path, std::map<std::string, std::string>* metadata = nullptr);

 private:
  std::map<std::string, LayerStatistics> layers_;
};

/// Runs the calibration samples through `lm` and collects `options` for every
/// Linear layer (lm_head included). The model's slots are restored on return,
/// also when an exception is thrown.
ActivationStatistics collect_statistics(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                        const CollectOptions& options);

}  // namespace cur4llm::calib
