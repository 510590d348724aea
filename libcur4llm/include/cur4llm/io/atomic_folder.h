#pragma once
/// A folder written as a whole or not at all: everything goes into a
/// temporary sibling folder, which commit() renames to the target. If the
/// writer fails (an exception, a full disk) the temporary folder is removed
/// and nothing appears under the target name.
///
///   io::AtomicFolder out("out/model-acur90", {});   // refuses an existing folder
///   io::write_file_atomic(out.path() / "config.json", text);
///   ...
///   out.commit();                                   // now "out/model-acur90" exists
///
/// @internal
/// Internal: used by cur4llm's own apps, tests and benchmarks; not part of the
/// public API (left out of <cur4llm/cur4llm.h> and of the API reference) and may change.

#include <cstdint>
#include <filesystem>

namespace cur4llm::io {

/// How an AtomicFolder treats an existing target.
struct AtomicFolderOptions {
  bool overwrite = false;  ///< replace an existing target, only once the new folder is complete
};

/// Refuses an existing `target` as AtomicFolder does, for a caller to check
/// before long work: std::invalid_argument "<target> already exists (pass
/// --overwrite to replace it)" when anything is at `target` and
/// options.overwrite is off. A symbolic link counts, even a dangling one (it is
/// not followed; with overwrite the link itself is replaced, never the folder it
/// points to).
///
///   io::check_target_free(output, {overwrite});   // before loading the model
void check_target_free(const std::filesystem::path& target, const AtomicFolderOptions& options);

class AtomicFolder {
 public:
  /// Creates the parent folders and a temporary sibling of `target`.
  /// std::invalid_argument if `target` exists and options.overwrite is off;
  /// std::runtime_error (naming the path) if the parent cannot be created or written.
  AtomicFolder(std::filesystem::path target, const AtomicFolderOptions& options);
  /// Removes the temporary folder unless commit() succeeded.
  ~AtomicFolder();
  AtomicFolder(const AtomicFolder&) = delete;
  AtomicFolder& operator=(const AtomicFolder&) = delete;

  /// The temporary folder to write into.
  const std::filesystem::path& path() const { return temp_; }
  const std::filesystem::path& target() const { return target_; }

  /// Renames the temporary folder to the target. With overwrite, an existing
  /// target is moved aside first and removed after the rename (put back if the
  /// rename fails); if that removal fails, the new folder stays and a warning
  /// on stderr names the leftover. std::invalid_argument if a target appeared
  /// meanwhile and overwrite is off; std::runtime_error on I/O errors.
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  AtomicFolderOptions options_;
  bool committed_ = false;
};

/// Bytes of every regular file under `folder` (symbolic links not followed).
std::uintmax_t folder_bytes(const std::filesystem::path& folder);

}  // namespace cur4llm::io
