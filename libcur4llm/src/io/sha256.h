#pragma once
// Internal: SHA-256 (FIPS 180-4), for checking files downloaded from the Hub
// against the sha256 the Hub publishes for LFS files.

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace cur4llm::detail {

class Sha256 {
 public:
  Sha256();
  /// Adds bytes to the message.
  void update(const void* data, size_t size);
  /// The digest as 64 lower-case hex digits; the object must not be updated afterwards.
  std::string hex_digest();

 private:
  void block(const uint8_t* p);

  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes
};

/// Feeds the first `bytes` bytes of `path` to `hash`; throws std::runtime_error naming the file.
void sha256_update_from_file(Sha256& hash, const std::filesystem::path& path, uint64_t bytes);

}  // namespace cur4llm::detail
