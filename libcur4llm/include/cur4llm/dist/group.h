#pragma once
/// Several processes sharing one compression run (docs/distributed.md).
///
/// A Group is started from the variables every launcher sets (torchrun,
/// Slurm scripts, or by hand): RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
/// (LOCAL_RANK is read too). Rank 0 hosts the rendezvous store (c10d's
/// TCPStore); the ranks talk through LibTorch's c10d Gloo process group. What
/// they exchange (activation statistics, the sensitivity table) lives in host
/// memory, so Gloo serves CUDA runs too.
///
/// Failures: every rank runs a watchdog thread. A rank that fails posts its
/// error to the store (report_failure()); the others print it and exit
/// non-zero within about a second. A rank that stops (killed, crashed) is
/// noticed by its missing heartbeat or the closed connection, and every rank
/// exits non-zero naming it. A run with WORLD_SIZE unset or 1 has no store,
/// no thread and no communication at all.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cur4llm::dist {

/// How a group waits.
struct GroupOptions {
  double timeout_s = 1800;          ///< longest wait in one collective (ranks wait at a gather for the slowest one)
  double heartbeat_timeout_s = 60;  ///< a rank silent this long is taken as gone
  double connect_timeout_s = 300;   ///< longest wait for every rank to join at start
  /// The defaults, overridden by CUR4LLM_DIST_TIMEOUT_S, CUR4LLM_DIST_HEARTBEAT_S and
  /// CUR4LLM_DIST_CONNECT_TIMEOUT_S when set (std::invalid_argument naming a bad one).
  static GroupOptions from_environment();
};

/// The launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
struct LaunchEnvironment {
  int rank = 0;                        ///< this process, 0 .. world_size - 1
  int world_size = 1;                  ///< processes in the run
  int local_rank = 0;                  ///< this process on its host (picks the CUDA device)
  std::string master_addr = "127.0.0.1";  ///< the host of rank 0 (the store)
  int master_port = 29500;             ///< the store's TCP port
  /// Reads the variables; WORLD_SIZE unset means one process. std::invalid_argument
  /// naming the variable for a value that is not a number or out of range.
  static LaunchEnvironment read();
};

/// The CUDA devices of one rank when several ranks share a host: `per_rank` of
/// them, the local rank's own, as a value for CUDA_VISIBLE_DEVICES. `visible` is
/// that variable's value before (empty: the host's devices by index, so local
/// rank l takes l * per_rank .. l * per_rank + per_rank - 1). Where `visible`
/// lists exactly `per_rank` devices, a launcher has already given this rank its
/// own (Slurm's --gpus-per-task) and they are kept. std::invalid_argument for
/// per_rank < 1 or a list too short for this local rank, naming both.
std::string rank_cuda_devices(const std::string& visible, int local_rank, int per_rank);

/// Sets CUDA_VISIBLE_DEVICES to rank_cuda_devices() of its value, `local_rank`
/// and `per_rank`, so that this process's cuda:0 .. cuda:per_rank-1 are its own
/// devices. Takes effect only before the process first uses CUDA; the apps call
/// it right after reading their flags. Returns the value set.
std::string bind_cuda_devices(int local_rank, int per_rank);

/// The processes of one run and their collectives. The single-process group
/// (world_size() == 1) does every operation locally.
class Group {
 public:
  /// The group of this process alone.
  static std::shared_ptr<Group> single();
  /// Joins the group the environment describes (single() when WORLD_SIZE is unset
  /// or 1). std::runtime_error if cur4llm was built without c10d and WORLD_SIZE > 1,
  /// or if the ranks cannot meet within options.connect_timeout_s.
  static std::shared_ptr<Group> from_environment(const GroupOptions& options = GroupOptions::from_environment());
  /// Joins the group `env` describes (single() when env.world_size is 1); as
  /// from_environment() without reading the variables (e.g. ranks as threads in a test).
  static std::shared_ptr<Group> join(const LaunchEnvironment& env, const GroupOptions& options = {});

  virtual ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  /// Rank 0: the one that writes caches, plans, results and repositories.
  bool is_root() const { return rank_ == 0; }
  bool distributed() const { return world_size_ > 1; }

  /// Element-wise sum over ranks, in place (a CPU tensor).
  virtual void all_reduce_sum(at::Tensor& tensor);
  /// Element-wise maximum over ranks, in place (a CPU tensor).
  virtual void all_reduce_max(at::Tensor& tensor);
  /// Every rank's `bytes`, indexed by rank.
  virtual std::vector<std::string> all_gather(const std::string& bytes);
  /// Waits until every rank has come here.
  virtual void barrier();

  /// True on every rank when `value` is true on every rank.
  bool all_true(bool value);
  /// Refuses a run whose ranks disagree: std::invalid_argument naming `what` and
  /// the first rank whose `value` differs from rank 0's.
  void check_same(const std::string& what, const std::string& value);

  /// Posts this rank's error so that every rank exits with it (no-op for one process).
  virtual void report_failure(const std::string& message);
  /// Ends the run in order: waits for every rank, then stops the watchdog
  /// (rank 0 keeps the store until the others have let go). Call once, after
  /// the last collective, on success.
  virtual void finish();

 protected:
  Group(int rank, int world_size, int local_rank);

 private:
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
};

/// Whether this build has c10d (CUR4LLM_WITH_DIST).
bool available();

/// The group from_environment() made last in this process, or null.
std::shared_ptr<Group> current();

/// report_failure() on current() when it is distributed; never throws.
void report_failure_if_distributed(const std::string& message) noexcept;

namespace detail {
/// Failure injection for the tests: with CUR4LLM_DIST_FAULT="kill:<rank>:<stage>" the
/// rank kills itself (SIGKILL) at `stage`; "throw:<rank>:<stage>" throws std::runtime_error.
/// Stages: "statistics", "sweep".
void fault_point(const char* stage, const Group& group);
}  // namespace detail

}  // namespace cur4llm::dist
