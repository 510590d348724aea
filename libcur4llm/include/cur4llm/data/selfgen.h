#pragma once
/// Self-generated calibration samples ("selfgen", docs/data.md): the model
/// writes its own calibration text, as the reference's tools/selfgen.py does.
/// Each sample starts with the first 2 tokens of the first 50 characters of a
/// row of a text dataset (wikitext2's train split by default) and goes on with
/// tokens sampled from the model's own distribution (temperature 1, no top-k
/// or top-p), generated with the KV cache.
///
///   auto rows = data::load_rows("selfgen", data::Purpose::Calibration, data_dir);
///   data::CalibrationOptions o;  // n_samples, seqlen, seed, use_bos
///   auto samples = data::sample_selfgen(*lm, *tok, rows, o);

#include <cur4llm/data/text_data.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::data {

/// Code points of a row that make a prompt's text (after Python's str.strip()).
inline constexpr int64_t kSelfGenPromptChars = 50;
/// Tokens of that text a sample starts with; rows with fewer are skipped.
inline constexpr int64_t kSelfGenPromptTokens = 2;

/// The start of one self-generated sample.
struct SelfGenPrompt {
  int64_t row = 0;           ///< the row it comes from (index into the rows)
  std::vector<int64_t> ids;  ///< its kSelfGenPromptTokens token ids
};

/// How generate_selfgen runs.
struct SelfGenOptions {
  int64_t batch_size = 0;                           ///< samples generated together; 0: as many as kv_cache_bytes allows
  int64_t kv_cache_bytes = int64_t{8} << 30;        ///< KV-cache budget of batch_size 0 (at least one sample per batch)
  bool show_progress = false;                       ///< a progress line on stderr (tokens generated)
};

/// The prompts of options.n_samples samples: rows taken in order, each row's
/// text py_strip()ped and cut to its first kSelfGenPromptChars code points,
/// tokenized with default special tokens (BOS first with use_bos when the
/// tokenizer adds none), and its first kSelfGenPromptTokens ids kept; a row
/// that gives fewer ids is skipped. std::invalid_argument when the rows give
/// fewer than n_samples prompts, for n_samples <= 0, or for use_bos with a
/// tokenizer without BOS.
std::vector<SelfGenPrompt> selfgen_prompts(const std::vector<std::string>& rows, const tokenize::Tokenizer& tokenizer,
                                           const CalibrationOptions& options);

/// The seed of the sampling generator of the sample from row `row` for run
/// seed `seed` (a mix of both, so that a sample does not depend on the batch it
/// is generated in, and rows of one seed do not repeat those of another).
uint64_t selfgen_row_seed(uint64_t seed, int64_t row);

/// The samples of `prompts`, in order: each prompt's ids followed by
/// options.seqlen - kSelfGenPromptTokens tokens sampled from softmax(logits)
/// (generate::generate at temperature 1, no top-k or top-p, end-of-sequence
/// tokens kept and generation going on), the row's generator seeded with
/// selfgen_row_seed(options.seed, row). Every sample has options.seqlen tokens.
/// std::invalid_argument for seqlen <= kSelfGenPromptTokens or longer than the
/// model's context (max_position_embeddings).
std::vector<std::vector<int64_t>> generate_selfgen(const model::CausalLM& lm, const std::vector<SelfGenPrompt>& prompts,
                                                   const CalibrationOptions& options,
                                                   const SelfGenOptions& selfgen = {});

/// selfgen_prompts, then generate_selfgen: the whole calibration set.
std::vector<std::vector<int64_t>> sample_selfgen(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                                 const std::vector<std::string>& rows,
                                                 const CalibrationOptions& options, const SelfGenOptions& selfgen = {});

}  // namespace cur4llm::data
