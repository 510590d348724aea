#include "cur4llm/io/model_folder.h"

#include "cur4llm/io/files.h"
#include "io/hf_cache.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace cur4llm::detail {

std::string env_value(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

std::string home_folder() {
  std::string home = env_value("HOME");
  if (home.empty()) {
    if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) home = pw->pw_dir;
  }
  return home;
}

namespace {

bool valid_repo_part(const std::string& part) {
  if (part.empty() || part.size() > 96) return false;
  for (char c : part) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  if (part.front() == '.' || part.front() == '-' || part.back() == '.' || part.back() == '-') return false;
  return part.find("..") == std::string::npos;
}

}  // namespace

bool valid_repo_id(const std::string& id) {
  const auto slash = id.find('/');
  if (slash == std::string::npos) return valid_repo_part(id);
  return valid_repo_part(id.substr(0, slash)) && valid_repo_part(id.substr(slash + 1));
}

std::string repo_cache_folder(const std::string& id) {
  std::string out = "models--" + id;
  const auto slash = out.find('/');
  if (slash != std::string::npos) out.replace(slash, 1, "--");
  return out;
}

bool is_commit_hash(const std::string& revision) {
  if (revision.size() != 40) return false;
  for (char c : revision) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool valid_revision(const std::string& revision) {
  if (revision.empty() || revision.size() > 256 || revision.front() == '/') return false;
  for (char c : revision) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') return false;
  }
  size_t start = 0;
  while (start <= revision.size()) {
    const auto end = std::min(revision.find('/', start), revision.size());
    const std::string part = revision.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

std::string trim_space(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

}  // namespace cur4llm::detail

namespace cur4llm::io {

namespace {

using detail::env_value;
using detail::trim_space;

}  // namespace

std::filesystem::path hf_hub_cache_dir() {
  // The same order as huggingface_hub: HF_HUB_CACHE, HF_HOME/hub,
  // $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
  if (auto v = env_value("HF_HUB_CACHE"); !v.empty()) return v;
  if (auto v = env_value("HF_HOME"); !v.empty()) return std::filesystem::path(v) / "hub";
  if (auto v = env_value("XDG_CACHE_HOME"); !v.empty()) return std::filesystem::path(v) / "huggingface" / "hub";
  return std::filesystem::path(detail::home_folder()) / ".cache" / "huggingface" / "hub";
}

std::filesystem::path resolve_model_id(const std::string& model_id) {
  std::vector<std::string> looked;
  std::error_code ec;
  const std::filesystem::path as_path(model_id);
  if (!model_id.empty() && std::filesystem::is_directory(as_path, ec)) return as_path;
  looked.push_back(model_id + " (no such directory)");

  const bool is_repo_id = detail::valid_repo_id(model_id);

  auto fail = [&]() -> std::filesystem::path {
    std::string msg = "model " + (model_id.empty() ? std::string("''") : "'" + model_id + "'") +
                      " not found; looked at: ";
    for (size_t i = 0; i < looked.size(); ++i) msg += (i ? "; " : "") + looked[i];
    throw std::invalid_argument(msg);
  };
  if (!is_repo_id) {
    looked.push_back("(not an \"org/name\" Hugging Face id, so the cache was not searched)");
    return fail();
  }

  const std::filesystem::path cache = hf_hub_cache_dir();
  const std::filesystem::path repo = cache / detail::repo_cache_folder(model_id);
  const std::filesystem::path snapshots = repo / "snapshots";
  const std::filesystem::path ref = repo / "refs" / "main";
  if (std::filesystem::is_regular_file(ref, ec)) {
    std::string revision;
    try {
      revision = trim_space(read_file(ref));
    } catch (const std::runtime_error& e) {
      looked.push_back(ref.string() + " (unreadable)");
      return fail();
    }
    const bool plausible = !revision.empty() && revision.find('/') == std::string::npos && revision != "." &&
                           revision != "..";
    const std::filesystem::path snapshot = snapshots / revision;
    if (plausible && std::filesystem::is_directory(snapshot, ec)) return snapshot;
    looked.push_back(ref.string() + " -> " + snapshot.string() + " (no such directory)");
    return fail();
  }
  looked.push_back(ref.string() + " (missing)");
  std::vector<std::filesystem::path> found;
  if (std::filesystem::is_directory(snapshots, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(snapshots, ec)) {
      if (entry.is_directory()) found.push_back(entry.path());
    }
  }
  if (found.size() == 1) return found[0];
  looked.push_back(snapshots.string() + (found.empty() ? std::string(" (no snapshot)")
                                                       : " (" + std::to_string(found.size()) +
                                                             " snapshots and no refs/main to choose one)"));
  return fail();
}

std::filesystem::path resolve_model_id(const std::string& model_id, const HubOptions& hub) {
  std::error_code ec;
  if (!model_id.empty() && std::filesystem::is_directory(std::filesystem::path(model_id), ec)) return model_id;
  if (!detail::valid_repo_id(model_id)) return resolve_model_id(model_id);  // throws, listing where it looked
  if (auto cached = cached_model(model_id, hub); !cached.empty()) return cached;

  // Not a folder and not complete in the cache: what the cache-only look-up says
  // (it also takes a lone snapshot without refs/main) is the answer when no
  // download may happen.
  auto without_download = [&](const std::string& why) -> std::filesystem::path {
    if (hub.revision == "main") {
      try {
        return resolve_model_id(model_id);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string(e.what()) + "; " + why);
      }
    }
    throw std::invalid_argument("model '" + model_id + "' at revision " + hub.revision + " is not in the cache " +
                                (hub.cache_dir.empty() ? hf_hub_cache_dir() : hub.cache_dir).string() + "; " + why);
  };
  if (hub.offline) return without_download("offline mode (HF_HUB_OFFLINE) is on, so nothing was downloaded");
  if (!hub_download_supported()) {
    return without_download("this build of cur4llm has no Hub download support (built without libcurl)");
  }
  try {
    return download_model(model_id, hub);
  } catch (const HubError& e) {
    // Also what a mistyped local path ends in: say that no folder was found either.
    const std::string message = "model '" + model_id + "' is no folder and not in the Hugging Face cache; " + e.what();
    if (e.status() == 401 || e.status() == 403 || e.status() == 404) throw std::invalid_argument(message);
    throw HubError(message, e.status());
  }
}

}  // namespace cur4llm::io
