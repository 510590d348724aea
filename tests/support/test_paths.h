#pragma once
// Where the tests find their inputs.
//  - fixture_dir(): tests/data in the source tree (committed fixtures).
//  - shared_data_dir(): ../shared/data (real models and text), or
//    $CUR4LLM_SHARED_DIR/data; absent in a user's fresh clone.

// Debian's LibTorch is built with glog, whose CHECK macro would replace
// Catch's if it came later; including it first lets Catch's definition win.
#include <c10/util/Logging.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace cur4llm::test {

inline std::filesystem::path fixture_dir() { return CUR4LLM_TEST_DATA_DIR; }

/// A tiny checkpoint under tests/data/models.
inline std::filesystem::path model_dir(const std::string& name) { return fixture_dir() / "models" / name; }

inline std::optional<std::filesystem::path> shared_data_dir() {
  const char* env = std::getenv("CUR4LLM_SHARED_DIR");
  std::filesystem::path root = env && *env ? std::filesystem::path(env) : std::filesystem::path(CUR4LLM_DEFAULT_SHARED_DIR);
  auto data = root / "data";
  if (std::filesystem::is_directory(data)) return data;
  return std::nullopt;
}

}  // namespace cur4llm::test

// Binds `var` to ../shared/data, or reports the test as skipped and returns.
#define CUR4LLM_REQUIRE_SHARED_DATA(var)                                                        \
  const auto var##_opt = ::cur4llm::test::shared_data_dir();                                    \
  if (!var##_opt) {                                                                             \
    WARN("SKIPPED: ../shared/data not found (set CUR4LLM_SHARED_DIR to the shared/ folder)");  \
    return;                                                                                     \
  }                                                                                             \
  const std::filesystem::path var = *var##_opt

// Reports the test as skipped and returns when no CUDA device is present.
#define CUR4LLM_REQUIRE_CUDA()                                 \
  if (!at::hasCUDA()) {                                        \
    WARN("SKIPPED: no CUDA device");                           \
    return;                                                    \
  }
