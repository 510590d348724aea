#pragma once
// Helpers several test files share.

#include <cur4llm/io/files.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "test_paths.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::test {

/// Sets (std::nullopt: unsets) an environment variable for the guard's lifetime.
struct ScopedEnv {
  std::string name;
  std::optional<std::string> old;
  ScopedEnv(std::string n, const std::optional<std::string>& value) : name(std::move(n)) {
    if (const char* v = std::getenv(name.c_str())) old = v;
    if (value) {
      ::setenv(name.c_str(), value->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
  ~ScopedEnv() {
    if (old) {
      ::setenv(name.c_str(), old->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
};

/// Fixed pseudo-random token ids: one sample per length, ids in [0, vocab).
inline std::vector<std::vector<int64_t>> make_samples(const std::vector<int64_t>& lengths, int64_t vocab,
                                                      uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<std::vector<int64_t>> out;
  for (int64_t len : lengths) {
    auto t = at::randint(vocab, {len}, gen, at::TensorOptions().dtype(at::kLong));
    out.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + len);
  }
  return out;
}

/// A fresh folder under the system's temporary folder, removed with
/// io::remove_tree (never std::filesystem::remove_all: see io/files.h).
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "cur4llm_test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (tag + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    try {
      io::remove_tree(path);
    } catch (const std::exception&) {
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

}  // namespace cur4llm::test
