#pragma once
// The apps as ranks of a run over several processes (docs/distributed.md).

#include <cur4llm/dist/group.h>
#include <cur4llm/pipeline/pipeline.h>

#include <fmt/format.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace cur4llm::app {

/// Runs `body` as this process's rank of the run the launcher's variables
/// describe (one process when WORLD_SIZE is unset). A rank's error or non-zero
/// exit is posted to the others, which then exit non-zero with it.
inline int run_as_rank(const char* app, const std::function<int(const std::shared_ptr<dist::Group>&)>& body) {
  const auto group = dist::Group::from_environment();
  try {
    const int code = body(group);
    if (code != 0) group->report_failure(fmt::format("{} exited with code {}", app, code));
    return code;
  } catch (const std::exception& e) {
    group->report_failure(e.what());
    throw;
  }
}

/// Gives this rank its own CUDA devices (dist::bind_cuda_devices) when several
/// ranks run or --gpus_per_rank is given (`gpus_per_rank` 0: not given, 1 device
/// a rank). Before anything uses CUDA: the apps call it once their flags are read.
inline void bind_rank_devices(const dist::Group& group, int gpus_per_rank) {
  if (!group.distributed() && gpus_per_rank == 0) return;
  (void)dist::bind_cuda_devices(group.local_rank(), gpus_per_rank == 0 ? 1 : gpus_per_rank);
}

/// Makes `pipe` run over `group`: refuses ranks whose command lines differ, and
/// leaves progress and standard output to rank 0 (the others' stdout goes to /dev/null).
inline void join_pipeline(const std::shared_ptr<dist::Group>& group, int argc, char** argv,
                          pipeline::PipelineOptions& pipe) {
  if (!group->distributed()) return;
  std::string command;
  for (int i = 1; i < argc; ++i) command += std::string(argv[i]) + "\n";
  group->check_same("the command line", command);
  pipe.group = group;
  if (!group->is_root()) {
    pipe.show_progress = false;
    if (!std::freopen("/dev/null", "w", stdout)) throw std::runtime_error("cannot silence the output of this rank");
  }
}

}  // namespace cur4llm::app
