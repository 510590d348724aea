#pragma once
// The BOS token a calibration sample starts with (data area, internal).

#include "cur4llm/data/text_data.h"

#include <cstdint>
#include <optional>

namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::detail {

/// With options.use_bos, the BOS id to put before each sample when the tokenizer does not
/// add one itself; std::invalid_argument (naming the tokenizer) when it has none. Else nothing.
std::optional<int64_t> sample_bos(const tokenize::Tokenizer& tokenizer, const data::CalibrationOptions& options);

}  // namespace cur4llm::detail
