#pragma once
// Shared by the libFuzzer targets: each writes the input where the loader
// expects a file and calls it; a std::exception is a correct refusal, anything
// else (a crash, a sanitizer report, a hang) is a bug.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "../support/sanitizer_defaults.h"

namespace cur4llm::fuzz {

/// A scratch folder for this process, made once.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("cur4llm_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

/// Writes `size` bytes to `path`, replacing it.
inline void write(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), size);
}

}  // namespace cur4llm::fuzz
