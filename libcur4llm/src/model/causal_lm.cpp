#include <cur4llm/model/causal_lm.h>

#include <cur4llm/io/files.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/slot_registry.h>
#include <cur4llm/util/device.h>
#include <cur4llm/util/memory.h>

#include <cur4llm/model/kv_cache.h>

#include "architecture.h"
#include "fused/fused_ops.h"
#include "io/json_parse.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iterator>
#include <optional>
#include <cmath>
#include <stdexcept>

namespace cur4llm::model {
namespace {

std::string shape_str(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }
std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

c10::ScalarType default_dtype(const ModelConfig& config, c10::Device device) {
  if (device.is_cpu()) return at::kFloat;
  if (config.torch_dtype == "float16") return at::kHalf;
  if (config.torch_dtype == "bfloat16") return at::kBFloat16;
  return at::kFloat;
}

// Checkpoints saved from the bare decoder (some OPT files) lack the "model." prefix.
std::optional<std::string> find_in_checkpoint(const io::Checkpoint& ckpt, const std::string& name) {
  if (ckpt.contains(name)) return name;
  const std::string prefix = "model.";
  if (name.rfind(prefix, 0) == 0 && ckpt.contains(name.substr(prefix.size()))) return name.substr(prefix.size());
  return std::nullopt;
}

std::string module_of(const std::string& tensor_name) { return tensor_name.substr(0, tensor_name.rfind('.')); }

// The decoder layer a tensor name belongs to ("...layers.<i>.…"), if any.
std::optional<int64_t> layer_index_of(const std::string& name) {
  for (size_t at = name.find("layers."); at != std::string::npos; at = name.find("layers.", at + 1)) {
    if (at != 0 && name[at - 1] != '.') continue;
    size_t i = at + 7, digits = 0;
    int64_t value = 0;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9' && digits < 12) {
      value = value * 10 + (name[i] - '0');
      ++i, ++digits;
    }
    if (digits > 0 && i < name.size() && name[i] == '.') return value;
  }
  return std::nullopt;
}

// config.json's layer count against the checkpoint, before anything is sized
// by it: a num_hidden_layers of 10^9 would otherwise loop and allocate.
void check_layer_count(const ModelConfig& config, const io::Checkpoint& ckpt, const std::string& config_path) {
  std::set<int64_t> layers;
  for (const auto& name : ckpt.names()) {
    if (auto i = layer_index_of(name)) layers.insert(*i);
  }
  const auto present = static_cast<int64_t>(layers.size());
  if (config.num_layers != present) {
    throw std::runtime_error(fmt::format("{}: \"num_hidden_layers\" is {} but the checkpoint {} holds {} decoder layers",
                                         config_path, config.num_layers, ckpt.describe(), present));
  }
}

// Every tensor a weight file holds must be one the model reads: a tensor left
// over means config.json describes another model (fewer layers, no biases…).
void check_all_used(const io::Checkpoint& ckpt, const std::set<std::string>& used, const std::string& config_path) {
  std::vector<std::string> unused;
  for (const auto& name : ckpt.names()) {
    if (used.count(name)) continue;
    // Buffers some exporters save, which transformers recomputes and ignores.
    if (name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0) continue;
    unused.push_back(name);
  }
  if (unused.empty()) return;
  const size_t shown = std::min<size_t>(unused.size(), 3);
  std::string list;
  for (size_t i = 0; i < shown; ++i) list += (i ? ", \"" : "\"") + unused[i] + "\"";
  if (unused.size() > shown) list += fmt::format(" and {} more", unused.size() - shown);
  throw std::runtime_error(fmt::format("{}: {} tensor(s) of the checkpoint are not used by the model {} describes: {}",
                                       ckpt.describe(), unused.size(), config_path, list));
}

// Non-finite weights make every output NaN; refuse them at load, naming the tensor.
void check_finite(const at::Tensor& t, const std::string& file, const std::string& name) {
  if (!at::isFloatingType(t.scalar_type()) || t.numel() == 0) return;
  if (!at::isfinite(t).all().item<bool>()) {
    const int64_t bad = (t.numel() - at::isfinite(t).sum().item<int64_t>());
    throw std::runtime_error(fmt::format("{}: tensor \"{}\" holds {} non-finite value(s) (NaN or infinity); "
                                         "LoadOptions::allow_nonfinite (acur --allow_nonfinite) loads it anyway",
                                         file, name, bad));
  }
}

// Some builds lack kernels for a dtype on a device (LibTorch 1.13 has no fp16
// matrix multiply on the CPU); say so at load time, not deep inside a forward.
void check_dtype_supported(c10::Device device, c10::ScalarType dtype) {
  if (device.is_cuda() && !at::hasCUDA()) {
    throw std::invalid_argument(fmt::format("device {} asked for, but no CUDA device is available{}", device.str(),
                                            " (this LibTorch has no CUDA support, or no GPU is visible)"));
  }
  if (device.is_cuda() && device.has_index() && static_cast<size_t>(device.index()) >= at::getNumGPUs()) {
    throw std::invalid_argument(fmt::format("device {} asked for, but only {} CUDA device(s) are visible", device.str(),
                                            at::getNumGPUs()));
  }
  try {
    auto a = at::ones({2, 2}, at::TensorOptions().device(device).dtype(dtype));
    (void)at::linear(a, a, a.select(0, 0));
  } catch (const c10::Error&) {
    throw std::invalid_argument(fmt::format("dtype {} is not supported on {} by this LibTorch build",
                                            c10::toString(dtype), device.str()));
  }
}

// The stored tensors of one slot of an acur repository.
class CheckpointSlotTensors final : public SlotTensors {
 public:
  CheckpointSlotTensors(const io::Checkpoint& ckpt, std::string module, c10::Device device, c10::ScalarType dtype,
                        std::set<std::string>& used, const LoadOptions& options)
      : ckpt_(ckpt), module_(std::move(module)), device_(device), dtype_(dtype), used_(used),
        allow_nonfinite_(options.allow_nonfinite), keep_packed_(options.keep_packed) {}

  bool contains(const std::string& name) const override { return find_in_checkpoint(ckpt_, full(name)).has_value(); }

  at::Tensor stored(const std::string& name, const std::vector<int64_t>& shape) const override {
    auto key = find_in_checkpoint(ckpt_, full(name));
    if (!key) throw std::runtime_error(fmt::format("{}: tensor \"{}\" is missing", ckpt_.describe(), full(name)));
    const io::TensorInfo& info = ckpt_.info(*key);
    if (info.shape != shape) {
      throw std::runtime_error(fmt::format("{}: tensor \"{}\" has shape {} but config.json implies {}",
                                           ckpt_.file_of(*key).string(), full(name), shape_str(info.shape),
                                           shape_str(shape)));
    }
    used_.insert(*key);
    at::Tensor t = ckpt_.load(*key);
    if (!allow_nonfinite_) check_finite(t, ckpt_.file_of(*key).string(), *key);
    return t;
  }

  std::string describe(const std::string& name) const override {
    auto key = find_in_checkpoint(ckpt_, full(name));
    return fmt::format("{}: tensor \"{}\"", key ? ckpt_.file_of(*key).string() : ckpt_.describe(), full(name));
  }
  c10::Device device() const override { return device_; }
  c10::ScalarType dtype() const override { return dtype_; }
  bool keep_packed() const override { return keep_packed_; }

 private:
  std::string full(const std::string& name) const { return module_ + "." + name; }
  const io::Checkpoint& ckpt_;
  std::string module_;
  c10::Device device_;
  c10::ScalarType dtype_;
  std::set<std::string>& used_;
  bool allow_nonfinite_;
  bool keep_packed_;
};

struct AcurSection {
  StoredForm form;
  std::vector<SlotSpec> layers;
};

// config.json's "acur" section (docs/export.md); empty for an ordinary folder.
AcurSection parse_acur_section(const std::string& text, const std::string& source) {
  AcurSection out;
  const auto root = cur4llm::detail::parse_json(text, source);
  if (!root.is_object() || !root.contains("acur")) return out;
  const auto& acur = root.at("acur");
  auto bad = [&](const std::string& what) { return std::runtime_error(fmt::format("{}: \"acur\" {}", source, what)); };
  if (!acur.is_object()) throw bad("must be an object");
  if (!acur.contains("format_version") || !acur.at("format_version").is_number_integer()) {
    throw bad("has no integer \"format_version\"");
  }
  const int version = acur.at("format_version").get<int>();
  if (version > kAcurFormatVersion) {
    throw std::runtime_error(fmt::format(
        "{}: acur format_version {} is newer than this build of cur4llm reads (up to {}); update cur4llm", source,
        version, kAcurFormatVersion));
  }
  if (version < 1) throw bad(fmt::format("format_version {} is not valid", version));
  out.form.acur_format_version = version;
  if (acur.contains("method") && acur.at("method").is_string()) out.form.method = acur.at("method").get<std::string>();
  if (acur.contains("base") && acur.at("base").is_object() && acur.at("base").contains("tie_word_embeddings") &&
      acur.at("base").at("tie_word_embeddings").is_boolean()) {
    out.form.base_tie_word_embeddings = acur.at("base").at("tie_word_embeddings").get<bool>();
  }
  if (acur.contains("quantization") && !acur.at("quantization").is_null()) {
    const auto& q = acur.at("quantization");
    if (!q.is_object() || !q.contains("format") || !q.at("format").is_string()) {
      throw bad("\"quantization\" must be an object with a string \"format\"");
    }
    out.form.quantization = q.at("format").get<std::string>();
  }
  if (!acur.contains("layers")) return out;
  if (!acur.at("layers").is_object()) throw bad("\"layers\" must be an object");
  for (const auto& item : acur.at("layers").items()) {
    const std::string& name = item.key();  // not a structured binding: lambdas capture it (C++17, clang)
    const auto& entry = item.value();
    auto layer_error = [&](const std::string& what) {
      return std::runtime_error(fmt::format("{}: acur layer \"{}\" {}", source, name, what));
    };
    if (!entry.is_object()) throw layer_error("must be an object");
    SlotSpec spec;
    spec.name = name;
    spec.source = source;
    spec.quant_format = out.form.quantization;
    for (const char* key : {"in_features", "out_features"}) {
      if (!entry.contains(key) || !entry.at(key).is_number_integer() || entry.at(key).get<int64_t>() <= 0) {
        throw layer_error(fmt::format("needs a positive integer \"{}\"", key));
      }
    }
    if (!entry.contains("kind") || !entry.at("kind").is_string()) throw layer_error("needs a string \"kind\"");
    spec.kind = entry.at("kind").get<std::string>();
    spec.in_features = entry.at("in_features").get<int64_t>();
    spec.out_features = entry.at("out_features").get<int64_t>();
    if (entry.contains("quantized")) {
      const auto& q = entry.at("quantized");
      if (!q.is_array()) throw layer_error("\"quantized\" must be a list of tensor names");
      for (const auto& t : q) {
        if (!t.is_string()) throw layer_error("\"quantized\" must be a list of tensor names");
        spec.packed.insert(t.get<std::string>());
      }
      if (!spec.packed.empty() && spec.quant_format.empty()) {
        throw layer_error("has packed tensors but the repository names no \"quantization\" format");
      }
    }
    for (const auto& [key, value] : entry.items()) {
      if (key != "kind" && key != "in_features" && key != "out_features" && key != "quantized") {
        spec.fields[key] = value.dump();
      }
    }
    out.layers.push_back(std::move(spec));
  }
  return out;
}

// The decoder-layer index in a tensor or module name ("model.layers.3.mlp..." -> 3), or -1.
int64_t layer_of_name(const std::string& name) {
  const auto at = name.find("layers.");
  if (at == std::string::npos) return -1;
  size_t i = at + 7, j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  return j > i ? std::stoll(name.substr(i, j - i)) : -1;
}

}  // namespace

CausalLM::~CausalLM() = default;

template <typename Fetch>
void CausalLM::populate(Fetch&& fetch, const std::set<std::string>& provided) {
  std::map<std::string, at::Tensor> weights, biases;  // by module name
  std::vector<ExpectedTensor> slots_in_order;
  for (const ExpectedTensor& e : arch_->expected_tensors()) {
    if ((e.linear_weight || e.linear_bias) && provided.count(module_of(e.name))) {
      if (e.linear_weight) slots_in_order.push_back(e);
      continue;
    }
    const c10::Device home = home_of(e.name);
    at::Tensor value = e.tied_to.empty() ? fetch(e).to(home, dtype_) : others_.at(e.tied_to).to(home);
    if (e.linear_weight) {
      weights[module_of(e.name)] = value;
      slots_in_order.push_back(e);
    } else if (e.linear_bias) {
      biases[module_of(e.name)] = value;
    } else {
      others_[e.name] = value;
    }
  }
  for (const ExpectedTensor& e : slots_in_order) {
    const std::string module = module_of(e.name);
    if (!provided.count(module)) {
      auto bias = biases.count(module) ? biases.at(module) : at::Tensor();
      slots_[module] = std::make_shared<DenseLinear>(weights.at(module), bias);
    }
    linear_infos_.push_back({module, e.layer, e.role, e.shape[1], e.shape[0]});
  }
  if (config_.has_layer_shapes()) {
    // linears() describes the base model: its shapes come from the model-wide widths.
    ModelConfig base = config_;
    base.layer_shapes.clear();
    std::map<std::string, std::vector<int64_t>> base_shapes;
    for (const ExpectedTensor& e : make_architecture(base)->expected_tensors()) {
      if (e.linear_weight) base_shapes[module_of(e.name)] = e.shape;
    }
    for (LinearInfo& info : linear_infos_) {
      const auto& shape = base_shapes.at(info.name);
      info.in_features = shape[1];
      info.out_features = shape[0];
    }
  }
}

std::unique_ptr<CausalLM> CausalLM::load(const std::filesystem::path& folder, const LoadOptions& options) {
  const auto config_path = folder / "config.json";
  if (!std::filesystem::is_regular_file(config_path)) {
    throw std::runtime_error(fmt::format("{}: no config.json, so this is not a Hugging Face model folder",
                                         folder.string()));
  }
  std::unique_ptr<CausalLM> lm(new CausalLM());
  const std::string config_text = io::read_file(config_path);
  lm->config_ = ModelConfig::from_json(config_text, config_path.string());
  const AcurSection acur = parse_acur_section(config_text, config_path.string());
  lm->stored_form_ = acur.form;
  lm->folder_ = folder;
  lm->options_ = options;
  lm->dtype_ = options.dtype ? *options.dtype : default_dtype(lm->config_, options.device);
  check_dtype_supported(options.device, lm->dtype_);
  const io::Checkpoint ckpt = io::Checkpoint::open(folder);
  check_layer_count(lm->config_, ckpt, config_path.string());
  lm->arch_ = make_architecture(lm->config_);
  lm->place();

  std::set<std::string> used;  // checkpoint names the model reads
  for (const ExpectedTensor& e : lm->arch_->expected_tensors()) {
    if (e.tied_to.empty()) continue;
    if (auto stored = find_in_checkpoint(ckpt, e.name)) used.insert(*stored);  // a saved copy of a tied tensor
  }
  std::set<std::string> provided;
  for (const auto& spec : acur.layers) provided.insert(spec.name);
  lm->populate(
      [&](const ExpectedTensor& e) {
        auto stored = find_in_checkpoint(ckpt, e.name);
        if (!stored) throw std::runtime_error(fmt::format("{}: tensor \"{}\" is missing", ckpt.describe(), e.name));
        const io::TensorInfo& info = ckpt.info(*stored);
        if (info.shape != e.shape) {
          throw std::runtime_error(fmt::format("{}: tensor \"{}\" has shape {} but config.json implies {}",
                                               ckpt.file_of(*stored).string(), e.name, shape_str(info.shape),
                                               shape_str(e.shape)));
        }
        at::Tensor raw = ckpt.load(*stored);
        if (!at::isFloatingType(raw.scalar_type())) {
          throw std::runtime_error(fmt::format("{}: tensor \"{}\" is stored as {}, not as floating point",
                                               ckpt.file_of(*stored).string(), e.name, info.dtype));
        }
        if (!options.allow_nonfinite) check_finite(raw, ckpt.file_of(*stored).string(), *stored);
        used.insert(*stored);
        return raw;
      },
      provided);

  // The slots config.json describes, each rebuilt by its kind, in the shape of its layer's widths.
  std::map<std::string, std::pair<int64_t, int64_t>> shapes;  // module -> (in, out)
  for (const ExpectedTensor& e : lm->arch_->expected_tensors()) {
    if (e.linear_weight) shapes[module_of(e.name)] = {e.shape[1], e.shape[0]};
  }
  for (const SlotSpec& spec : acur.layers) {
    const auto info = std::find_if(lm->linear_infos_.begin(), lm->linear_infos_.end(),
                                   [&](const LinearInfo& l) { return l.name == spec.name; });
    if (info == lm->linear_infos_.end()) {
      throw std::runtime_error(fmt::format("{}: acur layer \"{}\" is not a Linear layer of this {} model",
                                           config_path.string(), spec.name, lm->config_.model_type));
    }
    const auto [in_f, out_f] = shapes.at(spec.name);
    if (spec.in_features != in_f || spec.out_features != out_f) {
      throw std::runtime_error(fmt::format("{}: acur layer \"{}\" is {}x{}, but the model's is {}x{}",
                                           config_path.string(), spec.name, spec.out_features, spec.in_features,
                                           out_f, in_f));
    }
    const CheckpointSlotTensors tensors(ckpt, spec.name, lm->home_of(spec.name + ".weight"), lm->dtype_, used, options);
    LinearPtr slot = find_slot_kind(spec.kind).load(spec, tensors);
    if (!slot || slot->in_features() != in_f || slot->out_features() != out_f) {
      throw std::runtime_error(fmt::format("{}: layer \"{}\" was rebuilt with the wrong shape", config_path.string(),
                                           spec.name));
    }
    lm->slots_[spec.name] = std::move(slot);
  }
  check_all_used(ckpt, used, config_path.string());
  return lm;
}

std::unique_ptr<CausalLM> CausalLM::random(const ModelConfig& config, const LoadOptions& options, uint64_t seed) {
  std::unique_ptr<CausalLM> lm(new CausalLM());
  lm->config_ = config;
  lm->options_ = options;
  lm->dtype_ = options.dtype ? *options.dtype : default_dtype(config, options.device);
  check_dtype_supported(options.device, lm->dtype_);
  lm->arch_ = make_architecture(config);
  lm->place();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  lm->populate([&](const ExpectedTensor& e) {
    const bool norm_weight = e.shape.size() == 1 && !e.linear_bias && e.name.find("norm") != std::string::npos &&
                             e.name.compare(e.name.size() - 7, 7, ".weight") == 0;
    // Made directly on the target device and dtype: a 7B-shaped model needs no host copy.
    const c10::Device home = lm->home_of(e.name);
    const auto opts = at::TensorOptions().device(home).dtype(lm->dtype_);
    if (norm_weight) return at::ones(e.shape, opts);
    if (e.shape.size() == 1) return at::zeros(e.shape, opts);
    const double std = 1.0 / std::sqrt(static_cast<double>(e.shape.back()));
    // An offloaded layer's weights are drawn on the device that runs the layer and
    // copied out: the host's generator would take minutes for a 13B shape.
    const int64_t layer = layer_of_name(e.name);
    const bool offloaded = layer >= 0 && layer < config.num_layers && lm->layer_offloaded(layer);
    const c10::Device draw = offloaded ? lm->layer_device(layer) : home;
    auto t = at::empty(e.shape, opts.device(draw));
    if (t.is_cpu()) return t.normal_(0.0, std, gen);
    return t.normal_(0.0, std).to(home);  // the device's default generator
  });
  return lm;
}

at::Tensor CausalLM::embed(const at::Tensor& input_ids) const {
  if (input_ids.dim() != 2) {
    throw std::invalid_argument(fmt::format("input ids must be [batch, tokens], not {}", shape_str(input_ids.sizes())));
  }
  // Ids still on the host are range-checked here (an out-of-range id would be a
  // device-side assert on CUDA); ids already on the device are trusted, so the
  // hot path never synchronises.
  if (input_ids.device().is_cpu() && input_ids.numel() > 0) {
    const auto ids = input_ids.to(at::kLong);
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      throw std::invalid_argument(
          fmt::format("token id {} is outside the vocabulary [0, {})", lo < 0 ? lo : hi, config_.vocab_size));
    }
  }
  auto ids = input_ids.to(options_.device, at::kLong);
  return arch_->embed(*this, ids);
}

at::Tensor CausalLM::layer(int64_t index, const at::Tensor& hidden) const {
  if (index < 0 || index >= config_.num_layers) {
    throw std::out_of_range(fmt::format("layer {} out of range [0, {})", index, config_.num_layers));
  }
  return run_layer(index, hidden);
}

namespace {

// Tensors after the decoder layers: final norm, lm_head, OPT's project_out.
bool is_head_side(const std::string& name) {
  return name.rfind("lm_head", 0) == 0 || name.find("project_out") != std::string::npos ||
         name.find("final_layer_norm") != std::string::npos || name == "model.norm.weight" || name == "model.norm.bias";
}

// A host tensor that is copied to a CUDA device again and again is pinned once:
// its copies then run at the bus's speed and without blocking the host. The
// pinned copy replaces the pageable one for good (OnDevice puts it back into
// the model). Where pinning fails (too little lockable memory), the pageable
// tensor stays and its copies are only slower.
at::Tensor pinned_for(const at::Tensor& host, c10::Device device) {
  if (!device.is_cuda() || !host.is_cpu() || host.is_pinned()) return host;
  try {
    return host.pin_memory();
  } catch (const c10::Error&) {
    return host;
  }
}

// An offloaded layer's tensors on its device for the guard's lifetime: every
// slot tensor (LinearSlot::state()) and norm of the layer points at a device
// copy, and back at the host copy afterwards. The copies are queued on the
// current stream without waiting for them. The bytes staged are counted
// (util::MemoryPeaks::offload_bytes).
class OnDevice {
 public:
  OnDevice(std::vector<at::Tensor> tensors, c10::Device device) : tensors_(std::move(tensors)) {
    int64_t bytes = 0;
    for (auto& t : tensors_) {
      host_.push_back(pinned_for(t.detach(), device));
      bytes += static_cast<int64_t>(t.nbytes());
      t.set_data(host_.back().to(device, /*non_blocking=*/true));
    }
    cur4llm::detail::add_offload_bytes(bytes);
  }
  ~OnDevice() {
    for (size_t i = 0; i < tensors_.size(); ++i) tensors_[i].set_data(host_[i]);
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;
  /// The layer's tensors, on the device while the guard lives.
  const std::vector<at::Tensor>& tensors() const { return tensors_; }

 private:
  std::vector<at::Tensor> tensors_;
  std::vector<at::Tensor> host_;
};

}  // namespace

c10::Device CausalLM::layer_device(int64_t index) const {
  return placement_ ? placement_->layers.at(static_cast<size_t>(index)) : options_.device;
}

bool CausalLM::layer_offloaded(int64_t index) const {
  return placement_ && placement_->offloaded.at(static_cast<size_t>(index));
}

bool CausalLM::offloads_layers(int64_t first) const {
  for (int64_t i = std::max<int64_t>(first, 0); i < config_.num_layers; ++i) {
    if (layer_offloaded(i)) return true;
  }
  return false;
}

c10::Device CausalLM::head_device() const { return placement_ ? placement_->head : options_.device; }

c10::Device CausalLM::home_of(const std::string& name) const {
  if (!placement_) return options_.device;
  const int64_t layer = layer_of_name(name);
  if (layer >= 0 && layer < static_cast<int64_t>(placement_->layers.size())) {
    return placement_->offloaded[static_cast<size_t>(layer)] ? c10::Device(c10::kCPU) : placement_->layers[layer];
  }
  return is_head_side(name) ? placement_->head : placement_->embed;
}

void CausalLM::place() {
  if (options_.device_map.empty()) {
    if (!options_.max_memory.empty()) throw std::invalid_argument("--max_memory applies with --device_map");
    return;
  }
  const DeviceMap map = DeviceMap::parse(options_.device_map);
  PlacementInputs in;
  in.num_layers = config_.num_layers;
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype_));
  for (const ExpectedTensor& e : arch_->expected_tensors()) {
    int64_t numel = 1;
    for (auto d : e.shape) numel *= d;
    const int64_t layer = layer_of_name(e.name);
    if (layer == 0) in.layer_bytes += numel * element;
    else if (layer < 0 && is_head_side(e.name)) in.head_bytes += numel * element;
    else if (layer < 0) in.embed_bytes += numel * element;
  }
  in.budget = options_.max_memory.empty() ? std::map<std::string, int64_t>() : parse_max_memory(options_.max_memory);
  if (map.automatic) {
    if (options_.device.is_cuda()) {
      for (int64_t d = 0; d < static_cast<int64_t>(at::getNumGPUs()); ++d) in.devices.emplace_back(c10::kCUDA, static_cast<c10::DeviceIndex>(d));
    } else {
      in.devices.emplace_back(c10::kCPU);
    }
  }
  for (const auto& r : map.ranges) check_dtype_supported(r.device, dtype_);
  placement_ = plan_placement(map, in);
  options_.device = placement_->embed;  // token ids go to the embedding
  if (options_.keep_packed &&
      std::find(placement_->offloaded.begin(), placement_->offloaded.end(), true) != placement_->offloaded.end()) {
    // An offloaded layer is copied in through LinearSlot::state(), which a packed slot gives dequantized.
    throw std::invalid_argument("--keep_packed cannot be combined with layers offloaded to host memory (--max_memory)");
  }
}

at::Tensor CausalLM::run_layer(int64_t index, const at::Tensor& hidden) const {
  if (!placement_) return arch_->layer(*this, index, hidden);
  std::vector<at::Tensor> h{hidden};
  layers(index, index + 1, h);
  return h.front();
}

void CausalLM::layers(int64_t first, int64_t end, std::vector<at::Tensor>& hidden, bool park_on_host) const {
  if (first < 0 || end > config_.num_layers || first > end) {
    throw std::out_of_range(fmt::format("layers [{}, {}) out of range [0, {})", first, end, config_.num_layers));
  }
  // Parked states go to pinned host memory without waiting for the copy: the copy back to the
  // same device is queued after it. Anything else that reads them (the host, another device's
  // stream, the caller) first waits for that device (`settle`).
  std::optional<c10::Device> parking;  // the device whose queued copies may still be writing them
  auto settle = [&] {
    if (parking) util::synchronize(*parking);
    parking.reset();
  };
  auto park = [&](const at::Tensor& h) {
    if (!h.is_cuda()) return h.to(at::kCPU);
    parking = h.device();
    return h.to(at::kCPU, /*non_blocking=*/true);
  };
  auto on = [&](const at::Tensor& h, c10::Device device) {
    if (parking && device != *parking) settle();
    return h.device() == device ? h : h.to(device, /*non_blocking=*/h.is_pinned());
  };
  // While an offloaded layer runs, the next offloaded layer of [first, end) on the same
  // device is copied in on a side stream (its source is host memory, so the copy waits
  // for nothing queued before it). At most two offloaded layers are on a device at once.
  auto next_offloaded = [&](int64_t after) {
    for (int64_t j = after + 1; j < end; ++j) {
      if (layer_offloaded(j)) return j;
    }
    return end;
  };
  std::unique_ptr<OnDevice> prefetched;  // declared before the side stream, which waits for its copy
  int64_t prefetched_index = -1;
  std::unique_ptr<fused::SideStream> side;
  for (int64_t i = first; i < end;) {
    if (layer_offloaded(i)) {
      const c10::Device device = layer_device(i);
      std::unique_ptr<OnDevice> staged;  // copied in once for every batch
      if (prefetched_index == i) {
        side->wait();  // the copy is queued (the side thread has made `prefetched`)
        side->join(prefetched->tensors());  // this stream waits for the copy; its memory is used here
        staged = std::move(prefetched);
        prefetched_index = -1;
      } else {
        staged = std::make_unique<OnDevice>(layer_tensors(i), device);
      }
      const int64_t next = next_offloaded(i);
      if (next < end && layer_device(next) == device) {
        if (!side) side = std::make_unique<fused::SideStream>(device);
        side->run([this, &prefetched, next, device] {
          prefetched = std::make_unique<OnDevice>(layer_tensors(next), device);
        });
        prefetched_index = next;
      }
      for (auto& h : hidden) {
        h = arch_->layer(*this, i, on(h, device));
        if (park_on_host) h = park(h);
      }
      ++i;
      continue;
    }
    int64_t run_end = i + 1;  // resident layers up to the next offloaded one
    while (run_end < end && !layer_offloaded(run_end)) ++run_end;
    for (auto& h : hidden) {
      for (int64_t j = i; j < run_end; ++j) h = arch_->layer(*this, j, on(h, layer_device(j)));
      if (park_on_host) h = park(h);
    }
    i = run_end;
  }
  settle();
}

std::vector<at::Tensor> CausalLM::layer_tensors(int64_t index) const {
  std::vector<at::Tensor> tensors;
  for (const auto& info : linear_infos_) {
    if (info.layer != index) continue;
    for (auto& [key, t] : slots_.at(info.name)->state()) tensors.push_back(t);
  }
  for (const auto& [name, t] : others_) {
    if (layer_of_name(name) == index) tensors.push_back(t);
  }
  return tensors;
}

LayerPrefix CausalLM::layer_prefix(int64_t index, const at::Tensor& hidden, LinearRole role) const {
  if (index < 0 || index >= config_.num_layers) {
    throw std::out_of_range(fmt::format("layer {} out of range [0, {})", index, config_.num_layers));
  }
  if (placement_ && placement_->offloaded[static_cast<size_t>(index)]) {
    throw std::invalid_argument(fmt::format("layer {} is offloaded: it runs whole (CausalLM::layer), not in parts", index));
  }
  return {index, role, arch_->prefix(*this, index, hidden.to(layer_device(index)), role)};
}

at::Tensor CausalLM::layer_resume(const LayerPrefix& prefix) const {
  if (prefix.layer < 0 || prefix.layer >= config_.num_layers || prefix.values.empty()) {
    throw std::invalid_argument("layer_resume: not a prefix of this model's layers");
  }
  return arch_->resume(*this, prefix.layer, prefix.values);
}

at::Tensor CausalLM::final_hidden(const at::Tensor& hidden) const {
  return arch_->final_hidden(*this, placement_ ? hidden.to(placement_->head) : hidden);
}

namespace {

// logits -> cap * tanh(logits / cap), as transformers' Gemma-2 (final_logit_softcapping).
class SoftcapSlot final : public ForwardingSlot {
 public:
  SoftcapSlot(LinearPtr inner, double cap) : ForwardingSlot(std::move(inner)), cap_(cap) {}
  at::Tensor forward(const at::Tensor& x) const override {
    return at::tanh(ForwardingSlot::forward(x) / cap_) * cap_;
  }

 private:
  double cap_;
};

}  // namespace

LinearPtr CausalLM::logits_slot() const {
  auto head = linear_ptr("lm_head");
  if (config_.final_logit_softcapping > 0) return std::make_shared<SoftcapSlot>(head, config_.final_logit_softcapping);
  return head;
}

at::Tensor CausalLM::head(const at::Tensor& hidden) const { return logits_slot()->forward(final_hidden(hidden)); }

at::Tensor CausalLM::forward(const at::Tensor& input_ids) const {
  auto h = embed(input_ids);
  for (int64_t i = 0; i < config_.num_layers; ++i) h = run_layer(i, h);
  return head(h);
}

at::Tensor CausalLM::forward_cached(const at::Tensor& input_ids, KVCache& cache, const at::Tensor& mask,
                                    bool all_positions) const {
  auto h = forward_cached_hidden(input_ids, cache, mask);
  if (!all_positions) h = h.narrow(1, h.size(1) - 1, 1);
  return head(h);
}

at::Tensor CausalLM::forward_cached_hidden(const at::Tensor& input_ids, KVCache& cache, const at::Tensor& mask) const {
  if (input_ids.dim() != 2 || input_ids.size(1) < 1) {
    throw std::invalid_argument(
        fmt::format("forward_cached: input ids must be [batch, tokens], not {}", shape_str(input_ids.sizes())));
  }
  if (input_ids.size(0) != cache.batch()) {
    throw std::invalid_argument(fmt::format("forward_cached: {} rows of input ids for a cache of {} rows",
                                            input_ids.size(0), cache.batch()));
  }
  if (mask.defined() && mask.sizes() != input_ids.sizes()) {
    throw std::invalid_argument(fmt::format("forward_cached: mask {} does not match input ids {}",
                                            shape_str(mask.sizes()), shape_str(input_ids.sizes())));
  }
  if (cache.device() != options_.device) {
    throw std::invalid_argument(fmt::format("forward_cached: the cache is on {}, the model on {}", cache.device().str(),
                                            options_.device.str()));
  }
  if (!on_one_device()) {
    // The cache holds every layer's keys and values on one device.
    throw std::invalid_argument("forward_cached: the model is placed over several devices or offloads layers "
                                "(--device_map, --max_memory); the KV cache needs every layer on one device");
  }
  const int64_t t = input_ids.size(1);
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(options_.device);
  at::Tensor tokens, positions;
  if (mask.defined()) {
    tokens = mask.to(options_.device).ne(0);
    // A row's positions count its tokens; padding takes its neighbour's (unused: padding attends to itself only).
    positions = (cache.next_positions().unsqueeze(1) + tokens.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  } else {
    tokens = at::ones({input_ids.size(0), t}, long_opts.dtype(at::kBool));
    positions = cache.next_positions().unsqueeze(1) + at::arange(t, long_opts).unsqueeze(0);
  }
  return run_step(input_ids, cache, positions, tokens, {}, /*whole_rows=*/!mask.defined());
}

at::Tensor CausalLM::forward_tree_hidden(const at::Tensor& input_ids, const at::Tensor& positions,
                                         const at::Tensor& ends) const {
  if (input_ids.dim() != 2 || input_ids.size(0) < 1 || input_ids.size(1) < 1) {
    throw std::invalid_argument(
        fmt::format("forward_tree: input ids must be [batch, tokens], not {}", shape_str(input_ids.sizes())));
  }
  if (positions.sizes() != input_ids.sizes() || ends.sizes() != input_ids.sizes()) {
    throw std::invalid_argument(fmt::format("forward_tree: positions {} and ends {} must match input ids {}",
                                            shape_str(positions.sizes()), shape_str(ends.sizes()),
                                            shape_str(input_ids.sizes())));
  }
  if (!on_one_device()) {
    throw std::invalid_argument("forward_tree: the model is placed over several devices or offloads layers "
                                "(--device_map, --max_memory); it needs every layer on one device");
  }
  const int64_t t = input_ids.size(1);
  if (positions.device().is_cpu()) {
    // The rotary tables cover the T slots: a position outside them would read past their end.
    const auto lo = positions.min().item<int64_t>(), hi = positions.max().item<int64_t>();
    if (lo < 0 || hi >= t) {
      throw std::invalid_argument(
          fmt::format("forward_tree: position {} is outside [0, {}) of a step of {} tokens", lo < 0 ? lo : hi, t, t));
    }
  }
  if (ends.device().is_cpu()) {
    // A token's subtree holds it and lies within the row; -1 marks padding.
    const auto e = ends.to(at::kLong);
    const auto slot = at::arange(t, e.options()).unsqueeze(0);
    const auto bad = e.ne(-1).logical_and(e.le(slot).logical_or(e.gt(t))).nonzero();
    if (bad.size(0) > 0) {
      const int64_t r = bad[0][0].item<int64_t>(), j = bad[0][1].item<int64_t>();
      throw std::invalid_argument(fmt::format("forward_tree: the token at slot {} of row {} ends at {}, outside ({}, {}]",
                                              j, r, e[r][j].item<int64_t>(), j, t));
    }
  }
  auto pos = positions.to(options_.device, at::kLong);
  auto end = ends.to(options_.device, at::kLong);
  KVCache cache(input_ids.size(0), t, options_.device);
  return run_step(input_ids, cache, pos, end.ge(0), end.clamp_min(0), /*whole_rows=*/false, /*keep_keys=*/false);
}

at::Tensor CausalLM::run_step(const at::Tensor& input_ids, KVCache& cache, const at::Tensor& positions,
                              const at::Tensor& tokens, const at::Tensor& ends, bool whole_rows,
                              bool keep_keys) const {
  if (input_ids.device().is_cpu()) {
    // Range-checked as embed() checks them; ids already on the device are trusted (no synchronisation).
    const auto lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      throw std::invalid_argument(
          fmt::format("token id {} is outside the vocabulary [0, {})", lo < 0 ? lo : hi, config_.vocab_size));
    }
  }
  cache.begin_step(positions, tokens, ends);
  try {
    detail::Step step(cache, positions, whole_rows, keep_keys);
    auto h = arch_->embed_step(*this, input_ids.to(options_.device, at::kLong), step);
    // Moved in: a layer may then add into its input in place (detail::residual_linear).
    for (int64_t i = 0; i < config_.num_layers; ++i) h = arch_->layer_step(*this, i, std::move(h), step);
    cache.end_step();
    return h;
  } catch (...) {
    cache.cancel_step();
    throw;
  }
}

bool CausalLM::on_one_device() const {
  if (!placement_) return true;
  bool one = placement_->head == options_.device;
  for (size_t i = 0; i < placement_->layers.size(); ++i) {
    one = one && placement_->layers[i] == options_.device && !placement_->offloaded[i];
  }
  return one;
}

bool CausalLM::has_linear(const std::string& name) const { return slots_.count(name) > 0; }

LinearPtr CausalLM::linear_ptr(const std::string& name) const {
  auto it = slots_.find(name);
  if (it == slots_.end()) throw std::invalid_argument(fmt::format("the model has no Linear layer \"{}\"", name));
  return it->second;
}

const DenseLinear& CausalLM::dense_linear(const std::string& name) const {
  const LinearSlot& slot = linear(name);
  const auto* dense = dynamic_cast<const DenseLinear*>(&slot);
  if (!dense) throw std::invalid_argument(fmt::format("layer \"{}\" is already {}, not dense", name, slot.kind()));
  return *dense;
}

const LinearSlot& CausalLM::linear(const std::string& name) const { return *linear_ptr(name); }

LinearPtr CausalLM::replace_linear(const std::string& name, LinearPtr slot) {
  LinearPtr previous = linear_ptr(name);
  if (!slot) throw std::invalid_argument(fmt::format("replace_linear(\"{}\"): null slot", name));
  if (slot->in_features() != previous->in_features() || slot->out_features() != previous->out_features()) {
    throw std::invalid_argument(fmt::format("replace_linear(\"{}\"): shape {}x{} does not match {}x{}", name,
                                            slot->out_features(), slot->in_features(), previous->out_features(),
                                            previous->in_features()));
  }
  set_slot(name, std::move(slot));
  return previous;
}

void CausalLM::set_slot(const std::string& name, LinearPtr slot) {
  slots_[name] = std::move(slot);
  for (auto it = groups_.begin(); it != groups_.end();) {
    const auto& names = it->second.names;
    it = std::find(names.begin(), names.end(), name) != names.end() ? groups_.erase(it) : std::next(it);
  }
}

int64_t CausalLM::group_projections() {
  const std::vector<std::vector<LinearRole>> role_sets{{LinearRole::Q, LinearRole::K, LinearRole::V},
                                                       {LinearRole::Gate, LinearRole::Up}};
  int64_t grouped = 0;
  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    // An offloaded layer's slot tensors are copied in for each call; a joint slot would stay behind.
    if (layer_offloaded(layer)) continue;
    for (const auto& roles : role_sets) {
      std::vector<std::string> names;
      for (const LinearRole role : roles) {
        for (const auto& info : linear_infos_) {
          if (info.layer == layer && info.role == role) names.push_back(info.name);
        }
      }
      if (names.size() != roles.size()) continue;  // the family has no such group
      if (joint_slot(names[0])) {                  // stacked already
        ++grouped;
        continue;
      }
      std::vector<const LinearSlot*> rest;
      for (size_t j = 1; j < names.size(); ++j) rest.push_back(slots_.at(names[j]).get());
      auto joint = slots_.at(names[0])->stacked_with(rest);
      if (!joint) continue;
      std::vector<LinearPtr> members;  // each slot's rows of the joint one
      int64_t row = 0;
      for (const auto& name : names) {
        const int64_t count = slots_.at(name)->out_features();
        members.push_back(joint->rows(row, count));
        row += count;
      }
      if (std::find(members.begin(), members.end(), nullptr) != members.end()) continue;
      for (size_t j = 0; j < names.size(); ++j) set_slot(names[j], members[j]);
      groups_[names[0]] = ProjectionGroup{names, std::move(joint)};
      ++grouped;
    }
  }
  return grouped;
}

const LinearSlot* CausalLM::joint_slot(const std::string& first) const {
  const auto it = groups_.find(first);
  return it == groups_.end() ? nullptr : it->second.joint.get();
}

std::map<std::string, LinearPtr> CausalLM::reshape_layer(int64_t layer, const LayerShapes& shapes,
                                                         const std::map<std::string, LinearPtr>& slots) {
  if (layer < 0 || layer >= config_.num_layers) {
    throw std::invalid_argument(fmt::format("reshape_layer: layer {} out of range [0, {})", layer, config_.num_layers));
  }
  ModelConfig next = config_;
  if (next.layer_shapes.empty()) next.layer_shapes.assign(config_.num_layers, LayerShapes{});
  next.layer_shapes[layer] = shapes;
  const std::string problem = layer_shape_problem(config_, shapes);
  if (!problem.empty()) throw std::invalid_argument(fmt::format("reshape_layer({}): {}", layer, problem));
  auto next_arch = make_architecture(next);
  std::map<std::string, std::pair<int64_t, int64_t>> expected;  // this layer's slots: (in, out)
  for (const ExpectedTensor& e : next_arch->expected_tensors()) {
    if (e.linear_weight && e.layer == layer) expected[module_of(e.name)] = {e.shape[1], e.shape[0]};
  }
  for (const auto& [name, slot] : slots) {
    auto it = expected.find(name);
    if (it == expected.end()) {
      throw std::invalid_argument(fmt::format("reshape_layer({}): \"{}\" is not a Linear of that layer", layer, name));
    }
    if (!slot) throw std::invalid_argument(fmt::format("reshape_layer({}): null slot for \"{}\"", layer, name));
    if (slot->in_features() != it->second.first || slot->out_features() != it->second.second) {
      throw std::invalid_argument(fmt::format("reshape_layer({}): \"{}\" is {}x{}, but the new widths need {}x{}", layer,
                                              name, slot->out_features(), slot->in_features(), it->second.second,
                                              it->second.first));
    }
  }
  for (const auto& [name, shape] : expected) {
    const LinearSlot& current = linear(name);
    if (!slots.count(name) && (current.in_features() != shape.first || current.out_features() != shape.second)) {
      throw std::invalid_argument(fmt::format("reshape_layer({}): the new widths change \"{}\" to {}x{}; give its slot",
                                              layer, name, shape.second, shape.first));
    }
  }
  std::map<std::string, LinearPtr> previous;
  for (const auto& [name, slot] : slots) {
    previous[name] = slots_.at(name);
    set_slot(name, slot);
  }
  if (!next.has_layer_shapes()) next.layer_shapes.clear();
  config_ = std::move(next);
  arch_ = make_architecture(config_);
  return previous;
}

int64_t CausalLM::linear_weight_params() const {
  int64_t total = 0;
  for (const auto& [name, slot] : slots_) total += slot->weight_params();
  return total;
}

ParamCounts count_params(const CausalLM& lm) {
  ParamCounts c;
  int64_t other = 0;
  for (const auto& [name, t] : lm.other_tensors()) other += t.numel();
  for (const auto& info : lm.linears()) c.linear_dense += info.in_features * info.out_features;
  c.linear_stored = lm.linear_weight_params();
  // A tied lm_head shares the embedding: it stores nothing of its own while it is dense. A
  // repository whose lm_head was factorized is untied, but counts against its tied source.
  const bool tied = lm.config().tie_word_embeddings || lm.stored_form().base_tie_word_embeddings;
  const LinearSlot* head = tied && lm.has_linear("lm_head") ? &lm.linear("lm_head") : nullptr;
  const int64_t head_numel = head ? head->in_features() * head->out_features() : 0;
  c.total_dense = other + c.linear_dense - head_numel;
  c.total_stored = other + c.linear_stored - (head && head->kind() == "dense" ? head_numel : 0);
  return c;
}

void ScopedSlots::replace(const std::string& name, LinearPtr slot) {
  auto previous = lm_.replace_linear(name, std::move(slot));
  displaced_.emplace_back(name, std::move(previous));
}

void ScopedSlots::restore() noexcept {
  // Reverse order, so that a name replaced twice ends with its first original.
  for (auto it = displaced_.rbegin(); it != displaced_.rend(); ++it) lm_.set_slot(it->first, it->second);
  displaced_.clear();
}

LinearPtr ScopedSlots::original(const std::string& name) const {
  for (const auto& [n, slot] : displaced_) {
    if (n == name) return slot;
  }
  return lm_.linear_ptr(name);
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32" || name == "float") return at::kFloat;
  if (name == "fp16" || name == "float16" || name == "half") return at::kHalf;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  throw std::invalid_argument(fmt::format("unknown dtype \"{}\" (use fp32, fp16 or bf16)", name));
}

c10::Device parse_device(const std::string& name) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw std::invalid_argument(fmt::format("unknown device \"{}\" (use cpu, cuda or cuda:N)", name));
  }
  if (device.is_cuda() && !at::hasCUDA()) {
    throw std::invalid_argument(fmt::format("device \"{}\" asked for, but no CUDA device is available", name));
  }
  if (!device.is_cpu() && !device.is_cuda()) {
    throw std::invalid_argument(fmt::format("device \"{}\" is not supported (use cpu or cuda)", name));
  }
  return device;
}

}  // namespace cur4llm::model
