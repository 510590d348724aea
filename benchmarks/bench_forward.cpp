// Forward throughput of a causal LM: tokens/s, achieved TFLOP/s and peak memory
// for a model folder (real weights) or a config.json (random weights of that
// shape). Prints one JSON object. Timings only; never a pass/fail test.
//
//   bench_forward --model PATH | --config CONFIG.json
//                 [--device cuda] [--dtype bf16] [--batch 1] [--seqlen 2048]
//                 [--warmup 2] [--iters 10] [--factorize dense,cur:0.6,svd:0.6] [--peak_tflops X] [--graph 0]
//
// --seqlen and --factorize take comma-separated lists; one JSON line per pair.
// KIND:RATIO replaces every Linear of the decoder layers by a factorized one
// of random factors (KIND cur, cur_folded or svd) at the rank its compressor
// gives RATIO, to time a compressed model of that shape ("dense": as loaded).
// --seqlen 1 times one token per sequence (what decoding reads: every weight
// once), without a KV cache. --graph 1 adds "graph_s": one forward captured
// in a CUDA graph and replayed --iters times (the device's time without the
// host's launch overheads, as a decoding loop under CUDA graphs pays).
#include "bench_common.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <iostream>
#include <map>
#include <numeric>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  const int64_t batch = args.integer("batch", 1);
  const int warmup = static_cast<int>(args.integer("warmup", 2));
  const int iters = static_cast<int>(args.integer("iters", 10));

  std::string source;
  auto lm = bench::load_model(args, &source);
  const auto& c = lm->config();
  std::map<std::string, model::LinearPtr> dense_slots;
  for (const auto& info : lm->linears()) dense_slots[info.name] = lm->linear_ptr(info.name);

  for (const auto& spec : args.list("factorize", "dense")) {
    // Back to the dense model, then the factorized layers of this spec.
    for (const auto& [name, slot] : dense_slots) lm->replace_linear(name, slot);
    nlohmann::json base = {{"benchmark", "forward"}, {"source", source}, {"layers", spec}};
    if (spec != "dense") {
      const auto colon = spec.find(':');
      if (colon == std::string::npos) throw std::invalid_argument("--factorize KIND:RATIO, e.g. cur:0.6");
      base["factorized_layers"] = bench::factorize_decoder(*lm, spec.substr(0, colon), std::stod(spec.substr(colon + 1)));
    }
    for (const auto& seqlen_str : args.list("seqlen", "512")) {
      const int64_t seqlen = std::stoll(seqlen_str);
      auto ids = at::randint(c.vocab_size, {batch, seqlen}, at::TensorOptions().dtype(at::kLong)).to(lm->device());
      bench::reset_peak_memory(lm->device());
      c10::InferenceMode guard;
      std::vector<double> times;
      for (int i = 0; i < warmup + iters; ++i) {
        const double s = bench::timed(lm->device(), [&] { (void)lm->forward(ids); });
        if (i >= warmup) times.push_back(s);
      }
      std::optional<double> graph_s;
      std::string graph_error;
      if (args.integer("graph", 0) != 0) {
        graph_s = bench::graph_timed(lm->device(), 1, iters, [&] { (void)lm->forward(ids); }, &graph_error);
      }
      const double mean = std::accumulate(times.begin(), times.end(), 0.0) / times.size();
      const double best = *std::min_element(times.begin(), times.end());
      const double tokens = static_cast<double>(batch * seqlen);
      nlohmann::json out = base;
      out.update(bench::device_json(*lm, args.real("peak_tflops", 0)));
      out.update({{"model_type", c.model_type},
                  {"linear_params", lm->linear_weight_params()},
                  {"batch", batch},
                  {"seqlen", seqlen},
                  {"iters", iters},
                  {"mean_s", mean},
                  {"min_s", best},
                  {"tokens_per_s", tokens / mean}});
      bench::add_rate(out, bench::forward_flops(*lm, batch, seqlen), mean);
      if (graph_s) out["graph_s"] = *graph_s;
      if (!graph_error.empty()) out["graph_error"] = graph_error;
      out["peak_device_memory_bytes"] = bench::peak_memory(lm->device());
      out["peak_host_rss_bytes"] = bench::peak_host_rss();
      std::cout << out.dump() << std::endl;
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_forward: " << e.what() << "\n";
  return 1;
}
