// Log-likelihood requests: encoding as the harness's Hugging Face model does,
// and batched scoring on a CausalLM.
#include <cur4llm/eval/tasks.h>

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/kv_cache.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/progress.h>

#include "python_text.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <limits>
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
  int64_t scored = 0;  // input positions, counted from the end, whose logits a request reads
};

// Rows that run their first `prefix` input tokens once (0: a row on its own).
struct Group {
  std::vector<size_t> rows;
  int64_t prefix = 0;
};

int64_t common_prefix(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

// Groups of rows with a common beginning of at least `min_prefix` tokens. In
// lexicographic order, rows that begin alike are neighbours and a range's
// common beginning is the least common prefix of its neighbours, so a range is
// either one group or split where that least prefix lies, whichever runs fewer
// tokens (a group of n rows saves (n - 1) * prefix). A group's prefix stops
// before the first position any of its rows is scored at.
class Grouping {
 public:
  Grouping(const std::vector<Row>& rows, int64_t min_prefix) : rows_(rows), min_prefix_(std::max<int64_t>(1, min_prefix)) {
    order_.resize(rows.size());
    std::iota(order_.begin(), order_.end(), size_t{0});
    std::sort(order_.begin(), order_.end(), [&](size_t a, size_t b) { return rows[a].input < rows[b].input; });
    lcp_.assign(order_.size(), 0);
    for (size_t i = 1; i < order_.size(); ++i) lcp_[i] = common_prefix(rows[order_[i - 1]].input, rows[order_[i]].input);
    // Boundaries below the minimum never pay: cut there first, then decide within each run.
    size_t a = 0;
    for (size_t i = 1; i <= order_.size(); ++i) {
      if (i == order_.size() || lcp_[i] < min_prefix_) {
        (void)split(a, i, groups_);
        a = i;
      }
    }
  }
  std::vector<Group> take() { return std::move(groups_); }

 private:
  // The prefix rows order_[a, b) would share, and the tokens that saves.
  std::pair<int64_t, int64_t> shared(size_t a, size_t b) const {
    if (b - a < 2) return {0, 0};
    int64_t prefix = std::numeric_limits<int64_t>::max();
    for (size_t i = a + 1; i < b; ++i) prefix = std::min(prefix, lcp_[i]);
    for (size_t i = a; i < b; ++i) {
      const auto& row = rows_[order_[i]];
      prefix = std::min(prefix, static_cast<int64_t>(row.input.size()) - row.scored);
    }
    if (prefix < min_prefix_) return {0, 0};
    return {prefix, prefix * static_cast<int64_t>(b - a - 1)};
  }
  // The best grouping of rows order_[a, b) (appended to `out`) and the tokens it saves: the range
  // whole, or its two sides split where the common prefix is shortest, each grouped at best.
  int64_t split(size_t a, size_t b, std::vector<Group>& out) const {
    if (b - a < 2) {
      out.push_back(Group{{order_[a]}, 0});
      return 0;
    }
    size_t cut = a + 1;
    for (size_t i = a + 2; i < b; ++i) {
      if (lcp_[i] < lcp_[cut]) cut = i;
    }
    std::vector<Group> sides;
    const int64_t apart = split(a, cut, sides) + split(cut, b, sides);
    const auto [prefix, together] = shared(a, b);
    if (together > 0 && together >= apart) {
      Group g{{}, prefix};
      for (size_t i = a; i < b; ++i) g.rows.push_back(order_[i]);
      out.push_back(std::move(g));
      return together;
    }
    for (auto& g : sides) out.push_back(std::move(g));
    return apart;
  }

  const std::vector<Row>& rows_;
  int64_t min_prefix_;
  std::vector<size_t> order_;
  std::vector<int64_t> lcp_;
  std::vector<Group> groups_;
};

// The scored positions of a batch: where to read the hidden states, the token
// each must predict, and which request each span belongs to.
struct Reads {
  std::vector<int64_t> positions, targets;        // flat positions in the batch's [rows * width] states
  std::vector<std::pair<size_t, int64_t>> owner;  // (request, continuation length) per scored span

  // The requests of `row`, whose last input token sits at flat position `last`.
  void add(const Row& row, const std::vector<EncodedRequest>& requests, int64_t last) {
    const int64_t len = static_cast<int64_t>(row.input.size());
    for (size_t q : row.requests) {
      const auto& cont = requests[q].continuation;
      // The logits at the last n input positions predict the last n continuation tokens: all of
      // them, or, for a continuation longer than the window, the window's worth (docs/evaluation.md).
      const int64_t n = std::min(static_cast<int64_t>(cont.size()), len);
      const int64_t skip = static_cast<int64_t>(cont.size()) - n;
      for (int64_t j = 0; j < n; ++j) {
        positions.push_back(last - n + 1 + j);
        targets.push_back(cont[static_cast<size_t>(skip + j)]);
      }
      owner.emplace_back(q, n);
    }
  }

  // Log-probabilities and greedy flags from the final states [rows * width, hidden].
  void score(const model::CausalLM& lm, const model::LinearSlot& head, const at::Tensor& hidden,
             std::vector<LoglikelihoodResult>& out) const {
    const int64_t m = static_cast<int64_t>(positions.size());
    auto pos = at::from_blob(const_cast<int64_t*>(positions.data()), {m}, at::kLong).to(lm.device());
    auto tgt = at::from_blob(const_cast<int64_t*>(targets.data()), {m}, at::kLong).to(lm.device());
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
  }
};

// Tokens [from, to) of a row's input.
struct Span {
  const std::vector<int64_t>* tokens;
  int64_t from, to;
};

// Right-padded ids [spans.size(), width] of the spans and the mask of their real tokens.
std::pair<at::Tensor, at::Tensor> padded(const std::vector<Span>& spans, int64_t width) {
  const int64_t b = static_cast<int64_t>(spans.size());
  auto ids = at::zeros({b, width}, at::kLong);
  auto mask = at::zeros({b, width}, at::kBool);
  auto* p = ids.data_ptr<int64_t>();
  auto* m = mask.data_ptr<bool>();
  for (int64_t r = 0; r < b; ++r) {
    const Span& span = spans[static_cast<size_t>(r)];
    std::copy(span.tokens->begin() + span.from, span.tokens->begin() + span.to, p + r * width);
    std::fill(m + r * width, m + r * width + (span.to - span.from), true);
  }
  return {ids, mask};
}

// Sorts `items` longest first and calls fn(start, stop, width) for each batch [start, stop):
// as many items as fit in `batch_tokens` when padded to the width of the batch's first (longest)
// one, at least one and at most `max_rows` (0: no bound).
template <typename T, typename Width, typename Fn>
void longest_first(std::vector<T>& items, Width width, int64_t batch_tokens, int64_t max_rows, Fn fn) {
  std::stable_sort(items.begin(), items.end(), [&](const T& a, const T& b) { return width(a) > width(b); });
  for (size_t start = 0, stop = 0; start < items.size(); start = stop) {
    const int64_t w = width(items[start]);
    int64_t fit = std::max<int64_t>(1, batch_tokens / std::max<int64_t>(w, 1));
    if (max_rows > 0) fit = std::min(fit, max_rows);
    stop = std::min(items.size(), start + static_cast<size_t>(fit));
    fn(start, stop, w);
  }
}

// Runs the rows of score_requests and scores their requests into `out`, counting what runs.
class RowRunner {
 public:
  RowRunner(const model::CausalLM& lm, const std::vector<Row>& rows, const std::vector<EncodedRequest>& requests,
            int64_t batch_tokens, int64_t pack_tokens, std::vector<LoglikelihoodResult>& out, ScoreStats& counted,
            util::Progress* progress)
      : lm_(lm), head_slot_(lm.logits_slot()), rows_(rows), requests_(requests), batch_tokens_(batch_tokens),
        pack_tokens_(pack_tokens), out_(out), counted_(counted), progress_(progress) {}

  // Groups with a shared prefix. A group whose prefix and members' own tokens together fit in
  // pack_tokens runs as one packed row: the prefix, then each member's own tokens as a branch
  // that sees the prefix and itself (CausalLM::forward_branched_hidden), packed rows of like
  // length batched together. Larger groups: a batch of prefixes runs into a KV cache, and the
  // members' own tokens run after it, in batches of rows of like length, each row with a copy of
  // its prefix's cache row. A group whose members' caches would not fit in a batch is cut into
  // pieces (each runs the prefix again).
  void shared(const std::vector<Group>& groups) {
    std::vector<Piece> pieces;
    std::vector<Piece> packs;
    for (const auto& g : groups) {
      ++counted_.shared_groups;
      Piece whole_group{g.prefix, g.rows};
      if (packed_length(whole_group) <= pack_tokens_) {
        ++counted_.packed_groups;
        packs.push_back(std::move(whole_group));
        continue;
      }
      std::vector<size_t> members = g.rows;
      std::stable_sort(members.begin(), members.end(),
                       [&](size_t x, size_t y) { return own(x, g.prefix) > own(y, g.prefix); });
      Piece piece{g.prefix, {}};
      for (size_t r : members) {
        const int64_t slots = g.prefix + own(piece.rows.empty() ? r : piece.rows.front(), g.prefix);
        if (!piece.rows.empty() && static_cast<int64_t>(piece.rows.size() + 1) * slots > 2 * batch_tokens_) {
          pieces.push_back(std::move(piece));
          piece = Piece{g.prefix, {}};
        }
        piece.rows.push_back(r);
      }
      pieces.push_back(std::move(piece));
    }
    run_packed(std::move(packs));
    // Prefixes of like length run together (little padding).
    std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& x, const Piece& y) { return x.prefix > y.prefix; });
    for (size_t p0 = 0, p1 = 0; p0 < pieces.size(); p0 = p1) {
      // Pieces join a batch while the prefixes and their cache fit.
      const int64_t prefix_width = pieces[p0].prefix;
      int64_t rest_width = 0;
      for (p1 = p0; p1 < pieces.size(); ++p1) {
        const int64_t rw = std::max(rest_width, own(pieces[p1].rows.front(), pieces[p1].prefix));
        const auto n = static_cast<int64_t>(p1 - p0 + 1);
        if (p1 > p0 && (n * prefix_width > batch_tokens_ || n * (prefix_width + rw) > 2 * batch_tokens_)) break;
        rest_width = rw;
      }
      run_pieces(pieces, p0, p1, prefix_width, rest_width);
    }
  }

  // Rows that run whole: longest first, as the harness orders them (an out-of-memory shows at once).
  void whole(std::vector<size_t> single) {
    auto length = [&](size_t r) { return static_cast<int64_t>(rows_[r].input.size()); };
    longest_first(single, length, batch_tokens_, 0, [&](size_t start, size_t stop, int64_t width) {
      std::vector<Span> spans;
      Reads reads;
      for (size_t k = start; k < stop; ++k) {
        const auto& row = rows_[single[k]];
        const auto len = static_cast<int64_t>(row.input.size());
        spans.push_back({&row.input, 0, len});
        reads.add(row, requests_, static_cast<int64_t>(k - start) * width + len - 1);
        counted_.tokens += len;
      }
      // Right padding: causal attention keeps the real tokens' outputs unchanged.
      RECORD_USER_SCOPE("tasks.whole_rows");
      auto h = lm_.embed(padded(spans, width).first.to(lm_.device()));
      for (int64_t i = 0; i < lm_.num_layers(); ++i) h = lm_.layer(i, h);
      finish(reads, h, width);
    });
  }

 private:
  struct Piece {
    int64_t prefix;
    std::vector<size_t> rows;  // longest own part first
  };

  int64_t own(size_t r, int64_t prefix) const { return static_cast<int64_t>(rows_[r].input.size()) - prefix; }
  int64_t packed_length(const Piece& p) const {
    int64_t n = p.prefix;
    for (size_t r : p.rows) n += own(r, p.prefix);
    return n;
  }

  // Groups as packed rows: the prefix, then each member's own tokens, a branch of its own at the
  // positions that follow the prefix. Longest first, as many as fit in a batch.
  void run_packed(std::vector<Piece> packs) {
    std::vector<int64_t> length(packs.size());
    for (size_t i = 0; i < packs.size(); ++i) length[i] = packed_length(packs[i]);
    std::vector<size_t> order(packs.size());
    std::iota(order.begin(), order.end(), size_t{0});
    auto width_of = [&](size_t i) { return length[i]; };
    longest_first(order, width_of, batch_tokens_, 0, [&](size_t start, size_t stop, int64_t width) {
      const auto b = static_cast<int64_t>(stop - start);
      auto ids = at::zeros({b, width}, at::kLong);
      auto positions = at::zeros({b, width}, at::kLong);
      auto branches = at::full({b, width}, -1, at::kLong);
      int64_t* id = ids.data_ptr<int64_t>();
      int64_t* pos = positions.data_ptr<int64_t>();
      int64_t* branch = branches.data_ptr<int64_t>();
      Reads reads;
      int64_t rows = 0;
      for (int64_t k = 0; k < b; ++k) {
        const Piece& piece = packs[order[start + static_cast<size_t>(k)]];
        const auto& first = rows_[piece.rows.front()].input;
        int64_t at = k * width;
        for (int64_t j = 0; j < piece.prefix; ++j, ++at) {
          id[at] = first[static_cast<size_t>(j)];
          pos[at] = j;
          branch[at] = 0;
        }
        int64_t member = 0;
        for (size_t r : piece.rows) {
          const auto& input = rows_[r].input;
          const auto len = static_cast<int64_t>(input.size());
          ++member;
          for (int64_t j = piece.prefix; j < len; ++j, ++at) {
            id[at] = input[static_cast<size_t>(j)];
            pos[at] = j;
            branch[at] = member;
          }
          reads.add(rows_[r], requests_, at - 1);
          ++rows;
        }
        counted_.tokens += length[order[start + static_cast<size_t>(k)]];
      }
      RECORD_USER_SCOPE("tasks.packed");
      auto h = lm_.forward_branched_hidden(ids.to(lm_.device()), positions, branches);
      finish(reads, h, width, rows);
    });
  }

  // Pieces [p0, p1): their prefixes in one batch, then their members in batches of like length.
  void run_pieces(const std::vector<Piece>& pieces, size_t p0, size_t p1, int64_t prefix_width, int64_t rest_width) {
    std::vector<Span> heads;
    std::vector<std::pair<size_t, int64_t>> members;  // (row, its piece in this batch)
    for (size_t k = p0; k < p1; ++k) {
      const auto& piece = pieces[k];
      heads.push_back({&rows_[piece.rows.front()].input, 0, piece.prefix});
      counted_.tokens += piece.prefix;
      for (size_t r : piece.rows) members.emplace_back(r, static_cast<int64_t>(k - p0));
    }
    model::KVCache cache(static_cast<int64_t>(heads.size()), prefix_width + rest_width, lm_.device());
    {
      RECORD_USER_SCOPE("tasks.prefixes");
      auto [ids, mask] = padded(heads, prefix_width);
      (void)lm_.forward_cached_hidden(ids.to(lm_.device()), cache, mask.to(lm_.device()));
    }
    auto prefix_of = [&](const std::pair<size_t, int64_t>& m) { return pieces[p0 + static_cast<size_t>(m.second)].prefix; };
    auto own_of = [&](const std::pair<size_t, int64_t>& m) { return own(m.first, prefix_of(m)); };
    // Each member row holds a copy of its cache row: at most twice a batch's tokens of cache.
    const int64_t cache_rows = std::max<int64_t>(1, 2 * batch_tokens_ / (prefix_width + rest_width));
    longest_first(members, own_of, batch_tokens_, cache_rows, [&](size_t m0, size_t m1, int64_t width) {
      std::vector<Span> tails;
      std::vector<int64_t> owner_of;
      Reads reads;
      for (size_t i = m0; i < m1; ++i) {
        const auto& [r, k] = members[i];
        const int64_t prefix = prefix_of(members[i]);
        tails.push_back({&rows_[r].input, prefix, static_cast<int64_t>(rows_[r].input.size())});
        owner_of.push_back(k);
        reads.add(rows_[r], requests_, static_cast<int64_t>(i - m0) * width + own(r, prefix) - 1);
        counted_.tokens += own(r, prefix);
      }
      RECORD_USER_SCOPE("tasks.members");
      const auto index = at::from_blob(owner_of.data(), {static_cast<int64_t>(owner_of.size())}, at::kLong).clone();
      auto members_cache = cache.select_rows(index);
      auto [ids, mask] = padded(tails, width);
      finish(reads, lm_.forward_cached_hidden(ids.to(lm_.device()), members_cache, mask.to(lm_.device())), width);
    });
  }

  // Scores a batch's reads from its last layer's states [b, width, hidden] (`rows` rows of the requests; -1: b).
  void finish(const Reads& reads, const at::Tensor& h, int64_t width, int64_t rows = -1) {
    RECORD_USER_SCOPE("tasks.score");
    const int64_t b = h.size(0);
    reads.score(lm_, *head_slot_, lm_.final_hidden(h).reshape({b * width, -1}), out_);
    if (progress_) progress_->advance(rows < 0 ? b : rows);
  }

  const model::CausalLM& lm_;
  const model::LinearPtr head_slot_;  // lm_head, soft-capped where the family caps logits
  const std::vector<Row>& rows_;
  const std::vector<EncodedRequest>& requests_;
  const int64_t batch_tokens_;
  const int64_t pack_tokens_;
  std::vector<LoglikelihoodResult>& out_;
  ScoreStats& counted_;
  util::Progress* progress_;
};

}  // namespace

std::vector<LoglikelihoodResult> score_requests(const model::CausalLM& lm, const std::vector<EncodedRequest>& requests,
                                                const ScoreOptions& options, ScoreStats* stats) {
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
    if (fresh) rows.push_back(Row{std::move(whole), {}, 0});
    auto& row = rows[it->second];
    row.requests.push_back(i);
    row.scored = std::max(row.scored, std::min(static_cast<int64_t>(r.continuation.size()),
                                               static_cast<int64_t>(row.input.size())));
  }
  ScoreStats counted;
  counted.rows = static_cast<int64_t>(rows.size());

  std::vector<Group> shared;
  std::vector<size_t> single;  // rows that run whole
  if (options.share_prefixes && lm.on_one_device()) {
    const int64_t least = options.min_shared_prefix > 0 ? options.min_shared_prefix : 16;
    for (auto& g : Grouping(rows, least).take()) {
      if (g.prefix > 0) {
        shared.push_back(std::move(g));
      } else {
        single.insert(single.end(), g.rows.begin(), g.rows.end());
      }
    }
  } else {
    single.resize(rows.size());
    std::iota(single.begin(), single.end(), size_t{0});
  }
  // Small batches on the CPU, where larger ones only cost cache; large ones on CUDA.
  const int64_t batch_tokens =
      options.max_batch_tokens > 0 ? options.max_batch_tokens : (lm.device().is_cuda() ? 16384 : 1024);
  std::vector<LoglikelihoodResult> out(requests.size());
  c10::InferenceMode guard;
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress)
    progress = std::make_unique<util::Progress>("tasks", static_cast<int64_t>(rows.size()), "rows");
  int64_t pack_tokens = options.max_packed_tokens;
  // A packed row's attention covers all its slots (the mask leaves no block out): at T slots it
  // costs about 4 T d flops a token and layer against the linear layers' 24 d^2, a sixth
  // of them at T = d (the hidden size).
  if (pack_tokens == 0) pack_tokens = std::clamp<int64_t>(lm.config().hidden_size, 256, 8192);
  RowRunner runner(lm, rows, requests, batch_tokens, pack_tokens, out, counted, progress.get());
  runner.shared(shared);
  runner.whole(std::move(single));
  if (stats) *stats = counted;
  return out;
}

}  // namespace cur4llm::eval
