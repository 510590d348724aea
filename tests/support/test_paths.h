#pragma once
// Where the tests find their inputs.
//  - fixture_dir(): tests/data in the source tree (committed fixtures).
//  - shared_data_dir(): ../shared/data (real models and text), or
//    $CUR4LLM_SHARED_DIR/data; absent in a user's fresh clone.
//  - unpacked_shared_archive(): a tarball of shared/data unpacked once into
//    the build tree (never into the directory the test runs from).

// Debian's LibTorch is built with glog, whose CHECK macro would replace
// Catch's if it came later; including it first lets Catch's definition win.
#include <c10/util/Logging.h>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>

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

/// shared_data_dir()/ARCHIVE (a .tar.xz) unpacked into <build>/tests/<stem>, where
/// <stem> is ARCHIVE less ".tar.xz"; `marker` is a path inside the archive that an
/// unpacked copy has. Unpacked into a private folder first and renamed into place, so
/// that tests running side by side never see half a tree. nullopt when the archive is
/// absent or tar fails.
inline std::optional<std::filesystem::path> unpacked_shared_archive(const std::string& archive,
                                                                    const std::string& marker) {
  namespace fs = std::filesystem;
  const auto shared = shared_data_dir();
  if (!shared || !fs::is_regular_file(*shared / archive)) return std::nullopt;
  const std::string stem = archive.substr(0, archive.rfind(".tar"));
  const fs::path dir = fs::path(CUR4LLM_TEST_WORK_DIR) / stem;
  if (fs::exists(dir / marker)) return dir;
  const fs::path staging = fs::path(CUR4LLM_TEST_WORK_DIR) / (stem + ".unpacking." + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(staging, ec);
  fs::create_directories(staging);
  const std::string cmd = "tar -xJf '" + (*shared / archive).string() + "' -C '" + staging.string() + "'";
  if (std::system(cmd.c_str()) != 0 || !fs::exists(staging / marker)) {
    fs::remove_all(staging, ec);
    return std::nullopt;
  }
  if (!fs::exists(dir / marker)) fs::remove_all(dir, ec);  // a tree left half-made by an older run
  fs::rename(staging, dir, ec);  // fails when another test got there first: its copy serves
  fs::remove_all(staging, ec);
  return fs::exists(dir / marker) ? std::optional<fs::path>(dir) : std::nullopt;
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
