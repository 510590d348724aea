#pragma once
/// Reading and writing safetensors files and (sharded) checkpoints.
///
/// A file is memory-mapped; its JSON header is validated in full when it is
/// opened (header length within the file, known dtypes, shapes that match
/// their byte ranges, ranges inside the data section and not overlapping), so
/// that a later load() cannot read out of bounds. Errors name the file and
/// the tensor.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::io {

/// One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string dtype;            ///< as written in the file: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;   ///< dimensions, outermost first
  uint64_t begin = 0;           ///< byte offset into the data section
  uint64_t end = 0;             ///< one past the last byte
};

/// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  /// Opens and validates `path`; throws std::runtime_error naming the file.
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const;
  /// Tensor names in file order.
  const std::vector<std::string>& names() const;
  bool contains(const std::string& name) const;
  /// Throws std::runtime_error naming the file if `name` is absent.
  const TensorInfo& info(const std::string& name) const;
  /// The "__metadata__" string map (empty if absent).
  const std::map<std::string, std::string>& metadata() const;
  /// A CPU tensor holding a copy of the stored data, in the stored dtype.
  at::Tensor load(const std::string& name) const;
  /// Checks the data-section checksum that save_safetensors_checked() writes
  /// (metadata kDataChecksumKey); throws std::runtime_error naming the file if
  /// it is absent or does not match the bytes.
  void verify_data_checksum() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Weights spread over one model.safetensors or several shards listed in
/// model.safetensors.index.json ("weight_map").
class Checkpoint {
 public:
  /// Opens the checkpoint of a model folder: model.safetensors.index.json if
  /// present, else model.safetensors, else the only *.safetensors file.
  /// Throws std::invalid_argument if `folder` is not a directory, and
  /// std::runtime_error (naming the folder, index, shard or tensor) otherwise.
  static Checkpoint open(const std::filesystem::path& folder);
  /// A single file.
  static Checkpoint open_file(const std::filesystem::path& file);

  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;
  const TensorInfo& info(const std::string& name) const;
  /// The file that holds `name` (for error messages).
  const std::filesystem::path& file_of(const std::string& name) const;
  at::Tensor load(const std::string& name) const;
  /// A short description, e.g. "tests/data/x/model.safetensors" or "<folder> (3 shards)".
  std::string describe() const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
  std::string description_;
};

/// Writes tensors (contiguous CPU copies are made as needed) to `path`
/// atomically: a temporary sibling file is written, flushed and renamed, so
/// an existing file is never left half-written. Throws std::runtime_error for
/// I/O errors and std::invalid_argument (naming the tensor) for duplicate or
/// reserved names, undefined or non-strided tensors and unsupported dtypes.
/// The layout is the Python library's: header keys sorted ("__metadata__"
/// first), padded with spaces to 8 bytes; data ordered by dtype then name.
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The metadata key under which save_safetensors_checked() stores the data checksum.
constexpr const char* kDataChecksumKey = "checksum.data";

/// save_safetensors() with a checksum of the data section in the metadata
/// (key kDataChecksumKey), for caches that must notice a damaged file.
void save_safetensors_checked(const std::filesystem::path& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

/// The checksum written by save_safetensors_checked(): "fnv1a64x4:" and 16 hex
/// digits, a 64-bit FNV-1a over 8-byte little-endian words in 4 interleaved lanes.
std::string data_checksum(const uint8_t* data, uint64_t size);

/// The safetensors dtype string for a scalar type ("F32", ...); throws for unsupported types.
std::string safetensors_dtype(c10::ScalarType type);

}  // namespace cur4llm::io
