#pragma once
// The BPE model of HF tokenizers (models/bpe): symbols are merged by rank,
// lowest rank first and leftmost first among equals, with byte fallback and
// unknown-token fusing as in tokenizers' BPE::merge_word.

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cur4llm::detail {

/// Options of a BPE model, as tokenizer.json's "model" object gives them.
struct BpeOptions {
  bool byte_fallback = false;          ///< unknown chars become <0xNN> byte tokens
  bool fuse_unk = false;               ///< consecutive unknown chars give one unk token
  bool ignore_merges = false;          ///< a word found in the vocabulary is one token
  std::optional<std::string> unk_token;  ///< the unknown token, if any
  bool byte_level_input = false;       ///< words are raw bytes mapped through GPT-2's byte map
};

class BpeModel {
 public:
  /// `where` names the source file for errors (a merge with unknown tokens).
  BpeModel(std::unordered_map<std::string, int64_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
           const std::string& where);

  /// Appends the ids of one pre-tokenized word. In byte-level mode `word` is
  /// the raw bytes; otherwise it is the word's UTF-8 text.
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;

  const std::unordered_map<std::string, int64_t>& vocab() const { return vocab_; }
  const BpeOptions& options() const { return options_; }

 private:
  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int64_t a, int64_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // The initial symbols of a UTF-8 word (merge_word before merge_all).
  void initial_symbols(std::string_view word, std::vector<int64_t>& symbols) const;
  // Merges `symbols` in place (Word::merge_all).
  void merge_all(std::vector<int64_t>& symbols) const;
  void encode_uncached(std::string_view word, std::vector<int64_t>& out) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<uint64_t, MergeTarget> merges_;
  BpeOptions options_;
  std::optional<int64_t> unk_id_;
  std::array<int64_t, 256> byte_ids_{};          // byte-level: id of each byte's code point, -1 if none
  std::array<int64_t, 256> fallback_ids_{};      // byte fallback: id of <0xNN>, -1 if none
  bool all_bytes_known_ = false;

  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCacheEntries = 500000;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

}  // namespace cur4llm::detail
