#pragma once
// Internal: names in the Hugging Face cache layout, shared by the cache
// look-up (model_folder.cpp) and the download (hub.cpp).

#include <string>

namespace cur4llm::detail {

/// Whether `id` is a Hugging Face repository id: "name" or "org/name" of
/// [A-Za-z0-9._-], parts not starting or ending with '.' or '-', no "..".
bool valid_repo_id(const std::string& id);

/// "models--org--name" (or "models--name") for a valid repository id.
std::string repo_cache_folder(const std::string& id);

/// Whether `revision` is a full commit hash (40 lower-case hex digits).
bool is_commit_hash(const std::string& revision);

/// Whether `revision` can name a file under refs/ ("main", "v1.0", "refs/pr/3"):
/// no empty, "." or ".." component, no leading '/', no backslash or control character.
bool valid_revision(const std::string& revision);

/// The value of an environment variable, "" when unset.
std::string env_value(const char* name);

/// The user's home folder ($HOME, else the password database).
std::string home_folder();

/// `s` without leading and trailing white space.
std::string trim_space(const std::string& s);

}  // namespace cur4llm::detail
