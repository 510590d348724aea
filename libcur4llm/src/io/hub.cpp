// Downloading a model from the Hugging Face Hub into the shared cache layout
// (see hub.h). The facts of the protocol, as huggingface_hub uses it:
//  - GET {endpoint}/api/models/{repo}/revision/{revision} lists the files
//    ("siblings") and the commit ("sha");
//  - HEAD {endpoint}/{repo}/resolve/{revision}/{file} answers, without
//    following a redirect to another host, X-Repo-Commit, the file's ETag
//    (X-Linked-Etag for LFS files, whose etag is their sha256) and size
//    (X-Linked-Size, else Content-Length); a 3xx Location is where the bytes are;
//  - errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound,
//    GatedRepo) and X-Error-Message.
#include "cur4llm/io/hub.h"

#include "cur4llm/io/files.h"
#include "cur4llm/io/model_folder.h"
#include "io/atomic_file.h"
#include "io/hf_cache.h"
#include "io/hub_http.h"
#include "io/sha256.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <set>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace cur4llm::io {

namespace {

using detail::env_value;

constexpr const char* kDefaultEndpoint = "https://huggingface.co";
constexpr int kAttempts = 5;                       // tries per file when the connection breaks
constexpr uint64_t kProgressBarBytes = 1u << 20;   // files from this size get a progress bar on a terminal

const char* const kTokenizerFiles[] = {"tokenizer.json",          "tokenizer.model", "tokenizer_config.json",
                                       "special_tokens_map.json", "vocab.json",      "merges.txt"};

bool env_true(const char* name) {
  std::string v = env_value(name);
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  return v == "1" || v == "on" || v == "yes" || v == "true";
}

// Percent-encoding of a URL path piece; '/' is kept when `keep_slash`.
std::string url_quote(const std::string& s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                       c == '.' || c == '_' || c == '~' || (keep_slash && c == '/');
    if (plain) {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

// "scheme://host[:port]" of a URL.
std::string url_origin(const std::string& url) {
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) return url;
  const auto slash = url.find('/', scheme + 3);
  return slash == std::string::npos ? url : url.substr(0, slash);
}

// W/"abc" or "abc" -> abc.
std::string normalize_etag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) etag = etag.substr(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return etag;
}

bool is_sha256(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A file name from the Hub that can live under snapshots/: relative, no "." or ".." parts.
bool valid_repo_file(const std::string& name) { return detail::valid_revision(name); }

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) {
    bytes /= 1000;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", bytes, units[u]) : fmt::format("{:.1f} {}", bytes, units[u]);
}

fs::path cache_root(const HubOptions& options) {
  return options.cache_dir.empty() ? hf_hub_cache_dir() : options.cache_dir;
}

// Whether a snapshot folder holds config.json and every safetensors weight file.
bool snapshot_complete(const fs::path& snapshot) {
  std::error_code ec;
  if (!fs::is_regular_file(snapshot / "config.json", ec)) return false;
  if (fs::is_regular_file(snapshot / "model.safetensors", ec)) return true;
  const fs::path index = snapshot / "model.safetensors.index.json";
  if (!fs::is_regular_file(index, ec)) return false;
  try {
    const auto j = nlohmann::json::parse(read_file(index));
    const auto& map = j.at("weight_map");
    if (!map.is_object() || map.empty()) return false;
    for (const auto& item : map.items()) {
      const std::string shard = item.value().get<std::string>();
      if (!valid_repo_file(shard) || !fs::is_regular_file(snapshot / shard, ec)) return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// An exclusive lock on a file, as huggingface_hub's filelock takes (flock), so
// that two downloads of one blob, by cur4llm or by Python, do not interleave.
class FileLock {
 public:
  explicit FileLock(const fs::path& path) {
    fs::create_directories(path.parent_path());
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error("cannot open the lock file " + path.string() + ": " + std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) {
        ::close(fd_);
        throw std::runtime_error("cannot lock " + path.string() + ": " + std::strerror(errno));
      }
    }
  }
  ~FileLock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// Progress of one file on stderr: a bar redrawn in place on a terminal (large
// files), else one line when the file is done.
class Progress {
 public:
  Progress(bool enabled, std::string label, uint64_t total, uint64_t start)
      : enabled_(enabled), label_(std::move(label)), total_(total), start_(start),
        bar_(enabled && ::isatty(STDERR_FILENO) == 1 && (total == 0 || total >= kProgressBarBytes)),
        t0_(std::chrono::steady_clock::now()) {}

  void update(uint64_t done) {
    if (!bar_) return;
    const auto now = std::chrono::steady_clock::now();
    if (drawn_ && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    drawn_ = true;
    std::fprintf(stderr, "\r%s\033[K", line(done, now).c_str());
    std::fflush(stderr);
  }

  void finish(uint64_t done) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (bar_) {
      std::fprintf(stderr, "\r%s\033[K\n", line(done, now).c_str());
    } else {
      const double s = std::chrono::duration<double>(now - t0_).count();
      std::fprintf(stderr, "downloaded %s (%s in %.1f s)\n", label_.c_str(), human_bytes(double(done)).c_str(), s);
    }
    std::fflush(stderr);
  }

  void abandon() {
    if (bar_ && drawn_) std::fprintf(stderr, "\n");
  }

 private:
  std::string line(uint64_t done, std::chrono::steady_clock::time_point now) const {
    const double s = std::chrono::duration<double>(now - t0_).count();
    const double rate = s > 0 ? double(done - std::min(done, start_)) / s : 0.0;
    std::string text = label_ + "  " + human_bytes(double(done));
    if (total_ > 0) {
      text += " / " + human_bytes(double(total_)) +
              fmt::format("  {:3.0f}%", 100.0 * double(std::min(done, total_)) / double(total_));
    }
    return text + "  " + human_bytes(rate) + "/s";
  }

  bool enabled_;
  std::string label_;
  uint64_t total_;
  uint64_t start_;
  bool bar_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point t0_, last_;
};

// What a HEAD on a resolve URL tells.
struct FileMeta {
  long status = 0;
  std::string commit;
  std::string etag;
  std::optional<uint64_t> size;
  std::string location;  // where the bytes are
  std::string error_code;  // X-Error-Code of a 404
};

class Downloader {
 public:
  Downloader(const std::string& repo_id, const HubOptions& options)
      : repo_(repo_id), options_(options), endpoint_(hub_endpoint(options)),
        repo_dir_(cache_root(options) / detail::repo_cache_folder(repo_id)) {
    if (!options.token.empty()) auth_.push_back("Authorization: Bearer " + options.token);
  }

  fs::path run() {
    const std::string& revision = options_.revision;
    if (options_.show_progress) {
      std::fprintf(stderr, "downloading %s (revision %s) from %s\n", repo_.c_str(), revision.c_str(),
                   endpoint_.c_str());
    }
    listing_ = list_files();
    if (listing_ && !listing_->count("model.safetensors") && !listing_->count("model.safetensors.index.json")) {
      refuse_weights();  // before anything is downloaded
    }
    if (detail::is_commit_hash(revision)) commit_ = revision;
    if (commit_.empty()) {  // no listing: the answer for config.json names the commit
      const FileMeta config = head("config.json");
      if (config.status == 404) fail_missing("config.json", config);
      commit_ = config.commit;
      if (!detail::is_commit_hash(commit_)) {
        throw HubError(fmt::format("config.json of {}: the Hub at {} named no commit for revision {}", repo_,
                                   endpoint_, revision),
                       0);
      }
      snapshot_ = repo_dir_ / "snapshots" / commit_;
      fetch("config.json", config);
    }
    snapshot_ = repo_dir_ / "snapshots" / commit_;
    get("config.json", true);
    get("generation_config.json", false);
    for (const char* name : kTokenizerFiles) get(name, false);

    // Weights last: a snapshot with its weights is complete (cached_model).
    if (!get("model.safetensors", false)) {
      if (auto index = get("model.safetensors.index.json", false)) {
        for (const std::string& shard : shards_of(*index)) get(shard, true);
      } else {
        refuse_weights();
      }
    }

    if (revision != commit_) {
      const fs::path ref = repo_dir_ / "refs" / revision;
      fs::create_directories(ref.parent_path());
      write_file_atomic(ref, commit_);
    }
    return snapshot_;
  }

 private:
  std::string file_url(const std::string& name, const std::string& revision) const {
    return endpoint_ + "/" + repo_ + "/resolve/" + url_quote(revision, false) + "/" + url_quote(name, true);
  }

  // The token goes to the Hub's own origin only, never to where it redirects (a CDN).
  detail::HttpResponse request(detail::HttpRequest req, const std::string& what) {
    if (url_origin(req.url) == url_origin(endpoint_)) {
      req.headers.insert(req.headers.end(), auth_.begin(), auth_.end());
    }
    try {
      return detail::http_request(req);
    } catch (const detail::HttpConnectError& e) {
      throw HubError(fmt::format("{} of {}: cannot reach the Hub at {}: {}", what, repo_, endpoint_, e.what()), 0);
    }
  }

  [[noreturn]] void fail_status(const std::string& what, const detail::HttpResponse& r) const {
    const std::string code = r.header("x-error-code");
    const std::string where = fmt::format("{} of {} (revision {})", what, repo_, options_.revision);
    if (r.status == 401 && code == "RepoNotFound") {
      throw HubError(fmt::format("{}: HTTP 401: no repository {} on {}, or it is private: if it is yours, set "
                                 "HF_TOKEN to an access token or log in with `huggingface-cli login`",
                                 where, repo_, endpoint_),
                     r.status);
    }
    if (r.status == 401 || r.status == 403) {
      const std::string why =
          code == "GatedRepo"
              ? fmt::format("{} is a gated model: request access on its page at {}, then", repo_, endpoint_)
              : std::string("the model is gated or private, or does not exist:");
      const char* token_note = options_.token.empty() ? "" : " (the token given was refused or has no access)";
      throw HubError(fmt::format("{}: HTTP {}: {} set HF_TOKEN to an access token or log in with "
                                 "`huggingface-cli login`{}",
                                 where, r.status, why, token_note),
                     r.status);
    }
    if (r.status == 404) {
      std::string why;
      if (code == "RepoNotFound") {
        why = fmt::format("no repository {} on {}", repo_, endpoint_);
      } else if (code == "RevisionNotFound") {
        why = fmt::format("no revision {} in {}", options_.revision, repo_);
      } else {
        why = fmt::format("not found in {} at revision {} on {}", repo_, options_.revision, endpoint_);
      }
      throw HubError(fmt::format("{}: HTTP 404: {}", where, why), 404);
    }
    std::string message = r.header("x-error-message");
    throw HubError(fmt::format("{}: HTTP {} from {}{}{}", where, r.status, endpoint_, message.empty() ? "" : ": ",
                               message),
                   r.status);
  }

  [[noreturn]] void refuse_weights() const {
    bool has_bin = false;
    if (listing_) {
      for (const auto& f : *listing_) has_bin = has_bin || (f.size() > 4 && f.compare(f.size() - 4, 4, ".bin") == 0);
    }
    throw HubError(fmt::format("{} (revision {}) has no model.safetensors or model.safetensors.index.json{}; "
                               "cur4llm reads safetensors weights only (a revision that has them, such as a "
                               "conversion pull request refs/pr/N, can be chosen with --revision)",
                               repo_, options_.revision, has_bin ? " (only PyTorch .bin weights)" : ""),
                   0);
  }

  [[noreturn]] void fail_missing(const std::string& name, const FileMeta& meta) const {
    detail::HttpResponse r;
    r.status = meta.status;
    if (!meta.error_code.empty()) r.headers["x-error-code"] = meta.error_code;
    fail_status(name, r);
  }

  // The snapshot link of `name`, downloading it unless there; nullopt when the
  // repository does not have it (an error when `required`).
  std::optional<fs::path> get(const std::string& name, bool required) {
    std::error_code ec;
    if (fs::is_regular_file(snapshot_ / name, ec)) return snapshot_ / name;  // an earlier, interrupted run
    if (listing_ && !listing_->count(name)) {
      if (!required) return std::nullopt;
      throw HubError(fmt::format("{} of {} (revision {}): HTTP 404: the repository does not have it", name, repo_,
                                 options_.revision),
                     404);
    }
    const FileMeta meta = head(name);
    if (meta.status == 404) {
      if (required || listing_) fail_missing(name, meta);  // required, or listed but not served
      return std::nullopt;
    }
    return fetch(name, meta);
  }

  // The repository's files at the revision, or nullopt when the endpoint has no
  // listing (a mirror without the API): then files are probed one by one.
  std::optional<std::set<std::string>> list_files() {
    detail::HttpRequest req;
    req.url = endpoint_ + "/api/models/" + repo_ + "/revision/" + url_quote(options_.revision, false);
    req.follow_redirects = true;
    const detail::HttpResponse r = request(req, "the file list");
    if (r.status == 401 || r.status == 403) fail_status("the file list", r);
    const std::string code = r.header("x-error-code");
    if (r.status == 404 && (code == "RepoNotFound" || code == "RevisionNotFound")) fail_status("the file list", r);
    if (r.status != 200 || !r.transfer_complete) return std::nullopt;
    try {
      const auto j = nlohmann::json::parse(r.body);
      if (!j.contains("siblings") || !j["siblings"].is_array()) return std::nullopt;
      std::set<std::string> files;
      for (const auto& s : j["siblings"]) files.insert(s.at("rfilename").get<std::string>());
      if (j.contains("sha") && j["sha"].is_string() && detail::is_commit_hash(j["sha"].get<std::string>())) {
        commit_ = j["sha"].get<std::string>();
      }
      return files;
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }

  // HEAD on the file's resolve URL; a 404 is returned, other errors throw.
  FileMeta head(const std::string& name) {
    if (!valid_repo_file(name)) {
      throw HubError(fmt::format("{}: the file name '{}' cannot be stored in the cache", repo_, name), 0);
    }
    std::string url = file_url(name, commit_.empty() ? options_.revision : commit_);
    for (int hop = 0; hop < 10; ++hop) {
      detail::HttpRequest req;
      req.method = "HEAD";
      req.url = url;
      req.headers = {"Accept-Encoding: identity"};
      const detail::HttpResponse r = request(req, name);
      const std::string location = r.header("location");
      // A redirect on the same host (a renamed repository) is followed; one to
      // another place (a CDN) says where the bytes are, with the metadata here.
      if (r.status >= 300 && r.status < 400 && !location.empty() && location.front() == '/') {
        url = url_origin(url) + location;
        continue;
      }
      FileMeta meta;
      meta.status = r.status;
      if (r.status == 404) {
        meta.error_code = r.header("x-error-code");
        return meta;
      }
      if (r.status < 200 || r.status >= 400) fail_status(name, r);
      meta.commit = r.header("x-repo-commit");
      meta.etag = normalize_etag(!r.header("x-linked-etag").empty() ? r.header("x-linked-etag") : r.header("etag"));
      const std::string linked_size = r.header("x-linked-size");
      const std::string size = !linked_size.empty() ? linked_size : r.header("content-length");
      if (!size.empty()) {
        try {
          meta.size = std::stoull(size);
        } catch (const std::exception&) {
        }
      }
      meta.location = r.status >= 300 && !location.empty() ? location : url;
      if (meta.etag.empty() || meta.etag.find('/') != std::string::npos || meta.etag == "." || meta.etag == "..") {
        throw HubError(fmt::format("{} of {}: the Hub's answer has no usable ETag, so the file cannot be cached",
                                   name, repo_),
                       0);
      }
      return meta;
    }
    throw HubError(fmt::format("{} of {}: too many redirects", name, repo_), 0);
  }

  // The blob of `name` in the cache (downloaded unless there) and its link
  // under snapshots/; returns the link.
  fs::path fetch(const std::string& name, const FileMeta& meta) {
    const fs::path link = snapshot_ / name;
    std::error_code ec;
    if (fs::is_regular_file(link, ec)) return link;  // already there (an earlier, interrupted run)
    const fs::path blob = repo_dir_ / "blobs" / meta.etag;
    if (!blob_ok(blob, meta)) {
      FileLock lock(cache_root(options_) / ".locks" / detail::repo_cache_folder(repo_) / (meta.etag + ".lock"));
      if (!blob_ok(blob, meta)) download_blob(name, meta, blob);
    }
    fs::create_directories(link.parent_path());
    const fs::path target = blob.lexically_relative(link.parent_path());
    const fs::path temp = detail::temp_sibling(link, "link");
    fs::create_symlink(target, temp);
    fs::rename(temp, link, ec);
    if (ec) {
      fs::remove(temp, ec);
      throw std::runtime_error("cannot create " + link.string() + ": " + ec.message());
    }
    return link;
  }

  static bool blob_ok(const fs::path& blob, const FileMeta& meta) {
    std::error_code ec;
    if (!fs::is_regular_file(blob, ec)) return false;
    return !meta.size || fs::file_size(blob, ec) == *meta.size;
  }

  void download_blob(const std::string& name, const FileMeta& meta, const fs::path& blob) {
    fs::create_directories(blob.parent_path());
    const fs::path partial = blob.string() + ".incomplete";
    std::error_code ec;
    uint64_t offset = fs::is_regular_file(partial, ec) ? fs::file_size(partial, ec) : 0;
    if (meta.size && offset > *meta.size) {
      fs::remove(partial, ec);
      offset = 0;
    }
    int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot write " + partial.string() + ": " + std::strerror(errno));
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};

    // An LFS file's etag is its sha256: the bytes are hashed as they arrive
    // (after the part an earlier run left), so the check costs no second read.
    const bool lfs = is_sha256(meta.etag);
    detail::Sha256 hash;
    if (lfs && offset > 0) detail::sha256_update_from_file(hash, partial, offset);

    Progress progress(options_.show_progress, repo_ + " " + name, meta.size.value_or(0), offset);
    std::string broke;
    bool complete = false;
    for (int attempt = 1; attempt <= kAttempts && !complete; ++attempt) {
      if (attempt > 1) std::this_thread::sleep_for(std::chrono::milliseconds(250 * attempt));
      if (meta.size && offset == *meta.size) {
        complete = true;
        break;
      }
      detail::HttpRequest req;
      req.url = meta.location;
      req.follow_redirects = true;
      req.headers = {"Accept-Encoding: identity"};
      if (offset > 0) req.headers.push_back(fmt::format("Range: bytes={}-", offset));
      uint64_t base = offset;
      req.on_start = [&](long status) {
        if (status != 206 && offset > 0) {  // the server sent the whole file: start over
          if (::ftruncate(fd, 0) != 0) throw std::runtime_error("cannot truncate " + partial.string());
          offset = 0;
          base = 0;
          hash = detail::Sha256();
        }
      };
      req.sink = [&](const char* data, size_t size) {
        if (lfs) hash.update(data, size);
        while (size > 0) {
          const ssize_t n = ::write(fd, data, size);
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) throw std::runtime_error("cannot write " + partial.string() + ": " + std::strerror(errno));
          data += n;
          size -= static_cast<size_t>(n);
          offset += static_cast<uint64_t>(n);
        }
        return true;
      };
      req.progress = [&](uint64_t received, uint64_t) { progress.update(base + received); };
      detail::HttpResponse r;
      try {
        r = request(req, name);
      } catch (const HubError& e) {
        if (e.status() != 0 || attempt == kAttempts) {
          progress.abandon();
          throw;
        }
        broke = e.what();  // the connection could not be made again: the next attempt may
        continue;
      } catch (...) {
        progress.abandon();
        throw;
      }
      if (r.status == 416 && meta.size && offset == *meta.size) {
        complete = true;
      } else if (r.status < 200 || r.status >= 300) {
        progress.abandon();
        fail_status(name, r);
      } else if (!r.transfer_complete) {
        broke = r.transfer_error;
      } else {
        complete = true;
      }
    }
    if (!complete) {
      progress.abandon();
      throw HubError(fmt::format("{} of {}: the download broke off at {} of {} ({}) after {} attempts; run again to "
                                 "resume it",
                                 name, repo_, human_bytes(double(offset)),
                                 meta.size ? human_bytes(double(*meta.size)) : std::string("?"), broke, kAttempts),
                     0);
    }
    if (::fsync(fd) != 0) throw std::runtime_error("cannot write " + partial.string() + ": " + std::strerror(errno));
    progress.finish(offset);

    const uint64_t got = fs::file_size(partial);
    if (meta.size && got != *meta.size) {
      fs::remove(partial, ec);
      throw HubError(fmt::format("{} of {}: received {} bytes, the Hub announced {}; the partial download was deleted",
                                 name, repo_, got, *meta.size),
                     0);
    }
    if (lfs) {
      const std::string digest = hash.hex_digest();
      if (digest != meta.etag) {
        fs::remove(partial, ec);
        throw HubError(fmt::format("{} of {}: checksum mismatch (sha256 {}, the Hub says {}); the download was "
                                   "deleted, run again to download it anew",
                                   name, repo_, digest, meta.etag),
                       0);
      }
    }
    fs::rename(partial, blob);
    detail::sync_dir(blob.parent_path());
  }

  std::vector<std::string> shards_of(const fs::path& index_path) const {
    std::set<std::string> shards;
    try {
      const auto j = nlohmann::json::parse(read_file(index_path));
      for (const auto& item : j.at("weight_map").items()) shards.insert(item.value().get<std::string>());
    } catch (const std::exception& e) {
      throw HubError(fmt::format("model.safetensors.index.json of {} is not a safetensors index: {}", repo_, e.what()),
                     0);
    }
    for (const auto& s : shards) {
      if (!valid_repo_file(s)) {
        throw HubError(fmt::format("model.safetensors.index.json of {} names '{}', no file name", repo_, s), 0);
      }
    }
    return {shards.begin(), shards.end()};
  }

  std::string repo_;
  HubOptions options_;
  std::string endpoint_;
  fs::path repo_dir_;
  std::vector<std::string> auth_;
  std::optional<std::set<std::string>> listing_;
  std::string commit_;
  fs::path snapshot_;
};

std::string read_token_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return {};
  try {
    return detail::trim_space(read_file(path));
  } catch (const std::exception&) {
    return {};
  }
}

void check_ids(const std::string& repo_id, const HubOptions& options) {
  if (!detail::valid_repo_id(repo_id)) {
    throw std::invalid_argument("'" + repo_id + "' is not a Hugging Face repository id (org/name)");
  }
  if (!detail::valid_revision(options.revision)) {
    throw std::invalid_argument("--revision '" + options.revision + "' is not a branch, tag or commit hash");
  }
}

}  // namespace

HubOptions HubOptions::from_environment() {
  HubOptions o;
  o.endpoint = env_value("HF_ENDPOINT");
  o.token = detail::trim_space(env_value("HF_TOKEN"));
  if (o.token.empty()) o.token = detail::trim_space(env_value("HUGGING_FACE_HUB_TOKEN"));
  if (o.token.empty()) {
    fs::path file;
    if (auto v = env_value("HF_TOKEN_PATH"); !v.empty()) {
      file = v;
    } else if (auto h = env_value("HF_HOME"); !h.empty()) {
      file = fs::path(h) / "token";
    } else if (auto x = env_value("XDG_CACHE_HOME"); !x.empty()) {
      file = fs::path(x) / "huggingface" / "token";
    } else {
      file = fs::path(detail::home_folder()) / ".cache" / "huggingface" / "token";
    }
    o.token = read_token_file(file);
  }
  o.offline = env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE");
  return o;
}

bool hub_download_supported() { return detail::http_supported(); }

std::string hub_endpoint(const HubOptions& options) {
  std::string e = options.endpoint.empty() ? std::string(kDefaultEndpoint) : options.endpoint;
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

fs::path cached_model(const std::string& repo_id, const HubOptions& options) {
  check_ids(repo_id, options);
  const fs::path repo = cache_root(options) / detail::repo_cache_folder(repo_id);
  std::string commit = options.revision;
  if (!detail::is_commit_hash(commit)) {
    commit = read_token_file(repo / "refs" / options.revision);  // one line, trimmed
    if (!detail::is_commit_hash(commit)) return {};
  }
  const fs::path snapshot = repo / "snapshots" / commit;
  return snapshot_complete(snapshot) ? snapshot : fs::path();
}

fs::path download_model(const std::string& repo_id, const HubOptions& options) {
  check_ids(repo_id, options);
  if (auto cached = cached_model(repo_id, options); !cached.empty()) return cached;
  if (options.offline) {
    throw std::runtime_error(fmt::format("{} (revision {}) is not in the Hugging Face cache {} and offline mode "
                                         "(HF_HUB_OFFLINE) is on; unset HF_HUB_OFFLINE to download it",
                                         repo_id, options.revision, cache_root(options).string()));
  }
  if (!detail::http_supported()) {
    throw std::runtime_error("cannot download " + repo_id +
                             ": cur4llm was built without Hub download support (libcurl was not found when it was "
                             "built); download the model another way and give its folder");
  }
  return Downloader(repo_id, options).run();
}

}  // namespace cur4llm::io
