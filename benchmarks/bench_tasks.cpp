// Throughput of task evaluation (eval/tasks.h): items/s per task, on a model
// folder or on random weights of a config's shape. Prints one JSON line per
// task. Timings only; never a pass/fail test.
//
//   bench_tasks --config benchmarks/configs/llama-7b.json --tokenizer TOKENIZER_FOLDER
//               --data_dir DATA [--tasks hellaswag,mmlu] [--limit 200] [--mmlu_limit 4]
//               [--device cuda] [--dtype fp16] [--max_batch_tokens N (default: by device)]
//               [--share_prefixes 0|1 (default 1)] [--min_shared_prefix N (default 16)]
//               [--max_packed_tokens N (default: by model; -1 never)] [--repeat N (default 1)] [--trace FILE]
//               [--sdpa flash,efficient,math,cudnn (default: all PyTorch allows)]
//
// DATA holds tasks/<task>/... (docs/evaluation.md). --limit caps the items of
// each task; for mmlu, --mmlu_limit caps the items of each of its 57 subjects.
// Encoding (tokenizer) and scoring (model) are timed apart. The first scoring
// run is timed as a user meets it (kernel plans made for each new shape);
// --repeat N > 1 runs it N times and also reports the fastest later run.
// --trace FILE saves a Chrome trace of the last run (PyTorch's profiler, CPU
// and CUDA) as FILE.<task>.json; benchmarks/trace_summary.py reads it.
// --sdpa keeps only the named backends of at::scaled_dot_product_attention.
#include "bench_common.h"
#include "bench_trace.h"

#include <cur4llm/eval/tasks.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <ATen/Context.h>
#include <torch/version.h>

#include <algorithm>
#include <iostream>
#include <set>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  args.check_known({"model", "config", "tokenizer", "data_dir", "tasks", "limit", "mmlu_limit", "device", "dtype",
                    "seed", "max_batch_tokens", "share_prefixes", "min_shared_prefix", "max_packed_tokens", "repeat", "trace", "sdpa"});
  if (args.has("sdpa")) {
    std::set<std::string> keep;
    for (const auto& b : args.list("sdpa", "")) {
      if (b != "flash" && b != "efficient" && b != "math" && b != "cudnn")
        throw std::invalid_argument("--sdpa takes flash, efficient, math and cudnn, not \"" + b + "\"");
      keep.insert(b);
    }
#if TORCH_VERSION_MAJOR >= 2
    auto& ctx = at::globalContext();
    ctx.setSDPUseFlash(keep.count("flash") > 0);
    ctx.setSDPUseMemEfficient(keep.count("efficient") > 0);
    ctx.setSDPUseMath(keep.count("math") > 0);
    ctx.setSDPUseCuDNN(keep.count("cudnn") > 0);
#else
    throw std::invalid_argument("--sdpa needs LibTorch 2.x");
#endif
  }
  const int64_t repeat = args.integer("repeat", 1);
  if (repeat < 1) throw std::invalid_argument("--repeat must be at least 1");
  const bench::Tracer tracer(args.str("trace", ""));
  std::string source;
  auto lm = bench::load_model(args, &source);
  auto tok = tokenize::load_tokenizer(args.str("tokenizer", args.str("model", "")));
  if (!args.has("data_dir")) throw std::invalid_argument("give --data_dir DATA (with tasks/<task>/...)");
  eval::ScoreOptions options;
  options.max_batch_tokens = args.integer("max_batch_tokens", options.max_batch_tokens);
  options.share_prefixes = args.integer("share_prefixes", 1) != 0;
  options.min_shared_prefix = args.integer("min_shared_prefix", 0);
  options.max_packed_tokens = args.integer("max_packed_tokens", 0);
  for (const auto& name : args.list("tasks", "hellaswag,mmlu")) {
    eval::TaskLoadOptions load;
    load.limit = name == "mmlu" ? args.integer("mmlu_limit", 4) : args.integer("limit", 200);
    const auto task = eval::load_task(name, args.str("data_dir", ""), load);
    std::vector<eval::EncodedRequest> encoded;
    auto t0 = std::chrono::steady_clock::now();
    int64_t tokens = 0;
    for (const auto& item : task.items)
      for (const auto& req : item.requests) {
        encoded.push_back(eval::encode_request(*tok, req));
        tokens += static_cast<int64_t>(encoded.back().context.size() + encoded.back().continuation.size());
      }
    const double encode_s = bench::seconds_since(t0);
    (void)eval::score_requests(*lm, {encoded.front()}, options);  // warm-up
    eval::ScoreStats stats;
    std::vector<double> runs;
    for (int64_t r = 0; r < repeat; ++r) {
      const bool traced = r + 1 == repeat;
      if (traced) tracer.start();
      runs.push_back(bench::timed(lm->device(), [&] { (void)eval::score_requests(*lm, encoded, options, &stats); }));
      if (traced) tracer.save("." + name + ".json");
    }
    const double score_s = runs.front();
    const double warm_s = runs.size() > 1 ? *std::min_element(runs.begin() + 1, runs.end()) : score_s;
    nlohmann::json j = {{"benchmark", "tasks"},
                        {"source", source},
                        {"task", name},
                        {"items", task.items.size()},
                        {"requests", encoded.size()},
                        {"request_tokens", tokens},
                        {"rows", stats.rows},
                        {"shared_groups", stats.shared_groups},
                        {"packed_groups", stats.packed_groups},
                        {"tokens_run", stats.tokens},
                        {"max_batch_tokens", options.max_batch_tokens},
                        {"share_prefixes", options.share_prefixes},
                        {"min_shared_prefix", options.min_shared_prefix},
                        {"max_packed_tokens", options.max_packed_tokens},
                        {"encode_s", encode_s},
                        {"score_s", score_s},
                        {"items_per_s", static_cast<double>(task.items.size()) / score_s},
                        {"score_s_runs", runs},
                        {"items_per_s_warm", static_cast<double>(task.items.size()) / warm_s},
                        {"sdpa", args.str("sdpa", "default")},
                        {"device", bench::device_name(lm->device())},
                        {"dtype", c10::toString(lm->dtype())}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_tasks: " << e.what() << "\n";
  return 1;
}
