#pragma once
// Shared by the loaders of the tokenize area: tokenizer_config.json.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cur4llm::detail {

/// What tokenizer_config.json says about BOS/EOS; unset fields were not given.
struct TokenizerConfig {
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<bool> add_prefix_space;  ///< transformers' add_prefix_space (null counts as not given)
  std::optional<bool> legacy;            ///< LlamaTokenizer's legacy flag
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::string tokenizer_class;  ///< e.g. "Qwen2Tokenizer"; empty when not given

  /// One entry of "added_tokens_decoder" (transformers' record of added tokens).
  struct AddedToken {
    int64_t id = 0;
    std::string content;
    bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
  };
  std::vector<AddedToken> added_tokens;  ///< from "added_tokens_decoder", in file order
};

/// Reads tokenizer_config.json; an empty path gives an empty config.
/// Throws std::runtime_error naming the file (and key) when it is malformed.
TokenizerConfig read_tokenizer_config(const std::filesystem::path& path);

}  // namespace cur4llm::detail

namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::detail {

/// GPT-2's vocab.json + merges.txt, with the BOS/EOS overrides of an optional tokenizer_config.json.
std::unique_ptr<tokenize::Tokenizer> load_gpt2_bpe_with_config(const std::filesystem::path& vocab_json,
                                                               const std::filesystem::path& merges_txt,
                                                               const std::filesystem::path& config);

/// Whether `path` is a tiktoken rank file ("base64-token rank" lines) rather than a SentencePiece model.
bool is_tiktoken_file(const std::filesystem::path& path);

/// Llama-3's tiktoken tokenizer.model, with the BOS/EOS overrides of an optional tokenizer_config.json.
std::unique_ptr<tokenize::Tokenizer> load_tiktoken_with_config(const std::filesystem::path& model_file,
                                                               const std::filesystem::path& config);

}  // namespace cur4llm::detail
