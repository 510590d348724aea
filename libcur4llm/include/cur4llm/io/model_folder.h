#pragma once
/// Finding a model folder from what a user typed after --model_id.

#include "cur4llm/io/hub.h"

#include <filesystem>
#include <string>

namespace cur4llm::io {

/// Resolves a model id to a local folder:
///  - an existing directory is used as it is;
///  - otherwise an "org/name" id is looked up in the Hugging Face cache
///    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub):
///    models--org--name/snapshots/<revision named by refs/main>/.
/// Throws std::invalid_argument that lists every place it looked.
/// Nothing is downloaded.
std::filesystem::path resolve_model_id(const std::string& model_id);

/// Resolves a model id as the apps do: an existing directory as it is; else an
/// "org/name" id at hub.revision from the Hugging Face cache (hub.cache_dir)
/// when complete there; else downloaded from the Hub (download_model) unless
/// hub.offline. Throws std::invalid_argument when the model exists nowhere or
/// may not be read (HTTP 401, 403, 404), HubError or std::runtime_error for other
/// failures; the messages say that no folder of that name exists either.
std::filesystem::path resolve_model_id(const std::string& model_id, const HubOptions& hub);

/// The Hugging Face hub cache folder the environment selects.
std::filesystem::path hf_hub_cache_dir();

}  // namespace cur4llm::io
