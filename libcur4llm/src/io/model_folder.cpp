#include "cur4llm/io/model_folder.h"

#include "cur4llm/io/files.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace cur4llm::io {

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

std::filesystem::path home_dir() {
  std::string home = env("HOME");
  if (home.empty()) {
    if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) home = pw->pw_dir;
  }
  return home;
}

// Hugging Face repository ids: "name" or "org/name" of [A-Za-z0-9._-], not
// starting or ending with '.' or '-', no "..".
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

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

}  // namespace

std::filesystem::path hf_hub_cache_dir() {
  // The same order as huggingface_hub: HF_HUB_CACHE, HF_HOME/hub,
  // $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
  if (auto v = env("HF_HUB_CACHE"); !v.empty()) return v;
  if (auto v = env("HF_HOME"); !v.empty()) return std::filesystem::path(v) / "hub";
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) return std::filesystem::path(v) / "huggingface" / "hub";
  return home_dir() / ".cache" / "huggingface" / "hub";
}

std::filesystem::path resolve_model_id(const std::string& model_id) {
  std::vector<std::string> looked;
  std::error_code ec;
  const std::filesystem::path as_path(model_id);
  if (!model_id.empty() && std::filesystem::is_directory(as_path, ec)) return as_path;
  looked.push_back(model_id + " (no such directory)");

  const auto slash = model_id.find('/');
  const bool has_org = slash != std::string::npos;
  const std::string org = has_org ? model_id.substr(0, slash) : std::string();
  const std::string name = has_org ? model_id.substr(slash + 1) : model_id;
  const bool is_repo_id = valid_repo_part(name) && (!has_org || valid_repo_part(org));

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
  const std::filesystem::path repo = cache / ("models--" + (has_org ? org + "--" : std::string()) + name);
  const std::filesystem::path snapshots = repo / "snapshots";
  const std::filesystem::path ref = repo / "refs" / "main";
  if (std::filesystem::is_regular_file(ref, ec)) {
    std::string revision;
    try {
      revision = trim(read_file(ref));
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

}  // namespace cur4llm::io
