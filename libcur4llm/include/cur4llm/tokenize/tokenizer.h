#pragma once
/// Tokenizers that give exactly the ids Hugging Face tokenizers / SentencePiece give.
///
/// load_tokenizer(folder) picks, in order: tokenizer.json (byte-level BPE as in
/// GPT-2 / OPT / LLaMA-3 / Qwen2, or SentencePiece-style BPE with byte fallback
/// as in LLaMA-1/2 and Mistral), tokenizer.model (Llama-3's tiktoken rank file,
/// or SentencePiece through libsentencepiece), vocab.json + merges.txt (GPT-2
/// byte-level BPE).
/// tokenizer_config.json, when present, decides add_bos_token / add_eos_token;
/// when it names LlamaTokenizer (over a SentencePiece-style vocabulary) or
/// GPT2Tokenizer (over a byte-level one), the text is pre-tokenized as
/// transformers 5 does for that class, not as tokenizer.json says.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cur4llm::tokenize {

/// How encode() treats special tokens.
struct EncodeOptions {
  bool add_special_tokens = true;  ///< add BOS/EOS as the tokenizer's post-processing says
};

/// A tokenizer: text in, ids out, and back.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// Ids for `text` (UTF-8), as the Hugging Face tokenizer would give them.
  virtual std::vector<int64_t> encode(const std::string& text, const EncodeOptions& options = {}) const = 0;
  /// Text for `ids` (special tokens skipped).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  /// Number of ids, added tokens included.
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  /// Whether encode() with default options puts BOS first.
  virtual bool adds_bos() const = 0;
  /// A short description for logs: kind and source file.
  virtual std::string describe() const = 0;
};

/// Loads the tokenizer of a model folder (see the file comment for the order).
/// Throws std::runtime_error naming the folder when none is found, or the file
/// and key when a file is malformed or of an unknown model type.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& folder);

/// A tokenizer.json file; `config` is an optional tokenizer_config.json.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json,
                                               const std::filesystem::path& config = {});

/// GPT-2 style vocab.json + merges.txt (byte-level BPE, GPT-2 split regex; "<|endoftext|>" in the
/// text is its special token, as in transformers' GPT2Tokenizer; no special tokens added).
std::unique_ptr<Tokenizer> load_gpt2_bpe(const std::filesystem::path& vocab_json,
                                         const std::filesystem::path& merges_txt);

/// A tiktoken rank file ("base64-token rank" lines, as Llama-3's tokenizer.model): byte-level BPE with
/// Llama-3's split regex and its 256 special tokens after the ranks; BOS <|begin_of_text|> is added.
std::unique_ptr<Tokenizer> load_tiktoken(const std::filesystem::path& model_file);

/// Options for a SentencePiece model.
struct SentencePieceOptions {
  bool add_bos = true;   ///< LLaMA's default
  bool add_eos = false;
};

/// A SentencePiece tokenizer.model through libsentencepiece.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file,
                                              const SentencePieceOptions& options = {});

}  // namespace cur4llm::tokenize
