#pragma once
// What every calibration sampler (text, alpaca, selfgen) checks and prepends (data area, internal).

#include "cur4llm/data/text_data.h"

#include <cstdint>
#include <optional>

namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::detail {

/// std::invalid_argument unless options.n_samples > 0 and options.seqlen >= min_seqlen.
void check_sample_options(const data::CalibrationOptions& options, int64_t min_seqlen = 2);

/// With options.use_bos, the BOS id to put before each sample when the tokenizer does not
/// add one itself; std::invalid_argument (naming the tokenizer) when it has none. Else nothing.
std::optional<int64_t> sample_bos(const tokenize::Tokenizer& tokenizer, const data::CalibrationOptions& options);

}  // namespace cur4llm::detail
