// load_tokenizer(folder): tokenizer.json, then tokenizer.model (tiktoken or SentencePiece), then
// vocab.json + merges.txt; tokenizer_config.json decides BOS/EOS where it says.

#include "cur4llm/tokenize/tokenizer.h"

#include "tokenize/loaders.h"

#include <stdexcept>

namespace cur4llm::tokenize {

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& folder) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(folder)) throw std::runtime_error(folder.string() + ": no such tokenizer folder");
  const fs::path config = fs::is_regular_file(folder / "tokenizer_config.json") ? folder / "tokenizer_config.json"
                                                                                 : fs::path();
  if (fs::is_regular_file(folder / "tokenizer.json")) return load_tokenizer_json(folder / "tokenizer.json", config);
  if (fs::is_regular_file(folder / "tokenizer.model") && detail::is_tiktoken_file(folder / "tokenizer.model"))
    return detail::load_tiktoken_with_config(folder / "tokenizer.model", config);
  if (fs::is_regular_file(folder / "tokenizer.model")) {
    const detail::TokenizerConfig cfg = detail::read_tokenizer_config(config);
    SentencePieceOptions options;  // LLaMA's defaults: BOS, no EOS
    if (cfg.add_bos_token) options.add_bos = *cfg.add_bos_token;
    if (cfg.add_eos_token) options.add_eos = *cfg.add_eos_token;
    return load_sentencepiece(folder / "tokenizer.model", options);
  }
  if (fs::is_regular_file(folder / "vocab.json") && fs::is_regular_file(folder / "merges.txt"))
    return detail::load_gpt2_bpe_with_config(folder / "vocab.json", folder / "merges.txt", config);
  throw std::runtime_error(folder.string() +
                           ": no tokenizer.json, tokenizer.model or vocab.json + merges.txt in the folder");
}

}  // namespace cur4llm::tokenize
