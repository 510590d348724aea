// Chrome traces of PyTorch's profiler (Kineto) for the benchmarks' --trace FILE;
// benchmarks/trace_summary.py reads them.
#pragma once

#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdio>
#include <set>
#include <stdexcept>
#include <string>

namespace cur4llm::bench {

namespace prof = torch::autograd::profiler;

/// Records CPU operators and CUDA kernels between start() and save(). Made with an
/// empty path it does nothing. The constructor asks the profiler once, so that a
/// LibTorch without Kineto (the CPU builds) is refused before the run, not at its end.
class Tracer {
  using Activity = torch::profiler::impl::ActivityType;

 public:
  explicit Tracer(std::string path) : path_(std::move(path)) {
    if (path_.empty()) return;
    try {
      prof::prepareProfiler(config(), {Activity::CPU});
      prof::enableProfiler(config(), {Activity::CPU});
      prof::disableProfiler()->save(path_ + ".probe.json");
      std::remove((path_ + ".probe.json").c_str());
    } catch (const c10::Error&) {
      throw std::invalid_argument("--trace needs a LibTorch built with Kineto (USE_KINETO=1); this one is not");
    }
  }

  bool on() const { return !path_.empty(); }

  void start() const {
    if (!on()) return;
    const std::set<Activity> activities{Activity::CPU, Activity::CUDA};
    prof::prepareProfiler(config(), activities);
    prof::enableProfiler(config(), activities);
  }

  /// Stops recording and writes the trace to the path + `suffix`.
  void save(const std::string& suffix) const {
    if (on()) prof::disableProfiler()->save(path_ + suffix);
  }

 private:
  static torch::profiler::impl::ProfilerConfig config() {
    return torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO);
  }
  std::string path_;
};

}  // namespace cur4llm::bench
