#include <cur4llm/model/causal_lm.h>

#include <cur4llm/io/safetensors.h>

#include "architecture.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
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

// Some builds lack kernels for a dtype on a device (LibTorch 1.13 has no fp16
// matrix multiply on the CPU); say so at load time, not deep inside a forward.
void check_dtype_supported(c10::Device device, c10::ScalarType dtype) {
  try {
    auto a = at::ones({2, 2}, at::TensorOptions().device(device).dtype(dtype));
    (void)at::linear(a, a, a.select(0, 0));
  } catch (const c10::Error&) {
    throw std::invalid_argument(fmt::format("dtype {} is not supported on {} by this LibTorch build",
                                            c10::toString(dtype), device.str()));
  }
}

}  // namespace

CausalLM::~CausalLM() = default;

template <typename Fetch>
void CausalLM::populate(Fetch&& fetch) {
  std::map<std::string, at::Tensor> weights, biases;  // by module name
  std::vector<ExpectedTensor> slots_in_order;
  for (const ExpectedTensor& e : arch_->expected_tensors()) {
    at::Tensor value = e.tied_to.empty() ? fetch(e).to(options_.device, dtype_) : others_.at(e.tied_to);
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
    auto bias = biases.count(module) ? biases.at(module) : at::Tensor();
    slots_[module] = std::make_shared<DenseLinear>(weights.at(module), bias);
    linear_infos_.push_back({module, e.layer, e.role, e.shape[1], e.shape[0]});
  }
}

std::unique_ptr<CausalLM> CausalLM::load(const std::filesystem::path& folder, const LoadOptions& options) {
  const auto config_path = folder / "config.json";
  if (!std::filesystem::is_regular_file(config_path)) {
    throw std::runtime_error(fmt::format("{}: no config.json, so this is not a Hugging Face model folder",
                                         folder.string()));
  }
  std::unique_ptr<CausalLM> lm(new CausalLM());
  lm->config_ = ModelConfig::from_file(config_path);
  lm->folder_ = folder;
  lm->options_ = options;
  lm->dtype_ = options.dtype ? *options.dtype : default_dtype(lm->config_, options.device);
  check_dtype_supported(options.device, lm->dtype_);
  lm->arch_ = make_architecture(lm->config_);

  const io::Checkpoint ckpt = io::Checkpoint::open(folder);
  lm->populate([&](const ExpectedTensor& e) {
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
    return raw;
  });
  return lm;
}

std::unique_ptr<CausalLM> CausalLM::random(const ModelConfig& config, const LoadOptions& options, uint64_t seed) {
  std::unique_ptr<CausalLM> lm(new CausalLM());
  lm->config_ = config;
  lm->options_ = options;
  lm->dtype_ = options.dtype ? *options.dtype : default_dtype(config, options.device);
  check_dtype_supported(options.device, lm->dtype_);
  lm->arch_ = make_architecture(config);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  lm->populate([&](const ExpectedTensor& e) {
    const bool norm_weight = e.shape.size() == 1 && !e.linear_bias && e.name.find("norm") != std::string::npos &&
                             e.name.compare(e.name.size() - 7, 7, ".weight") == 0;
    // Made directly on the target device and dtype: a 7B-shaped model needs no host copy.
    const auto opts = at::TensorOptions().device(lm->options_.device).dtype(lm->dtype_);
    if (norm_weight) return at::ones(e.shape, opts);
    if (e.shape.size() == 1) return at::zeros(e.shape, opts);
    const double std = 1.0 / std::sqrt(static_cast<double>(e.shape.back()));
    auto t = at::empty(e.shape, opts);
    if (t.is_cpu()) return t.normal_(0.0, std, gen);
    return t.normal_(0.0, std);  // the device's default generator
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
  return arch_->layer(*this, index, hidden);
}

LayerPrefix CausalLM::layer_prefix(int64_t index, const at::Tensor& hidden, LinearRole role) const {
  if (index < 0 || index >= config_.num_layers) {
    throw std::out_of_range(fmt::format("layer {} out of range [0, {})", index, config_.num_layers));
  }
  return {index, role, arch_->prefix(*this, index, hidden, role)};
}

at::Tensor CausalLM::layer_resume(const LayerPrefix& prefix) const {
  if (prefix.layer < 0 || prefix.layer >= config_.num_layers || prefix.values.empty()) {
    throw std::invalid_argument("layer_resume: not a prefix of this model's layers");
  }
  return arch_->resume(*this, prefix.layer, prefix.values);
}

at::Tensor CausalLM::final_hidden(const at::Tensor& hidden) const { return arch_->final_hidden(*this, hidden); }

at::Tensor CausalLM::head(const at::Tensor& hidden) const { return linear("lm_head").forward(final_hidden(hidden)); }

at::Tensor CausalLM::forward(const at::Tensor& input_ids) const {
  auto h = embed(input_ids);
  for (int64_t i = 0; i < config_.num_layers; ++i) h = arch_->layer(*this, i, h);
  return head(h);
}

bool CausalLM::has_linear(const std::string& name) const { return slots_.count(name) > 0; }

LinearPtr CausalLM::linear_ptr(const std::string& name) const {
  auto it = slots_.find(name);
  if (it == slots_.end()) throw std::invalid_argument(fmt::format("the model has no Linear layer \"{}\"", name));
  return it->second;
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
  slots_[name] = std::move(slot);
  return previous;
}

int64_t CausalLM::linear_weight_params() const {
  int64_t total = 0;
  for (const auto& [name, slot] : slots_) total += slot->weight_params();
  return total;
}

void ScopedSlots::replace(const std::string& name, LinearPtr slot) {
  auto previous = lm_.replace_linear(name, std::move(slot));
  displaced_.emplace_back(name, std::move(previous));
}

void ScopedSlots::restore() noexcept {
  // Reverse order, so that a name replaced twice ends with its first original.
  for (auto it = displaced_.rbegin(); it != displaced_.rend(); ++it) lm_.slots_[it->first] = it->second;
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
