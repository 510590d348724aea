#pragma once
/// Cache keys for --use_cache: calibration samples, activation statistics and
/// sensitivity tables are stored in --cache_dir under a name derived from
/// everything their content depends on. Each cached file also carries its key
/// fields, and a file whose stored fields differ from the expected ones (a
/// hash collision, a hand-edited or truncated file) is reported and rebuilt,
/// never used.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace cur4llm::io {

/// What a cached artefact depends on.
struct CacheKey {
  std::string kind;                           ///< "calib", "stats", "sensitivity"
  std::map<std::string, std::string> fields;  ///< every input of the computation, as text

  /// 16 hex digits of a 64-bit FNV-1a hash over kind and fields.
  std::string hash() const;
  /// "<kind>-<hash>.<extension>"
  std::string file_name(const std::string& extension) const;
  /// The fields as stored in a file's metadata: "key.<field>" -> value.
  std::map<std::string, std::string> as_metadata() const;
  /// Empty if `metadata` holds exactly these fields; otherwise the first difference, for the warning.
  std::string mismatch(const std::map<std::string, std::string>& metadata) const;
};

/// 64-bit FNV-1a of `data`, continuing from `seed`.
uint64_t fnv1a64(const std::string& data, uint64_t seed = 0xcbf29ce484222325ULL);
std::string hex64(uint64_t value);

/// A fingerprint of a model folder: the content of config.json and the name,
/// size and modification time of each checkpoint file (cheap, and it changes
/// whenever the weights are rewritten).
std::string model_fingerprint(const std::filesystem::path& folder);

}  // namespace cur4llm::io
