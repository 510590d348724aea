#pragma once
/// Small file helpers shared by the areas: whole-file reads and atomic writes.

#include <filesystem>
#include <string>

namespace cur4llm::io {

/// The whole content of a file; throws std::runtime_error naming it.
std::string read_file(const std::filesystem::path& path);

/// Writes `content` to `path` atomically (temporary sibling + rename).
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

/// Removes a file or a folder with everything in it (a missing path is not an
/// error); symbolic links are removed, never followed. Throws std::runtime_error
/// naming the entry that could not be removed.
///
/// Use this rather than std::filesystem::remove_all: PyTorch's libtorch.so
/// (2.x wheels) exports its own std::filesystem::remove_all, which shadows
/// libstdc++'s in every program linked with it and crashes on non-empty folders.
void remove_tree(const std::filesystem::path& path);

/// Appends one line (a newline is added) to `path`, creating parent folders.
void append_line(const std::filesystem::path& path, const std::string& line);

}  // namespace cur4llm::io
