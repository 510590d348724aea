#include <cur4llm/util/memory.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>

namespace cur4llm::util {

namespace {

// VmHWM of /proc/self/status in bytes, -1 where it cannot be read.
int64_t host_peak() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      long long kib = -1;
      if (std::sscanf(line.c_str() + 6, "%lld", &kib) == 1 && kib >= 0) return static_cast<int64_t>(kib) * 1024;
    }
  }
  return -1;
}

bool g_host_reset = false;  // the last reset reached the kernel
std::atomic<int64_t> g_offload_bytes{0};

}  // namespace

void reset_memory_peaks() {
  // "5" resets the peak resident set to the current one (Linux 4.0 and later).
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  g_host_reset = f != nullptr && std::fputs("5", f) >= 0;
  if (f != nullptr && std::fclose(f) != 0) g_host_reset = false;
  (void)detail::device_memory_peaks(true);
  g_offload_bytes.store(0);
}

MemoryPeaks memory_peaks() {
  MemoryPeaks p;
  p.host_bytes = host_peak();
  p.host_since_reset = g_host_reset && p.host_bytes >= 0;
  p.devices = detail::device_memory_peaks(false);
  p.offload_bytes = g_offload_bytes.load();
  return p;
}

std::string format_bytes(int64_t bytes) {
  if (bytes < 0) return "?";
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return fmt::format("{} B", bytes);
  return v < 10 ? fmt::format("{:.2f} {}", v, units[u]) : v < 100 ? fmt::format("{:.1f} {}", v, units[u])
                                                                   : fmt::format("{:.0f} {}", v, units[u]);
}

}  // namespace cur4llm::util

namespace cur4llm::detail {
void add_offload_bytes(int64_t bytes) { util::g_offload_bytes.fetch_add(bytes); }
}  // namespace cur4llm::detail
