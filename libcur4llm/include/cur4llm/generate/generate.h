#pragma once
/// Text generation with a KV cache: a prefill of the prompts, then one token
/// at a time, greedy or sampled, for a batch of prompts of different lengths.
///
///   auto lm = model::CausalLM::load(folder);
///   auto tok = tokenize::load_tokenizer(folder);
///   generate::GenerateOptions o;
///   o.max_new_tokens = 64;
///   auto result = generate::generate(*lm, *tok, {"Once upon a time"}, o);
///   std::cout << result.sequences[0].text;
///
/// Every family, every kind of Linear slot (dense, factorized, dequantized
/// packed weights) and narrowed layers run: the model computes through its
/// slots as the ordinary forward does. Prompts of different lengths are left
/// padded; each row gets the tokens it would get alone.

#include <cur4llm/model/causal_lm.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::generate {

/// One generated token, as the streaming callback sees it.
struct TokenEvent {
  int64_t row = 0;     ///< which prompt
  int64_t token = 0;   ///< the token id
  std::string text;    ///< the text this token completes (may be empty: part of a character, a special token)
  bool last = false;   ///< the row's last token (it finished)
};

/// How to generate.
struct GenerateOptions {
  int64_t max_new_tokens = 64;          ///< tokens to generate per prompt at most (0: none)
  double temperature = 0.0;             ///< 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
  int64_t top_k = 0;                    ///< sampling: only the k most likely tokens (0: all)
  double top_p = 1.0;                   ///< sampling: the fewest most likely tokens whose probability reaches top_p
  uint64_t seed = 0;                    ///< sampling: each prompt draws from its own generator seeded with this
  std::vector<uint64_t> row_seeds;      ///< sampling: one seed per prompt, in place of seed (empty: seed for every prompt)
  std::vector<std::string> stop;        ///< a row stops once its text contains one of these (needs a tokenizer)
  bool stop_at_eos = true;              ///< a row stops after an end-of-sequence token (kept in its tokens)
  std::vector<int64_t> eos_token_ids;   ///< empty: generation_config.json's eos_token_id, else config.json's
  std::function<void(const TokenEvent&)> on_token;  ///< called for every token kept, as it comes (optional)
};

/// Why a row stopped.
enum class FinishReason {
  Length,   ///< max_new_tokens reached
  Eos,      ///< an end-of-sequence token
  Stop,     ///< a stop string
  Context,  ///< the sequence reached the model's context (max_position_embeddings)
};

/// "length", "eos", "stop" or "context".
std::string to_string(FinishReason reason);

/// One prompt's result.
struct Sequence {
  std::vector<int64_t> prompt_ids;  ///< the prompt as the model saw it
  std::vector<int64_t> tokens;      ///< generated tokens (an end-of-sequence token that stopped the row included)
  std::string text;                 ///< the text the tokens add to the prompt's (with a tokenizer; ends with the stop string that stopped it)
  FinishReason finish = FinishReason::Length;
};

/// Counts and wall-clock times of a generate() call.
struct GenerateStats {
  int64_t prompt_tokens = 0;     ///< prompt tokens over all rows (padding not counted)
  int64_t generated_tokens = 0;  ///< tokens kept over all rows
  int64_t decode_steps = 0;      ///< forward passes after the prefill
  int64_t first_tokens = 0;      ///< tokens chosen from the prefill's logits (one per row that generates)
  double prefill_seconds = 0;    ///< the prefill and its first tokens
  double decode_seconds = 0;     ///< every later step
  /// Prompt tokens per second of the prefill.
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  /// Tokens per second of the decoding steps (tokens after each row's first, rows summed).
  double decode_tokens_per_second() const;
};

/// What generate() returns.
struct GenerateResult {
  std::vector<Sequence> sequences;  ///< one per prompt, in order
  GenerateStats stats;
};

/// Generates from token-id prompts (one row each). An empty prompt starts from
/// the model's BOS token (std::invalid_argument if it has none). A prompt must
/// be shorter than the model's context (max_position_embeddings), else
/// std::invalid_argument naming it; a row stops when its sequence reaches the
/// context (FinishReason::Context). `tokenizer` (optional) gives the text,
/// the streamed pieces and the stop strings. Bad options: std::invalid_argument.
GenerateResult generate(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options, const tokenize::Tokenizer* tokenizer = nullptr);

/// Generates from text prompts, encoded as the tokenizer encodes them (BOS added where it adds it).
GenerateResult generate(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                        const std::vector<std::string>& prompts, const GenerateOptions& options);

/// The end-of-sequence ids generate() stops at by default: generation_config.json's
/// eos_token_id (an id or a list) in the model's folder, else config.json's; empty if neither.
std::vector<int64_t> default_eos_ids(const model::CausalLM& lm);

/// The next token of one row from its logits (vocab floats) as generate() draws it:
/// greedy (first maximum) with temperature 0, else temperature, top_k, top_p and a
/// uniform draw `u` in [0, 1). Exposed for tests.
int64_t pick_token(const std::vector<double>& logits, const GenerateOptions& options, double u);

}  // namespace cur4llm::generate
