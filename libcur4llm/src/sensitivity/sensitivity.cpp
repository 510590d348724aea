#include <cur4llm/sensitivity/sensitivity.h>

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/randomized_svd.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/stable_rank.h>
#include <cur4llm/util/progress.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>

namespace cur4llm::sensitivity {
namespace {

bool is_kv(const std::string& name) {
  return name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
}

// Calibration samples grouped by length, as id tensors of at most batch_size rows.
struct Batch {
  at::Tensor ids;     // [b, T] on the model's device
  at::Tensor hidden;  // hidden states entering the current layer (reuse mode)
};

std::vector<Batch> make_batches(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                int64_t batch_size) {
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].size() < 2) throw std::invalid_argument(fmt::format("calibration sample {} is too short", i));
    by_length[samples[i].size()].push_back(i);
  }
  std::vector<Batch> batches;
  const size_t per = static_cast<size_t>(std::max<int64_t>(1, batch_size));
  for (const auto& [length, members] : by_length) {
    for (size_t start = 0; start < members.size(); start += per) {
      const size_t n = std::min(per, members.size() - start);
      auto ids = at::empty({static_cast<int64_t>(n), static_cast<int64_t>(length)}, at::kLong);
      for (size_t r = 0; r < n; ++r) {
        const auto& s = samples[members[start + r]];
        std::copy(s.begin(), s.end(), ids[static_cast<int64_t>(r)].data_ptr<int64_t>());
      }
      batches.push_back({ids.to(lm.device()), at::Tensor()});
    }
  }
  return batches;
}

// exp(mean over samples of each sample's mean NLL), running from `first_layer`
// on cached hidden states, or a full forward when first_layer < 0.
double calibration_ppl(const model::CausalLM& lm, const std::vector<Batch>& batches, int64_t first_layer,
                       int64_t num_samples) {
  at::Tensor sum;
  for (const Batch& b : batches) {
    auto nll = first_layer < 0 ? eval::sequence_nll(lm, b.ids)
                               : eval::sequence_nll_from(lm, first_layer, b.hidden, b.ids);
    auto s = nll.sum();
    sum = sum.defined() ? sum + s : s;
  }
  return std::exp(sum.item<double>() / static_cast<double>(num_samples));  // one synchronisation per entry
}


}  // namespace

std::vector<std::string> sweep_layers(const model::CausalLM& lm, const SweepOptions& options) {
  std::vector<std::string> out;
  if (!options.layers.empty()) {
    for (const auto& name : options.layers) {
      if (!lm.has_linear(name)) throw std::invalid_argument(fmt::format("the model has no Linear layer \"{}\"", name));
      out.push_back(name);
    }
    return out;
  }
  for (const auto& info : lm.linears()) {
    if (options.mode == search::CompressMode::kKvCache && !is_kv(info.name)) continue;
    out.push_back(info.name);
  }
  return out;
}

search::SensitivityTable ppl_sensitivity(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                         const compress::Compressor& compressor, const ScaleFn& scale,
                                         const SweepOptions& options) {
  if (samples.empty()) throw std::invalid_argument("ppl_sensitivity: no calibration samples");
  const auto candidates = options.candidates.empty() ? search::candidate_ratios(options.mode) : options.candidates;
  const auto names = sweep_layers(lm, options);
  std::map<std::string, const model::LinearInfo*> info_of;
  for (const auto& info : lm.linears()) info_of[info.name] = &info;

  c10::InferenceMode guard;
  auto batches = make_batches(lm, samples, options.batch_size);
  const auto num_samples = static_cast<int64_t>(samples.size());

  // Visit layers in model order so that the cached hidden states only move forward.
  // Slots outside the decoder layers (lm_head, OPT's project_in/out) come last:
  // lm_head runs from the final hidden states; the projections need a full forward.
  std::vector<std::string> ordered;
  for (const auto& info : lm.linears()) {
    if (std::find(names.begin(), names.end(), info.name) != names.end()) ordered.push_back(info.name);
  }
  const int64_t total = static_cast<int64_t>(ordered.size() * candidates.size());
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) progress = std::make_unique<util::Progress>("sensitivity", total, "entries");

  search::SensitivityTable table("ppl");
  int64_t cached_layer = 0;  // the layer whose input the batches' hidden states hold
  if (options.reuse_hidden_states) {
    for (auto& b : batches) b.hidden = lm.embed(b.ids);
  }
  auto advance_to = [&](int64_t layer) {
    for (; cached_layer < layer; ++cached_layer) {
      for (auto& b : batches) b.hidden = lm.layer(cached_layer, b.hidden);
    }
  };

  for (const auto& name : ordered) {
    const model::LinearInfo& info = *info_of.at(name);
    int64_t first_layer = -1;  // full forward
    if (options.reuse_hidden_states) {
      if (info.layer >= 0) {
        first_layer = info.layer;
      } else if (name.find("project_in") == std::string::npos) {
        first_layer = lm.num_layers();  // lm_head, OPT's project_out: after every decoder layer
      }
      if (first_layer >= 0) advance_to(first_layer);
    }
    const auto original = lm.linear_ptr(name);
    const auto* dense = dynamic_cast<const model::DenseLinear*>(original.get());
    if (!dense) throw std::invalid_argument(fmt::format("layer \"{}\" is already {}, not dense", name, original->kind()));
    std::unique_ptr<compress::PreparedLayer> prepared;
    try {
      prepared = compressor.prepare(dense->weight(), dense->bias(), scale ? scale(name) : at::Tensor(), candidates);
    } catch (const compress::CompressionError& e) {
      fmt::print(stderr, "warning: {} cannot be decomposed ({}); it scores +inf\n", name, e.what());
    }
    for (double ratio : candidates) {
      double ppl = std::numeric_limits<double>::infinity();
      if (prepared) {
        try {
          model::ScopedSlots trial(lm);
          trial.replace(name, prepared->build(ratio));
          ppl = calibration_ppl(lm, batches, first_layer, num_samples);
        } catch (const compress::CompressionError& e) {
          fmt::print(stderr, "warning: {} at ratio {} cannot be decomposed ({}); it scores +inf\n", name, ratio, e.what());
        }
      }
      if (std::isnan(ppl)) ppl = std::numeric_limits<double>::infinity();
      table.add(name, ratio, ppl);
      if (progress) progress->advance();
    }
  }
  return table;
}

search::SensitivityTable stable_rank_sensitivity(const model::CausalLM& lm, const SweepOptions& options) {
  const auto candidates = options.candidates.empty() ? search::stable_rank_candidate_ratios() : options.candidates;
  search::SensitivityTable table("stable_rank");
  for (const auto& name : sweep_layers(lm, options)) {
    const double sr = compress::stable_rank(lm.linear(name).reconstruct_weight(), {});
    search::add_stable_rank_scores(table, name, sr, candidates);
  }
  return table;
}

}  // namespace cur4llm::sensitivity
