// Perplexity with every Linear compressed at one ratio (no sensitivity, no
// search): isolates the decomposition from the allocation. Prints one JSON
// object per method. Diagnostics only; never pass/fail.
//
//   bench_uniform --model DIR --calib TEXT --eval TEXT [--ratio 0.9] [--methods svd_whiten,skeleton]
//                 [--seqlen 512] [--samples 32] [--seed 233] [--limit N] [--device cpu] [--sequential]
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/sequential.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>

#include "bench_common.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  args.check_known({"model", "calib", "eval", "ratio", "methods", "seqlen", "samples", "seed", "limit", "device",
                    "sequential"});
  const std::string model_dir = args.str("model", ""), calib = args.str("calib", ""), eval_text = args.str("eval", "");
  const std::string methods = args.str("methods", "svd_whiten,skeleton"), device = args.str("device", "cpu");
  const int64_t seqlen = args.integer("seqlen", 512), samples = args.integer("samples", 32);
  const int64_t limit = args.integer("limit", -1);
  const auto seed = static_cast<uint64_t>(args.integer("seed", 233));
  const double ratio = args.real("ratio", 0.9);
  const bool sequential = args.integer("sequential", 0) != 0;
  if (model_dir.empty() || calib.empty() || eval_text.empty()) throw std::invalid_argument("give --model, --calib and --eval");
  model::LoadOptions load;
  load.device = model::parse_device(device);
  auto tok = tokenize::load_tokenizer(model_dir);
  data::CalibrationOptions copts;
  copts.n_samples = samples;
  copts.seqlen = seqlen;
  copts.seed = seed;
  auto ids = data::sample_calibration(data::load_text(calib, data::Purpose::Calibration, ".").text, *tok, copts);
  auto eval_ids = tok->encode(data::load_text(eval_text, data::Purpose::Evaluation, ".").text);
  std::stringstream list(methods);
  for (std::string method; std::getline(list, method, ',');) {
    auto lm = model::CausalLM::load(model_dir, load);
    auto compressor = compress::make_compressor(method);
    calib::CollectOptions so;
    so.gram = compressor->statistic() == compress::LayerStatistic::Gram;
    so.batch_size = 8;
    auto stats = calib::collect_statistics(*lm, ids, so);
    compress::ScaleFn stat = [&](const std::string& layer) {
      return so.gram ? stats.mean_gram(layer) : stats.scale(layer, calib::ScalingMethod::AbsMean, 0.5);
    };
    search::Allocation alloc;
    for (const auto& info : lm->linears()) alloc.push_back({info.name, ratio, true});
    auto plan = sequential ? compress::apply_allocation_sequential(*lm, alloc, *compressor, ids)
                           : compress::apply_allocation(*lm, alloc, *compressor, stat);
    c10::InferenceMode guard;
    eval::PerplexityOptions popts;
    popts.seqlen = seqlen;
    popts.batch_size = 8;
    popts.max_windows = limit;
    auto r = eval::evaluate_perplexity(*lm, eval_ids, popts);
    nlohmann::json j = {{"method", method}, {"ratio", ratio}, {"sequential", sequential}, {"real_ratio", plan.param_ratio()},
                        {"ppl", r.perplexity}, {"windows", r.windows}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_uniform: " << e.what() << "\n";
  return 1;
}
