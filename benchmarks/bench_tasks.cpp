// Throughput of task evaluation (eval/tasks.h): items/s per task, on a model
// folder or on random weights of a config's shape. Prints one JSON line per
// task. Timings only; never a pass/fail test.
//
//   bench_tasks --config benchmarks/configs/llama-7b.json --tokenizer TOKENIZER_FOLDER
//               --data_dir DATA [--tasks hellaswag,mmlu] [--limit 200] [--mmlu_limit 4]
//               [--device cuda] [--dtype fp16] [--max_batch_tokens N (default: by device)]
//               [--share_prefixes 0|1 (default 1)]
//
// DATA holds tasks/<task>/... (docs/evaluation.md). --limit caps the items of
// each task; for mmlu, --mmlu_limit caps the items of each of its 57 subjects.
// Encoding (tokenizer) and scoring (model) are timed apart.
#include "bench_common.h"

#include <cur4llm/eval/tasks.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <iostream>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  args.check_known({"model", "config", "tokenizer", "data_dir", "tasks", "limit", "mmlu_limit", "device", "dtype",
                    "seed", "max_batch_tokens", "share_prefixes"});
  std::string source;
  auto lm = bench::load_model(args, &source);
  auto tok = tokenize::load_tokenizer(args.str("tokenizer", args.str("model", "")));
  if (!args.has("data_dir")) throw std::invalid_argument("give --data_dir DATA (with tasks/<task>/...)");
  eval::ScoreOptions options;
  options.max_batch_tokens = args.integer("max_batch_tokens", options.max_batch_tokens);
  options.share_prefixes = args.integer("share_prefixes", 1) != 0;
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
    const double score_s =
        bench::timed(lm->device(), [&] { (void)eval::score_requests(*lm, encoded, options, &stats); });
    nlohmann::json j = {{"benchmark", "tasks"},
                        {"source", source},
                        {"task", name},
                        {"items", task.items.size()},
                        {"requests", encoded.size()},
                        {"request_tokens", tokens},
                        {"rows", stats.rows},
                        {"shared_groups", stats.shared_groups},
                        {"tokens_run", stats.tokens},
                        {"max_batch_tokens", options.max_batch_tokens},
                        {"share_prefixes", options.share_prefixes},
                        {"encode_s", encode_s},
                        {"score_s", score_s},
                        {"items_per_s", static_cast<double>(task.items.size()) / score_s},
                        {"device", bench::device_name(lm->device())},
                        {"dtype", c10::toString(lm->dtype())}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_tasks: " << e.what() << "\n";
  return 1;
}
