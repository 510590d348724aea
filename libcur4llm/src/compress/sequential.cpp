#include <cur4llm/compress/sequential.h>

#include "common.h"

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/util/progress.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>

#include <functional>
#include <map>
#include <memory>

namespace cur4llm::compress {
namespace {

// Passes through to `inner` and keeps the last input, flattened to [tokens, in].
class InputRecorder final : public model::ForwardingSlot {
 public:
  using ForwardingSlot::ForwardingSlot;
  at::Tensor forward(const at::Tensor& x) const override {
    last_ = x.detach().reshape({-1, x.size(-1)});
    return ForwardingSlot::forward(x);
  }
  const at::Tensor& last() const { return last_; }

 private:
  mutable at::Tensor last_;
};

// Samples of equal length as [b, T] id tensors on the model's device.
std::vector<at::Tensor> batches_of(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                   int64_t batch_size) {
  std::map<size_t, std::vector<const std::vector<int64_t>*>> by_length;
  for (const auto& s : samples) by_length[s.size()].push_back(&s);
  std::vector<at::Tensor> out;
  const size_t per = static_cast<size_t>(std::max<int64_t>(1, batch_size));
  for (const auto& [length, group] : by_length) {
    for (size_t start = 0; start < group.size(); start += per) {
      const size_t n = std::min(per, group.size() - start);
      auto ids = at::empty({static_cast<int64_t>(n), static_cast<int64_t>(length)}, at::kLong);
      for (size_t r = 0; r < n; ++r) std::copy(group[start + r]->begin(), group[start + r]->end(), ids[r].data_ptr<int64_t>());
      out.push_back(ids.to(lm.device()));
    }
  }
  return out;
}

}  // namespace

search::CompressionPlan apply_allocation_sequential(model::CausalLM& lm, const search::Allocation& allocation,
                                                    const Compressor& compressor,
                                                    const std::vector<std::vector<int64_t>>& samples,
                                                    const SequentialOptions& options) {
  if (compressor.statistic() != LayerStatistic::Gram) {
    throw std::invalid_argument(fmt::format("sequential decomposition needs a data-aware method, not \"{}\"", compressor.name()));
  }
  if (samples.empty()) throw std::invalid_argument("sequential decomposition: no calibration samples");
  for (size_t i = 0; i < samples.size(); ++i) {  // an empty one adds nothing; only empty ones give 0/0 moments
    if (samples[i].empty()) {
      throw std::invalid_argument(fmt::format("sequential decomposition: calibration sample {} has no tokens", i));
    }
  }
  c10::NoGradGuard no_grad;
  std::map<std::string, double> ratio_of;
  for (const auto& a : allocation) {
    if (!a.compressed) continue;
    (void)lm.dense_linear(a.layer);  // refuses a missing or already compressed layer
    ratio_of[a.layer] = a.ratio;
  }
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress) progress = std::make_unique<util::Progress>("decompose (sequential)", ratio_of.size(), "layers");

  const auto batches = batches_of(lm, samples, options.batch_size);
  std::map<std::string, model::LinearPtr> originals;  // dense slots of the layers replaced so far
  auto with_dense = [&](model::ScopedSlots& scope) {
    for (const auto& [name, slot] : originals) scope.replace(name, slot);
  };

  // (E[x x^T], E[x' x'^T], E[x x'^T]) of `name`'s inputs; run(b, dense) runs batch b far enough.
  auto moments = [&](const std::string& name, const std::function<void(size_t, bool)>& run) {
    at::Tensor g, gs, h;
    int64_t tokens = 0;
    for (size_t b = 0; b < batches.size(); ++b) {
      at::Tensor xs, xd;
      {
        model::ScopedSlots scope(lm);
        auto rec = std::make_shared<InputRecorder>(lm.linear_ptr(name));
        scope.replace(name, rec);
        run(b, false);
        xs = rec->last().to(at::kFloat);
      }
      {
        model::ScopedSlots scope(lm);
        with_dense(scope);
        auto rec = std::make_shared<InputRecorder>(lm.linear_ptr(name));
        scope.replace(name, rec);
        run(b, true);
        xd = rec->last().to(at::kFloat);
      }
      auto add = [](at::Tensor& acc, const at::Tensor& a, const at::Tensor& c) {
        auto p = at::mm(a.transpose(0, 1), c).to(at::kDouble);
        acc = acc.defined() ? acc + p : p;
      };
      add(g, xd, xd);
      add(gs, xs, xs);
      add(h, xd, xs);
      tokens += xs.size(0);
    }
    return at::stack({g, gs, h}) / static_cast<double>(tokens);
  };

  auto compress_one = [&](const std::string& name, const std::function<void(size_t, bool)>& run) {
    const auto dense = lm.linear_ptr(name);
    const auto* d = static_cast<const model::DenseLinear*>(dense.get());
    try {
      auto slot = compressor.compress(d->weight(), d->bias(), moments(name, run), ratio_of.at(name));
      lm.replace_linear(name, std::move(slot));
      originals[name] = dense;
    } catch (const CompressionError& e) {
      fmt::print(stderr, "warning: {} stays dense: {}\n", name, e.what());
    }
    if (progress) progress->advance();
  };

  // Decoder layers in order, on cached hidden states of both models.
  std::vector<at::Tensor> seen, dense;
  for (const auto& ids : batches) {
    seen.push_back(lm.embed(ids));
    dense.push_back(seen.back());
  }
  for (int64_t i = 0; i < lm.num_layers(); ++i) {
    for (const auto& info : lm.linears()) {
      if (info.layer != i || !ratio_of.count(info.name)) continue;
      compress_one(info.name, [&](size_t b, bool use_dense) { lm.layer(i, use_dense ? dense[b] : seen[b]); });
    }
    for (size_t b = 0; b < batches.size(); ++b) {
      seen[b] = lm.layer(i, seen[b]);
      model::ScopedSlots scope(lm);
      with_dense(scope);
      dense[b] = lm.layer(i, dense[b]);
    }
  }
  // lm_head and projections: full forwards.
  for (const auto& info : lm.linears()) {
    if (info.layer >= 0 || !ratio_of.count(info.name)) continue;
    compress_one(info.name, [&](size_t b, bool) { lm.forward(batches[b]); });
  }

  search::CompressionPlan plan;
  for (const auto& a : allocation) {
    plan.add(detail::planned_layer(a.layer, lm.linear(a.layer), a.compressed && originals.count(a.layer) > 0, compressor,
                                   a.ratio));
  }
  return plan;
}

}  // namespace cur4llm::compress
