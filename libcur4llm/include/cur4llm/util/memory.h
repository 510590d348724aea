#pragma once
/// Peak memory of a stretch of work, for the per-stage reports of the apps:
///
///   util::reset_memory_peaks();
///   run_stage();
///   util::MemoryPeaks p = util::memory_peaks();  // host and per-device peaks of run_stage
///
/// The host figure is the process's peak resident set (Linux VmHWM). The kernel
/// resets it on request where /proc/self/clear_refs takes "5"; where it does
/// not, the figure is the peak since the process began (host_since_reset says
/// which). Device figures are the CUDA caching allocator's peak of allocated
/// bytes per device, where the library was built with its CUDA kernels. With
/// layers offloaded to host memory (LoadOptions::max_memory), offload_bytes counts
/// what was copied in for them over the same stretch.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::util {

/// Peak memory since the last reset_memory_peaks().
struct MemoryPeaks {
  int64_t host_bytes = -1;        ///< peak resident set of the process (-1: not readable here)
  bool host_since_reset = false;  ///< true: host_bytes counts from the last reset; false: from the start
  std::vector<std::pair<std::string, int64_t>> devices;  ///< "cuda:0" -> peak bytes allocated (initialised devices only)
  int64_t offload_bytes = 0;  ///< bytes of offloaded layers' tensors staged on their device (each time a layer runs)
};

/// Starts a new measurement: resets the host peak (where the kernel allows it) and
/// every initialised CUDA device's allocator peak.
void reset_memory_peaks();

/// The peaks since the last reset_memory_peaks() (host: see MemoryPeaks::host_since_reset).
MemoryPeaks memory_peaks();

/// Bytes as a short figure with a binary unit: "812 KiB", "1.25 GiB".
std::string format_bytes(int64_t bytes);

}  // namespace cur4llm::util

namespace cur4llm::detail {
/// Peak allocated bytes per initialised CUDA device ("cuda:i"); `reset` starts the next
/// peak. Empty on builds without the CUDA kernels.
std::vector<std::pair<std::string, int64_t>> device_memory_peaks(bool reset);
/// Adds to MemoryPeaks::offload_bytes (CausalLM, when an offloaded layer's tensors are staged).
void add_offload_bytes(int64_t bytes);
}  // namespace cur4llm::detail
