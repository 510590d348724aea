#include <cur4llm/repo/acur_repo.h>

#include <cur4llm/version.h>

#include <cur4llm/io/atomic_folder.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/slot_registry.h>

#include "io/json_parse.h"
#include "repo/templates.h"

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <stdexcept>

namespace cur4llm::repo {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

// How each supported model_type maps to transformers' classes and to our file pair.
struct FamilyNames {
  const char* model_type;  // config.json model_type == transformers' module name
  const char* prefix;      // transformers' class prefix: <prefix>Config, <prefix>ForCausalLM
  const char* family;      // our file pair: configuration_acur_<family>.py
};

constexpr FamilyNames kFamilies[] = {
    {"opt", "OPT", "opt"},
    {"llama", "Llama", "llama"},
    {"mistral", "Mistral", "llama"},
    {"qwen2", "Qwen2", "llama"},
    {"qwen3", "Qwen3", "llama"},
    {"gemma2", "Gemma2", "gemma2"},
};

const FamilyNames& family_of(const std::string& model_type) {
  for (const auto& f : kFamilies) {
    if (model_type == f.model_type) return f;
  }
  throw std::invalid_argument(
      fmt::format("model_type \"{}\" cannot be exported (supported: opt, llama, mistral, qwen2, qwen3, gemma2)", model_type));
}

std::string fill_template(std::string text, const FamilyNames& f) {
  const std::pair<std::string, std::string> values[] = {{"{{PREFIX}}", f.prefix},
                                                        {"{{FAMILY}}", f.family},
                                                        {"{{BASE_MODULE}}", f.model_type},
                                                        {"{{FORMAT_VERSION}}", std::to_string(model::kAcurFormatVersion)}};
  for (const auto& [key, value] : values) {
    for (auto pos = text.find(key); pos != std::string::npos; pos = text.find(key, pos + value.size())) {
      text.replace(pos, key.size(), value);
    }
  }
  return text;
}

// Files of the source folder that belong to the model besides config.json and weights.
constexpr const char* kCopiedFiles[] = {"tokenizer.json",         "tokenizer_config.json", "tokenizer.model",
                                        "special_tokens_map.json", "added_tokens.json",     "vocab.json",
                                        "merges.txt",              "generation_config.json", "chat_template.jinja",
                                        "chat_template.json"};

const char* dtype_name(c10::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    default:
      return "float32";
  }
}

struct NamedTensor {
  std::string name;
  at::Tensor value;  // as stored: CPU, contiguous, final dtype
  int64_t bytes() const { return value.numel() * static_cast<int64_t>(value.element_size()); }
};

at::Tensor storable(const at::Tensor& t, c10::ScalarType dtype) {
  auto cpu = t.detach().to(at::kCPU);
  if (at::isFloatingType(cpu.scalar_type())) cpu = cpu.to(dtype);
  return cpu.contiguous();
}

// Greedy shards in tensor order: a shard is closed when the next tensor would push it past the limit.
std::vector<std::vector<const NamedTensor*>> make_shards(const std::vector<NamedTensor>& tensors, int64_t limit) {
  std::vector<std::vector<const NamedTensor*>> shards(1);
  int64_t size = 0;
  for (const auto& t : tensors) {
    if (!shards.back().empty() && size + t.bytes() > limit) {
      shards.emplace_back();
      size = 0;
    }
    shards.back().push_back(&t);
    size += t.bytes();
  }
  return shards;
}

}  // namespace

std::string config_class_name(const std::string& model_type) {
  return fmt::format("Acur{}Config", family_of(model_type).prefix);
}

std::string model_class_name(const std::string& model_type) {
  return fmt::format("Acur{}ForCausalLM", family_of(model_type).prefix);
}

std::vector<std::pair<std::string, std::string>> python_files(const std::string& model_type) {
  const FamilyNames& f = family_of(model_type);
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& t : detail::templates()) {
    const std::string name = t.name;  // "configuration_acur.py" -> "configuration_acur_<family>.py"
    const std::string stem = name.substr(0, name.size() - 3);
    out.emplace_back(fmt::format("{}_{}.py", stem, f.family), fill_template(t.text, f));
  }
  return out;
}

std::string repo_folder_name(const std::string& model_name, double ratio) {
  return fmt::format("{}-acur{}", model_name, std::lround(100 * ratio));
}

int64_t parse_size(const std::string& text) {
  auto bad = [&] {
    return std::invalid_argument(
        fmt::format("size \"{}\" is not understood (examples: 500MB, 2GB, 1GiB, 1048576)", text));
  };
  size_t end = 0;
  while (end < text.size() && (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.')) ++end;
  if (end == 0) throw bad();
  double number = 0;
  try {
    size_t used = 0;
    number = std::stod(text.substr(0, end), &used);
    if (used != end) throw bad();  // "1.2.3MB"
  } catch (const std::exception&) {
    throw bad();
  }
  std::string unit = text.substr(end);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, double> units[] = {{"", 1},       {"B", 1},         {"KB", 1e3},
                                                         {"MB", 1e6},   {"GB", 1e9},      {"TB", 1e12},
                                                         {"KIB", 1024}, {"MIB", 1 << 20}, {"GIB", 1 << 30}};
  for (const auto& [name, factor] : units) {
    if (unit == name) {
      const double bytes = std::floor(number * factor);
      if (!(bytes >= 1) || bytes > 9e18) throw bad();
      return static_cast<int64_t>(bytes);
    }
  }
  throw bad();
}

ExportResult write_acur_repo(const model::CausalLM& lm, const fs::path& folder, const ExportOptions& options) {
  // Everything is checked and prepared before the folder is created.
  const fs::path source = lm.folder();
  if (source.empty()) {
    throw std::invalid_argument("write_acur_repo: the model was not loaded from a folder (config.json and tokenizer needed)");
  }
  std::error_code not_there;
  if (fs::equivalent(folder, source, not_there)) {  // with overwrite it would replace the model being read
    throw std::invalid_argument(
        fmt::format("write_acur_repo: {} is the model's own folder; write to another one", folder.string()));
  }
  if (options.max_shard_bytes < 1) throw std::invalid_argument("write_acur_repo: max_shard_bytes must be positive");
  const std::string model_type = lm.config().model_type;
  const auto py_files = python_files(model_type);
  const auto config_path = source / "config.json";
  Json config = cur4llm::detail::parse_json(io::read_file(config_path), config_path.string());  // depth-limited
  // A repository as input (quantize): start again from the base model's config.
  Json base = Json::object();
  Json provenance = Json::object();
  if (config.contains("acur")) {
    const auto& previous = config.at("acur");
    if (previous.contains("base") && previous.at("base").is_object()) base = previous.at("base");
    if (previous.contains("provenance") && previous.at("provenance").is_object()) provenance = previous.at("provenance");
    config.erase("acur");
    config.erase("auto_map");
    for (const auto& [key, value] : base.items()) config[key] = value;
  } else {
    for (const char* key : {"architectures", "tie_word_embeddings"}) {
      if (config.contains(key)) base[key] = config.at(key);
    }
  }
  const c10::ScalarType dtype = options.dtype ? *options.dtype : model::stored_dtype(lm.config());
  static const quant::PackedWeights kNone;
  const quant::PackedWeights& packed = options.packed ? *options.packed : kNone;

  std::vector<NamedTensor> tensors;
  for (const auto& [name, t] : lm.other_tensors()) tensors.push_back({name, storable(t, dtype)});
  const bool tied = lm.config().tie_word_embeddings;
  Json layers = Json::object();
  std::set<std::string> kinds, used_packed;
  bool head_compressed = false;
  for (const auto& info : lm.linears()) {
    const auto slot = lm.linear_ptr(info.name);
    const std::string kind = slot->kind();
    Json quantized = Json::array();
    for (const auto& [rel, t] : slot->state()) {
      if (packed.count(info.name + "." + rel)) quantized.push_back(rel);
    }
    if (kind == "dense" && quantized.empty()) {
      if (info.name == "lm_head" && tied) continue;  // transformers ties it to the embedding
      for (const auto& [rel, t] : slot->state()) tensors.push_back({info.name + "." + rel, storable(t, dtype)});
      continue;
    }
    const model::SlotKind* registered = nullptr;
    try {
      registered = &model::find_slot_kind(kind);
    } catch (const std::runtime_error& e) {
      throw std::invalid_argument(fmt::format("layer \"{}\" cannot be stored: {}", info.name, e.what()));
    }
    Json entry = {{"kind", kind}, {"in_features", slot->in_features()}, {"out_features", slot->out_features()}};
    for (const auto& [key, text] : registered->describe(*slot)) entry[key] = Json::parse(text);
    if (!quantized.empty()) entry["quantized"] = quantized;
    layers[info.name] = entry;
    if (kind != "dense") kinds.insert(kind);
    if (info.name == "lm_head") head_compressed = true;
    for (const auto& [rel, t] : slot->state()) {
      const std::string full = info.name + "." + rel;
      auto it = packed.find(full);
      if (it == packed.end()) {
        tensors.push_back({full, storable(t, dtype)});
        continue;
      }
      used_packed.insert(full);
      tensors.push_back({full + ".qweight", it->second.qweight.cpu().contiguous()});
      tensors.push_back({full + ".scales", it->second.scales.cpu().contiguous()});
      tensors.push_back({full + ".zeros", it->second.zeros.cpu().contiguous()});
      if (it->second.input_scales.defined()) {
        tensors.push_back({full + ".input_scales", it->second.input_scales.cpu().contiguous()});
      }
    }
  }
  for (const auto& [name, q] : packed) {
    if (!used_packed.count(name)) {
      throw std::invalid_argument(fmt::format("write_acur_repo: packed tensor \"{}\" is not in the model", name));
    }
  }

  Json acur = Json::object();
  acur["format_version"] = model::kAcurFormatVersion;
  std::string method = options.method;
  if (method.empty()) {
    for (const auto& k : kinds) method += (method.empty() ? "" : "+") + k;
  }
  acur["method"] = method.empty() ? "none" : method;
  if (!packed.empty()) {
    const auto& format = packed.begin()->second.format;
    acur["quantization"] = {{"format", format.name}, {"bits", format.bits}, {"group_size", format.group_size}};
    if (format.activation_aware) acur["quantization"]["activation_aware"] = true;
  }
  acur["base"] = base;
  acur["layers"] = layers;
  for (const auto& [key, value] : options.provenance) provenance[key] = value;  // the earlier tool's keys stay
  // Which cur4llm wrote the folder (the last writer's, over a source repository's).
  provenance["cur4llm_version"] = cur4llm::version();
  provenance["git_commit"] = cur4llm::git_commit();
  acur["provenance"] = provenance;
  config["architectures"] = Json::array({model_class_name(model_type)});
  config["auto_map"] = {{"AutoConfig", fmt::format("configuration_acur_{}.{}", family_of(model_type).family,
                                                   config_class_name(model_type))},
                        {"AutoModelForCausalLM", fmt::format("modeling_acur_{}.{}", family_of(model_type).family,
                                                             model_class_name(model_type))}};
  if (head_compressed) config["tie_word_embeddings"] = false;  // lm_head has factors of its own now
  config["dtype"] = dtype_name(dtype);
  if (config.contains("torch_dtype")) config["torch_dtype"] = dtype_name(dtype);
  config["acur"] = acur;
  // Layers a module method narrowed (model::LayerShapes): their widths, read by the modeling code and by cur4llm.
  config.erase("layer_shapes");
  if (lm.config().has_layer_shapes()) {
    Json shapes = Json::array();
    for (int64_t i = 0; i < lm.config().num_layers; ++i) {
      const model::LayerShapes s = lm.config().layer_shape(i);
      Json entry = Json::object();
      if (s.intermediate_size != lm.config().intermediate_size) entry["intermediate_size"] = s.intermediate_size;
      if (s.qk_head_dim != lm.config().head_dim) entry["qk_head_dim"] = s.qk_head_dim;
      if (s.v_head_dim != lm.config().head_dim) entry["v_head_dim"] = s.v_head_dim;
      if (!s.qk_dims.empty()) entry["qk_dims"] = s.qk_dims;
      shapes.push_back(entry);
    }
    config["layer_shapes"] = shapes;
  }

  // Now the folder.
  io::AtomicFolder out(folder, {options.overwrite});
  ExportResult result;
  result.layers = static_cast<int64_t>(layers.size());
  io::write_file_atomic(out.path() / "config.json", config.dump(2) + "\n");
  for (const char* name : kCopiedFiles) {
    if (fs::is_regular_file(source / name)) io::write_file_atomic(out.path() / name, io::read_file(source / name));
  }
  for (const auto& [name, text] : py_files) io::write_file_atomic(out.path() / name, text);

  const auto shards = make_shards(tensors, options.max_shard_bytes);
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  Json weight_map = Json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = shards.size() == 1 ? std::string("model.safetensors")
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    std::vector<std::pair<std::string, at::Tensor>> items;
    for (const NamedTensor* t : shards[i]) {
      items.emplace_back(t->name, t->value);
      result.weight_bytes += t->bytes();
    }
    io::save_safetensors(out.path() / file, items, metadata);
    for (const NamedTensor* t : shards[i]) weight_map[t->name] = file;
  }
  if (shards.size() > 1) {
    Json index = {{"metadata", {{"total_size", result.weight_bytes}}}, {"weight_map", weight_map}};
    io::write_file_atomic(out.path() / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  result.shards = static_cast<int64_t>(shards.size());
  out.commit();

  result.folder = out.target();
  for (const auto& entry : fs::directory_iterator(result.folder)) result.files.push_back(entry.path().filename().string());
  std::sort(result.files.begin(), result.files.end());
  result.folder_bytes = static_cast<int64_t>(io::folder_bytes(result.folder));
  return result;
}

namespace {
const quant::QuantizedTensor* find_packed(const quant::PackedWeights& packed, const std::string& name) {
  const auto it = packed.find(name);
  return it == packed.end() ? nullptr : &it->second;
}
}  // namespace

int64_t export_weight_bytes(const model::CausalLM& lm, const ExportOptions& options) {
  // The same choices as write_acur_repo's tensor list, counted instead of converted.
  const c10::ScalarType dtype = options.dtype ? *options.dtype : model::stored_dtype(lm.config());
  const auto stored = [dtype](const at::Tensor& t) {
    const auto type = at::isFloatingType(t.scalar_type()) ? dtype : t.scalar_type();
    return t.numel() * static_cast<int64_t>(c10::elementSize(type));
  };
  int64_t bytes = 0;
  for (const auto& [name, t] : lm.other_tensors()) bytes += stored(t);
  const bool tied = lm.config().tie_word_embeddings;
  for (const auto& info : lm.linears()) {
    const auto slot = lm.linear_ptr(info.name);
    bool any_packed = false;
    for (const auto& [rel, t] : slot->state()) {
      const auto* q = options.packed ? find_packed(*options.packed, info.name + "." + rel) : nullptr;
      if (q) {
        bytes += q->nbytes();
        any_packed = true;
      } else {
        bytes += stored(t);
      }
    }
    if (info.name == "lm_head" && tied && slot->kind() == "dense" && !any_packed) {  // tied to the embedding
      for (const auto& [rel, t] : slot->state()) bytes -= stored(t);
    }
  }
  return bytes;
}

}  // namespace cur4llm::repo
