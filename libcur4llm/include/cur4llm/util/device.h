#pragma once
/// Device helpers for timing code.

#include <c10/core/Device.h>

namespace cur4llm::util {

/// Blocks until the work queued on `device`'s current stream has finished (no-op on the CPU).
void synchronize(c10::Device device);

}  // namespace cur4llm::util
