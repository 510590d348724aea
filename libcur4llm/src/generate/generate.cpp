#include <cur4llm/generate/generate.h>

#include <cur4llm/io/files.h>
#include <cur4llm/model/kv_cache.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/device.h>

#include "io/json_parse.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>

namespace cur4llm::generate {
namespace {

void check_options(const GenerateOptions& o, const tokenize::Tokenizer* tokenizer) {
  if (o.max_new_tokens < 0) {
    throw std::invalid_argument(fmt::format("max_new_tokens must be 0 or more, not {}", o.max_new_tokens));
  }
  if (!(o.temperature >= 0) || std::isinf(o.temperature)) {
    throw std::invalid_argument(fmt::format("temperature must be 0 (greedy) or positive, not {}", o.temperature));
  }
  if (o.top_k < 0) throw std::invalid_argument(fmt::format("top_k must be 0 (off) or positive, not {}", o.top_k));
  if (!(o.top_p > 0 && o.top_p <= 1)) throw std::invalid_argument(fmt::format("top_p must be in (0, 1], not {}", o.top_p));
  for (const auto& s : o.stop) {
    if (s.empty()) throw std::invalid_argument("a stop string must not be empty");
  }
  if (!o.stop.empty() && !tokenizer) throw std::invalid_argument("stop strings need a tokenizer");
}

// A uniform double in [0, 1) from 53 bits of the generator: the same on every platform.
double uniform(std::mt19937_64& gen) { return static_cast<double>(gen() >> 11) * 0x1.0p-53; }

// The text of a row as it grows, for the streamed pieces and the stop strings.
struct RowText {
  std::string prompt;   // the decoded prompt
  std::string emitted;  // text already handed to on_token
};

// The text `tokens` add after the prompt: decoded together with it, as a
// SentencePiece tokenizer drops the space of the first token of a text.
std::string continuation(const tokenize::Tokenizer& tokenizer, const std::vector<int64_t>& prompt,
                         const std::string& prompt_text, const std::vector<int64_t>& tokens) {
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), tokens.begin(), tokens.end());
  std::string full = tokenizer.decode(all);
  if (full.compare(0, prompt_text.size(), prompt_text) == 0) return full.substr(prompt_text.size());
  return tokenizer.decode(tokens);
}

bool ends_incomplete(const std::string& text) {
  // A decoder shows an unfinished UTF-8 character (byte-fallback tokens) as U+FFFD; wait for the rest.
  static const std::string replacement = "\xEF\xBF\xBD";
  return text.size() >= replacement.size() &&
         text.compare(text.size() - replacement.size(), replacement.size(), replacement) == 0;
}

}  // namespace

std::string to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
    case FinishReason::Context: return "context";
  }
  return "unknown";
}

double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(generated_tokens - std::min(generated_tokens, first_tokens)) /
                                  decode_seconds
                            : 0;
}

std::vector<int64_t> default_eos_ids(const model::CausalLM& lm) {
  std::vector<int64_t> ids;
  const auto path = lm.folder().empty() ? std::filesystem::path() : lm.folder() / "generation_config.json";
  if (!path.empty() && std::filesystem::is_regular_file(path)) {
    const auto root = cur4llm::detail::parse_json(io::read_file(path), path.string());
    if (root.is_object() && root.contains("eos_token_id")) {
      const auto& e = root.at("eos_token_id");
      if (e.is_number_integer()) ids.push_back(e.get<int64_t>());
      if (e.is_array()) {
        for (const auto& x : e) {
          if (x.is_number_integer()) ids.push_back(x.get<int64_t>());
        }
      }
      if (!ids.empty()) return ids;
    }
  }
  if (lm.config().eos_token_id >= 0) ids.push_back(lm.config().eos_token_id);
  return ids;
}

int64_t pick_token(const std::vector<double>& logits, const GenerateOptions& o, double u) {
  const auto n = static_cast<int64_t>(logits.size());
  if (n == 0) throw std::invalid_argument("pick_token: no logits");
  if (o.temperature == 0) {
    return std::max_element(logits.begin(), logits.end()) - logits.begin();  // the first maximum
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Most likely first; equal logits by id.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  int64_t keep = o.top_k > 0 ? std::min(o.top_k, n) : n;
  const double top = logits[order[0]] / o.temperature;
  std::vector<double> p(keep);
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += p[i] = std::exp(logits[order[i]] / o.temperature - top);
  if (o.top_p < 1) {
    double cumulative = 0;
    int64_t n_keep = 0;
    while (n_keep < keep) {
      cumulative += p[n_keep++] / sum;
      if (cumulative >= o.top_p) break;
    }
    keep = n_keep;
    sum = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  }
  double target = u * sum, cumulative = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cumulative += p[i];
    if (target < cumulative) return order[i];
  }
  return order[keep - 1];
}

GenerateResult generate(const model::CausalLM& lm, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options, const tokenize::Tokenizer* tokenizer) {
  check_options(options, tokenizer);
  if (prompts.empty()) throw std::invalid_argument("generate: no prompts");
  if (!options.row_seeds.empty() && options.row_seeds.size() != prompts.size()) {
    throw std::invalid_argument(fmt::format("row_seeds has {} seeds for {} prompts", options.row_seeds.size(),
                                            prompts.size()));
  }
  const auto& config = lm.config();
  const std::vector<int64_t> eos = options.eos_token_ids.empty() ? default_eos_ids(lm) : options.eos_token_ids;
  const auto batch = static_cast<int64_t>(prompts.size());
  const int64_t context = config.max_position_embeddings;

  GenerateResult result;
  result.sequences.resize(batch);
  std::vector<int64_t> budget(batch);  // new tokens each row may have
  int64_t longest = 0, most_new = 0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int64_t> ids = prompts[b];
    if (ids.empty()) {
      const int64_t bos = config.bos_token_id >= 0 ? config.bos_token_id
                                                   : (tokenizer && tokenizer->bos_id() ? *tokenizer->bos_id() : -1);
      if (bos < 0) {
        throw std::invalid_argument(fmt::format("prompt {} is empty and the model has no BOS token to start from", b));
      }
      ids = {bos};
    }
    for (int64_t id : ids) {
      if (id < 0 || id >= config.vocab_size) {
        throw std::invalid_argument(
            fmt::format("prompt {}: token id {} is outside the vocabulary [0, {})", b, id, config.vocab_size));
      }
    }
    const auto len = static_cast<int64_t>(ids.size());
    if (context > 0 && len >= context) {
      throw std::invalid_argument(fmt::format(
          "prompt {} has {} tokens, but the model's context is {} tokens (max_position_embeddings): a prompt may have "
          "at most {}",
          b, len, context, context - 1));
    }
    budget[b] = context > 0 ? std::min(options.max_new_tokens, context - len) : options.max_new_tokens;
    longest = std::max(longest, len);
    most_new = std::max(most_new, budget[b]);
    result.sequences[b].prompt_ids = std::move(ids);
    result.stats.prompt_tokens += len;
  }
  if (most_new == 0) return result;

  c10::InferenceMode guard;
  const c10::Device device = lm.device();
  // Left padding: every row's last prompt token in the last column.
  auto ids = at::zeros({batch, longest}, at::TensorOptions().dtype(at::kLong));
  auto mask = at::zeros({batch, longest}, at::TensorOptions().dtype(at::kBool));
  bool padded = false;
  for (int64_t b = 0; b < batch; ++b) {
    const auto& p = result.sequences[b].prompt_ids;
    const auto len = static_cast<int64_t>(p.size());
    padded = padded || len < longest;
    auto row = ids[b].narrow(0, longest - len, len);
    row.copy_(at::tensor(p, at::TensorOptions().dtype(at::kLong)));
    mask[b].narrow(0, longest - len, len).fill_(true);
  }

  std::vector<std::mt19937_64> generators;
  for (int64_t b = 0; b < batch; ++b) {
    generators.emplace_back(options.row_seeds.empty() ? options.seed : options.row_seeds[static_cast<size_t>(b)]);
  }
  std::vector<bool> finished(batch, false);
  std::vector<RowText> texts(batch);
  const bool want_text = tokenizer && (options.on_token || !options.stop.empty());
  if (tokenizer) {
    for (int64_t b = 0; b < batch; ++b) texts[b].prompt = tokenizer->decode(result.sequences[b].prompt_ids);
  }

  auto pick = [&](const at::Tensor& logits) {  // [B, vocab] -> a token per row
    std::vector<int64_t> next(batch, 0);
    if (options.temperature == 0) {
      auto arg = logits.argmax(-1).to(at::kCPU);
      for (int64_t b = 0; b < batch; ++b) next[b] = arg[b].item<int64_t>();
      return next;
    }
    auto host = logits.to(at::kCPU, at::kDouble).contiguous();
    const int64_t vocab = host.size(1);
    for (int64_t b = 0; b < batch; ++b) {
      if (finished[b]) continue;
      const double* row = host.data_ptr<double>() + b * vocab;
      next[b] = pick_token(std::vector<double>(row, row + vocab), options, uniform(generators[b]));
    }
    return next;
  };

  // Appends row b's token; true when the row is finished.
  auto accept = [&](int64_t b, int64_t token) {
    Sequence& seq = result.sequences[b];
    seq.tokens.push_back(token);
    ++result.stats.generated_tokens;
    bool done = false;
    std::string visible;
    if (want_text) {
      visible = continuation(*tokenizer, seq.prompt_ids, texts[b].prompt, seq.tokens);
      size_t cut = std::string::npos;
      for (const auto& s : options.stop) {
        const size_t at = visible.find(s);
        if (at != std::string::npos) cut = std::min(cut, at + s.size());
      }
      if (cut != std::string::npos) {
        visible.resize(cut);
        seq.finish = FinishReason::Stop;
        done = true;
      }
    }
    if (!done && options.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
      seq.finish = FinishReason::Eos;
      done = true;
    }
    if (!done && static_cast<int64_t>(seq.tokens.size()) >= budget[b]) {
      seq.finish = budget[b] < options.max_new_tokens ? FinishReason::Context : FinishReason::Length;
      done = true;
    }
    if (options.on_token) {
      TokenEvent event{b, token, "", done};
      std::string& emitted = texts[b].emitted;
      if (want_text && (done || !ends_incomplete(visible)) && visible.size() > emitted.size()) {
        event.text = visible.substr(emitted.size());
        emitted = visible;
      }
      options.on_token(event);
    }
    if (done) seq.text = want_text ? visible : std::string();
    return done;
  };

  model::KVCache cache(batch, longest + most_new, device);
  auto t0 = std::chrono::steady_clock::now();
  auto logits = lm.forward_cached(ids.to(device), cache, padded ? mask.to(device) : at::Tensor());
  std::vector<int64_t> next = pick(logits.select(1, 0));
  int64_t left = batch;
  for (int64_t b = 0; b < batch; ++b) {
    if (accept(b, next[b])) finished[b] = true, --left;
  }
  util::synchronize(device);
  auto t1 = std::chrono::steady_clock::now();
  result.stats.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  result.stats.first_tokens = result.stats.generated_tokens;
  while (left > 0) {
    auto input = at::tensor(next, at::TensorOptions().dtype(at::kLong)).view({batch, 1}).to(device);
    logits = lm.forward_cached(input, cache);
    ++result.stats.decode_steps;
    auto chosen = pick(logits.select(1, 0));
    for (int64_t b = 0; b < batch; ++b) {
      if (finished[b]) continue;
      next[b] = chosen[b];
      if (accept(b, next[b])) finished[b] = true, --left;
    }
  }
  util::synchronize(device);
  result.stats.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  if (tokenizer && !want_text) {
    for (int64_t b = 0; b < batch; ++b) {
      auto& seq = result.sequences[b];
      seq.text = continuation(*tokenizer, seq.prompt_ids, texts[b].prompt, seq.tokens);
    }
  }
  return result;
}

GenerateResult generate(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                        const std::vector<std::string>& prompts, const GenerateOptions& options) {
  std::vector<std::vector<int64_t>> ids;
  ids.reserve(prompts.size());
  for (const auto& p : prompts) ids.push_back(tokenizer.encode(p));
  return generate(lm, ids, options, &tokenizer);
}

}  // namespace cur4llm::generate
