#include "cur4llm/io/atomic_folder.h"

#include "cur4llm/io/files.h"

#include "io/atomic_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace cur4llm::io {
namespace {

bool exists_no_follow(const std::filesystem::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// "out/x/" and "out/./x" name "out/x" (a trailing slash would make lstat follow a link).
std::filesystem::path normalized_target(const std::filesystem::path& target) {
  auto t = target.lexically_normal();
  if (t.filename().empty()) t = t.parent_path();
  if (t.filename().empty() || t.filename() == "." || t.filename() == "..") {
    throw std::invalid_argument(t.string() + ": not a usable folder name");
  }
  return t;
}

[[noreturn]] void refuse_existing(const std::filesystem::path& target) {
  throw std::invalid_argument(target.string() + " already exists (pass --overwrite to replace it)");
}

}  // namespace

void check_target_free(const std::filesystem::path& target, const AtomicFolderOptions& options) {
  const auto t = normalized_target(target);
  if (!options.overwrite && exists_no_follow(t)) refuse_existing(t);
}

AtomicFolder::AtomicFolder(std::filesystem::path target, const AtomicFolderOptions& options)
    : target_(normalized_target(target)), options_(options) {
  check_target_free(target_, options_);
  const auto parent = target_.parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec || !std::filesystem::is_directory(parent)) {
      throw std::runtime_error(parent.string() + ": cannot create the output folder: " +
                               (ec ? ec.message() : std::string("not a directory")));
    }
  }
  for (int attempt = 0; attempt < 16; ++attempt) {
    temp_ = detail::temp_sibling(target_, "tmp");
    if (::mkdir(temp_.c_str(), 0755) == 0) return;
    if (errno != EEXIST) break;
  }
  const int err = errno;
  const auto tried = temp_;
  temp_.clear();
  throw std::runtime_error(tried.string() + ": cannot create a temporary folder: " + std::strerror(err));
}

AtomicFolder::~AtomicFolder() {
  if (committed_ || temp_.empty()) return;
  try {
    remove_tree(temp_);
  } catch (const std::exception&) {
    // Nothing more can be done from a destructor; the name starts with '.'.
  }
}

void AtomicFolder::commit() {
  if (committed_) throw std::logic_error(target_.string() + ": committed twice");
  detail::sync_dir(temp_);
  std::filesystem::path aside;
  if (exists_no_follow(target_)) {
    if (!options_.overwrite) refuse_existing(target_);
    aside = detail::temp_sibling(target_, "old");
    if (::rename(target_.c_str(), aside.c_str()) != 0) {
      throw std::runtime_error(target_.string() + ": cannot move the existing folder aside: " + std::strerror(errno));
    }
  }
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    if (!aside.empty()) ::rename(aside.c_str(), target_.c_str());  // put the old one back
    throw std::runtime_error(target_.string() + ": cannot rename the finished folder into place: " +
                             std::strerror(err));
  }
  committed_ = true;
  detail::sync_dir(target_.parent_path());
  if (aside.empty()) return;
  // The new folder is in place: failing to delete the old one is not a failed write.
  try {
    remove_tree(aside);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: %s was replaced, but its previous version could not be removed: %s\n",
                 target_.string().c_str(), e.what());
  }
}

std::uintmax_t folder_bytes(const std::filesystem::path& folder) {
  std::uintmax_t total = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(folder)) {
    if (entry.is_regular_file() && !entry.is_symlink()) total += entry.file_size();
  }
  return total;
}

}  // namespace cur4llm::io
