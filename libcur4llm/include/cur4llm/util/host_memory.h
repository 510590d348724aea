#pragma once
/// Host memory allocator settings for CPU inference.
///
/// @internal
/// Internal: used by cur4llm's own apps, tests and benchmarks; not part of the
/// public API (left out of <cur4llm/cur4llm.h> and of the API reference) and may change.

namespace cur4llm::util {

/// Keeps glibc malloc from returning every large tensor buffer to the kernel:
/// LibTorch's CPU path allocates and frees buffers of many MiB per operator,
/// and with glibc's defaults each one is a fresh mmap whose pages fault in
/// again (measured: a stories260K perplexity run on 2 cores took 41-54 s
/// instead of 13-15 s, most of it system time). Raises the mmap threshold to
/// its maximum (32 MiB) and the trim threshold to 1 GiB. Process-wide, so the
/// apps call it, not the library. Has no effect outside glibc.
void tune_host_allocator();

}  // namespace cur4llm::util
