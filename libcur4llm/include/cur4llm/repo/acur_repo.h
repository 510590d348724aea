#pragma once
/// Writing acur repositories: Hugging Face model folders that transformers
/// loads with trust_remote_code=True and that CausalLM::load reads back
/// (docs/export.md has the format).
///
///   repo::ExportOptions o;
///   o.method = "cur";
///   auto r = repo::write_acur_repo(*lm, "out/stories260K-hf-acur90", o);
///
/// The folder is written atomically (io/atomic_folder.h): a failed write
/// leaves nothing under its name.

#include <cur4llm/quant/packed_model.h>

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::repo {

/// How write_acur_repo writes.
struct ExportOptions {
  bool overwrite = false;                     ///< replace an existing folder, once the new one is complete
  int64_t max_shard_bytes = 5000000000;       ///< weights above this are split into shards (transformers' "5GB")
  std::optional<c10::ScalarType> dtype;       ///< floating tensors stored in this dtype; default: config.json's (fp32 if none)
  const quant::PackedWeights* packed = nullptr;  ///< tensors stored packed instead (quant::quantize_model_packed)
  std::string method;                         ///< config.json's acur.method ("cur", "svd"; default: the slots' kind)
  std::map<std::string, std::string> provenance;  ///< recorded in acur.provenance (tool, target, ratios), over a source repository's
};

/// What write_acur_repo wrote.
struct ExportResult {
  std::filesystem::path folder;
  std::vector<std::string> files;  ///< file names, sorted
  int64_t weight_bytes = 0;        ///< bytes of tensor data in the safetensors files
  int64_t folder_bytes = 0;        ///< bytes of every file of the folder
  int64_t shards = 0;              ///< safetensors files
  int64_t layers = 0;              ///< Linear layers listed in config.json's acur section
};

/// Writes `lm` as it is now (its slots, its other tensors) to `folder`: config.json
/// (the source folder's, plus the "acur" section, "architectures" and "auto_map"),
/// the source's tokenizer and generation files, model.safetensors (or shards of at
/// most max_shard_bytes with model.safetensors.index.json) and the Python files.
/// Dense slots are stored under their Hugging Face names; other kinds must be
/// registered (model/slot_registry.h). std::invalid_argument for an existing folder
/// without overwrite, the model's own folder (even with overwrite) or a slot kind
/// without registration; std::runtime_error for
/// I/O errors (naming the file).
ExportResult write_acur_repo(const model::CausalLM& lm, const std::filesystem::path& folder,
                             const ExportOptions& options = {});

/// The bytes of tensor data write_acur_repo(lm, folder, options) would write
/// (ExportResult::weight_bytes), computed without converting or writing
/// anything: what a compressed model occupies on disk, for reports.
int64_t export_weight_bytes(const model::CausalLM& lm, const ExportOptions& options = {});

/// "<model_name>-acur<round(100 * ratio)>", the reference's folder name.
std::string repo_folder_name(const std::string& model_name, double ratio);

/// A size as transformers' max_shard_size reads it: "123" (bytes), "500KB",
/// "200MB", "5GB" (powers of 1000), "1KiB", "64MiB", "2GiB" (powers of 1024).
/// std::invalid_argument naming the text otherwise.
int64_t parse_size(const std::string& text);

/// The Python files for a model_type: {`configuration_acur_<family>.py`, `modeling_acur_<family>.py`}
/// with `<family>` "opt" or "llama" (llama, mistral and qwen2 share one file pair, built on
/// their own transformers classes). std::invalid_argument for other model types.
std::vector<std::pair<std::string, std::string>> python_files(const std::string& model_type);

/// The class names config.json's "architectures" and "auto_map" give for a model_type.
std::string config_class_name(const std::string& model_type);
std::string model_class_name(const std::string& model_type);

}  // namespace cur4llm::repo
