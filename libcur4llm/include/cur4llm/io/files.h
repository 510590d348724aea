#pragma once
/// Small file helpers shared by the areas: whole-file reads and atomic writes.

#include <filesystem>
#include <string>

namespace cur4llm::io {

/// The whole content of a file; throws std::runtime_error naming it.
std::string read_file(const std::filesystem::path& path);

/// Writes `content` to `path` atomically (temporary sibling + rename).
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

/// Appends one line (a newline is added) to `path`, creating parent folders.
void append_line(const std::filesystem::path& path, const std::string& line);

}  // namespace cur4llm::io
