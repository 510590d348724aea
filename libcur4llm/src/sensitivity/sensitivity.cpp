#include <cur4llm/sensitivity/sensitivity.h>

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/randomized_svd.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/stable_rank.h>
#include <cur4llm/util/device.h>
#include <cur4llm/util/progress.h>

#include "fused/fused_ops.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
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
  at::Tensor ids;              // [b, T] on the model's device
  at::Tensor hidden;           // hidden states entering the current layer (reuse mode)
  model::LayerPrefix prefix;   // the current layer up to the swept slot (reuse mode, decoder slots)
};

int64_t samples_per_batch(const std::vector<std::vector<int64_t>>& samples, const SweepOptions& options) {
  if (options.batch_size > 0) return options.batch_size;
  size_t longest = 0;
  for (const auto& s : samples) longest = std::max(longest, s.size());
  return std::max<int64_t>(1, options.batch_tokens / std::max<int64_t>(1, static_cast<int64_t>(longest)));
}

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
      // Checked here, on the host: embed() trusts ids that are already on the device.
      const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
      if (lo < 0 || hi >= lm.config().vocab_size) {
        throw std::invalid_argument(fmt::format("calibration token id {} is outside the vocabulary [0, {})",
                                                lo < 0 ? lo : hi, lm.config().vocab_size));
      }
      batches.push_back({ids.to(lm.device()), at::Tensor(), model::LayerPrefix()});
    }
  }
  return batches;
}

// Sum over samples of each sample's mean NLL, as a 0-d float64 tensor on the
// device (no synchronisation): from the batches' layer prefixes where they are
// set, else from `first_layer` on cached hidden states, or a full forward when
// first_layer < 0.
at::Tensor nll_sum(const model::CausalLM& lm, const std::vector<Batch>& batches, int64_t first_layer,
                   const eval::NllOptions& nll_options) {
  // Full forwards with a layer offloaded to host memory: the batches pass the layers together, so
  // that each such layer is copied to its device once per entry rather than once per batch. (From
  // a decoder layer on, candidates_nll_sums does this for all candidates at once.)
  if (first_layer < 0 && lm.offloads_layers()) {
    std::vector<at::Tensor> hidden, ids;
    for (const Batch& b : batches) {
      hidden.push_back(lm.embed(b.ids));
      ids.push_back(b.ids);
    }
    at::Tensor sum;
    for (const auto& nll : eval::sequence_nll_from_batches(lm, 0, std::move(hidden), ids, nll_options)) {
      sum = sum.defined() ? sum + nll.sum() : nll.sum();
    }
    return sum;
  }
  at::Tensor sum;
  for (const Batch& b : batches) {
    auto nll = first_layer < 0          ? eval::sequence_nll(lm, b.ids, nll_options)
               : b.prefix.layer >= 0 ? eval::sequence_nll_resume(lm, b.prefix, b.ids, nll_options)
                                     : eval::sequence_nll_from(lm, first_layer, b.hidden, b.ids, nll_options);
    auto s = nll.sum();
    sum = sum.defined() ? sum + s : s;
  }
  return sum;
}

// Each candidate's sum over samples of each sample's mean NLL (as nll_sum), for a slot `name` of
// decoder layer `layer`, whose batches hold the hidden states entering that layer (or its prefix):
// every candidate's batches pass the layers after it together, so that a layer offloaded to host
// memory there is copied in once for all of them (the slot's own layer, when offloaded, once per
// candidate: it runs with that candidate in it). Undefined where a candidate has no slot.
std::vector<at::Tensor> candidates_nll_sums(model::CausalLM& lm, const std::vector<Batch>& batches, int64_t layer,
                                            const std::string& name, const std::vector<model::LinearPtr>& slots,
                                            const eval::NllOptions& nll_options) {
  std::vector<at::Tensor> hidden, ids;
  std::vector<size_t> owner;  // the candidate of each entry of hidden
  for (size_t j = 0; j < slots.size(); ++j) {
    if (!slots[j]) continue;
    model::ScopedSlots trial(lm);
    trial.replace(name, slots[j]);
    std::vector<at::Tensor> out;
    if (!batches.empty() && batches.front().prefix.layer >= 0) {
      for (const Batch& b : batches) out.push_back(lm.layer_resume(b.prefix));
    } else {
      for (const Batch& b : batches) out.push_back(b.hidden);
      lm.layers(layer, layer + 1, out);  // the slot's layer with the candidate in it
    }
    for (size_t b = 0; b < batches.size(); ++b) {
      hidden.push_back(std::move(out[b]));
      ids.push_back(batches[b].ids);
      owner.push_back(j);
    }
  }
  const auto nll = eval::sequence_nll_from_batches(lm, layer + 1, std::move(hidden), ids, nll_options);
  std::vector<at::Tensor> sums(slots.size());
  for (size_t k = 0; k < nll.size(); ++k) {
    auto s = nll[k].sum();
    sums[owner[k]] = sums[owner[k]].defined() ? sums[owner[k]] + s : s;
  }
  return sums;
}

// Seconds spent in a phase, measured only when profiling (then the device is
// synchronised at the phase's end, so that its queued work is counted).
class PhaseTimer {
 public:
  PhaseTimer(SweepProfile* profile, double SweepProfile::*field, c10::Device device)
      : profile_(profile), field_(field), device_(device), start_(std::chrono::steady_clock::now()) {}
  ~PhaseTimer() {
    if (!profile_) return;
    try {
      util::synchronize(device_);
    } catch (...) {
    }
    profile_->*field_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  SweepProfile* profile_;
  double SweepProfile::*field_;
  c10::Device device_;
  std::chrono::steady_clock::time_point start_;
};

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
  SweepProfile* profile = options.profile;
  const auto device = lm.device();
  // Everything the sweep queues goes to a stream of its own (see PrivateStream).
  fused::PrivateStream stream(device);
  const int64_t per_batch = samples_per_batch(samples, options);
  auto batches = make_batches(lm, samples, per_batch);
  const auto num_samples = static_cast<int64_t>(samples.size());
  const eval::NllOptions nll_options{options.logits_chunk_tokens};
  if (profile) {
    profile->batches = static_cast<int64_t>(batches.size());
    for (const auto& b : batches) profile->batch_size = std::max(profile->batch_size, b.ids.size(0));
  }

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
    PhaseTimer timer(profile, &SweepProfile::advance_s, device);
    for (auto& b : batches) b.hidden = lm.embed(b.ids);
  }
  auto advance_to = [&](int64_t layer) {
    PhaseTimer timer(profile, &SweepProfile::advance_s, device);
    if (cached_layer >= layer) return;
    std::vector<at::Tensor> hidden;
    for (auto& b : batches) hidden.push_back(std::move(b.hidden));
    lm.layers(cached_layer, layer, hidden);  // an offloaded layer: copied in once for every batch
    for (size_t i = 0; i < batches.size(); ++i) batches[i].hidden = std::move(hidden[i]);
    cached_layer = layer;
  };

  // Every candidate's slot of one layer, built before its forward passes so
  // that those queue up on the device without waiting for the host. Outside
  // profiling, the next layer is decomposed on a second stream, by a host
  // thread of its own, while this thread queues the current layer's forward
  // passes: that thread sees only the inputs gathered here beforehand (the
  // model's slots change under the trials).
  struct Source {
    std::string name;
    at::Tensor weight, bias, scale;  // the tensors hold their storage while the layer is decomposed
  };
  auto compute_device = [&](const std::string& name) {
    const int64_t layer = info_of.at(name)->layer;
    return layer >= 0 ? lm.layer_device(layer) : lm.dense_linear(name).weight().device();
  };
  auto gather = [&](const std::string& name) {
    const auto& dense = lm.dense_linear(name);
    // Detached: new tensors on the same storage, which an offloaded layer's staging (it swaps
    // the storage of the layer's own tensors for device copies) leaves as they are while the
    // side stream's thread reads them.
    return Source{name, dense.weight().detach(), dense.bias().defined() ? dense.bias().detach() : at::Tensor(),
                  scale ? scale(name) : at::Tensor()};
  };
  struct Decomposed {
    std::vector<model::LinearPtr> slots;
    std::vector<std::string> errors;
  };
  auto decompose = [&](const Source& source) {
    Decomposed d{std::vector<model::LinearPtr>(candidates.size()), std::vector<std::string>(candidates.size())};
    // An offloaded layer's weight lives in host memory: it is decomposed on the device
    // that runs the layer, as a resident one is (the host would take far longer).
    const c10::Device on = compute_device(source.name);
    auto there = [&](const at::Tensor& t) { return t.defined() && t.device() != on ? t.to(on) : t; };
    try {
      auto prepared = compressor.prepare(there(source.weight), there(source.bias), there(source.scale), candidates);
      d.slots = prepared->build_many(candidates, &d.errors);
    } catch (const compress::CompressionError& e) {
      fmt::print(stderr, "warning: {} cannot be decomposed ({}); it scores +inf\n", source.name, e.what());
      d.slots.assign(candidates.size(), nullptr);
      d.errors.assign(candidates.size(), std::string());
    }
    return d;
  };
  auto slot_tensors = [](const Decomposed& d) {
    std::vector<at::Tensor> out;
    for (const auto& slot : d.slots) {
      if (!slot) continue;
      for (auto& [key, t] : slot->state()) out.push_back(t);
    }
    return out;
  };
  const bool overlap = profile == nullptr && options.overlap;
  // Declared before the side stream, whose destructor waits for a running decomposition.
  std::vector<Source> sources;
  Decomposed next;
  fused::SideStream side(device);
  if (overlap) {
    // Every input up front (scales may be computed on the device), then one
    // synchronisation: the side stream reads what this one made.
    for (const auto& name : ordered) sources.push_back(gather(name));
    util::synchronize(device);
    if (!sources.empty()) side.run([&] { next = decompose(sources.front()); });
  }

  for (size_t index = 0; index < ordered.size(); ++index) {
    const auto& name = ordered[index];
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

    const double decompose_before = profile ? profile->decompose_s : 0.0;
    const double forward_before = profile ? profile->forward_s : 0.0;
    {
      PhaseTimer timer(profile, &SweepProfile::forward_s, device);
      // The part of the slot's layer before it is the same for every candidate:
      // computed once, and queued before waiting for the layer's decomposition.
      // An offloaded layer runs whole (its weights are brought in for the call), so it is not resumed.
      const bool resume =
          options.reuse_hidden_states && info.layer >= 0 && info.role.has_value() && !lm.layer_offloaded(info.layer);
      for (auto& b : batches) {
        b.prefix = resume ? lm.layer_prefix(info.layer, b.hidden, *info.role) : model::LayerPrefix();
      }
    }
    Decomposed current;
    if (overlap) {
      side.wait();  // the decomposition of this layer (rethrows its error)
      current = std::move(next);
      side.join(slot_tensors(current));  // the forward passes below wait for the side stream
      if (index + 1 < ordered.size()) side.run([&, index] { next = decompose(sources[index + 1]); });
    } else {
      PhaseTimer timer(profile, &SweepProfile::decompose_s, device);
      current = decompose(gather(name));
    }
    std::vector<at::Tensor> sums;
    std::vector<int64_t> sum_of(candidates.size(), -1);  // candidate -> its entry in sums
    {
      PhaseTimer timer(profile, &SweepProfile::forward_s, device);
      if (first_layer >= 0 && first_layer < lm.num_layers() && lm.offloads_layers(first_layer)) {
        // An offloaded layer from this one on: the candidates pass the later ones together (each
        // crosses the bus once per swept slot, not once per entry).
        const auto per_candidate = candidates_nll_sums(lm, batches, first_layer, name, current.slots, nll_options);
        for (size_t j = 0; j < candidates.size(); ++j) {
          if (!per_candidate[j].defined()) continue;
          sum_of[j] = static_cast<int64_t>(sums.size());
          sums.push_back(per_candidate[j].reshape({1}));
        }
      } else {
        for (size_t j = 0; j < candidates.size(); ++j) {
          if (!current.slots[j]) continue;
          model::ScopedSlots trial(lm);
          trial.replace(name, current.slots[j]);
          sum_of[j] = static_cast<int64_t>(sums.size());
          sums.push_back(nll_sum(lm, batches, first_layer, nll_options).reshape({1}));
        }
      }
      for (auto& b : batches) b.prefix = model::LayerPrefix();
    }

    // One synchronisation per layer: every candidate's NLL sum at once.
    const auto host = sums.empty() ? at::Tensor() : at::cat(sums).to(at::kCPU, at::kDouble).contiguous();
    // Only now, with the forward passes finished, may the slots go: a slot can
    // hold tensors besides its state() (e.g. a skeleton's gather index) that
    // were made on the side stream and are not marked as used by this one, so
    // freeing them earlier would let the side stream reuse their memory under
    // the queued forwards.
    current.slots.clear();
    for (size_t j = 0; j < candidates.size(); ++j) {
      double ppl = std::numeric_limits<double>::infinity();
      if (sum_of[j] >= 0) {
        ppl = std::exp(host.data_ptr<double>()[sum_of[j]] / static_cast<double>(num_samples));
      } else if (!current.errors[j].empty()) {
        fmt::print(stderr, "warning: {} at ratio {} cannot be decomposed ({}); it scores +inf\n", name, candidates[j],
                   current.errors[j]);
      }
      if (std::isnan(ppl)) ppl = std::numeric_limits<double>::infinity();
      table.add(name, candidates[j], ppl);
    }
    if (profile) {
      profile->entries += static_cast<int64_t>(sums.size());
      profile->layers.push_back({name, first_layer, profile->decompose_s - decompose_before,
                                 profile->forward_s - forward_before, static_cast<int64_t>(sums.size())});
    }
    if (progress) progress->advance(static_cast<int64_t>(candidates.size()));
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
