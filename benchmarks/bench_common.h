#pragma once
// Helpers the benchmark harnesses share: command-line options, the model from
// a folder or a config (random weights), device facts (name, peak rate, peak
// memory), FLOP counts of forward passes, and random factorized layers.
#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/util/device.h>

#include <ATen/ATen.h>

#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define CUR4LLM_BENCH_NVTX 1
#endif
#define CUR4LLM_BENCH_CUDA 1
#endif

#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cur4llm::bench {

/// The non-empty items of `text` between `sep`s.
inline std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, sep);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

/// "--key value" pairs ("--flag" alone, followed by another option or by
/// nothing, reads as "1"), and positional arguments (e.g. shapes).
class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) {
        positional_.push_back(arg);
        continue;
      }
      const bool has_value = i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0;
      values_[arg.substr(2)] = has_value ? argv[++i] : "1";
    }
  }
  /// std::invalid_argument naming the first option not in `known`.
  void check_known(const std::vector<std::string>& known) const {
    for (const auto& [key, value] : values_) {
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        throw std::invalid_argument("unknown option --" + key);
      }
    }
  }
  const std::vector<std::string>& positional() const { return positional_; }
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  std::string str(const std::string& key, const std::string& fallback) const {
    auto it = values_.find(key);
    return it == values_.end() ? fallback : it->second;
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    return has(key) ? std::stoll(values_.at(key)) : fallback;
  }
  double real(const std::string& key, double fallback) const { return has(key) ? std::stod(values_.at(key)) : fallback; }
  /// A comma-separated list.
  std::vector<std::string> list(const std::string& key, const std::string& fallback) const {
    return split(str(key, fallback), ',');
  }
  /// A comma-separated list of numbers.
  std::vector<double> reals(const std::string& key, const std::string& fallback) const {
    std::vector<double> out;
    for (const auto& item : list(key, fallback)) out.push_back(std::stod(item));
    return out;
  }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

/// "OUTxIN" arguments as (out, in) pairs; `fallback` if there are none.
inline std::vector<std::pair<int64_t, int64_t>> parse_shapes(const std::vector<std::string>& args,
                                                             std::vector<std::pair<int64_t, int64_t>> fallback) {
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (const auto& a : args) {
    const auto x = a.find('x');
    if (x == std::string::npos) throw std::invalid_argument("expected OUTxIN, got " + a);
    shapes.emplace_back(std::stoll(a.substr(0, x)), std::stoll(a.substr(x + 1)));
  }
  return shapes.empty() ? fallback : shapes;
}

/// --model FOLDER (real weights) or --config CONFIG.json (random weights of
/// that shape, made on the device), on --device in --dtype.
inline std::unique_ptr<model::CausalLM> load_model(const Args& args, std::string* source) {
  model::LoadOptions options;
  options.device = model::parse_device(args.str("device", "cpu"));
  if (args.has("dtype")) options.dtype = model::parse_dtype(args.str("dtype", ""));
  options.device_map = args.str("device_map", "");  // placement (docs/distributed.md)
  options.max_memory = args.str("max_memory", "");
  if (args.has("model")) {
    *source = args.str("model", "");
    return model::CausalLM::load(*source, options);
  }
  if (args.has("config")) {
    *source = args.str("config", "");
    return model::CausalLM::random(model::ModelConfig::from_file(*source), options,
                                   static_cast<uint64_t>(args.integer("seed", 0)));
  }
  throw std::invalid_argument("give --model FOLDER or --config CONFIG.json");
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Wall seconds of fn(), the device's queued work included.
template <typename Fn>
double timed(c10::Device device, Fn&& fn) {
  util::synchronize(device);
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  util::synchronize(device);
  return seconds_since(t0);
}

/// Device seconds per call of fn() with the host's launch overheads taken out:
/// `calls` back-to-back calls are captured in one CUDA graph (after a warm-up
/// call), and the graph is replayed `replays` times. What a decoding loop
/// under CUDA graphs pays. nullopt off CUDA, or with the reason in *why when
/// the capture fails (an operation that synchronises or allocates outside the
/// graph's pool).
template <typename Fn>
std::optional<double> graph_timed(c10::Device device, int calls, int replays, Fn&& fn, std::string* why = nullptr) {
#ifdef CUR4LLM_BENCH_CUDA
  if (!device.is_cuda()) return std::nullopt;
  cudaStream_t raw = nullptr;
  try {
    c10::cuda::CUDAGuard device_guard(device);
    fn();  // first-call work (plans, tables) outside the capture
    util::synchronize(device);
    auto stream = c10::cuda::getStreamFromPool(false, device.index());
    raw = stream.stream();
    at::cuda::CUDAGraph graph;
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      graph.capture_begin();
      for (int i = 0; i < calls; ++i) fn();
      graph.capture_end();
    }
    graph.replay();
    util::synchronize(device);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < replays; ++i) graph.replay();
    util::synchronize(device);
    return seconds_since(t0) / (static_cast<double>(calls) * replays);
  } catch (const std::exception& e) {
    if (why) *why = std::string(e.what()).substr(0, 300);
    // A capture that failed inside fn() is still open on its stream: close it, so that
    // the configurations measured after this one run normally.
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (raw != nullptr && cudaStreamIsCapturing(raw, &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t partial = nullptr;
      (void)cudaStreamEndCapture(raw, &partial);
      if (partial != nullptr) (void)cudaGraphDestroy(partial);
    }
    (void)cudaGetLastError();
    return std::nullopt;
  }
#else
  (void)device, (void)calls, (void)replays, (void)fn, (void)why;
  return std::nullopt;
#endif
}

/// A named range on the profilers' timeline (NVTX; nothing without CUDA), so that
/// `ncu --nvtx --nvtx-include "NAME/"` profiles only the kernels inside it.
class ProfileRange {
 public:
  explicit ProfileRange(const char* name) {
#ifdef CUR4LLM_BENCH_NVTX
    nvtxRangePushA(name);
#else
    (void)name;
#endif
  }
  ~ProfileRange() {
#ifdef CUR4LLM_BENCH_NVTX
    nvtxRangePop();
#endif
  }
  ProfileRange(const ProfileRange&) = delete;
  ProfileRange& operator=(const ProfileRange&) = delete;
};

inline int device_index(c10::Device device) { return device.has_index() ? device.index() : 0; }

/// The GPU's name ("NVIDIA H100 80GB HBM3"), or "cpu".
inline std::string device_name(c10::Device device) {
#ifdef CUR4LLM_BENCH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device_index(device)) == cudaSuccess) return prop.name;
  }
#endif
  return device.str();
}

/// Dense peak TFLOP/s of the device's matrix units for `dtype` from the
/// vendor's datasheets (no sparsity), or `override_tflops` if > 0; nullopt if unknown.
inline std::optional<double> peak_tflops(const std::string& name, c10::ScalarType dtype, double override_tflops) {
  if (override_tflops > 0) return override_tflops;
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  struct Entry {
    const char* name;
    double half_tflops, fp32_tflops;
  };
  // Order matters: the first substring that matches wins.
  static const Entry table[] = {
      {"H200", 989, 67}, {"H100 PCIe", 756, 51}, {"H100", 989, 67}, {"A100", 312, 19.5},
      {"L40S", 362, 91.6}, {"A10G", 70, 31}, {"RTX 4090", 165, 82.6},
  };
  for (const auto& e : table) {
    if (name.find(e.name) != std::string::npos) return half ? e.half_tflops : e.fp32_tflops;
  }
  return std::nullopt;
}

inline void reset_peak_memory(c10::Device device) {
#ifdef CUR4LLM_BENCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_index(device));
#endif
}

/// Bytes allocated on the device (CUDA), else -1: the peak since the last reset, or
/// what is allocated now.
inline int64_t device_memory(c10::Device device, bool peak) {
#ifdef CUR4LLM_BENCH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_index(device));
    const auto& bytes = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    return peak ? bytes.peak : bytes.current;
  }
#endif
  (void)peak;
  return -1;
}

/// Peak bytes allocated on the device since the last reset (CUDA), else -1.
inline int64_t peak_memory(c10::Device device) { return device_memory(device, true); }

inline int64_t peak_host_rss() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

/// Facts about the machine for every JSON record.
inline nlohmann::json device_json(const model::CausalLM& lm, double override_tflops) {
  const std::string name = device_name(lm.device());
  nlohmann::json j = {{"device", lm.device().str()}, {"device_name", name}, {"dtype", c10::toString(lm.dtype())}};
  if (auto peak = peak_tflops(name, lm.dtype(), override_tflops)) j["peak_tflops"] = *peak;
  return j;
}

/// Adds achieved TFLOP/s (and its fraction of the peak) for `flops` in `seconds`.
inline void add_rate(nlohmann::json& j, double flops, double seconds) {
  j["flop"] = flops;
  j["tflops"] = seconds > 0 ? flops / seconds / 1e12 : 0.0;
  if (j.contains("peak_tflops") && j["peak_tflops"].get<double>() > 0) {
    j["fraction_of_peak"] = j["tflops"].get<double>() / j["peak_tflops"].get<double>();
  }
}

/// Matrix FLOPs of decoder layer `index` for `batch` sequences of `seqlen`
/// tokens: 2 per stored weight per token for each of its Linear slots (as they
/// are now: compressed slots count what they store), plus attention's QK^T and
/// PV over the causal half of the T x T scores.
inline double layer_flops(const model::CausalLM& lm, int64_t index, int64_t batch, int64_t seqlen) {
  const auto& c = lm.config();
  double params = 0;
  for (const auto& info : lm.linears()) {
    if (info.layer == index) params += static_cast<double>(lm.linear(info.name).weight_params());
  }
  const double tokens = static_cast<double>(batch * seqlen);
  const double attention = 2.0 * 2.0 * batch * c.num_heads * c.head_dim * seqlen * (seqlen + 1) / 2.0;
  return 2.0 * params * tokens + attention;
}

/// FLOPs of the slots outside the decoder layers (lm_head, OPT's projections).
inline double outside_flops(const model::CausalLM& lm, int64_t batch, int64_t seqlen) {
  double params = 0;
  for (const auto& info : lm.linears()) {
    if (info.layer < 0) params += static_cast<double>(lm.linear(info.name).weight_params());
  }
  return 2.0 * params * static_cast<double>(batch * seqlen);
}

/// A full forward pass.
inline double forward_flops(const model::CausalLM& lm, int64_t batch, int64_t seqlen) {
  double total = outside_flops(lm, batch, seqlen);
  for (int64_t i = 0; i < lm.num_layers(); ++i) total += layer_flops(lm, i, batch, seqlen);
  return total;
}

/// A factorized layer of random factors (throughput does not depend on the
/// values): "cur" (C, U, R), "cur_folded" (C·U, R) or "svd" (A, B) at the rank
/// its compressor gives `ratio`.
inline model::LinearPtr random_factorized(const std::string& kind, int64_t out, int64_t in, double ratio,
                                          const at::Tensor& bias, at::TensorOptions options) {
  auto rnd = [&](int64_t r, int64_t c) { return at::randn({r, c}, options) / std::sqrt(static_cast<double>(c)); };
  if (kind == "svd") {
    const int64_t k = compress::svd_rank_for_ratio(out, in, ratio, 1);
    return std::make_shared<compress::SVDLinear>(rnd(out, k), rnd(k, in), bias);
  }
  compress::CUROptions o;
  o.fold_u = kind == "cur_folded";
  if (kind != "cur" && kind != "cur_folded") throw std::invalid_argument("unknown factorized kind " + kind);
  const int64_t k = compress::cur_rank_for_ratio(out, in, ratio, o);
  auto idx = at::arange(k, at::TensorOptions().dtype(at::kLong));
  return std::make_shared<compress::CURLinear>(rnd(out, k), o.fold_u ? at::Tensor() : rnd(k, k), rnd(k, in), bias, idx,
                                               idx);
}

/// `text` with every character other than letters, digits, '.', '-' and '_' as '_': a
/// benchmark's spec ("narrow:0.6+packed:rtn_int4") as part of a file name.
inline std::string file_safe(std::string text) {
  for (auto& ch : text) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '-' && ch != '_') ch = '_';
  }
  return text;
}

/// Replaces every Linear inside the decoder layers by a random factorized one
/// (random_factorized); returns how many.
inline int64_t factorize_decoder(model::CausalLM& lm, const std::string& kind, double ratio) {
  int64_t n = 0;
  const auto options = at::TensorOptions().device(lm.device()).dtype(lm.dtype());
  for (const auto& info : lm.linears()) {
    if (info.layer < 0) continue;
    const auto* dense = dynamic_cast<const model::DenseLinear*>(lm.linear_ptr(info.name).get());
    const at::Tensor bias = dense ? dense->bias() : at::Tensor();
    lm.replace_linear(info.name, random_factorized(kind, info.out_features, info.in_features, ratio, bias, options));
    ++n;
  }
  return n;
}

/// Whether a Linear of role `role` is part of the MLP (its width is the MLP's).
inline bool in_mlp(const std::optional<model::LinearRole>& role) {
  using R = model::LinearRole;
  return role && (*role == R::Gate || *role == R::Up || *role == R::Down || *role == R::Fc1 || *role == R::Fc2);
}

/// The shape a module method leaves at nominal ratio `ratio`, with random dense weights:
/// what a modular-compressed model runs. Every decoder layer gets the same shapes.
/// - Uniform (`head_width` < 0): MLP width, query/key and value head widths all times
///   `ratio` (the MLP width rounded to a multiple of `align`, the head widths to multiples
///   of 8), so every decoder Linear keeps about that share of its weights. Query/key
///   dimensions keep rotary pairs (the first qk/2 of each half of a head).
/// - Heads of `head_width` dimensions (query/key and value; the base head dim: heads whole,
///   what mlp_nystrom alone leaves): the MLP width (a multiple of `align`) is chosen so
///   that the decoder's Linear weights come to `ratio` of the base's.
/// Returns how many Linears it replaced. restore_layers undoes it.
inline int64_t narrow_decoder(model::CausalLM& lm, double ratio, int64_t align = 8, int64_t head_width = -1) {
  const model::ModelConfig c = lm.config();
  const auto options = at::TensorOptions().device(lm.device()).dtype(lm.dtype());
  model::LayerShapes s;
  // Widths in multiples of 8 at least: what the GPU kernels (and the packed one) want.
  const auto rounded = [&](double width, int64_t full, int64_t multiple) {
    const int64_t a = (std::max<int64_t>(multiple, 8) + 7) / 8 * 8;
    return std::min(full, std::max<int64_t>(a, a * std::llround(width / a)));
  };
  if (head_width >= 0) {
    if (head_width < 2 || head_width > c.head_dim || head_width % 2 != 0) {
      throw std::invalid_argument("narrow: a head width from 2 to " + std::to_string(c.head_dim) + ", even");
    }
    // Layer 0's Linears: the attention's weights scale with the head width, the MLP's with its width.
    double attention = 0, mlp = 0;
    for (const auto& info : lm.linears()) {
      if (info.layer != 0) continue;
      const double params = static_cast<double>(info.out_features) * static_cast<double>(info.in_features);
      (in_mlp(info.role) ? mlp : attention) += params;
    }
    const double heads = static_cast<double>(head_width) / static_cast<double>(c.head_dim);
    const double share = ((attention + mlp) * ratio - attention * heads) / mlp;
    if (share <= 0) throw std::invalid_argument("narrow: the attention alone holds more than that ratio");
    s.intermediate_size = rounded(static_cast<double>(c.intermediate_size) * share, c.intermediate_size, align);
    if (head_width < c.head_dim) s.qk_head_dim = s.v_head_dim = head_width;
  } else {
    s.intermediate_size = rounded(static_cast<double>(c.intermediate_size) * ratio, c.intermediate_size, align);
    s.qk_head_dim = rounded(static_cast<double>(c.head_dim) * ratio, c.head_dim, 8);
    s.v_head_dim = s.qk_head_dim;
  }
  if (s.qk_head_dim > 0 && s.qk_head_dim < c.head_dim) {  // else the heads stay whole, with no dimension list
    for (int64_t j = 0; j < c.num_kv_heads; ++j) {
      for (int64_t half = 0; half < 2; ++half) {
        for (int64_t r = 0; r < s.qk_head_dim / 2; ++r) s.qk_dims.push_back(half * (c.head_dim / 2) + r);
      }
    }
  }
  const int64_t qk = s.qk_head_dim > 0 ? s.qk_head_dim : c.head_dim;
  const int64_t dv = s.v_head_dim > 0 ? s.v_head_dim : c.head_dim;
  int64_t n = 0;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    std::map<std::string, model::LinearPtr> slots;
    for (const auto& info : lm.linears()) {
      if (info.layer != layer) continue;
      using R = model::LinearRole;
      int64_t out = info.out_features, in = info.in_features;
      if (info.role == R::Q) out = c.num_heads * qk;
      if (info.role == R::K) out = c.num_kv_heads * qk;
      if (info.role == R::V) out = c.num_kv_heads * dv;
      if (info.role == R::O) in = c.num_heads * dv;
      if (info.role == R::Gate || info.role == R::Up || info.role == R::Fc1) out = s.intermediate_size;
      if (info.role == R::Down || info.role == R::Fc2) in = s.intermediate_size;
      const auto* dense = dynamic_cast<const model::DenseLinear*>(lm.linear_ptr(info.name).get());
      at::Tensor bias;
      if (dense && dense->bias().defined()) bias = at::zeros({out}, options);
      auto w = at::randn({out, in}, options) / std::sqrt(static_cast<double>(in));
      slots[info.name] = std::make_shared<model::DenseLinear>(w, bias);
      ++n;
    }
    lm.reshape_layer(layer, s, slots);
  }
  return n;
}

/// Puts every decoder layer back to the base widths with the given slots (name -> slot,
/// as saved before any replacement).
inline void restore_layers(model::CausalLM& lm, const std::map<std::string, model::LinearPtr>& saved) {
  for (int64_t layer = 0; layer < lm.num_layers(); ++layer) {
    std::map<std::string, model::LinearPtr> slots;
    for (const auto& info : lm.linears()) {
      if (info.layer == layer) slots[info.name] = saved.at(info.name);
    }
    lm.reshape_layer(layer, model::LayerShapes{}, slots);
  }
  for (const auto& [name, slot] : saved) lm.replace_linear(name, slot);
}

}  // namespace cur4llm::bench
