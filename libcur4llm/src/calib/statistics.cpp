#include <cur4llm/calib/statistics.h>

#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/util/progress.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <map>
#include <memory>
#include <stdexcept>

namespace cur4llm::calib {
namespace {

// Observes a slot's inputs, then computes what the slot computes. `weight` is
// a leaf that requires grad when Fisher information is collected.
class RecordingSlot final : public model::ForwardingSlot {
 public:
  RecordingSlot(model::LinearPtr inner, LayerStatistics* out, const CollectOptions& options, at::Tensor leaf_weight)
      : ForwardingSlot(std::move(inner)), out_(out), options_(options), leaf_(std::move(leaf_weight)) {}

  at::Tensor forward(const at::Tensor& x) const override {
    if (recording_) record(x);
    if (leaf_.defined()) {
      const auto* dense = dynamic_cast<const model::DenseLinear*>(inner().get());
      return at::linear(x, leaf_, dense->bias());
    }
    return ForwardingSlot::forward(x);
  }

  const at::Tensor& leaf() const { return leaf_; }
  void set_recording(bool on) { recording_ = on; }

 private:
  void record(const at::Tensor& input) const {
    c10::NoGradGuard no_grad;
    // [batch, tokens, in]; a 2-d input is one sample.
    const auto x = (input.dim() == 2 ? input.unsqueeze(0) : input).detach();
    const auto absx = x.abs().to(at::kFloat);
    if (options_.abs_mean) {
      auto per_sample = absx.mean(1).sum(0);  // sum over samples of each sample's token mean
      out_->abs_mean_sum = out_->abs_mean_sum.defined() ? out_->abs_mean_sum + per_sample : per_sample;
    }
    if (options_.abs_max) {
      auto m = absx.amax({0, 1});
      out_->abs_max = out_->abs_max.defined() ? at::maximum(out_->abs_max, m) : m;
    }
    if (options_.gram) {
      auto flat = x.reshape({-1, x.size(-1)}).to(at::kFloat);
      auto g = at::mm(flat.t(), flat).to(at::kDouble);
      out_->gram = out_->gram.defined() ? out_->gram + g : g;
    }
    out_->tokens += x.size(0) * x.size(1);
  }

  LayerStatistics* out_;
  const CollectOptions& options_;
  at::Tensor leaf_;
  bool recording_ = true;
};

// Swaps recording slots in for every Linear and puts the originals back on
// destruction, also during stack unwinding (and when the constructor throws
// half way, e.g. on a compressed layer in Fisher mode).
class RecordingScope {
 public:
  RecordingScope(model::CausalLM& lm, std::map<std::string, LayerStatistics>& stats, const CollectOptions& options)
      : slots_(lm) {
    // slots_ restores whatever was swapped in if this throws partway.
    for (const auto& info : lm.linears()) {
      auto original = lm.linear_ptr(info.name);
      at::Tensor leaf;
      if (options.fisher) {
        const auto* dense = dynamic_cast<const model::DenseLinear*>(original.get());
        if (!dense) {
          throw std::invalid_argument(
              fmt::format("Fisher information needs dense layers; \"{}\" is {}", info.name, original->kind()));
        }
        leaf = dense->weight().detach().requires_grad_(true);
      }
      auto recorder = std::make_shared<RecordingSlot>(original, &stats[info.name], options, leaf);
      recorders_.emplace_back(info.name, recorder);
      slots_.replace(info.name, recorder);
    }
  }
  const std::vector<std::pair<std::string, std::shared_ptr<RecordingSlot>>>& recorders() const { return recorders_; }
  void set_recording(bool on) {
    for (auto& [name, recorder] : recorders_) recorder->set_recording(on);
  }

 private:
  model::ScopedSlots slots_;
  std::vector<std::pair<std::string, std::shared_ptr<RecordingSlot>>> recorders_;
};

at::Tensor to_ids(const std::vector<std::vector<int64_t>>& samples, size_t first, size_t count) {
  const auto len = static_cast<int64_t>(samples[first].size());
  auto ids = at::empty({static_cast<int64_t>(count), len}, at::kLong);
  for (size_t r = 0; r < count; ++r) {
    std::copy(samples[first + r].begin(), samples[first + r].end(), ids[static_cast<int64_t>(r)].data_ptr<int64_t>());
  }
  return ids;
}

}  // namespace

ScalingMethod parse_scaling_method(const std::string& name) {
  if (name == "abs_mean") return ScalingMethod::AbsMean;
  if (name == "abs_max") return ScalingMethod::AbsMax;
  if (name == "fisher") return ScalingMethod::Fisher;
  if (name == "fisher_abs_mean") return ScalingMethod::FisherAbsMean;
  throw std::invalid_argument(
      fmt::format("unknown scaling method \"{}\" (use abs_mean, abs_max, fisher or fisher_abs_mean)", name));
}

std::string to_string(ScalingMethod method) {
  switch (method) {
    case ScalingMethod::AbsMean: return "abs_mean";
    case ScalingMethod::AbsMax: return "abs_max";
    case ScalingMethod::Fisher: return "fisher";
    case ScalingMethod::FisherAbsMean: return "fisher_abs_mean";
  }
  return "?";
}

CollectOptions CollectOptions::for_method(ScalingMethod method) {
  CollectOptions o;
  o.abs_mean = method == ScalingMethod::AbsMean || method == ScalingMethod::FisherAbsMean;
  o.abs_max = method == ScalingMethod::AbsMax;
  o.fisher = method == ScalingMethod::Fisher || method == ScalingMethod::FisherAbsMean;
  return o;
}

const LayerStatistics& ActivationStatistics::layer(const std::string& name) const {
  auto it = layers_.find(name);
  if (it == layers_.end()) throw std::invalid_argument(fmt::format("no activation statistics for layer \"{}\"", name));
  return it->second;
}

std::vector<std::string> ActivationStatistics::layer_names() const {
  std::vector<std::string> names;
  for (const auto& [name, stats] : layers_) names.push_back(name);
  return names;
}

at::Tensor ActivationStatistics::statistic(const std::string& name, ScalingMethod method) const {
  const LayerStatistics& s = layer(name);
  auto need = [&](const at::Tensor& t, const char* what) -> const at::Tensor& {
    if (!t.defined()) throw std::invalid_argument(fmt::format("layer \"{}\": {} was not collected", name, what));
    return t;
  };
  switch (method) {
    case ScalingMethod::AbsMean:
      return need(s.abs_mean_sum, "abs_mean");
    case ScalingMethod::AbsMax:
      return need(s.abs_max, "abs_max");
    case ScalingMethod::Fisher:
    case ScalingMethod::FisherAbsMean:
      if (s.samples <= 0) throw std::invalid_argument(fmt::format("layer \"{}\": no samples", name));
      return (need(s.fisher_sq_sum, "fisher") / static_cast<double>(s.samples)).sqrt();
  }
  throw std::logic_error("unknown scaling method");
}

at::Tensor ActivationStatistics::scale(const std::string& name, ScalingMethod method, double alpha) const {
  if (alpha < 0) throw std::invalid_argument(fmt::format("alpha must be >= 0, not {}", alpha));
  at::Tensor s;
  if (method == ScalingMethod::FisherAbsMean) {
    s = statistic(name, ScalingMethod::AbsMean).pow(alpha) * statistic(name, ScalingMethod::Fisher).pow(alpha);
  } else {
    s = statistic(name, method).pow(alpha);
  }
  return s.to(at::kFloat) + 1e-6;
}

at::Tensor ActivationStatistics::mean_gram(const std::string& name) const {
  const LayerStatistics& s = layer(name);
  if (!s.gram.defined()) throw std::invalid_argument(fmt::format("layer \"{}\": the Gram matrix was not collected", name));
  if (s.tokens <= 0) throw std::invalid_argument(fmt::format("layer \"{}\": no tokens", name));
  return s.gram.to(at::kDouble) / static_cast<double>(s.tokens);
}

void ActivationStatistics::save(const std::filesystem::path& path, const std::map<std::string, std::string>& metadata) const {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> meta = metadata;
  for (const auto& [name, s] : layers_) {
    if (s.abs_mean_sum.defined()) tensors.emplace_back(name + ".abs_mean_sum", s.abs_mean_sum);
    if (s.abs_max.defined()) tensors.emplace_back(name + ".abs_max", s.abs_max);
    if (s.fisher_sq_sum.defined()) tensors.emplace_back(name + ".fisher_sq_sum", s.fisher_sq_sum);
    if (s.gram.defined()) tensors.emplace_back(name + ".gram", s.gram);
    meta["counts." + name] = fmt::format("{} {}", s.samples, s.tokens);
  }
  io::save_safetensors_checked(path, tensors, meta);  // load() verifies the checksum
}

ActivationStatistics ActivationStatistics::load(const std::filesystem::path& path,
                                                std::map<std::string, std::string>* metadata) {
  io::SafetensorsFile file(path);
  file.verify_data_checksum();  // a flipped bit must not pass for valid statistics
  ActivationStatistics out;
  for (const auto& [key, value] : file.metadata()) {
    if (key == io::kDataChecksumKey) continue;
    if (key.rfind("counts.", 0) == 0) {
      LayerStatistics& s = out.layers_[key.substr(7)];
      if (std::sscanf(value.c_str(), "%ld %ld", &s.samples, &s.tokens) != 2) {
        throw std::runtime_error(fmt::format("{}: metadata \"{}\" is not \"samples tokens\"", path.string(), key));
      }
    } else if (metadata) {
      (*metadata)[key] = value;
    }
  }
  for (const auto& name : file.names()) {
    const auto dot = name.rfind('.');
    const std::string layer = name.substr(0, dot), what = dot == std::string::npos ? "" : name.substr(dot + 1);
    auto it = out.layers_.find(layer);
    if (it == out.layers_.end()) {
      throw std::runtime_error(fmt::format("{}: tensor \"{}\" has no counts in the metadata", path.string(), name));
    }
    LayerStatistics& s = it->second;
    if (what == "abs_mean_sum") s.abs_mean_sum = file.load(name);
    else if (what == "abs_max") s.abs_max = file.load(name);
    else if (what == "fisher_sq_sum") s.fisher_sq_sum = file.load(name);
    else if (what == "gram") s.gram = file.load(name);
    else throw std::runtime_error(fmt::format("{}: unknown statistic tensor \"{}\"", path.string(), name));
  }
  return out;
}

ActivationStatistics collect_statistics(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                        const CollectOptions& options) {
  if (samples.empty()) throw std::invalid_argument("collect_statistics: no calibration samples");
  std::map<std::string, LayerStatistics> stats;
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) {
    progress = std::make_unique<util::Progress>("statistics", static_cast<int64_t>(samples.size()), "samples");
  }
  // With layers offloaded to host memory, the recording passes go layer by layer, every batch
  // through a layer before the next one runs (its hidden states parked in host memory), so that
  // an offloaded layer is copied to its device once rather than once per batch.
  const bool offloaded = lm.offloads_layers();
  std::vector<at::Tensor> deferred;  // the recording passes' ids, when they go layer by layer
  {
    RecordingScope scope(lm, stats, options);
    // Fisher needs one backward pass per sample (squares of per-sample
    // gradients); the other statistics batch equal-length samples.
    const size_t batch = options.fisher ? 1 : static_cast<size_t>(std::max<int64_t>(1, options.batch_size));
    for (size_t first = 0; first < samples.size();) {
      size_t count = 1;
      while (count < batch && first + count < samples.size() && samples[first + count].size() == samples[first].size()) {
        ++count;
      }
      if (samples[first].size() < 2) throw std::invalid_argument(fmt::format("calibration sample {} is too short", first));
      const auto ids = to_ids(samples, first, count);
      if (options.fisher) {
        // The causal-LM loss of the sample (mean over its next-token predictions).
        // This pass records no activations: lm_head sees only the T-1 predicting
        // positions here, in vocabulary-sized chunks, not the whole sample.
        scope.set_recording(false);
        auto loss = eval::sequence_nll(lm, ids).mean();
        loss.backward();
        scope.set_recording(true);
        for (const auto& [name, recorder] : scope.recorders()) {
          auto& leaf = const_cast<at::Tensor&>(recorder->leaf());
          const auto g = leaf.grad();
          if (!g.defined()) continue;  // a layer the loss does not reach
          auto sq = g.to(at::kFloat).pow(2).mean(0);
          LayerStatistics& s = stats[name];
          s.fisher_sq_sum = s.fisher_sq_sum.defined() ? s.fisher_sq_sum + sq : sq;
          leaf.mutable_grad() = at::Tensor();
        }
      }
      if (!options.fisher || options.abs_mean || options.abs_max || options.gram) {
        if (offloaded) {
          deferred.push_back(ids);
        } else {
          // The whole sequence, as the reference's forward hooks see it.
          c10::InferenceMode guard;
          (void)lm.forward(ids);
        }
      } else {
        for (auto& [name, s] : stats) s.tokens += ids.numel();  // what a recording pass would count
      }
      for (auto& [name, s] : stats) s.samples += static_cast<int64_t>(count);
      first += count;
      if (progress && deferred.empty()) progress->advance(static_cast<int64_t>(count));
    }
    if (!deferred.empty()) {
      // The same passes, layer by layer; each layer still sees the batches in order.
      c10::InferenceMode guard;
      std::vector<at::Tensor> hidden;
      for (const auto& ids : deferred) hidden.push_back(lm.embed(ids).to(at::kCPU));
      lm.layers(0, lm.num_layers(), hidden, /*park_on_host=*/true);
      for (const auto& h : hidden) (void)lm.head(h.to(lm.head_device()));
      if (progress) progress->advance(static_cast<int64_t>(samples.size()));
    }
  }
  ActivationStatistics out;
  for (auto& [name, s] : stats) {
    LayerStatistics& dst = out.mutable_layer(name);
    dst.samples = s.samples;
    dst.tokens = s.tokens;
    if (s.abs_mean_sum.defined()) dst.abs_mean_sum = s.abs_mean_sum.cpu();
    if (s.abs_max.defined()) dst.abs_max = s.abs_max.cpu();
    if (s.fisher_sq_sum.defined()) dst.fisher_sq_sum = s.fisher_sq_sum.cpu();
    if (s.gram.defined()) dst.gram = s.gram.cpu();
  }
  return out;
}

}  // namespace cur4llm::calib
