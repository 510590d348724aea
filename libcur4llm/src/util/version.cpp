#include <cur4llm/version.h>

namespace cur4llm {
namespace detail {
extern const char* const kGitCommit;  // generated/git_commit.cpp
}

const char* version() { return CUR4LLM_VERSION_STRING; }

const char* git_commit() { return detail::kGitCommit; }

}  // namespace cur4llm
