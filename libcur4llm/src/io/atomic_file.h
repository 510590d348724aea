#pragma once
// Internal: a file written under a temporary sibling name and renamed into
// place on commit(), so readers never see a half-written file.

#include <cstddef>
#include <filesystem>
#include <string>

namespace cur4llm::detail {

/// ".<name>.<tag>.<pid>.<counter>.<ticks>" next to `target`: hidden, and unlikely
/// to collide with another writer of the same target.
std::filesystem::path temp_sibling(const std::filesystem::path& target, const char* tag);

/// fsync of a folder ("" is the current one), so that renames in it are durable;
/// failures are ignored (they cannot be undone).
void sync_dir(const std::filesystem::path& dir);

class AtomicFile {
 public:
  /// Creates a temporary sibling of `target`; throws std::runtime_error.
  explicit AtomicFile(std::filesystem::path target);
  /// Removes the temporary file unless commit() succeeded.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends bytes; throws std::runtime_error naming the target.
  void write(const void* data, size_t size);
  /// Flushes to disk and renames over the target; throws std::runtime_error.
  void commit();

  const std::filesystem::path& target() const { return target_; }

 private:
  void discard() noexcept;
  [[noreturn]] void fail(const std::string& what, int err);

  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace cur4llm::detail
