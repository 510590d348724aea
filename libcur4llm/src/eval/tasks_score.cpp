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

int64_t common_prefix(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

// How rows run: alone, as one packed row holding their prefix tree, or (too long to pack) their
// common beginning of `prefix` tokens into a KV cache and each row's own tokens after it.
struct Unit {
  enum class Kind { alone, tree, cached } kind = Kind::alone;
  std::vector<size_t> rows;  // in lexicographic order
  int64_t prefix = 0;        // cached: the tokens run once
  int64_t width = 0;         // tree: its tokens
};

// Units of rows, each with the least cost in tokens run. In lexicographic order rows that begin
// alike are neighbours, the tokens of a range as one prefix tree are the first row's and then each
// next row's after its common beginning with the one before, and a range's common beginning is the
// least common prefix of its neighbours. So a range runs as one unit or is split where that least
// prefix lies, whichever costs less. A tree's attention covers all its slots (the mask leaves no
// block out): at about half the matrix products' rate, 4 w^2 d flops a layer for a tree of w
// tokens against about 24 d^2 a token for the linear layers, so a tree costs w + w^2 / (3 d)
// token-equivalents, a row alone (causal, half the scores) L + L^2 / (6 d).
class Planner {
 public:
  Planner(const std::vector<Row>& rows, int64_t min_prefix, int64_t pack_tokens, int64_t hidden)
      : rows_(rows), min_prefix_(std::max<int64_t>(1, min_prefix)), pack_tokens_(pack_tokens),
        per_square_(1.0 / (3.0 * static_cast<double>(std::max<int64_t>(hidden, 1)))) {
    order_.resize(rows.size());
    std::iota(order_.begin(), order_.end(), size_t{0});
    std::sort(order_.begin(), order_.end(), [&](size_t a, size_t b) { return rows[a].input < rows[b].input; });
    lcp_.assign(order_.size(), 0);
    fresh_.assign(order_.size() + 1, 0);
    total_.assign(order_.size() + 1, 0);
    for (size_t i = 0; i < order_.size(); ++i) {
      if (i > 0) lcp_[i] = common_prefix(rows[order_[i - 1]].input, rows[order_[i]].input);
      fresh_[i + 1] = fresh_[i] + length(i) - lcp_[i];
      total_[i + 1] = total_[i] + length(i);
    }
    // Boundaries below the minimum never pay: cut there first, then decide within each run.
    size_t a = 0;
    for (size_t i = 1; i <= order_.size(); ++i) {
      if (i == order_.size() || lcp_[i] < min_prefix_) {
        (void)split(a, i, units_);
        a = i;
      }
    }
  }
  std::vector<Unit> take() { return std::move(units_); }

 private:
  int64_t length(size_t i) const { return static_cast<int64_t>(rows_[order_[i]].input.size()); }
  // Tokens of rows order_[a, b) as one prefix tree.
  int64_t tree_width(size_t a, size_t b) const { return fresh_[b] - fresh_[a] + lcp_[a]; }
  // The beginning rows order_[a, b) would run once through a KV cache: it stops before the first
  // position any of them is scored at (a row's scored positions are its own tokens there).
  int64_t cached_prefix(size_t a, size_t b) const {
    int64_t prefix = std::numeric_limits<int64_t>::max();
    for (size_t i = a + 1; i < b; ++i) prefix = std::min(prefix, lcp_[i]);
    for (size_t i = a; i < b; ++i) {
      const auto& row = rows_[order_[i]];
      prefix = std::min(prefix, static_cast<int64_t>(row.input.size()) - row.scored);
    }
    return prefix;
  }
  Unit unit(Unit::Kind kind, size_t a, size_t b) const {
    Unit u{kind, {}, 0, 0};
    for (size_t i = a; i < b; ++i) u.rows.push_back(order_[i]);
    return u;
  }
  // The best units of rows order_[a, b) (appended to `out`) and their cost.
  double split(size_t a, size_t b, std::vector<Unit>& out) const {
    if (b - a < 2) {
      out.push_back(unit(Unit::Kind::alone, a, b));
      const auto n = static_cast<double>(length(a));
      return n + 0.5 * per_square_ * n * n;
    }
    size_t cut = a + 1;
    for (size_t i = a + 2; i < b; ++i) {
      if (lcp_[i] < lcp_[cut]) cut = i;
    }
    std::vector<Unit> sides;
    const double apart = split(a, cut, sides) + split(cut, b, sides);
    const int64_t width = tree_width(a, b);
    if (pack_tokens_ > 0 && width <= pack_tokens_) {
      const auto w = static_cast<double>(width);
      const double together = w + per_square_ * w * w;
      if (together <= apart) {
        out.push_back(unit(Unit::Kind::tree, a, b));
        out.back().width = width;
        return together;
      }
    } else if (const int64_t prefix = cached_prefix(a, b); prefix >= min_prefix_) {
      const auto together =
          static_cast<double>(total_[b] - total_[a] - prefix * static_cast<int64_t>(b - a - 1));
      if (together <= apart) {
        out.push_back(unit(Unit::Kind::cached, a, b));
        out.back().prefix = prefix;
        return together;
      }
    }
    for (auto& u : sides) out.push_back(std::move(u));
    return apart;
  }
  const std::vector<Row>& rows_;
  int64_t min_prefix_;
  int64_t pack_tokens_;
  double per_square_;           // the attention's cost per squared token of a row, in token-equivalents
  std::vector<size_t> order_;   // rows in lexicographic order
  std::vector<int64_t> lcp_;    // common prefix of order_[i - 1] and order_[i] (0 for i = 0)
  std::vector<int64_t> fresh_;  // fresh_[i]: tokens of order_[0, i), each past its common prefix with the one before
  std::vector<int64_t> total_;  // total_[i]: tokens of order_[0, i)
  std::vector<Unit> units_;
};

// The scored positions of a batch: where to read the hidden states, the token
// each must predict, and which request each span belongs to.
struct Reads {
  std::vector<int64_t> positions, targets;        // flat positions in the batch's [rows * width] states
  std::vector<std::pair<size_t, int64_t>> owner;  // (request, continuation length) per scored span

  // The requests of `row`, whose input token of index d sits at flat position slot_of(d).
  template <typename SlotOf>
  void add(const Row& row, const std::vector<EncodedRequest>& requests, SlotOf slot_of) {
    const int64_t len = static_cast<int64_t>(row.input.size());
    for (size_t q : row.requests) {
      const auto& cont = requests[q].continuation;
      // The logits at the last n input positions predict the last n continuation tokens: all of
      // them, or, for a continuation longer than the window, the window's worth (docs/evaluation.md).
      const int64_t n = std::min(static_cast<int64_t>(cont.size()), len);
      const int64_t skip = static_cast<int64_t>(cont.size()) - n;
      for (int64_t j = 0; j < n; ++j) {
        positions.push_back(slot_of(len - n + j));
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
            int64_t batch_tokens, std::vector<LoglikelihoodResult>& out, ScoreStats& counted, util::Progress* progress)
      : lm_(lm), head_slot_(lm.logits_slot()), rows_(rows), requests_(requests), batch_tokens_(batch_tokens),
        out_(out), counted_(counted), progress_(progress) {}

  // Rows sharing a beginning too long to pack: a batch of beginnings runs into a KV cache, and the
  // members' own tokens run after it, in batches of rows of like length, each row with a copy of
  // its beginning's cache row. A group whose members' caches would not fit in a batch is cut into
  // pieces (each runs the beginning again).
  void cached(const std::vector<Unit>& groups) {
    std::vector<Piece> pieces;
    for (const auto& g : groups) {
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

  // Prefix trees as packed rows (CausalLM::forward_tree_hidden), each laid out depth first: its
  // rows in lexicographic order, each after its common beginning with the one before. Longest
  // first, as many as fit in a batch.
  void trees(std::vector<Unit> units) {
    auto width_of = [](const Unit& u) { return u.width; };
    longest_first(units, width_of, batch_tokens_, 0, [&](size_t start, size_t stop, int64_t width) {
      const auto b = static_cast<int64_t>(stop - start);
      auto ids = at::zeros({b, width}, at::kLong);
      auto positions = at::zeros({b, width}, at::kLong);
      auto ends = at::full({b, width}, -1, at::kLong);
      Reads reads;
      int64_t rows = 0;
      for (int64_t k = 0; k < b; ++k) {
        const Unit& tree = units[start + static_cast<size_t>(k)];
        const int64_t base = k * width;
        int64_t* id = ids.data_ptr<int64_t>() + base;
        int64_t* pos = positions.data_ptr<int64_t>() + base;
        int64_t* end = ends.data_ptr<int64_t>() + base;
        std::vector<int64_t> path;  // path[d]: the slot of the token at depth d of the last row laid out
        const std::vector<int64_t>* before = nullptr;
        int64_t at = 0;
        for (size_t r : tree.rows) {
          const auto& input = rows_[r].input;
          const auto keep = static_cast<size_t>(before ? common_prefix(*before, input) : 0);
          for (size_t d = keep; d < path.size(); ++d) end[path[d]] = at;  // subtrees the new row leaves
          path.resize(keep);
          for (size_t d = keep; d < input.size(); ++d, ++at) {
            id[at] = input[d];
            pos[at] = static_cast<int64_t>(d);
            path.push_back(at);
          }
          reads.add(rows_[r], requests_, [&](int64_t d) { return base + path[static_cast<size_t>(d)]; });
          before = &input;
          ++rows;
        }
        for (int64_t slot : path) end[slot] = at;
        counted_.tokens += at;
      }
      RECORD_USER_SCOPE("tasks.trees");
      auto h = lm_.forward_tree_hidden(ids.to(lm_.device()), positions, ends);
      finish(reads, h, width, rows);
    });
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
        const int64_t base = static_cast<int64_t>(k - start) * width;
        reads.add(row, requests_, [&](int64_t d) { return base + d; });
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
        const int64_t base = static_cast<int64_t>(i - m0) * width - prefix;
        reads.add(rows_[r], requests_, [&](int64_t d) { return base + d; });
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

  // Small batches on the CPU, where larger ones only cost cache; large ones on CUDA.
  const int64_t batch_tokens =
      options.max_batch_tokens > 0 ? options.max_batch_tokens : (lm.device().is_cuda() ? 16384 : 1024);
  // The widest packed row: its attention mask and scores grow with the square of its width.
  int64_t pack_tokens = options.max_packed_tokens;
  if (pack_tokens == 0) pack_tokens = std::clamp<int64_t>(lm.config().hidden_size, 256, 8192);
  std::vector<Unit> trees, cached;
  std::vector<size_t> single;  // rows that run whole
  if (options.share_prefixes && lm.on_one_device()) {
    const int64_t least = options.min_shared_prefix > 0 ? options.min_shared_prefix : 16;
    for (auto& u : Planner(rows, least, pack_tokens, lm.config().hidden_size).take()) {
      if (u.kind == Unit::Kind::alone) {
        single.insert(single.end(), u.rows.begin(), u.rows.end());
      } else {
        ++counted.shared_groups;
        if (u.kind == Unit::Kind::tree) ++counted.packed_groups;
        (u.kind == Unit::Kind::tree ? trees : cached).push_back(std::move(u));
      }
    }
  } else {
    single.resize(rows.size());
    std::iota(single.begin(), single.end(), size_t{0});
  }
  std::vector<LoglikelihoodResult> out(requests.size());
  c10::InferenceMode guard;
  std::unique_ptr<util::Progress> progress;
  if (options.show_progress)
    progress = std::make_unique<util::Progress>("tasks", static_cast<int64_t>(rows.size()), "rows");
  RowRunner runner(lm, rows, requests, batch_tokens, out, counted, progress.get());
  runner.trees(std::move(trees));
  runner.cached(cached);
  runner.whole(std::move(single));
  if (stats) *stats = counted;
  return out;
}

}  // namespace cur4llm::eval
