#include "tokenize/bpe_model.h"

#include "tokenize/text_utils.h"

#include <cstdio>
#include <queue>
#include <stdexcept>

namespace cur4llm::detail {

BpeModel::BpeModel(std::unordered_map<std::string, int64_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
                   const std::string& where)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    if (it == vocab_.end())
      throw std::runtime_error(where + ": model.unk_token \"" + *options_.unk_token + "\" is not in model.vocab");
    unk_id_ = it->second;
  }
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b), inew = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || inew == vocab_.end())
      throw std::runtime_error(where + ": merge " + std::to_string(rank) + " (\"" + a + "\" \"" + b +
                               "\") uses a token that is not in the vocabulary");
    // As in tokenizers, a repeated pair keeps its last rank.
    merges_[pair_key(ia->second, ib->second)] = {static_cast<int32_t>(rank), static_cast<int32_t>(inew->second)};
  }
  const auto& bytes = ByteLevelMap::get();
  all_bytes_known_ = true;
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(bytes.encode(static_cast<unsigned char>(b)));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    if (byte_ids_[b] < 0) all_bytes_known_ = false;
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto fb = vocab_.find(name);
    fallback_ids_[b] = fb == vocab_.end() ? -1 : fb->second;
  }
}

void BpeModel::initial_symbols(std::string_view w, std::vector<int64_t>& word) const {
  // tokenizers' BPE::merge_word, without continuing_subword_prefix / end_of_word_suffix.
  std::optional<std::pair<int64_t, size_t>> unk;  // pending unknown token and its byte length
  size_t pos = 0;
  while (pos < w.size()) {
    size_t start = pos;
    size_t len = utf8_length(static_cast<unsigned char>(w[pos]));
    if (pos + len > w.size()) len = w.size() - pos;
    pos += len;
    std::string_view ch = w.substr(start, len);
    auto it = vocab_.find(std::string(ch));
    if (it != vocab_.end()) {
      if (unk) {
        word.push_back(unk->first);
        unk.reset();
      }
      word.push_back(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) word.push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (unk && options_.fuse_unk) {
        unk->second += len;
      } else {
        if (unk) word.push_back(unk->first);
        unk = std::make_pair(*unk_id_, len);
      }
    }
    // Without an unk token the character is dropped, as tokenizers does.
  }
  if (unk) word.push_back(unk->first);
}

void BpeModel::merge_all(std::vector<int64_t>& ids) const {
  const int n = static_cast<int>(ids.size());
  if (n < 2) return;
  struct Symbol {
    int64_t id;
    int prev, next;
    bool alive;
  };
  struct Merge {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Merge& o) const {  // std::priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol> sym(n);
  for (int i = 0; i < n; ++i) sym[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::vector<Merge> heap_storage;
  heap_storage.reserve(n);
  std::priority_queue<Merge> queue(std::less<Merge>(), std::move(heap_storage));
  for (int i = 0; i + 1 < n; ++i) {
    auto it = merges_.find(pair_key(ids[i], ids[i + 1]));
    if (it != merges_.end()) queue.push({it->second.rank, i, it->second.new_id});
  }
  while (!queue.empty()) {
    Merge top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int next_pos = cur.next;
    Symbol right = sym[next_pos];
    auto it = merges_.find(pair_key(cur.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // an expired entry
    cur.id = top.new_id;
    cur.next = right.next;
    sym[next_pos].alive = false;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      auto p = merges_.find(pair_key(sym[cur.prev].id, cur.id));
      if (p != merges_.end()) queue.push({p->second.rank, cur.prev, p->second.new_id});
    }
    if (cur.next >= 0) {
      auto q = merges_.find(pair_key(cur.id, sym[cur.next].id));
      if (q != merges_.end()) queue.push({q->second.rank, top.pos, q->second.new_id});
    }
  }
  ids.clear();
  for (int i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
}

void BpeModel::encode_uncached(std::string_view word, std::vector<int64_t>& out) const {
  std::vector<int64_t> ids;
  if (options_.byte_level_input) {
    if (options_.ignore_merges || !all_bytes_known_) {
      const std::string mapped = ByteLevelMap::get().encode(word);
      if (options_.ignore_merges) {
        auto it = vocab_.find(mapped);
        if (it != vocab_.end()) {
          out.push_back(it->second);
          return;
        }
      }
      if (!all_bytes_known_) initial_symbols(mapped, ids);
    }
    if (all_bytes_known_) {
      ids.reserve(word.size());
      for (char c : word) ids.push_back(byte_ids_[static_cast<unsigned char>(c)]);
    }
  } else {
    if (options_.ignore_merges) {
      auto it = vocab_.find(std::string(word));
      if (it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    initial_symbols(word, ids);
  }
  merge_all(ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

void BpeModel::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  if (word.size() > kMaxCachedWordBytes) {
    encode_uncached(word, out);
    return;
  }
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  encode_uncached(word, out);
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(std::move(key), std::vector<int64_t>(out.begin() + first, out.end()));
}

}  // namespace cur4llm::detail
