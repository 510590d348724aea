#include "cur4llm/io/files.h"

#include "io/atomic_file.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace cur4llm::detail {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

std::filesystem::path temp_sibling(const std::filesystem::path& target, const char* tag) {
  static std::atomic<unsigned> counter{0};
  const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
  std::string name = "." + target.filename().string() + "." + tag + "." + std::to_string(::getpid()) + "." +
                     std::to_string(counter++) + "." + std::to_string(ticks & 0xffffff);
  return target.parent_path() / name;
}

void sync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

AtomicFile::AtomicFile(std::filesystem::path target) : target_(std::move(target)) {
  if (target_.filename().empty()) {
    throw std::runtime_error(target_.string() + ": cannot write a file to a path without a file name");
  }
  for (int attempt = 0; attempt < 16; ++attempt) {
    temp_ = temp_sibling(target_, "tmp");
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ >= 0) return;
    if (errno != EEXIST) break;
  }
  const int err = errno;
  temp_.clear();
  throw std::runtime_error(target_.string() + ": cannot create a temporary file next to it: " +
                           errno_text(err));
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_.empty()) {
    ::unlink(temp_.c_str());
    temp_.clear();
  }
}

void AtomicFile::fail(const std::string& what, int err) {
  discard();
  throw std::runtime_error(target_.string() + ": " + what + ": " + errno_text(err));
}

void AtomicFile::write(const void* data, size_t size) {
  if (fd_ < 0) throw std::runtime_error(target_.string() + ": write after the file was closed");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Large writes are split: Linux writes at most ~2 GiB per call anyway.
    const size_t chunk = size < (size_t(1) << 30) ? size : (size_t(1) << 30);
    const ssize_t n = ::write(fd_, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write failed", errno);
    }
    if (n == 0) fail("write made no progress", EIO);
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw std::runtime_error(target_.string() + ": commit after the file was closed");
  if (::fsync(fd_) != 0) fail("fsync failed", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close failed", errno);
  if (::rename(temp_.c_str(), target_.c_str()) != 0) fail("cannot rename the temporary file over it", errno);
  committed_ = true;
  temp_.clear();
  sync_dir(target_.parent_path());  // makes the rename itself durable
}

}  // namespace cur4llm::detail

namespace cur4llm::io {

std::string read_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    const int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
    ::close(fd);
    throw std::runtime_error(path.string() + ": cannot read: " + std::strerror(err));
  }
  std::string content;
  if (st.st_size > 0) content.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(path.string() + ": read failed: " + std::strerror(err));
    }
    if (n == 0) break;
    content.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return content;
}

namespace {

int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  const int rc = (type == FTW_DP || type == FTW_D) ? ::rmdir(path) : ::unlink(path);
  if (rc != 0 && errno != ENOENT) {
    // nftw stops on a non-zero return; remember what failed for the message.
    static thread_local std::string failed;
    failed = path;
    errno = errno ? errno : EIO;
    return 1;
  }
  return 0;
}

}  // namespace

void remove_tree(const std::filesystem::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw std::runtime_error(path.string() + ": cannot remove: " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      throw std::runtime_error(path.string() + ": cannot remove: " + std::strerror(errno));
    }
    return;
  }
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    throw std::runtime_error(path.string() + ": cannot remove the folder: " + std::strerror(errno));
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& content) {
  detail::AtomicFile file(path);
  file.write(content.data(), content.size());
  file.commit();
}

void append_line(const std::filesystem::path& path, const std::string& line) {
  std::error_code ec;
  if (!path.parent_path().empty()) {
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) {
      throw std::runtime_error(path.string() + ": cannot create its folder: " + ec.message());
    }
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot open for appending: " + std::strerror(errno));
  // One write() call so that concurrent appenders do not interleave within a line.
  const std::string text = line + "\n";
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(path.string() + ": append failed: " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) throw std::runtime_error(path.string() + ": close failed: " + std::strerror(errno));
}

}  // namespace cur4llm::io
