// acur: activation-aware CUR (or SVD) compression of a Hugging Face causal LM.
// Flag names and defaults follow the reference pipeline (asvd.py); see
// docs/acur.md for every flag and docs/deviations.md for where we differ.
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/host_memory.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "app_common.h"
#include "pipeline_flags.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <iostream>

namespace po = boost::program_options;
namespace fs = std::filesystem;
using cur4llm::app::guarded_main;
using cur4llm::app::split_list;

namespace {

struct Options {
  std::string model_id;
  std::string weight_quant = "none";
  std::string eval_ppl = "wikitext2,ptb";
  bool raw_model = false;
  std::string output = "output";
  int64_t limit = -1;
  bool allow_nonfinite = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string now_iso8601() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

int run(int argc, char** argv) {
  cur4llm::util::tune_host_allocator();
  Options o;
  cur4llm::app::PipelineFlags flags;
  po::options_description ref("Options of the reference pipeline (asvd.py)");
  ref.add_options()
      ("help,h", "print this help")
      ("model_id", po::value(&o.model_id)->required(), "model folder, or an org/name id in the local Hugging Face cache")
      ("weight_quant", po::value(&o.weight_quant)->default_value("none"),
       "none, rtn_int8 or rtn_int6 (per channel, as the reference), or rtn_int4 (groups of 128): after compression")
      ("eval_ppl", po::value(&o.eval_ppl)->default_value("wikitext2,ptb"),
       "datasets to evaluate, comma-separated (name, name:split, text file, or none)")
      ("raw_model", po::bool_switch(&o.raw_model), "evaluate the model without compression");
  po::options_description own("cur4llm options");
  cur4llm::app::add_pipeline_flags(ref, own, flags);
  own.add_options()
      ("output", po::value(&o.output)->default_value("output"), "folder for results.jsonl and plan files")
      ("limit", po::value(&o.limit)->default_value(-1), "evaluate only the first N windows (-1: all)")
      ("allow_nonfinite", po::bool_switch(&o.allow_nonfinite), "load weights holding NaN or infinity (refused by default)");
  po::options_description all("acur: activation-aware CUR compression of a Hugging Face causal LM\n\n"
                              "Usage: acur --model_id MODEL (--param_ratio_target R | --ppl_target P | "
                              "--compress_kv_cache --kv_cache_ratio_target R | --raw_model) [options]");
  all.add(ref).add(own);
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, all), vm);
  if (vm.count("help") || argc == 1) {
    std::cout << all << "\n";
    return 0;
  }
  po::notify(vm);
  // Mistakes found now, not after the work.
  if (o.limit == 0 || o.limit < -1) throw std::invalid_argument(fmt::format("--limit must be -1 (all) or positive, not {}", o.limit));
  if (vm.count("eval_ppl") && !vm["eval_ppl"].defaulted() && split_list(o.eval_ppl).empty() &&
      o.eval_ppl.find("none") == std::string::npos) {
    throw std::invalid_argument("--eval_ppl names no dataset (give none to skip evaluation)");
  }
  cur4llm::app::check_output_folder(o.output, "--output");
  auto pipe = flags.resolved();
  if (o.raw_model) {
    cur4llm::pipeline::validate_settings(pipe);
  } else {
    cur4llm::pipeline::validate(pipe);
  }
  if (o.weight_quant != "none" && o.weight_quant != "rtn_int8" && o.weight_quant != "rtn_int6" &&
      o.weight_quant != "rtn_int4") {
    throw std::invalid_argument(
        fmt::format("--weight_quant must be none, rtn_int8, rtn_int6 or rtn_int4, not \"{}\"", o.weight_quant));
  }

  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(flags.device);
  if (!flags.dtype.empty()) load.dtype = cur4llm::model::parse_dtype(flags.dtype);
  load.allow_nonfinite = o.allow_nonfinite;
  const fs::path data_dir = pipe.data_dir.empty() ? cur4llm::data::default_data_dir() : pipe.data_dir;
  const auto eval_sets = split_list(o.eval_ppl);
  for (const auto& spec : eval_sets) cur4llm::data::resolve_dataset(spec, cur4llm::data::Purpose::Evaluation, data_dir);

  nlohmann::json timings = nlohmann::json::object();
  auto t0 = std::chrono::steady_clock::now();
  const fs::path folder = cur4llm::io::resolve_model_id(o.model_id);
  auto lm = cur4llm::model::CausalLM::load(folder, load);
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  timings["load_s"] = seconds_since(t0);
  fmt::print(stderr, "loaded {} ({}, {} layers, {}) on {} in {:.1f} s; tokenizer: {}\n", folder.string(),
             lm->config().model_type, lm->num_layers(), c10::toString(lm->dtype()), lm->device().str(),
             timings["load_s"].get<double>(), tokenizer->describe());
  const int64_t seqlen = cur4llm::pipeline::effective_seqlen(*lm, pipe.seqlen);
  pipe.seqlen = seqlen;
  const auto counts = cur4llm::model::count_params(*lm);

  nlohmann::json record = {{"time", now_iso8601()},
                           {"model_id", o.model_id},
                           {"model_folder", folder.string()},
                           {"raw_model", o.raw_model},
                           {"method", o.raw_model ? "dense" : pipe.method},
                           {"seqlen", seqlen},
                           {"device", lm->device().str()},
                           {"dtype", c10::toString(lm->dtype())}};

  if (!o.raw_model) {
    auto result = cur4llm::pipeline::compress_model(*lm, *tokenizer, pipe);
    for (const auto& [stage, s] : result.timings) timings[stage] = s;
    auto& plan = result.plan;
    plan.meta()["model_id"] = o.model_id;
    std::cout << plan.table() << std::flush;
    const fs::path plan_file = fs::path(o.output) / cur4llm::pipeline::plan_file_name(
                                                         cur4llm::pipeline::model_label(o.model_id), pipe, result.target_label);
    fs::create_directories(plan_file.parent_path().empty() ? fs::path(".") : plan_file.parent_path());
    plan.save(plan_file);
    fmt::print(stderr, "plan saved to {}\n", plan_file.string());
    record["plan_file"] = plan_file.string();
    record["search"] = {{"cut", result.search_cut}, {"entries", result.search_entries},
                        {"nominal_ratio", result.nominal_ratio}};
    if (result.dense_calibration_ppl > 0) record["dense_calibration_ppl"] = result.dense_calibration_ppl;
  }

  // Real parameter counts, after compression.
  const auto after = cur4llm::model::count_params(*lm);
  record["param_ratio_linear"] = static_cast<double>(after.linear_stored) / counts.linear_dense;
  record["param_ratio_model"] = static_cast<double>(after.total_stored) / counts.total_dense;
  record["linear_params"] = {{"stored", after.linear_stored}, {"dense", counts.linear_dense}};
  fmt::print("param ratio: {:.4f} of Linear weights, {:.4f} of the whole model\n",
             record["param_ratio_linear"].get<double>(), record["param_ratio_model"].get<double>());

  if (o.weight_quant != "none") {
    // int8 / int6 as the reference (fp32 scales); group-wise int4 has no reference counterpart and
    // takes the packed storage's arithmetic (fp16 scales), applied in memory.
    const int64_t n = o.weight_quant == "rtn_int4"
                          ? cur4llm::quant::rtn_quantize_model(*lm, cur4llm::quant::parse_quant_format(o.weight_quant))
                          : cur4llm::quant::rtn_quantize_model(*lm, o.weight_quant == "rtn_int8" ? 8 : 6);
    fmt::print(stderr, "{}: quantized {} weight tensors of the decoder layers\n", o.weight_quant, n);
    record["weight_quant"] = o.weight_quant;
  }

  nlohmann::json results = nlohmann::json::object();
  for (const auto& spec : eval_sets) {
    t0 = std::chrono::steady_clock::now();
    cur4llm::pipeline::EvalOptions eopts;
    eopts.seqlen = seqlen;
    eopts.batch_size = pipe.batch_size;
    eopts.max_windows = o.limit;
    eopts.data_dir = data_dir;
    auto r = cur4llm::pipeline::evaluate_dataset(*lm, *tokenizer, spec, eopts);
    fmt::print("{} {:.4f}\n", spec, r.perplexity);
    std::fflush(stdout);
    if (!std::isfinite(r.perplexity)) {
      throw std::runtime_error(fmt::format("perplexity on {} is {} (the model's outputs overflow or are NaN); "
                                           "no result is recorded", spec, r.perplexity));
    }
    results[spec] = {{"ppl", r.perplexity}, {"windows", r.windows}, {"tokens", r.tokens}};
    timings["eval_" + spec + "_s"] = seconds_since(t0);
  }
  record["ppl"] = results;
  record["timings"] = timings;
  nlohmann::json args = {{"param_ratio_target", pipe.param_ratio_target}, {"ppl_target", pipe.ppl_target},
                         {"kv_cache_ratio_target", pipe.kv_cache_ratio_target}, {"act_aware", pipe.act_aware},
                         {"alpha", pipe.alpha}, {"n_calib_samples", pipe.n_calib_samples},
                         {"calib_dataset", pipe.calib_dataset}, {"scaling_method", pipe.scaling_method},
                         {"sensitivity_metric", pipe.sensitivity_metric}, {"sigma_fuse", pipe.sigma_fuse},
                         {"seed", pipe.seed}, {"rank_align", pipe.rank_align}, {"use_bos", pipe.use_bos},
                         {"cur_selection", pipe.cur_selection}, {"cur_fold_u", pipe.cur_fold_u}, {"sequential", pipe.sequential},
                         {"search", pipe.search}, {"candidates", flags.candidates}};
  record["args"] = args;
  for (const auto& [stage, s] : timings.items()) fmt::print(stderr, "time {}: {:.2f} s\n", stage, s.get<double>());
  const fs::path results_file = fs::path(o.output) / "results.jsonl";
  cur4llm::io::append_line(results_file, record.dump());
  fmt::print(stderr, "results appended to {}\n", results_file.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return guarded_main("acur", [&] { return run(argc, argv); }); }
