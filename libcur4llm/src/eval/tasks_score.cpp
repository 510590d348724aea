// Log-likelihood requests: encoding as the harness's Hugging Face model does,
// and batched scoring on a CausalLM.
#include <cur4llm/eval/tasks.h>

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/progress.h>

#include "python_text.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <stdexcept>

namespace cur4llm::eval {

EncodedRequest encode_request(const tokenize::Tokenizer& tokenizer, const LoglikelihoodRequest& request,
                              bool add_special_tokens) {
  EncodedRequest out;
  if (request.context.empty()) {
    // The harness conditions on a prefix token: BOS, else EOS.
    out.continuation = tokenizer.encode(request.continuation, {false});
    auto prefix = tokenizer.bos_id() ? tokenizer.bos_id() : tokenizer.eos_id();
    if (!prefix) throw std::invalid_argument("an empty context needs a tokenizer with a BOS or EOS token");
    if (!out.continuation.empty() && out.continuation.front() == *prefix) {
      out.context.push_back(out.continuation.front());
      out.continuation.erase(out.continuation.begin());
    } else {
      out.context.push_back(*prefix);
    }
    return out;
  }
  // Trailing whitespace (Python's str.isspace) belongs to the continuation.
  std::string context = request.context;
  std::string continuation = request.continuation;
  const size_t end = detail::python_rstrip_size(context);
  if (end < context.size()) {
    continuation = context.substr(end) + continuation;
    context.resize(end);
  }
  auto whole = tokenizer.encode(context + continuation, {add_special_tokens});
  out.context = tokenizer.encode(context, {add_special_tokens});
  const size_t n = std::min(out.context.size(), whole.size());
  out.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return out;
}

namespace {

// One forward row: the input ids and the requests reading it.
struct Row {
  std::vector<int64_t> input;
  std::vector<size_t> requests;
};

}  // namespace

std::vector<LoglikelihoodResult> score_requests(const model::CausalLM& lm, const std::vector<EncodedRequest>& requests,
                                                const ScoreOptions& options) {
  int64_t max_length = options.max_length;
  if (max_length <= 0)
    max_length = lm.config().max_position_embeddings > 0 ? lm.config().max_position_embeddings : 2048;
  // The input of a request: (context + continuation)[:-1], its last max_length tokens.
  std::map<std::vector<int64_t>, size_t> row_of;
  std::vector<Row> rows;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& r = requests[i];
    if (r.continuation.empty()) {
      throw std::invalid_argument(fmt::format("request {} has no continuation tokens to score", i));
    }
    std::vector<int64_t> whole(r.context);
    whole.insert(whole.end(), r.continuation.begin(), r.continuation.end() - 1);
    if (static_cast<int64_t>(whole.size()) > max_length) whole.erase(whole.begin(), whole.end() - max_length);
    auto [it, fresh] = row_of.emplace(whole, rows.size());
    if (fresh) rows.push_back(Row{std::move(whole), {}});
    rows[it->second].requests.push_back(i);
  }
  // Longest rows first, as the harness orders them (an out-of-memory shows at once).
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return rows[a].input.size() > rows[b].input.size(); });

  // Small batches on the CPU, where larger ones only cost cache; large ones on CUDA.
  const int64_t batch_tokens =
      options.max_batch_tokens > 0 ? options.max_batch_tokens : (lm.device().is_cuda() ? 16384 : 1024);
  std::vector<LoglikelihoodResult> out(requests.size());
  c10::InferenceMode guard;
  const auto head_slot = lm.logits_slot();  // lm_head, soft-capped where the family caps logits
  const auto& head = *head_slot;
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress)
    progress = std::make_unique<util::Progress>("tasks", static_cast<int64_t>(rows.size()), "rows");
  size_t start = 0;
  while (start < order.size()) {
    const int64_t width = static_cast<int64_t>(rows[order[start]].input.size());
    const int64_t fit = std::max<int64_t>(1, batch_tokens / std::max<int64_t>(width, 1));
    const size_t stop = std::min(order.size(), start + static_cast<size_t>(fit));
    const int64_t b = static_cast<int64_t>(stop - start);
    // Right padding: causal attention keeps the real tokens' outputs unchanged.
    auto ids = at::zeros({b, width}, at::TensorOptions().dtype(at::kLong));
    auto* p = ids.data_ptr<int64_t>();
    std::vector<int64_t> positions, targets;        // flat positions in [b * width] and the token each must predict
    std::vector<std::pair<size_t, int64_t>> owner;  // (request, continuation length) per scored span
    for (size_t k = start; k < stop; ++k) {
      const auto& row = rows[order[k]];
      const int64_t r = static_cast<int64_t>(k - start);
      std::copy(row.input.begin(), row.input.end(), p + r * width);
      const int64_t len = static_cast<int64_t>(row.input.size());
      for (size_t q : row.requests) {
        const auto& cont = requests[q].continuation;
        // The logits at the last n input positions predict the last n continuation tokens: all of
        // them, or, for a continuation longer than the window, the window's worth (docs/evaluation.md).
        const int64_t n = std::min(static_cast<int64_t>(cont.size()), len);
        const int64_t skip = static_cast<int64_t>(cont.size()) - n;
        for (int64_t j = 0; j < n; ++j) {
          positions.push_back(r * width + len - n + j);
          targets.push_back(cont[static_cast<size_t>(skip + j)]);
        }
        owner.emplace_back(q, n);
      }
    }
    auto h = lm.embed(ids.to(lm.device()));
    for (int64_t i = 0; i < lm.num_layers(); ++i) h = lm.layer(i, h);
    auto hidden = lm.final_hidden(h).reshape({b * width, -1});
    const int64_t m = static_cast<int64_t>(positions.size());
    auto pos = at::from_blob(positions.data(), {m}, at::kLong).to(lm.device());
    auto tgt = at::from_blob(targets.data(), {m}, at::kLong).to(lm.device());
    auto logits = head.forward(hidden.index_select(0, pos)).to(at::kFloat);
    auto logp = at::log_softmax(logits, -1);
    auto chosen = logp.gather(1, tgt.unsqueeze(1)).squeeze(1).to(at::kDouble).cpu();
    auto greedy = logits.argmax(-1).eq(tgt).cpu();
    const double* lp = chosen.data_ptr<double>();
    const bool* gr = greedy.data_ptr<bool>();
    int64_t at = 0;
    for (const auto& [q, n] : owner) {
      double sum = 0;
      bool all = true;
      for (int64_t j = 0; j < n; ++j, ++at) {
        sum += lp[at];
        all = all && gr[at];
      }
      out[q] = {sum, all};
    }
    if (progress) progress->advance(b);
    start = stop;
  }
  return out;
}

}  // namespace cur4llm::eval
