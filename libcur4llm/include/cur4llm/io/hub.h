#pragma once
/// Downloading models from the Hugging Face Hub into the Hugging Face cache.
///
/// The cache layout is huggingface_hub's, so Python and cur4llm share one cache:
/// @code
///   <cache>/models--<org>--<name>/blobs/<etag>            the files' contents
///   <cache>/models--<org>--<name>/snapshots/<commit>/<f>  relative links to the blobs
///   <cache>/models--<org>--<name>/refs/<revision>         the commit a revision named
/// @endcode

#include <filesystem>
#include <stdexcept>
#include <string>

namespace cur4llm::io {

/// Where and how models are downloaded.
struct HubOptions {
  std::string revision = "main";          ///< branch, tag or commit hash
  std::string endpoint;                   ///< Hub address; "" = https://huggingface.co
  std::string token;                      ///< access token ("" = anonymous); never printed
  std::filesystem::path cache_dir;        ///< "" = hf_hub_cache_dir()
  bool offline = false;                   ///< no network: use the cache or fail
  bool show_progress = true;              ///< progress on stderr (one line per file when not a terminal)

  /// Options from the environment: HF_ENDPOINT, HF_TOKEN (else the token file
  /// HF_TOKEN_PATH, else HF_HOME/token), HF_HUB_OFFLINE; revision "main".
  static HubOptions from_environment();
};

/// A failed Hub request: the message names the file and the HTTP status.
class HubError : public std::runtime_error {
 public:
  /// `status` is the HTTP status (0 for a connection failure or a local error).
  HubError(const std::string& what, long status) : std::runtime_error(what), status_(status) {}
  /// The HTTP status, 0 when there was none.
  long status() const { return status_; }

 private:
  long status_;
};

/// Whether this build can download (it was built with libcurl).
bool hub_download_supported();

/// The Hub address `options` select: options.endpoint, else https://huggingface.co,
/// without a trailing '/'.
std::string hub_endpoint(const HubOptions& options);

/// The snapshot folder of `repo_id` at options.revision when the cache holds a
/// complete model (config.json and every safetensors weight file); "" otherwise.
std::filesystem::path cached_model(const std::string& repo_id, const HubOptions& options);

/// Returns the snapshot folder of `repo_id` ("org/name" or "name") at
/// options.revision, downloading what the cache lacks: config.json,
/// generation_config.json, the safetensors weights (one file, or the index and
/// its shards) and the tokenizer files the repository has. Never downloads
/// PyTorch .bin weights. Partial files are resumed; LFS files are checked
/// against their sha256. Throws HubError (a std::runtime_error) naming the file
/// and the HTTP status, std::invalid_argument for a malformed id or revision,
/// and std::runtime_error when the build has no Hub support or when offline and
/// the cache lacks the model.
std::filesystem::path download_model(const std::string& repo_id, const HubOptions& options);

}  // namespace cur4llm::io
