#pragma once
// Order of acur's timing stages, shared by the record reader and the table.

#include <string>

namespace cur4llm::detail {

/// Pipeline stages first (load, calib_samples, statistics, sensitivity, search, decompose),
/// then unknown stages, then evaluations ("eval_...").
int stage_rank(const std::string& stage);

}  // namespace cur4llm::detail
