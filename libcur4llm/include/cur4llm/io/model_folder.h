#pragma once
/// Finding a model folder from what a user typed after --model_id.

#include <filesystem>
#include <string>

namespace cur4llm::io {

/// Resolves a model id to a local folder:
///  - an existing directory is used as it is;
///  - otherwise an "org/name" id is looked up in the Hugging Face cache
///    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub):
///    models--org--name/snapshots/<revision named by refs/main>/.
/// Throws std::invalid_argument that lists every place it looked.
std::filesystem::path resolve_model_id(const std::string& model_id);

/// The Hugging Face hub cache folder the environment selects.
std::filesystem::path hf_hub_cache_dir();

}  // namespace cur4llm::io
