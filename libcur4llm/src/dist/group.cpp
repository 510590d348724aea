// The process group: the single-process base class, the launcher's variables,
// and (with CUR4LLM_WITH_DIST) the c10d implementation over TCPStore and Gloo.
#include <cur4llm/dist/group.h>

#include "util/strings.h"

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#if CUR4LLM_WITH_DIST
// LibTorch 2.x declares the Gloo group only under USE_C10D_GLOO (the configure check found it built in).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <thread>
#endif

namespace cur4llm::dist {
namespace {

std::mutex current_mutex;
std::weak_ptr<Group> current_group;

// An integer environment variable, or `fallback` when unset.
long env_int(const char* name, long fallback, long lo, long hi) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    throw std::invalid_argument(fmt::format("{}=\"{}\" is not an integer in [{}, {}]", name, text, lo, hi));
  }
  return v;
}

double env_seconds(const char* name, double fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (*end != '\0' || !(v > 0)) throw std::invalid_argument(fmt::format("{}=\"{}\" is not a positive number of seconds", name, text));
  return v;
}

}  // namespace

std::string rank_cuda_devices(const std::string& visible, int local_rank, int per_rank) {
  if (per_rank < 1) throw std::invalid_argument(fmt::format("--gpus_per_rank must be 1 or more, not {}", per_rank));
  if (local_rank < 0) throw std::invalid_argument(fmt::format("LOCAL_RANK must be 0 or more, not {}", local_rank));
  const std::vector<std::string> listed = util::split_items(visible, ',');
  if (static_cast<int>(listed.size()) == per_rank) return fmt::format("{}", fmt::join(listed, ","));
  const int64_t first = static_cast<int64_t>(local_rank) * per_rank;
  std::vector<std::string> mine;
  for (int64_t i = first; i < first + per_rank; ++i) {
    if (listed.empty()) {
      mine.push_back(std::to_string(i));
    } else if (i < static_cast<int64_t>(listed.size())) {
      mine.push_back(listed[static_cast<size_t>(i)]);
    } else {
      throw std::invalid_argument(fmt::format(
          "local rank {} with --gpus_per_rank {} needs the CUDA devices {} to {} of CUDA_VISIBLE_DEVICES=\"{}\", "
          "which lists {}",
          local_rank, per_rank, first, first + per_rank - 1, visible, listed.size()));
    }
  }
  return fmt::format("{}", fmt::join(mine, ","));
}

std::string bind_cuda_devices(int local_rank, int per_rank) {
  const char* before = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string value = rank_cuda_devices(before ? before : "", local_rank, per_rank);
  if (::setenv("CUDA_VISIBLE_DEVICES", value.c_str(), 1) != 0) {
    throw std::runtime_error("cannot set CUDA_VISIBLE_DEVICES for this rank");
  }
  return value;
}

GroupOptions GroupOptions::from_environment() {
  GroupOptions o;
  o.timeout_s = env_seconds("CUR4LLM_DIST_TIMEOUT_S", o.timeout_s);
  o.heartbeat_timeout_s = env_seconds("CUR4LLM_DIST_HEARTBEAT_S", o.heartbeat_timeout_s);
  o.connect_timeout_s = env_seconds("CUR4LLM_DIST_CONNECT_TIMEOUT_S", o.connect_timeout_s);
  return o;
}

LaunchEnvironment LaunchEnvironment::read() {
  LaunchEnvironment e;
  e.world_size = static_cast<int>(env_int("WORLD_SIZE", 1, 1, 1 << 20));
  e.rank = static_cast<int>(env_int("RANK", 0, 0, e.world_size - 1));
  e.local_rank = static_cast<int>(env_int("LOCAL_RANK", 0, 0, 1 << 20));
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) e.master_addr = addr;
  e.master_port = static_cast<int>(env_int("MASTER_PORT", 29500, 1, 65535));
  if (e.world_size > 1 && (!std::getenv("RANK") || !std::getenv("MASTER_PORT"))) {
    throw std::invalid_argument(
        fmt::format("WORLD_SIZE={} needs RANK and MASTER_PORT too (and MASTER_ADDR unless rank 0 runs on this host)",
                    e.world_size));
  }
  return e;
}

Group::Group(int rank, int world_size, int local_rank) : rank_(rank), world_size_(world_size), local_rank_(local_rank) {}
Group::~Group() = default;

std::shared_ptr<Group> Group::single() {
  struct Single final : Group {
    Single() : Group(0, 1, 0) {}
  };
  return std::make_shared<Single>();
}

void Group::all_reduce_sum(at::Tensor&) {}
void Group::all_reduce_max(at::Tensor&) {}
std::vector<std::string> Group::all_gather(const std::string& bytes) { return {bytes}; }
void Group::barrier() {}
void Group::report_failure(const std::string&) {}
void Group::finish() {}

bool Group::all_true(bool value) {
  if (!distributed()) return value;
  auto t = at::full({1}, value ? 1L : 0L, at::kLong);
  all_reduce_sum(t);
  return t.item<int64_t>() == world_size();
}

void Group::check_same(const std::string& what, const std::string& value) {
  if (!distributed()) return;
  const auto all = all_gather(value);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] != all[0]) {
      // The first differing line, so that the message names the flag or file.
      auto line_of = [](const std::string& s, size_t at) {
        const size_t b = s.rfind('\n', at == 0 ? 0 : at - 1);
        const size_t start = b == std::string::npos || at == 0 ? 0 : b + 1;
        return s.substr(start, s.find('\n', start) - start);
      };
      size_t at = 0;
      while (at < all[0].size() && at < all[r].size() && all[0][at] == all[r][at]) ++at;
      throw std::invalid_argument(fmt::format("the ranks disagree on {}: rank {} has \"{}\" where rank 0 has \"{}\"", what,
                                              r, line_of(all[r], at), line_of(all[0], at)));
    }
  }
}

#if !CUR4LLM_WITH_DIST

bool available() { return false; }

std::shared_ptr<Group> Group::from_environment(const GroupOptions& options) {
  return join(LaunchEnvironment::read(), options);
}

std::shared_ptr<Group> Group::join(const LaunchEnvironment& env, const GroupOptions&) {
  if (env.world_size > 1) {
    throw std::runtime_error(fmt::format(
        "WORLD_SIZE={}: this cur4llm was built without c10d (CUR4LLM_WITH_DIST=OFF), so it runs as one process only",
        env.world_size));
  }
  return single();
}

#else

bool available() { return true; }

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kErrorKey = "cur4llm/error";
constexpr const char* kFailedKey = "cur4llm/failed";
constexpr const char* kAckKey = "cur4llm/ack";
constexpr const char* kLeftKey = "cur4llm/left";
std::string heartbeat_key(int rank) { return fmt::format("cur4llm/heartbeat/{}", rank); }
std::string done_key(int rank) { return fmt::format("cur4llm/done/{}", rank); }

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

// The main connection (`join`: rank 0 serves; every rank counts itself in and
// waits for the others), or a further one that joins nothing.
c10::intrusive_ptr<c10d::TCPStore> connect_store(const LaunchEnvironment& env, bool join, double timeout_s) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(env.master_port);
  o.isServer = join && env.rank == 0;
  if (join) o.numWorkers = static_cast<std::size_t>(env.world_size);  // else unset (c10:: or std::optional by version)
  o.waitWorkers = join;
  o.timeout = to_ms(timeout_s);
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
}

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

class C10dGroup final : public Group {
 public:
  C10dGroup(const LaunchEnvironment& env, const GroupOptions& options)
      : Group(env.rank, env.world_size, env.local_rank), env_(env), options_(options) {
    const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
    try {
      store_ = connect_store(env, true, options.connect_timeout_s);
      // The collectives' own keys apart from the watchdog's.
      auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo", store_);
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(to_ms(options.timeout_s));
      const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
      const bool loopback = env.master_addr == "localhost" || env.master_addr.rfind("127.", 0) == 0;
      gloo_options->devices.push_back(iface && *iface ? c10d::ProcessGroupGloo::createDeviceForInterface(iface)
                                      : loopback      ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                                      : c10d::ProcessGroupGloo::createDefaultDevice());
      gloo_ = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, env.rank, env.world_size, gloo_options);
      // The watchdog has a connection of its own: the main thread's may be busy.
      watch_store_ = connect_store(env, false, std::min(options.connect_timeout_s, 30.0));
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("rank {} of {}: cannot join the process group at {} (MASTER_ADDR:MASTER_PORT): {}",
                                           env.rank, env.world_size, where, first_line(e.what())));
    }
    watchdog_ = std::thread([this] { watch(); });
  }

  ~C10dGroup() override { stop_watchdog(); }

  void all_reduce_sum(at::Tensor& tensor) override { all_reduce(tensor, c10d::ReduceOp::SUM, "all-reduce"); }
  void all_reduce_max(at::Tensor& tensor) override { all_reduce(tensor, c10d::ReduceOp::MAX, "all-reduce"); }

  std::vector<std::string> all_gather(const std::string& bytes) override {
    // Sizes first, then the bytes padded to the longest.
    auto size = at::full({1}, static_cast<int64_t>(bytes.size()), at::kLong);
    auto sizes = gather_tensor(size);
    int64_t longest = 0;
    for (const auto& s : sizes) longest = std::max(longest, s.item<int64_t>());
    auto mine = at::zeros({std::max<int64_t>(1, longest)}, at::kByte);
    std::copy(bytes.begin(), bytes.end(), mine.data_ptr<uint8_t>());
    auto all = gather_tensor(mine);
    std::vector<std::string> out;
    for (size_t r = 0; r < all.size(); ++r) {
      const auto* p = reinterpret_cast<const char*>(all[r].data_ptr<uint8_t>());
      out.emplace_back(p, p + sizes[r].item<int64_t>());
    }
    return out;
  }

  void barrier() override {
    run("barrier", [&] { gloo_->barrier(c10d::BarrierOptions())->wait(); });
  }

  void report_failure(const std::string& message) override {
    if (finished_) return;
    try {
      if (store_->add(kFailedKey, 1) == 1) {
        posted_ = true;
        store_->set(kErrorKey, bytes_of(fmt::format("rank {}: {}", rank(), first_line(message))));
      }
      if (is_root()) {
        // The store lives in this process: keep it until the others have read the error.
        const auto until = Clock::now() + std::chrono::seconds(5);
        while (store_->add(kAckKey, 0) < world_size() - 1 && Clock::now() < until) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    } catch (const std::exception&) {
      // The store is gone too: the exit code says enough.
    }
  }

  void finish() override {
    if (finished_) return;
    barrier();
    store_->add(done_key(rank()), 1);
    stop_watchdog();
    finished_ = true;
    if (is_root()) {
      const auto until = Clock::now() + std::chrono::seconds(30);
      while (store_->add(kLeftKey, 0) < world_size() - 1 && Clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    } else {
      store_->add(kLeftKey, 1);
    }
  }

 private:
  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  template <typename F>
  void run(const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      // A peer's end closed the connection: give the watchdog the time to name the
      // rank (its error, or its silence), which ends this process with that message.
      const auto until = Clock::now() + to_ms(options_.heartbeat_timeout_s + 2.0);
      while (Clock::now() < until && !stop_) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      throw std::runtime_error(fmt::format("rank {}: the {} failed (a rank has exited or failed): {}", rank(), what,
                                           first_line(e.what())));
    }
  }

  void all_reduce(at::Tensor& tensor, c10d::ReduceOp::RedOpType op, const char* what) {
    if (!tensor.device().is_cpu()) throw std::invalid_argument("dist: collectives take CPU tensors");
    auto t = tensor.contiguous();
    std::vector<at::Tensor> tensors{t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp(op);
    run(what, [&] { gloo_->allreduce(tensors, o)->wait(); });
    if (!t.is_same(tensor)) tensor.copy_(t);
  }

  std::vector<at::Tensor> gather_tensor(const at::Tensor& tensor) {
    std::vector<at::Tensor> input{tensor.contiguous()};
    std::vector<std::vector<at::Tensor>> output(1);
    for (int r = 0; r < world_size(); ++r) output[0].push_back(at::empty_like(input[0]));
    run("all-gather", [&] { gloo_->allgather(output, input, c10d::AllgatherOptions())->wait(); });
    return output[0];
  }

  [[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "error: rank %d of %d stops: %s\n", rank(), world_size(), message.c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }

  // Heartbeats and the error key, every quarter second, until stopped.
  void watch() {
    std::vector<int64_t> last(world_size(), -1);
    std::vector<Clock::time_point> seen(world_size(), Clock::now());
    std::unique_lock<std::mutex> lock(watch_mutex_);
    while (!stop_) {
      try {
        watch_store_->add(heartbeat_key(rank()), 1);
        if (!posted_ && watch_store_->check({kErrorKey})) {
          const auto v = watch_store_->get(kErrorKey);
          watch_store_->add(kAckKey, 1);
          die(std::string(v.begin(), v.end()));
        }
        const auto now = Clock::now();
        for (int p = 0; p < world_size(); ++p) {
          if (p == rank()) continue;
          const int64_t beats = watch_store_->add(heartbeat_key(p), 0);
          if (beats != last[p]) {
            last[p] = beats;
            seen[p] = now;
          } else if (std::chrono::duration<double>(now - seen[p]).count() > options_.heartbeat_timeout_s &&
                     watch_store_->add(done_key(p), 0) == 0) {
            const std::string message = fmt::format("rank {} stopped responding (no heartbeat for {:.0f} s)", p,
                                                    options_.heartbeat_timeout_s);
            if (watch_store_->add(kFailedKey, 1) == 1) watch_store_->set(kErrorKey, bytes_of(message));
            watch_store_->add(kAckKey, 1);
            die(message);
          }
        }
      } catch (const std::exception& e) {
        if (stop_) break;
        die(fmt::format("lost the connection to the store of rank 0 at {}:{} (rank 0 has exited or failed)",
                        env_.master_addr, env_.master_port));
      }
      wake_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stop_.load(); });
    }
  }

  void stop_watchdog() {
    {
      std::lock_guard<std::mutex> lock(watch_mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }

  LaunchEnvironment env_;
  GroupOptions options_;
  c10::intrusive_ptr<c10d::TCPStore> store_;
  c10::intrusive_ptr<c10d::TCPStore> watch_store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
  std::thread watchdog_;
  std::mutex watch_mutex_;
  std::condition_variable wake_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> posted_{false};
  bool finished_ = false;
};

}  // namespace

std::shared_ptr<Group> Group::from_environment(const GroupOptions& options) {
  return join(LaunchEnvironment::read(), options);
}

std::shared_ptr<Group> Group::join(const LaunchEnvironment& env, const GroupOptions& options) {
  if (env.world_size <= 1) return single();
  auto group = std::make_shared<C10dGroup>(env, options);
  std::lock_guard<std::mutex> lock(current_mutex);
  current_group = group;
  return group;
}

#endif

namespace detail {
void fault_point(const char* stage, const Group& group) {
  const char* spec = std::getenv("CUR4LLM_DIST_FAULT");
  if (!spec || !*spec) return;
  const std::string text = spec;
  for (const char* kind : {"kill", "throw"}) {
    if (text == fmt::format("{}:{}:{}", kind, group.rank(), stage)) {
      if (std::string(kind) == "kill") std::raise(SIGKILL);
      throw std::runtime_error(fmt::format("injected failure at {} (CUR4LLM_DIST_FAULT)", stage));
    }
  }
}
}  // namespace detail

std::shared_ptr<Group> current() {
  std::lock_guard<std::mutex> lock(current_mutex);
  return current_group.lock();
}

void report_failure_if_distributed(const std::string& message) noexcept {
  try {
    if (auto g = current(); g && g->distributed()) g->report_failure(message);
  } catch (...) {
  }
}

}  // namespace cur4llm::dist
