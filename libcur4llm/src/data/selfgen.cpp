// Self-generated calibration samples (the reference's tools/selfgen.py, see docs/data.md).

#include "cur4llm/data/selfgen.h"

#include "cur4llm/generate/generate.h"
#include "cur4llm/model/causal_lm.h"
#include "cur4llm/tokenize/tokenizer.h"
#include "cur4llm/util/progress.h"

#include "data/sample_options.h"
#include "data/utf8.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <stdexcept>

namespace cur4llm::data {

namespace {

// The first `n` code points of `text` (Python's text[:n]).
std::string first_code_points(const std::string& text, int64_t n) {
  size_t pos = 0;
  uint32_t cp = 0;
  for (int64_t i = 0; i < n && pos < text.size(); ++i) pos += detail::decode_utf8(text, pos, cp);
  return text.substr(0, pos);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Bytes of keys and values one token takes in the model's KV cache.
int64_t kv_bytes_per_token(const model::CausalLM& lm) {
  const auto& c = lm.config();
  const int64_t head_dim = c.head_dim > 0 ? c.head_dim : c.hidden_size / std::max<int64_t>(c.num_heads, 1);
  const int64_t kv_heads = c.num_kv_heads > 0 ? c.num_kv_heads : c.num_heads;
  return std::max<int64_t>(1, 2 * c.num_layers * kv_heads * head_dim *
                                  static_cast<int64_t>(c10::elementSize(lm.dtype())));
}

}  // namespace

std::vector<SelfGenPrompt> selfgen_prompts(const std::vector<std::string>& rows, const tokenize::Tokenizer& tokenizer,
                                           const CalibrationOptions& options) {
  if (options.n_samples <= 0) {
    throw std::invalid_argument("n_samples must be positive, got " + std::to_string(options.n_samples));
  }
  const std::optional<int64_t> bos = detail::sample_bos(tokenizer, options);
  std::vector<SelfGenPrompt> prompts;
  for (size_t r = 0; r < rows.size() && static_cast<int64_t>(prompts.size()) < options.n_samples; ++r) {
    std::vector<int64_t> ids;
    if (bos) ids.push_back(*bos);
    const auto encoded = tokenizer.encode(first_code_points(py_strip(rows[r]), kSelfGenPromptChars));
    ids.insert(ids.end(), encoded.begin(), encoded.end());
    if (static_cast<int64_t>(ids.size()) < kSelfGenPromptTokens) continue;
    ids.resize(static_cast<size_t>(kSelfGenPromptTokens));
    prompts.push_back({static_cast<int64_t>(r), std::move(ids)});
  }
  if (static_cast<int64_t>(prompts.size()) < options.n_samples) {
    throw std::invalid_argument(fmt::format(
        "selfgen: n_calib_samples is {}, but only {} of the {} rows give {} tokens to start a sample from",
        options.n_samples, prompts.size(), rows.size(), kSelfGenPromptTokens));
  }
  return prompts;
}

uint64_t selfgen_row_seed(uint64_t seed, int64_t row) {
  return splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(row));
}

std::vector<std::vector<int64_t>> generate_selfgen(const model::CausalLM& lm, const std::vector<SelfGenPrompt>& prompts,
                                                   const CalibrationOptions& options, const SelfGenOptions& selfgen) {
  if (options.seqlen <= kSelfGenPromptTokens) {
    throw std::invalid_argument(fmt::format("seqlen must be more than the {} prompt tokens of a selfgen sample, got {}",
                                            kSelfGenPromptTokens, options.seqlen));
  }
  const int64_t context = lm.config().max_position_embeddings;
  if (context > 0 && options.seqlen > context) {
    throw std::invalid_argument(fmt::format(
        "seqlen {} is longer than the model's context of {} tokens (max_position_embeddings)", options.seqlen, context));
  }
  if (selfgen.batch_size < 0) {
    throw std::invalid_argument(fmt::format("batch_size must be 0 (automatic) or positive, got {}", selfgen.batch_size));
  }
  const int64_t n = static_cast<int64_t>(prompts.size());
  int64_t batch = selfgen.batch_size;
  if (batch == 0) batch = std::max<int64_t>(1, selfgen.kv_cache_bytes / (kv_bytes_per_token(lm) * options.seqlen));
  batch = std::min(batch, std::max<int64_t>(n, 1));

  generate::GenerateOptions g;
  g.max_new_tokens = options.seqlen - kSelfGenPromptTokens;
  g.temperature = 1.0;
  g.top_k = 0;
  g.top_p = 1.0;
  g.stop_at_eos = false;
  std::optional<util::Progress> progress;
  if (selfgen.show_progress && n > 0) {
    progress.emplace("selfgen", n * g.max_new_tokens, "tokens");
    g.on_token = [&progress](const generate::TokenEvent&) { progress->advance(); };
  }

  std::vector<std::vector<int64_t>> samples;
  samples.reserve(static_cast<size_t>(n));
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t end = std::min(n, start + batch);
    std::vector<std::vector<int64_t>> ids;
    g.row_seeds.clear();
    for (int64_t k = start; k < end; ++k) {
      const auto& p = prompts[static_cast<size_t>(k)];
      if (static_cast<int64_t>(p.ids.size()) != kSelfGenPromptTokens) {
        throw std::invalid_argument(fmt::format("selfgen prompt {} has {} tokens, not {}", k, p.ids.size(),
                                                kSelfGenPromptTokens));
      }
      ids.push_back(p.ids);
      g.row_seeds.push_back(selfgen_row_seed(options.seed, p.row));
    }
    auto result = generate::generate(lm, ids, g);
    for (auto& seq : result.sequences) {
      std::vector<int64_t> sample = seq.prompt_ids;
      sample.insert(sample.end(), seq.tokens.begin(), seq.tokens.end());
      if (static_cast<int64_t>(sample.size()) != options.seqlen) {
        throw std::runtime_error(fmt::format("selfgen: a sample came out with {} tokens instead of {}", sample.size(),
                                             options.seqlen));
      }
      samples.push_back(std::move(sample));
    }
  }
  if (progress) progress->finish();
  return samples;
}

std::vector<std::vector<int64_t>> sample_selfgen(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                                 const std::vector<std::string>& rows,
                                                 const CalibrationOptions& options, const SelfGenOptions& selfgen) {
  return generate_selfgen(lm, selfgen_prompts(rows, tokenizer, options), options, selfgen);
}

}  // namespace cur4llm::data
