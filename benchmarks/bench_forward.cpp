// Forward throughput of a causal LM: tokens/s, achieved TFLOP/s and peak memory
// for a model folder (real weights) or a config.json (random weights of that
// shape). Prints one JSON object. Timings only; never a pass/fail test.
//
//   bench_forward --model PATH | --config CONFIG.json
//                 [--device cuda] [--dtype bf16] [--batch 1] [--seqlen 2048]
//                 [--warmup 2] [--iters 10]
#include <cur4llm/model/causal_lm.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#define CUR4LLM_BENCH_CUDA 1
#endif

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <numeric>
#include <string>

namespace {

std::map<std::string, std::string> parse_args(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) throw std::invalid_argument("bad argument: " + key);
    args[key.substr(2)] = argv[++i];
  }
  return args;
}

std::string get(const std::map<std::string, std::string>& a, const std::string& k, const std::string& d) {
  auto it = a.find(k);
  return it == a.end() ? d : it->second;
}

// Blocks until the device has finished: reading one value back synchronises.
void sync(const at::Tensor& t) { (void)t.flatten()[0].item<float>(); }

}  // namespace

int main(int argc, char** argv) try {
  const auto args = parse_args(argc, argv);
  cur4llm::model::LoadOptions options;
  options.device = cur4llm::model::parse_device(get(args, "device", "cpu"));
  if (args.count("dtype")) options.dtype = cur4llm::model::parse_dtype(args.at("dtype"));
  const int64_t batch = std::stoll(get(args, "batch", "1"));
  const int64_t seqlen = std::stoll(get(args, "seqlen", "512"));
  const int warmup = std::stoi(get(args, "warmup", "2"));
  const int iters = std::stoi(get(args, "iters", "10"));

  std::unique_ptr<cur4llm::model::CausalLM> lm;
  std::string source;
  if (args.count("model")) {
    source = args.at("model");
    lm = cur4llm::model::CausalLM::load(source, options);
  } else if (args.count("config")) {
    source = args.at("config");
    lm = cur4llm::model::CausalLM::random(cur4llm::model::ModelConfig::from_file(source), options, 0);
  } else {
    throw std::invalid_argument("give --model FOLDER or --config CONFIG.json");
  }
  const auto& c = lm->config();
  auto ids = at::randint(c.vocab_size, {batch, seqlen}, at::TensorOptions().dtype(at::kLong)).to(lm->device());

#ifdef CUR4LLM_BENCH_CUDA
  if (lm->device().is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(lm->device().index() < 0 ? 0 : lm->device().index());
#endif
  c10::InferenceMode guard;
  std::vector<double> times;
  for (int i = 0; i < warmup + iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto logits = lm->forward(ids);
    sync(logits);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) times.push_back(s);
  }
  const double mean = std::accumulate(times.begin(), times.end(), 0.0) / times.size();
  const double best = *std::min_element(times.begin(), times.end());
  const double tokens = static_cast<double>(batch * seqlen);
  // Matrix FLOPs: 2 per weight per token for every Linear (lm_head included), plus
  // attention's QK^T and PV over the causal half of the T x T scores.
  const double linear_flops = 2.0 * lm->linear_weight_params() * tokens;
  const double attn_flops = 2.0 * 2.0 * batch * c.num_layers * c.num_heads * c.head_dim * seqlen * (seqlen + 1) / 2.0;
  nlohmann::json out = {
      {"benchmark", "forward"},
      {"source", source},
      {"model_type", c.model_type},
      {"linear_params", lm->linear_weight_params()},
      {"device", lm->device().str()},
      {"dtype", c10::toString(lm->dtype())},
      {"batch", batch},
      {"seqlen", seqlen},
      {"iters", iters},
      {"mean_s", mean},
      {"min_s", best},
      {"tokens_per_s", tokens / mean},
      {"tflops", (linear_flops + attn_flops) / mean / 1e12},
  };
#ifdef CUR4LLM_BENCH_CUDA
  if (lm->device().is_cuda()) {
    const int dev = lm->device().index() < 0 ? 0 : lm->device().index();
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(dev);
    out["peak_device_memory_bytes"] =
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) out["device_name"] = prop.name;
  }
#endif
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  out["peak_host_rss_bytes"] = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  std::cout << out.dump() << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_forward: " << e.what() << "\n";
  return 1;
}
