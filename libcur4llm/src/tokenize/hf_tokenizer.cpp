// BPE tokenizers described by a Hugging Face tokenizer.json (byte-level as in
// GPT-2 / LLaMA-3 / Qwen2, or SentencePiece-style with byte fallback as in
// LLaMA-1/2 / Mistral), and GPT-2's vocab.json + merges.txt. The pipeline
// follows tokenizers' TokenizerImpl::encode: added tokens are split out, the
// rest is normalized, pre-tokenized, run through the BPE model, then the
// post-processor adds BOS/EOS.

#include "cur4llm/tokenize/tokenizer.h"

#include "io/json_parse.h"
#include "tokenize/bpe_model.h"
#include "tokenize/loaders.h"
#include "tokenize/text_utils.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace cur4llm::tokenize {
namespace {

using json = nlohmann::json;
using detail::BpeModel;
using detail::BpeOptions;
using detail::Regex;

// GPT-2's split regex, used by the ByteLevel pre-tokenizer when use_regex is true.
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Qwen2's split regex (transformers' Qwen2Tokenizer), for vocab.json + merges.txt without tokenizer.json.
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Llama-3's split regex (Meta's tiktoken tokenizer and its tokenizer.json).
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json_file(const std::filesystem::path& path) {
  // Depth-limited, duplicate keys refused (a token listed twice has no one id).
  return cur4llm::detail::parse_json(read_file(path), path.string());
}

// Token ids index tables: each must be non-negative and, before anything is
// sized by it, not far beyond the number of tokens the file lists.
int64_t max_token_id(size_t listed) { return static_cast<int64_t>(2 * listed + 1024); }

void check_token_id(int64_t id, size_t listed, const std::string& where) {
  if (id < 0) throw std::runtime_error(where + ": token id " + std::to_string(id) + " is negative");
  if (id > max_token_id(listed)) {
    throw std::runtime_error(where + ": token id " + std::to_string(id) + " is far beyond the " +
                             std::to_string(listed) + " tokens listed");
  }
}

// model.vocab / vocab.json: ids valid and each given to one token only.
void check_vocab_ids(const std::unordered_map<std::string, int64_t>& vocab, size_t listed, const std::string& where) {
  std::unordered_map<int64_t, const std::string*> owner;
  owner.reserve(vocab.size() * 2);
  for (const auto& [token, id] : vocab) {
    check_token_id(id, listed, where + " (token \"" + token + "\")");
    auto [it, fresh] = owner.emplace(id, &token);
    if (!fresh) {
      const std::string& a = std::min(*it->second, token);
      const std::string& b = std::max(*it->second, token);
      throw std::runtime_error(where + ": tokens \"" + a + "\" and \"" + b + "\" have the same id " +
                               std::to_string(id));
    }
  }
}

// A piece of the input on its way through the pipeline.
struct Piece {
  std::string text;
  int64_t id = -1;        // an added token's id, or -1 for text still to tokenize
  bool at_start = false;  // begins at offset 0 of the input (Metaspace "first")
};

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Finds added tokens, leftmost then longest, as tokenizers' AddedVocabulary does.
class AddedTokenSplitter {
 public:
  void add(const AddedToken& token) {
    if (token.content.empty()) return;
    auto& list = by_first_byte_[static_cast<unsigned char>(token.content[0])];
    list.push_back(token);
    std::stable_sort(list.begin(), list.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Splits `text` into text pieces and token pieces, appending to `out`.
  void split(const std::string& text, bool at_start, std::vector<Piece>& out) const {
    if (empty_) {
      if (!text.empty()) out.push_back({text, -1, at_start});
      return;
    }
    size_t gap_start = 0;  // start of the text not yet emitted
    size_t i = 0;
    while (i < text.size()) {
      const AddedToken* hit = match_at(text, i);
      if (!hit) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + hit->content.size();
      if (hit->lstrip) {
        while (start > gap_start) {
          size_t p = start - 1;
          while (p > gap_start && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
          size_t q = p;
          if (!detail::is_unicode_whitespace(detail::next_code_point(text, q))) break;
          start = p;
        }
      }
      if (hit->rstrip) {
        while (stop < text.size()) {
          size_t q = stop;
          if (!detail::is_unicode_whitespace(detail::next_code_point(text, q))) break;
          stop = q;
        }
      }
      if (start > gap_start) out.push_back({text.substr(gap_start, start - gap_start), -1, at_start && gap_start == 0});
      out.push_back({text.substr(start, stop - start), hit->id, false});
      gap_start = i = stop;
    }
    if (gap_start < text.size()) out.push_back({text.substr(gap_start), -1, at_start && gap_start == 0});
  }

 private:
  static bool is_word_char(uint32_t cp) {
    if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) != 0;
    return !detail::is_unicode_whitespace(cp);
  }
  const AddedToken* match_at(const std::string& text, size_t i) const {
    for (const auto& token : by_first_byte_[static_cast<unsigned char>(text[i])]) {
      if (text.compare(i, token.content.size(), token.content) != 0) continue;
      if (token.single_word) {
        size_t stop = i + token.content.size();
        bool start_ok = true, stop_ok = true;
        if (i > 0) {
          size_t p = i - 1;
          while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
          start_ok = !is_word_char(detail::next_code_point(text, p));
        }
        if (stop < text.size()) {
          size_t q = stop;
          stop_ok = !is_word_char(detail::next_code_point(text, q));
        }
        if (!start_ok || !stop_ok) continue;
      }
      return &token;
    }
    return nullptr;
  }

  std::vector<AddedToken> by_first_byte_[256];
  bool empty_ = true;
};

// ---------------------------------------------------------------- normalizers

struct NormalizerStep {
  enum class Kind { Prepend, Replace, ReplaceRegex, Nfc, Strip } kind;
  std::string a, b;  // Prepend: a; Replace: a -> b
  std::shared_ptr<Regex> regex;
  bool left = false, right = false;  // Strip
};

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos, std::string::npos);
  s.swap(out);
}

void apply_normalizer(const std::vector<NormalizerStep>& steps, std::string& s) {
  for (const auto& step : steps) {
    switch (step.kind) {
      case NormalizerStep::Kind::Prepend:
        if (!s.empty()) s.insert(0, step.a);
        break;
      case NormalizerStep::Kind::Replace:
        replace_all(s, step.a, step.b);
        break;
      case NormalizerStep::Kind::ReplaceRegex: {
        std::string out;
        size_t pos = 0;
        for (auto [st, en] : step.regex->find_all(s)) {
          out.append(s, pos, st - pos);
          out += step.b;
          pos = en;
        }
        out.append(s, pos, std::string::npos);
        s.swap(out);
        break;
      }
      case NormalizerStep::Kind::Nfc:
        s = detail::nfc(s);
        break;
      case NormalizerStep::Kind::Strip: {
        size_t begin = 0, end = s.size();
        if (step.left)
          while (begin < end) {
            size_t q = begin;
            if (!detail::is_unicode_whitespace(detail::next_code_point(s, q))) break;
            begin = q;
          }
        if (step.right)
          while (end > begin) {
            size_t p = end - 1;
            while (p > begin && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
            size_t q = p;
            if (!detail::is_unicode_whitespace(detail::next_code_point(s, q))) break;
            end = p;
          }
        s = s.substr(begin, end - begin);
        break;
      }
    }
  }
}

// ------------------------------------------------------------- pre-tokenizers

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokenizerStep {
  enum class Kind { Split, ByteLevel, Metaspace } kind;
  // Split (also ByteLevel with use_regex, Digits, Whitespace)
  std::shared_ptr<Regex> regex;
  std::string literal;  // a String pattern when regex is null
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  // ByteLevel
  bool add_prefix_space = false;
  bool map_bytes = true;  // false when the BPE model maps bytes itself
  // Metaspace
  std::string replacement;
  enum class Prepend { Always, First, Never } prepend = Prepend::Always;
  bool split = false;
};

// tokenizers' NormalizedString::split: segments of `s` by matches and behaviour.
void split_piece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& found, SplitBehavior behavior,
                 bool invert, std::vector<Piece>& out) {
  const std::string& s = piece.text;
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> segs;
  size_t prev = 0;
  for (auto [st, en] : found) {
    if (st > prev) segs.push_back({{prev, st}, false});
    segs.push_back({{st, en}, true});
    prev = en;
  }
  if (prev < s.size()) segs.push_back({{prev, s.size()}, false});
  if (invert)
    for (auto& seg : segs) seg.second = !seg.second;

  std::vector<std::pair<size_t, size_t>> ranges;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (auto& seg : segs) ranges.push_back(seg.first);
      break;
    case SplitBehavior::Removed:
      for (auto& seg : segs)
        if (!seg.second) ranges.push_back(seg.first);
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (auto& seg : segs) {
        if (seg.second && !previous_match && !ranges.empty()) ranges.back().second = seg.first.second;
        else ranges.push_back(seg.first);
        previous_match = seg.second;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->second && !previous_match && !ranges.empty()) ranges.back().first = it->first.first;
        else ranges.push_back(it->first);
        previous_match = it->second;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (auto& seg : segs) {
        if (seg.second == previous_match && !ranges.empty()) ranges.back().second = seg.first.second;
        else ranges.push_back(seg.first);
        previous_match = seg.second;
      }
      break;
    }
  }
  for (auto [st, en] : ranges)
    if (en > st) out.push_back({s.substr(st, en - st), -1, piece.at_start && st == 0});
}

std::vector<std::pair<size_t, size_t>> find_literal(const std::string& s, const std::string& lit) {
  std::vector<std::pair<size_t, size_t>> found;
  if (lit.empty()) return found;
  for (size_t pos = 0, hit; (hit = s.find(lit, pos)) != std::string::npos; pos = hit + lit.size())
    found.emplace_back(hit, hit + lit.size());
  return found;
}

void apply_pre_tokenizer(const PreTokenizerStep& step, std::vector<Piece>& pieces) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (auto& piece : pieces) {
    switch (step.kind) {
      case PreTokenizerStep::Kind::Split: {
        auto found = step.regex ? step.regex->find_all(piece.text) : find_literal(piece.text, step.literal);
        split_piece(piece, found, step.behavior, step.invert, out);
        break;
      }
      case PreTokenizerStep::Kind::ByteLevel: {
        if (step.add_prefix_space && piece.text[0] != ' ') piece.text.insert(0, " ");
        std::vector<Piece> parts;
        if (step.regex) split_piece(piece, step.regex->find_all(piece.text), SplitBehavior::Isolated, false, parts);
        else parts.push_back(std::move(piece));
        for (auto& part : parts) {
          if (step.map_bytes) part.text = detail::ByteLevelMap::get().encode(part.text);
          out.push_back(std::move(part));
        }
        break;
      }
      case PreTokenizerStep::Kind::Metaspace: {
        replace_all(piece.text, " ", step.replacement);
        bool prepend = step.prepend == PreTokenizerStep::Prepend::Always ||
                       (step.prepend == PreTokenizerStep::Prepend::First && piece.at_start);
        if (prepend && piece.text.compare(0, step.replacement.size(), step.replacement) != 0)
          piece.text.insert(0, step.replacement);
        if (step.split)
          split_piece(piece, find_literal(piece.text, step.replacement), SplitBehavior::MergedWithNext, false, out);
        else
          out.push_back(std::move(piece));
        break;
      }
    }
  }
  pieces.swap(out);
}

// ------------------------------------------------------------------- decoders

struct DecoderStep {
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind;
  std::string a, b;          // Replace: a -> b; Strip: a is the content; Metaspace: a is the replacement
  size_t start = 0, stop = 0;  // Strip
  bool prepend = true;       // Metaspace: the first token's replacement chars are dropped
};

// Replaces invalid UTF-8 by U+FFFD, as String::from_utf8_lossy.
std::string utf8_lossy(const std::string& bytes) {
  if (detail::is_valid_utf8(bytes)) return bytes;
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len = detail::utf8_length(static_cast<unsigned char>(bytes[i]));
    if (i + len <= bytes.size() && detail::is_valid_utf8(std::string_view(bytes).substr(i, len)) &&
        (len > 1 || static_cast<unsigned char>(bytes[i]) < 0x80)) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

int parse_byte_token(const std::string& t) {
  // "<0xNN>"
  if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

void apply_decoder(const DecoderStep& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case DecoderStep::Kind::ByteLevel: {
      std::string bytes;
      const auto& map = detail::ByteLevelMap::get();
      for (const auto& t : tokens) {
        size_t pos = 0;
        while (pos < t.size()) {
          size_t start = pos;
          int b = map.decode(detail::next_code_point(t, pos));
          if (b >= 0) bytes.push_back(static_cast<char>(b));
          else bytes.append(t, start, pos - start);
        }
      }
      tokens = {utf8_lossy(bytes)};
      break;
    }
    case DecoderStep::Kind::Replace:
      for (auto& t : tokens) replace_all(t, step.a, step.b);
      break;
    case DecoderStep::Kind::ByteFallback: {
      std::vector<std::string> out;
      std::string pending;
      size_t pending_count = 0;
      auto flush = [&]() {
        if (pending_count == 0) return;
        if (detail::is_valid_utf8(pending)) out.push_back(pending);
        else
          for (size_t k = 0; k < pending_count; ++k) out.push_back("\xEF\xBF\xBD");
        pending.clear();
        pending_count = 0;
      };
      for (auto& t : tokens) {
        int b = parse_byte_token(t);
        if (b >= 0) {
          pending.push_back(static_cast<char>(b));
          ++pending_count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens.swap(out);
      break;
    }
    case DecoderStep::Kind::Fuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens = {all};
      break;
    }
    case DecoderStep::Kind::Strip:
      for (auto& t : tokens) {
        size_t begin = 0, end = t.size();
        for (size_t k = 0; k < step.start && t.compare(begin, step.a.size(), step.a) == 0 && begin < end; ++k)
          begin += step.a.size();
        for (size_t k = 0; k < step.stop && end >= begin + step.a.size() &&
                           t.compare(end - step.a.size(), step.a.size(), step.a) == 0;
             ++k)
          end -= step.a.size();
        t = t.substr(begin, end - begin);
      }
      break;
    case DecoderStep::Kind::Metaspace:
      for (size_t i = 0; i < tokens.size(); ++i)
        replace_all(tokens[i], step.a, i == 0 && step.prepend ? "" : " ");
      break;
  }
}

// ------------------------------------------------------------------ tokenizer

struct Spec {
  std::unique_ptr<BpeModel> model;
  std::vector<AddedToken> added;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::optional<std::vector<DecoderStep>> decoder;  // none: tokens joined by spaces
  std::vector<int64_t> prefix, suffix;              // post-processing for one sequence
  std::optional<int64_t> bos, eos;
  std::string description;
};

class HfBpeTokenizer final : public Tokenizer {
 public:
  explicit HfBpeTokenizer(Spec spec) : s_(std::move(spec)) {
    // The loaders checked every id; this guards the tables below all the same.
    const size_t listed = s_.model->vocab().size() + s_.added.size();
    int64_t max_id = -1;
    for (const auto& [tok, id] : s_.model->vocab()) {
      check_token_id(id, listed, s_.description);
      max_id = std::max(max_id, id);
    }
    for (const auto& a : s_.added) {
      check_token_id(a.id, listed, s_.description);
      max_id = std::max(max_id, a.id);
    }
    for (const auto* list : {&s_.prefix, &s_.suffix}) {
      for (int64_t id : *list) {
        if (id < 0 || id > max_id) {
          throw std::runtime_error(s_.description + ": post-processor token id " + std::to_string(id) +
                                   " is not in the vocabulary");
        }
      }
    }
    id_to_token_.resize(static_cast<size_t>(max_id + 1));
    is_special_.assign(id_to_token_.size(), false);
    for (const auto& [tok, id] : s_.model->vocab()) id_to_token_[id] = tok;
    for (const auto& a : s_.added) {
      id_to_token_[a.id] = a.content;
      is_special_[a.id] = a.special;
      (a.normalized ? normalized_added_ : raw_added_).add(a);
    }
  }

  std::vector<int64_t> encode(const std::string& text, const EncodeOptions& options) const override {
    if (!detail::is_valid_utf8(text)) throw std::invalid_argument("encode: the text is not valid UTF-8");
    std::vector<Piece> pieces;
    raw_added_.split(text, true, pieces);
    std::vector<Piece> ready;
    for (auto& piece : pieces) {
      if (piece.id >= 0) {
        ready.push_back(std::move(piece));
        continue;
      }
      apply_normalizer(s_.normalizer, piece.text);
      normalized_added_.split(piece.text, piece.at_start, ready);
    }
    std::vector<int64_t> ids;
    if (options.add_special_tokens) ids = s_.prefix;
    std::vector<Piece> words;
    for (auto& piece : ready) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
        continue;
      }
      words.clear();
      words.push_back(std::move(piece));
      for (const auto& step : s_.pre_tokenizer) apply_pre_tokenizer(step, words);
      for (const auto& w : words) s_.model->encode_word(w.text, ids);
    }
    if (options.add_special_tokens) ids.insert(ids.end(), s_.suffix.begin(), s_.suffix.end());
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int64_t id : ids) {
      if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()))
        throw std::invalid_argument("decode: id " + std::to_string(id) + " is out of range [0, " +
                                    std::to_string(id_to_token_.size()) + ")");
      if (is_special_[id]) continue;
      tokens.push_back(id_to_token_[id]);
    }
    std::string out;
    if (!s_.decoder) {
      for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
      return out;
    }
    for (const auto& step : *s_.decoder) apply_decoder(step, tokens);
    for (const auto& t : tokens) out += t;
    return out;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int64_t> bos_id() const override { return s_.bos; }
  std::optional<int64_t> eos_id() const override { return s_.eos; }
  bool adds_bos() const override { return s_.bos && !s_.prefix.empty() && s_.prefix.front() == *s_.bos; }
  std::string describe() const override { return s_.description; }

 private:
  Spec s_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> is_special_;
  AddedTokenSplitter raw_added_, normalized_added_;
};

// ------------------------------------------------------------ tokenizer.json

// Reads tokenizer.json objects, naming the file and key in every error.
class JsonReader {
 public:
  explicit JsonReader(std::filesystem::path file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw std::runtime_error(file_.string() + ": key " + key + ": " + what);
  }
  const json& need(const json& obj, const std::string& name, const std::string& key) const {
    if (!obj.is_object() || !obj.contains(name)) fail(key, "missing");
    return obj.at(name);
  }
  std::string string_of(const json& obj, const std::string& name, const std::string& key) const {
    const json& v = need(obj, name, key);
    if (!v.is_string()) fail(key, "expected a string");
    return v.get<std::string>();
  }
  bool bool_or(const json& obj, const std::string& name, bool fallback, const std::string& key) const {
    if (!obj.is_object() || !obj.contains(name) || obj.at(name).is_null()) return fallback;
    if (!obj.at(name).is_boolean()) fail(key, "expected true or false");
    return obj.at(name).get<bool>();
  }
  const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path file_;
};

// A {"String": ...} or {"Regex": ...} pattern.
void read_pattern(const JsonReader& r, const json& pattern, const std::string& key, std::shared_ptr<Regex>& regex,
                  std::string& literal) {
  if (pattern.is_object() && pattern.contains("Regex") && pattern.at("Regex").is_string()) {
    regex = std::make_shared<Regex>(pattern.at("Regex").get<std::string>(), r.file().string() + ": key " + key);
  } else if (pattern.is_object() && pattern.contains("String") && pattern.at("String").is_string()) {
    literal = pattern.at("String").get<std::string>();
  } else {
    r.fail(key, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
}

void read_normalizer(const JsonReader& r, const json& n, const std::string& key, std::vector<NormalizerStep>& out) {
  if (n.is_null()) return;
  const std::string type = r.string_of(n, "type", key + ".type");
  if (type == "Sequence") {
    const json& list = r.need(n, "normalizers", key + ".normalizers");
    if (!list.is_array()) r.fail(key + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_normalizer(r, list[i], key + ".normalizers[" + std::to_string(i) + "]", out);
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::Kind::Prepend, r.string_of(n, "prepend", key + ".prepend"), "", nullptr});
  } else if (type == "Replace") {
    NormalizerStep step{NormalizerStep::Kind::Replace, "", r.string_of(n, "content", key + ".content"), nullptr};
    read_pattern(r, r.need(n, "pattern", key + ".pattern"), key + ".pattern", step.regex, step.a);
    if (step.regex) step.kind = NormalizerStep::Kind::ReplaceRegex;
    out.push_back(std::move(step));
  } else if (type == "NFC") {
    out.push_back({NormalizerStep::Kind::Nfc, "", "", nullptr});
  } else if (type == "Strip") {
    NormalizerStep step{NormalizerStep::Kind::Strip, "", "", nullptr};
    step.left = r.bool_or(n, "strip_left", true, key + ".strip_left");
    step.right = r.bool_or(n, "strip_right", true, key + ".strip_right");
    out.push_back(std::move(step));
  } else {
    r.fail(key + ".type", "unsupported normalizer \"" + type + "\" (supported: Sequence, Prepend, Replace, NFC, Strip)");
  }
}

SplitBehavior read_behavior(const JsonReader& r, const std::string& b, const std::string& key) {
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  r.fail(key, "unknown split behavior \"" + b + "\"");
}

void read_pre_tokenizer(const JsonReader& r, const json& p, const std::string& key,
                        std::vector<PreTokenizerStep>& out) {
  if (p.is_null()) return;
  const std::string type = r.string_of(p, "type", key + ".type");
  PreTokenizerStep step{};
  if (type == "Sequence") {
    const json& list = r.need(p, "pretokenizers", key + ".pretokenizers");
    if (!list.is_array()) r.fail(key + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_pre_tokenizer(r, list[i], key + ".pretokenizers[" + std::to_string(i) + "]", out);
    return;
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::Split;
    read_pattern(r, r.need(p, "pattern", key + ".pattern"), key + ".pattern", step.regex, step.literal);
    step.behavior = read_behavior(r, r.string_of(p, "behavior", key + ".behavior"), key + ".behavior");
    step.invert = r.bool_or(p, "invert", false, key + ".invert");
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::ByteLevel;
    step.add_prefix_space = r.bool_or(p, "add_prefix_space", true, key + ".add_prefix_space");
    if (r.bool_or(p, "use_regex", true, key + ".use_regex")) step.regex = std::make_shared<Regex>(kGpt2Pattern, key);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::Metaspace;
    step.replacement = r.string_of(p, "replacement", key + ".replacement");
    if (p.contains("prepend_scheme") && !p.at("prepend_scheme").is_null()) {
      const std::string scheme = r.string_of(p, "prepend_scheme", key + ".prepend_scheme");
      if (scheme == "always") step.prepend = PreTokenizerStep::Prepend::Always;
      else if (scheme == "first") step.prepend = PreTokenizerStep::Prepend::First;
      else if (scheme == "never") step.prepend = PreTokenizerStep::Prepend::Never;
      else r.fail(key + ".prepend_scheme", "unknown value \"" + scheme + "\"");
    } else {
      step.prepend = r.bool_or(p, "add_prefix_space", true, key + ".add_prefix_space")
                         ? PreTokenizerStep::Prepend::Always
                         : PreTokenizerStep::Prepend::Never;
    }
    step.split = r.bool_or(p, "split", true, key + ".split");
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::Split;
    bool individual = r.bool_or(p, "individual_digits", false, key + ".individual_digits");
    step.regex = std::make_shared<Regex>(individual ? "\\p{N}" : "\\p{N}+", key);
  } else if (type == "Punctuation") {
    // tokenizers' is_punc: ASCII punctuation (which includes $ + < = > ^ ` | ~) or Unicode category P.
    step.kind = PreTokenizerStep::Kind::Split;
    step.regex = std::make_shared<Regex>("[\\p{P}\\x{21}-\\x{2f}\\x{3a}-\\x{40}\\x{5b}-\\x{60}\\x{7b}-\\x{7e}]", key);
    step.behavior = p.contains("behavior") && !p.at("behavior").is_null()
                        ? read_behavior(r, r.string_of(p, "behavior", key + ".behavior"), key + ".behavior")
                        : SplitBehavior::Isolated;
  } else if (type == "Whitespace") {
    step.kind = PreTokenizerStep::Kind::Split;
    step.regex = std::make_shared<Regex>("\\w+|[^\\w\\s]+", key);
    step.behavior = SplitBehavior::Removed;
    step.invert = true;
  } else if (type == "WhitespaceSplit") {
    step.kind = PreTokenizerStep::Kind::Split;
    step.regex = std::make_shared<Regex>("\\s+", key);
    step.behavior = SplitBehavior::Removed;
  } else {
    r.fail(key + ".type", "unsupported pre-tokenizer \"" + type +
                              "\" (supported: Sequence, Split, ByteLevel, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit)");
  }
  out.push_back(std::move(step));
}

void read_decoder(const JsonReader& r, const json& d, const std::string& key, std::vector<DecoderStep>& out) {
  const std::string type = r.string_of(d, "type", key + ".type");
  DecoderStep step{};
  if (type == "Sequence") {
    const json& list = r.need(d, "decoders", key + ".decoders");
    if (!list.is_array()) r.fail(key + ".decoders", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_decoder(r, list[i], key + ".decoders[" + std::to_string(i) + "]", out);
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::ByteLevel;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::Replace;
    std::shared_ptr<Regex> regex;
    read_pattern(r, r.need(d, "pattern", key + ".pattern"), key + ".pattern", regex, step.a);
    if (regex) r.fail(key + ".pattern", "a Regex pattern is not supported in decoders");
    step.b = r.string_of(d, "content", key + ".content");
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::ByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::Fuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::Strip;
    step.a = r.string_of(d, "content", key + ".content");
    step.start = r.need(d, "start", key + ".start").get<size_t>();
    step.stop = r.need(d, "stop", key + ".stop").get<size_t>();
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::Metaspace;
    step.a = r.string_of(d, "replacement", key + ".replacement");
    if (d.contains("prepend_scheme") && d.at("prepend_scheme").is_string())
      step.prepend = d.at("prepend_scheme").get<std::string>() != "never";
    else
      step.prepend = r.bool_or(d, "add_prefix_space", true, key + ".add_prefix_space");
  } else {
    r.fail(key + ".type", "unsupported decoder \"" + type +
                              "\" (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)");
  }
  out.push_back(std::move(step));
}

int64_t token_id(const JsonReader& r, const std::unordered_map<std::string, int64_t>& ids, const std::string& token,
                 const std::string& key) {
  auto it = ids.find(token);
  if (it == ids.end()) r.fail(key, "token \"" + token + "\" is not in the vocabulary");
  return it->second;
}

void read_post_processor(const JsonReader& r, const json& p, const std::string& key,
                         const std::unordered_map<std::string, int64_t>& ids, std::vector<int64_t>& prefix,
                         std::vector<int64_t>& suffix) {
  if (p.is_null()) return;
  const std::string type = r.string_of(p, "type", key + ".type");
  if (type == "Sequence") {
    const json& list = r.need(p, "processors", key + ".processors");
    if (!list.is_array()) r.fail(key + ".processors", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_post_processor(r, list[i], key + ".processors[" + std::to_string(i) + "]", ids, prefix, suffix);
  } else if (type == "ByteLevel") {
    // Only trims offsets.
  } else if (type == "TemplateProcessing") {
    const json& single = r.need(p, "single", key + ".single");
    const json& specials = p.contains("special_tokens") ? p.at("special_tokens") : json::object();
    auto special_ids = [&](const std::string& name) {
      std::vector<int64_t> out;
      if (specials.contains(name) && specials.at(name).contains("ids")) {
        for (const auto& v : specials.at(name).at("ids")) out.push_back(v.get<int64_t>());
      } else {
        out.push_back(token_id(r, ids, name, key + ".special_tokens"));
      }
      return out;
    };
    bool seen_sequence = false;
    auto add_special = [&](const std::string& name) {
      auto v = special_ids(name);
      auto& target = seen_sequence ? suffix : prefix;
      target.insert(target.end(), v.begin(), v.end());
    };
    if (single.is_array()) {
      for (const auto& item : single) {
        if (item.contains("Sequence")) seen_sequence = true;
        else if (item.contains("SpecialToken")) add_special(r.string_of(item.at("SpecialToken"), "id", key + ".single"));
        else r.fail(key + ".single", "expected Sequence or SpecialToken items");
      }
    } else if (single.is_string()) {  // "<s> $A"
      std::istringstream words(single.get<std::string>());
      for (std::string w; words >> w;) {
        if (w[0] == '$') seen_sequence = true;
        else add_special(w.substr(0, w.rfind(':') == std::string::npos ? w.size() : w.rfind(':')));
      }
    } else {
      r.fail(key + ".single", "expected an array or a string");
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    const json& cls = r.need(p, "cls", key + ".cls");
    const json& sep = r.need(p, "sep", key + ".sep");
    prefix.push_back(cls.at(1).get<int64_t>());
    suffix.push_back(sep.at(1).get<int64_t>());
  } else {
    r.fail(key + ".type", "unsupported post-processor \"" + type +
                              "\" (supported: Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing)");
  }
}

std::optional<int64_t> find_token(const std::unordered_map<std::string, int64_t>& ids,
                                  std::initializer_list<const char*> names) {
  for (const char* n : names) {
    auto it = ids.find(n);
    if (it != ids.end()) return it->second;
  }
  return std::nullopt;
}

// BOS/EOS ids and the overrides of tokenizer_config.json.
void settle_bos_eos(Spec& spec, const std::unordered_map<std::string, int64_t>& ids,
                    const detail::TokenizerConfig& config, const std::string& config_name) {
  auto config_token = [&](const std::optional<std::string>& name, const char* key) -> std::optional<int64_t> {
    if (!name) return std::nullopt;
    auto it = ids.find(*name);
    if (it == ids.end())
      throw std::runtime_error(config_name + ": key " + key + ": token \"" + *name + "\" is not in the vocabulary");
    return it->second;
  };
  spec.bos = config_token(config.bos_token, "bos_token");
  spec.eos = config_token(config.eos_token, "eos_token");
  if (!spec.bos && !spec.prefix.empty()) spec.bos = spec.prefix.front();
  if (!spec.eos && !spec.suffix.empty()) spec.eos = spec.suffix.back();
  if (!spec.bos) spec.bos = find_token(ids, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"});
  if (!spec.eos) spec.eos = find_token(ids, {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"});
  if (config.add_bos_token) {
    if (*config.add_bos_token) {
      if (!spec.bos) throw std::runtime_error(config_name + ": key add_bos_token: true, but the tokenizer has no BOS token");
      if (spec.prefix.empty() || spec.prefix.front() != *spec.bos) spec.prefix.insert(spec.prefix.begin(), *spec.bos);
    } else if (spec.bos) {
      spec.prefix.erase(std::remove(spec.prefix.begin(), spec.prefix.end(), *spec.bos), spec.prefix.end());
    }
  }
  if (config.add_eos_token) {
    if (*config.add_eos_token) {
      if (!spec.eos) throw std::runtime_error(config_name + ": key add_eos_token: true, but the tokenizer has no EOS token");
      if (spec.suffix.empty() || spec.suffix.back() != *spec.eos) spec.suffix.push_back(*spec.eos);
    } else if (spec.eos) {
      spec.suffix.erase(std::remove(spec.suffix.begin(), spec.suffix.end(), *spec.eos), spec.suffix.end());
    }
  }
}

bool ends_in_byte_level(const Spec& spec) {
  return !spec.pre_tokenizer.empty() && spec.pre_tokenizer.back().kind == PreTokenizerStep::Kind::ByteLevel;
}

// transformers 5 builds the normalizer and pre-tokenizer of some tokenizer
// classes itself: AutoTokenizer keeps only the vocabulary, merges and added
// tokens of tokenizer.json when tokenizer_config.json names such a class. This
// does the same for the two classes whose own pipeline fits the vocabulary:
// LlamaTokenizer on a SentencePiece-style vocabulary (no normalizer; Metaspace
// "▁" without splitting, prepended always when legacy, else only at the start
// of the text, never when add_prefix_space is false; byte fallback) and
// GPT2Tokenizer on a byte-level one (no normalizer; ByteLevel with GPT-2's
// split regex, so a Digits step of the file is dropped). A byte-level
// vocabulary under LlamaTokenizer keeps its own pipeline: the class's would
// turn spaces into "▁" and drop every character outside the vocabulary.
// Returns the class applied, or "" when the file's pipeline stays.
std::string use_class_pipeline(const detail::TokenizerConfig& config, Spec& spec, BpeOptions& options) {
  const std::string& cls = config.tokenizer_class;
  const bool byte_level = ends_in_byte_level(spec);
  if ((cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast") && !byte_level) {
    PreTokenizerStep metaspace{};
    metaspace.kind = PreTokenizerStep::Kind::Metaspace;
    metaspace.replacement = "\xE2\x96\x81";  // U+2581
    metaspace.split = false;
    if (!config.add_prefix_space.value_or(true)) metaspace.prepend = PreTokenizerStep::Prepend::Never;
    else if (config.legacy.value_or(false)) metaspace.prepend = PreTokenizerStep::Prepend::Always;
    else metaspace.prepend = PreTokenizerStep::Prepend::First;
    spec.normalizer.clear();
    spec.pre_tokenizer.clear();
    spec.pre_tokenizer.push_back(std::move(metaspace));
    options.byte_fallback = true;
    options.fuse_unk = true;
    return "LlamaTokenizer";
  }
  if ((cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast") && byte_level) {
    PreTokenizerStep step{};
    step.kind = PreTokenizerStep::Kind::ByteLevel;
    step.add_prefix_space = config.add_prefix_space.value_or(false);
    step.regex = std::make_shared<Regex>(kGpt2Pattern, "GPT-2 pattern");
    spec.normalizer.clear();
    spec.pre_tokenizer.clear();
    spec.pre_tokenizer.push_back(std::move(step));
    return "GPT2Tokenizer";
  }
  return "";
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json,
                                               const std::filesystem::path& config_path) {
  const json root = parse_json_file(tokenizer_json);
  const JsonReader r(tokenizer_json);
  if (!root.is_object()) r.fail("(root)", "expected an object");
  const json& model = r.need(root, "model", "model");
  std::string type = model.contains("type") ? r.string_of(model, "type", "model.type")
                                            : (model.contains("merges") ? "BPE" : "");
  if (type != "BPE")
    r.fail("model.type", "unknown model type \"" + type + "\" (supported: BPE)");
  // Keys the `tokenizers` library writes with their default value are
  // accepted; a value we do not implement is refused, naming it.
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!model.contains(name) || model.at(name).is_null()) continue;
    const std::string key = std::string("model.") + name;
    if (!model.at(name).is_string()) r.fail(key, "expected a string or null");
    const std::string value = model.at(name).get<std::string>();
    if (!value.empty()) r.fail(key, "value \"" + value + "\" is not supported (only \"\" or null)");
  }
  if (model.contains("dropout") && !model.at("dropout").is_null()) {
    const json& dropout = model.at("dropout");
    if (!dropout.is_number()) r.fail("model.dropout", "expected a number or null, got " + dropout.dump());
    const double p = dropout.get<double>();
    if (!(p >= 0.0 && p <= 1.0)) r.fail("model.dropout", "must lie in [0, 1], got " + dropout.dump());
    // BPE dropout only acts when training; encoding as tokenizers does for inference ignores it.
  }

  // Vocabulary and merges.
  const json& vocab_json = r.need(model, "vocab", "model.vocab");
  if (!vocab_json.is_object()) r.fail("model.vocab", "expected an object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(vocab_json.size() * 2);
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    if (!it.value().is_number_integer()) r.fail("model.vocab", "the id of \"" + it.key() + "\" is not an integer");
    if (it.value().is_number_unsigned() && it.value().get<uint64_t>() > uint64_t(INT64_MAX))
      r.fail("model.vocab", "the id of \"" + it.key() + "\" is too large");
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  const size_t added_count =
      root.contains("added_tokens") && root.at("added_tokens").is_array() ? root.at("added_tokens").size() : 0;
  check_vocab_ids(vocab, vocab.size() + added_count, tokenizer_json.string() + ": key model.vocab");
  const json& merges_json = r.need(model, "merges", "model.merges");
  if (!merges_json.is_array()) r.fail("model.merges", "expected an array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        r.fail(key, "expected \"a b\"");
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      r.fail(key, "expected \"a b\" or [a, b]");
    }
  }

  Spec spec;
  // Added tokens.
  std::unordered_map<std::string, int64_t> all_ids = vocab;
  if (root.contains("added_tokens") && !root.at("added_tokens").is_null() && !root.at("added_tokens").is_array())
    r.fail("added_tokens", "expected an array of tokens");
  std::unordered_map<int64_t, std::string> added_ids;
  if (root.contains("added_tokens") && root.at("added_tokens").is_array()) {
    const json& list = root.at("added_tokens");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string key = "added_tokens[" + std::to_string(i) + "]";
      const json& t = list[i];
      AddedToken a;
      a.content = r.string_of(t, "content", key + ".content");
      const json& id = r.need(t, "id", key + ".id");
      if (!id.is_number_integer()) r.fail(key + ".id", "expected an integer");
      if (id.is_number_unsigned() && id.get<uint64_t>() > uint64_t(INT64_MAX)) r.fail(key + ".id", "too large");
      a.id = id.get<int64_t>();
      check_token_id(a.id, vocab.size() + list.size(), tokenizer_json.string() + ": key " + key + ".id");
      if (!added_ids.emplace(a.id, a.content).second)
        r.fail(key + ".id", "id " + std::to_string(a.id) + " is also that of added token \"" + added_ids.at(a.id) + "\"");
      a.special = r.bool_or(t, "special", false, key + ".special");
      a.lstrip = r.bool_or(t, "lstrip", false, key + ".lstrip");
      a.rstrip = r.bool_or(t, "rstrip", false, key + ".rstrip");
      a.single_word = r.bool_or(t, "single_word", false, key + ".single_word");
      a.normalized = r.bool_or(t, "normalized", !a.special, key + ".normalized");
      all_ids[a.content] = a.id;
      spec.added.push_back(std::move(a));
    }
  }

  if (root.contains("normalizer")) read_normalizer(r, root.at("normalizer"), "normalizer", spec.normalizer);
  if (root.contains("pre_tokenizer")) read_pre_tokenizer(r, root.at("pre_tokenizer"), "pre_tokenizer", spec.pre_tokenizer);
  if (root.contains("decoder") && !root.at("decoder").is_null()) {
    spec.decoder.emplace();
    read_decoder(r, root.at("decoder"), "decoder", *spec.decoder);
  }
  if (root.contains("post_processor"))
    read_post_processor(r, root.at("post_processor"), "post_processor", all_ids, spec.prefix, spec.suffix);

  BpeOptions options;
  options.byte_fallback = r.bool_or(model, "byte_fallback", false, "model.byte_fallback");
  options.fuse_unk = r.bool_or(model, "fuse_unk", false, "model.fuse_unk");
  options.ignore_merges = r.bool_or(model, "ignore_merges", false, "model.ignore_merges");
  if (model.contains("unk_token") && !model.at("unk_token").is_null())
    options.unk_token = r.string_of(model, "unk_token", "model.unk_token");
  const detail::TokenizerConfig config = detail::read_tokenizer_config(config_path);
  const std::string class_pipeline = use_class_pipeline(config, spec, options);
  // When ByteLevel is the last pre-tokenizer, the model maps the bytes itself
  // (and caches words by their raw bytes).
  const bool byte_level = ends_in_byte_level(spec);
  if (byte_level) spec.pre_tokenizer.back().map_bytes = false;
  options.byte_level_input = byte_level;
  spec.model = std::make_unique<BpeModel>(std::move(vocab), merges, options, tokenizer_json.string());

  settle_bos_eos(spec, all_ids, config, config_path.string());
  spec.description = std::string(byte_level ? "byte-level BPE" : "BPE") + " (" + tokenizer_json.string() +
                     (class_pipeline.empty() ? "" : ", pre-tokenized as transformers' " + class_pipeline) + ")";
  return std::make_unique<HfBpeTokenizer>(std::move(spec));
}

}  // namespace cur4llm::tokenize

namespace cur4llm::detail {

using namespace cur4llm::tokenize;

// GPT-2's vocab.json + merges.txt, with the overrides of an optional tokenizer_config.json.
std::unique_ptr<Tokenizer> load_gpt2_bpe_with_config(const std::filesystem::path& vocab_json,
                                                     const std::filesystem::path& merges_txt,
                                                     const std::filesystem::path& config_path) {
  const json vocab_root = parse_json_file(vocab_json);
  if (!vocab_root.is_object())
    throw std::runtime_error(vocab_json.string() + ": expected an object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(vocab_root.size() * 2);
  for (auto it = vocab_root.begin(); it != vocab_root.end(); ++it) {
    if (!it.value().is_number_integer())
      throw std::runtime_error(vocab_json.string() + ": key " + it.key() + ": the id is not an integer");
    if (it.value().is_number_unsigned() && it.value().get<uint64_t>() > uint64_t(INT64_MAX))
      throw std::runtime_error(vocab_json.string() + ": key " + it.key() + ": the id is too large");
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  check_vocab_ids(vocab, vocab.size(), vocab_json.string());
  std::ifstream in(merges_txt, std::ios::binary);
  if (!in) throw std::runtime_error(merges_txt.string() + ": cannot open file");
  std::vector<std::pair<std::string, std::string>> merges;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (n == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.empty()) continue;
    size_t space = line.find(' ');
    if (space == std::string::npos)
      throw std::runtime_error(merges_txt.string() + ": line " + std::to_string(n) + ": expected \"a b\"");
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }

  const TokenizerConfig config = read_tokenizer_config(config_path);
  Spec spec;
  // transformers' slow tokenizers that read these files: GPT-2's split regex,
  // or Qwen2's (with NFC normalization) when tokenizer_config.json names it.
  const bool qwen2 = config.tokenizer_class == "Qwen2Tokenizer";
  PreTokenizerStep byte_level{};
  byte_level.kind = PreTokenizerStep::Kind::ByteLevel;
  byte_level.add_prefix_space = false;
  byte_level.map_bytes = false;
  byte_level.regex = qwen2 ? std::make_shared<Regex>(kQwen2Pattern, "Qwen2 pattern")
                           : std::make_shared<Regex>(kGpt2Pattern, "GPT-2 pattern");
  spec.pre_tokenizer.push_back(std::move(byte_level));
  if (qwen2) spec.normalizer.push_back(NormalizerStep{NormalizerStep::Kind::Nfc, "", "", nullptr});
  // Added tokens recorded by transformers in tokenizer_config.json.
  std::unordered_map<std::string, int64_t> all_ids = vocab;
  std::unordered_map<int64_t, std::string> added_ids;
  for (const auto& c : config.added_tokens) {
    const std::string where = config_path.string() + ": key added_tokens_decoder." + std::to_string(c.id);
    check_token_id(c.id, vocab.size() + config.added_tokens.size(), where);
    if (!added_ids.emplace(c.id, c.content).second)
      throw std::runtime_error(where + ": id given twice");
    AddedToken a;
    a.content = c.content;
    a.id = c.id;
    a.special = c.special;
    a.lstrip = c.lstrip;
    a.rstrip = c.rstrip;
    a.single_word = c.single_word;
    a.normalized = c.normalized;
    all_ids[a.content] = a.id;
    spec.added.push_back(std::move(a));
  }
  // Without that record, transformers' GPT2Tokenizer still splits out its special
  // tokens: BOS and EOS as the config names them, "<|endoftext|>" by default.
  if (config.added_tokens.empty()) {
    for (const auto& name : {config.bos_token.value_or("<|endoftext|>"), config.eos_token.value_or("<|endoftext|>")}) {
      auto it = vocab.find(name);
      if (it == vocab.end() || added_ids.count(it->second)) continue;
      added_ids.emplace(it->second, name);
      AddedToken a;
      a.content = name;
      a.id = it->second;
      a.special = true;
      spec.added.push_back(std::move(a));
    }
  }
  spec.decoder = std::vector<DecoderStep>{DecoderStep{DecoderStep::Kind::ByteLevel, "", "", 0, 0, true}};
  BpeOptions options;
  options.byte_level_input = true;
  spec.model = std::make_unique<BpeModel>(std::move(vocab), merges, options, merges_txt.string());
  settle_bos_eos(spec, all_ids, config, config_path.string());
  spec.description = "byte-level BPE (" + vocab_json.string() + ", " + merges_txt.string() + ")";
  return std::make_unique<HfBpeTokenizer>(std::move(spec));
}

namespace {

// One base64 field of a tiktoken file; nullopt when it is not base64.
std::optional<std::string> base64_decode(std::string_view in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (in.empty() || in.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = 0;
        ++pad;
      } else if (pad > 0 || (v[k] = value(c)) < 0) {
        return std::nullopt;
      }
    }
    const uint32_t n = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out += static_cast<char>(n >> 16);
    if (pad < 2) out += static_cast<char>((n >> 8) & 0xFF);
    if (pad < 1) out += static_cast<char>(n & 0xFF);
  }
  return out;
}

}  // namespace

bool is_tiktoken_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  if (!in || !std::getline(in, line)) return false;
  const size_t space = line.find(' ');
  if (space == std::string::npos || space + 1 >= line.size()) return false;
  if (line.find_first_not_of("0123456789", space + 1) != std::string::npos) return false;
  return base64_decode(std::string_view(line).substr(0, space)).has_value();
}

// Llama-3's tiktoken rank file: "base64-token rank" lines, ranks 0, 1, 2, ...
// Encoded as transformers' converted tokenizer.json does: byte-level BPE whose
// merges are every split of a token into two tokens, ranked by the token's
// rank; a word found whole in the vocabulary is one token; Meta's 256 special
// tokens follow the ranks, and <|begin_of_text|> starts every sequence.
std::unique_ptr<Tokenizer> load_tiktoken_with_config(const std::filesystem::path& model_file,
                                                     const std::filesystem::path& config_path) {
  std::ifstream in(model_file, std::ios::binary);
  if (!in) throw std::runtime_error(model_file.string() + ": cannot open file");
  std::vector<std::string> by_rank;  // raw bytes of each rank
  std::unordered_map<std::string, int64_t> rank_of;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const std::string where = model_file.string() + ": line " + std::to_string(n);
    const size_t space = line.find(' ');
    if (space == std::string::npos) throw std::runtime_error(where + ": expected \"base64-token rank\"");
    auto token = base64_decode(std::string_view(line).substr(0, space));
    if (!token) throw std::runtime_error(where + ": the token is not base64");
    const std::string rank_text = line.substr(space + 1);
    if (rank_text.empty() || rank_text.size() > 9 || rank_text.find_first_not_of("0123456789") != std::string::npos)
      throw std::runtime_error(where + ": the rank \"" + rank_text + "\" is not a number");
    if (std::stoll(rank_text) != static_cast<int64_t>(by_rank.size()))
      throw std::runtime_error(where + ": rank " + rank_text + " where " + std::to_string(by_rank.size()) +
                               " was expected (ranks run 0, 1, 2, ...)");
    if (!rank_of.emplace(*token, static_cast<int64_t>(by_rank.size())).second)
      throw std::runtime_error(where + ": the token is listed twice");
    by_rank.push_back(std::move(*token));
  }
  if (by_rank.size() < 256) throw std::runtime_error(model_file.string() + ": fewer than 256 tokens");
  const auto& bytes = ByteLevelMap::get();
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(by_rank.size() * 2);
  for (size_t r = 0; r < by_rank.size(); ++r) vocab.emplace(bytes.encode(by_rank[r]), static_cast<int64_t>(r));
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::pair<int64_t, int64_t>> local;
  for (const std::string& token : by_rank) {
    local.clear();
    for (size_t i = 1; i < token.size(); ++i) {
      auto l = rank_of.find(token.substr(0, i)), r = rank_of.find(token.substr(i));
      if (l != rank_of.end() && r != rank_of.end()) local.emplace_back(l->second, r->second);
    }
    std::sort(local.begin(), local.end());
    for (const auto& [l, r] : local) merges.emplace_back(bytes.encode(by_rank[l]), bytes.encode(by_rank[r]));
  }

  Spec spec;
  std::unordered_map<std::string, int64_t> all_ids = vocab;
  const int64_t base = static_cast<int64_t>(by_rank.size());
  for (int64_t i = 0; i < 256; ++i) {
    static const char* const kNamed[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                         "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
                                         "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
                                         "<|reserved_special_token_4|>", "<|eot_id|>"};
    AddedToken a;
    a.content = i < 10 ? std::string(kNamed[i]) : "<|reserved_special_token_" + std::to_string(i - 5) + "|>";
    a.id = base + i;
    a.special = true;
    all_ids[a.content] = a.id;
    spec.added.push_back(std::move(a));
  }
  PreTokenizerStep byte_level{};
  byte_level.kind = PreTokenizerStep::Kind::ByteLevel;
  byte_level.map_bytes = false;
  byte_level.regex = std::make_shared<Regex>(kLlama3Pattern, "Llama-3 pattern");
  spec.pre_tokenizer.push_back(std::move(byte_level));
  spec.decoder = std::vector<DecoderStep>{DecoderStep{DecoderStep::Kind::ByteLevel, "", "", 0, 0, true}};
  spec.prefix = {base};  // <|begin_of_text|>
  BpeOptions options;
  options.byte_level_input = true;
  options.ignore_merges = true;
  spec.model = std::make_unique<BpeModel>(std::move(vocab), merges, options, model_file.string());
  const TokenizerConfig config = read_tokenizer_config(config_path);
  settle_bos_eos(spec, all_ids, config, config_path.string());
  spec.description = "tiktoken byte-level BPE (" + model_file.string() + ")";
  return std::make_unique<HfBpeTokenizer>(std::move(spec));
}

TokenizerConfig read_tokenizer_config(const std::filesystem::path& path) {
  TokenizerConfig config;
  if (path.empty()) return config;
  const json root = parse_json_file(path);
  if (!root.is_object()) throw std::runtime_error(path.string() + ": expected a JSON object");
  auto flag = [&](const char* key, std::optional<bool>& out) {
    if (!root.contains(key) || root.at(key).is_null()) return;
    if (!root.at(key).is_boolean()) throw std::runtime_error(path.string() + ": key " + key + ": expected true or false");
    out = root.at(key).get<bool>();
  };
  auto token = [&](const char* key, std::optional<std::string>& out) {
    if (!root.contains(key) || root.at(key).is_null()) return;
    const json& v = root.at(key);
    if (v.is_string()) out = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v.at("content").is_string()) out = v.at("content").get<std::string>();
    else throw std::runtime_error(path.string() + ": key " + key + ": expected a string or {\"content\": ...}");
  };
  flag("add_bos_token", config.add_bos_token);
  flag("add_eos_token", config.add_eos_token);
  flag("add_prefix_space", config.add_prefix_space);
  flag("legacy", config.legacy);
  if (root.contains("tokenizer_class") && root.at("tokenizer_class").is_string())
    config.tokenizer_class = root.at("tokenizer_class").get<std::string>();
  if (root.contains("added_tokens_decoder") && !root.at("added_tokens_decoder").is_null()) {
    const json& added = root.at("added_tokens_decoder");
    if (!added.is_object())
      throw std::runtime_error(path.string() + ": key added_tokens_decoder: expected an object of id -> token");
    for (auto it = added.begin(); it != added.end(); ++it) {
      const std::string key = "added_tokens_decoder." + it.key();
      TokenizerConfig::AddedToken a;
      size_t used = 0;
      try {
        a.id = std::stoll(it.key(), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != it.key().size())
        throw std::runtime_error(path.string() + ": key " + key + ": the key is not a token id");
      const json& t = it.value();
      if (!t.is_object() || !t.contains("content") || !t.at("content").is_string())
        throw std::runtime_error(path.string() + ": key " + key + ": expected {\"content\": ...}");
      a.content = t.at("content").get<std::string>();
      auto bool_of = [&](const char* name, bool fallback) {
        if (!t.contains(name) || t.at(name).is_null()) return fallback;
        if (!t.at(name).is_boolean())
          throw std::runtime_error(path.string() + ": key " + key + "." + name + ": expected true or false");
        return t.at(name).get<bool>();
      };
      a.special = bool_of("special", false);
      a.lstrip = bool_of("lstrip", false);
      a.rstrip = bool_of("rstrip", false);
      a.single_word = bool_of("single_word", false);
      a.normalized = bool_of("normalized", !a.special);
      config.added_tokens.push_back(std::move(a));
    }
  }
  token("bos_token", config.bos_token);
  token("eos_token", config.eos_token);
  return config;
}

}  // namespace cur4llm::detail

namespace cur4llm::tokenize {

std::unique_ptr<Tokenizer> load_gpt2_bpe(const std::filesystem::path& vocab_json,
                                         const std::filesystem::path& merges_txt) {
  return detail::load_gpt2_bpe_with_config(vocab_json, merges_txt, {});
}

std::unique_ptr<Tokenizer> load_tiktoken(const std::filesystem::path& model_file) {
  return detail::load_tiktoken_with_config(model_file, {});
}

}  // namespace cur4llm::tokenize
