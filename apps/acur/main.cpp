// acur: activation-aware CUR (or SVD) compression of a Hugging Face causal LM.
// Flag names follow the reference pipeline (asvd.py); see docs/acur.md for
// every flag, its status against the reference, and docs/deviations.md for
// where we differ.
#include <cur4llm/data/text_data.h>
#include <cur4llm/dist/group.h>
#include <cur4llm/io/cache.h>
#include <cur4llm/eval/tasks.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/quant/awq.h>
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/repo/acur_repo.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/memory.h>
#include <cur4llm/util/host_memory.h>

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "app_common.h"
#include "distributed.h"
#include "pipeline_flags.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <iostream>
#include <map>
#include <utility>

namespace po = boost::program_options;
namespace fs = std::filesystem;
using cur4llm::app::guarded_main;
using cur4llm::app::split_list;

namespace {

struct Options {
  std::string model_id;
  std::string revision = "main";
  std::string weight_quant = "none";
  std::string eval_ppl = "wikitext2,ptb";
  bool raw_model = false;
  bool skip_dense_eval = false;
  std::string output = "output";
  std::string results_file;
  int64_t limit = -1;
  std::string eval_tasks;
  bool eval_mmlu = false;
  bool eval_tasks_no_bos = false;
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

// Readable names of the pipeline's stages, in run order.
std::string stage_label(const std::string& key) {
  static const std::map<std::string, std::string> labels = {
      {"load_s", "load model"},          {"calib_samples_s", "calibration samples"},
      {"statistics_s", "activation statistics"}, {"sensitivity_s", "sensitivity"},
      {"search_s", "search"},            {"decompose_s", "decomposition"},
      {"quantize_s", "quantization"},    {"dense_eval_s", "evaluation (dense)"},
      {"eval_s", "evaluation"},         {"eval_tasks_s", "tasks"}};
  const auto it = labels.find(key);
  return it == labels.end() ? key : it->second;
}

// "(first 20 of 1591 windows)" when --limit cut the evaluation.
using StagePeaks = std::vector<std::pair<std::string, cur4llm::util::MemoryPeaks>>;

// results.jsonl "peak_memory": stage -> {"host_bytes", "host_since_reset", "cuda:0", ..., "offload_bytes"}.
nlohmann::json memory_record(const StagePeaks& memory) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [stage, p] : memory) {
    nlohmann::json j = {{"host_bytes", p.host_bytes}, {"host_since_reset", p.host_since_reset}};
    for (const auto& [device, bytes] : p.devices) j[device] = bytes;
    if (p.offload_bytes > 0) j["offload_bytes"] = p.offload_bytes;
    out[stage] = j;
  }
  return out;
}

// "peak memory: load 1.21 GiB host; statistics 1.30 GiB host, 2.04 GiB cuda:0; ..." on stderr.
void print_memory(const StagePeaks& memory) {
  if (memory.empty() || memory.front().second.host_bytes < 0) return;
  fmt::print(stderr, "peak memory{}:", memory.front().second.host_since_reset ? "" : " (host: since the start)");
  for (const auto& [stage, p] : memory) {
    fmt::print(stderr, " {} {} host", stage_label(stage), cur4llm::util::format_bytes(p.host_bytes));
    for (const auto& [device, bytes] : p.devices) fmt::print(stderr, ", {} {}", cur4llm::util::format_bytes(bytes), device);
    if (p.offload_bytes > 0) fmt::print(stderr, ", {} offloaded weights copied in", cur4llm::util::format_bytes(p.offload_bytes));
    fmt::print(stderr, ";");
  }
  fmt::print(stderr, "\n");
}

std::string windows_note(const cur4llm::eval::PerplexityResult& r, int64_t seqlen) {
  const int64_t all = seqlen > 0 ? r.tokens / seqlen : r.windows;
  return r.windows < all ? fmt::format(" (first {} of {} windows)", r.windows, all) : std::string();
}

// The dense model's perplexity on `spec`: cached next to the other artefacts when --use_cache is set.
cur4llm::eval::PerplexityResult dense_perplexity(const cur4llm::model::CausalLM& lm,
                                                 const cur4llm::tokenize::Tokenizer& tokenizer, const std::string& spec,
                                                 const cur4llm::pipeline::EvalOptions& eopts,
                                                 const cur4llm::pipeline::PipelineOptions& pipe, bool write_cache) {
  std::optional<fs::path> file;
  cur4llm::io::CacheKey key{"dense_ppl",
                            {{"model_fingerprint", cur4llm::io::model_fingerprint(lm.folder())},
                             {"dtype", c10::toString(lm.dtype())},
                             {"device", lm.device().str()},
                             {"dataset", spec},
                             {"seqlen", std::to_string(eopts.seqlen)},
                             {"limit", std::to_string(eopts.max_windows)}}};
  if (pipe.use_cache && !lm.folder().empty()) {
    file = pipe.cache_dir / key.file_name("json");
    std::error_code ec;
    if (fs::is_regular_file(*file, ec)) {
      try {
        const auto j = nlohmann::json::parse(cur4llm::io::read_file(*file));
        std::map<std::string, std::string> meta = j.at("key").get<std::map<std::string, std::string>>();
        if (key.mismatch(meta).empty()) {
          cur4llm::eval::PerplexityResult r;
          r.perplexity = j.at("ppl").get<double>();
          r.windows = j.at("windows").get<int64_t>();
          r.tokens = j.at("tokens").get<int64_t>();
          fmt::print(stderr, "cache hit: {}\n", file->string());
          return r;
        }
      } catch (const std::exception& e) {
        fmt::print(stderr, "cache: {} is unreadable ({}); recomputing\n", file->string(), e.what());
      }
    }
  }
  auto r = cur4llm::pipeline::evaluate_dataset(lm, tokenizer, spec, eopts);
  if (file && write_cache) {
    try {  // a cache file that cannot be written (a full disk) is not an error of the run
      fs::create_directories(pipe.cache_dir);
      const nlohmann::json j = {{"key", key.as_metadata()}, {"ppl", r.perplexity}, {"windows", r.windows}, {"tokens", r.tokens}};
      cur4llm::io::write_file_atomic(*file, j.dump(1) + "\n");
    } catch (const std::exception& e) {
      fmt::print(stderr, "cache: cannot write {} ({}); going on without it\n", file->string(), e.what());
    }
  }
  return r;
}

int run_rank(int argc, char** argv, const std::shared_ptr<cur4llm::dist::Group>& group) {
  cur4llm::util::tune_host_allocator();
  std::signal(SIGXFSZ, SIG_IGN);  // a file size limit gives a write error (EFBIG), not a core dump
  Options o;
  cur4llm::app::PipelineFlags flags;
  po::options_description ref("Options of the reference pipeline (asvd.py)");
  ref.add_options()
      ("model_id", po::value(&o.model_id)->required(),
       "model folder, or an org/name Hugging Face id (from the local cache, else downloaded)")
      ("revision", po::value(&o.revision)->default_value("main"),
       "with an org/name --model_id: the Hub branch, tag or commit (default main)")
      ("weight_quant", po::value(&o.weight_quant)->default_value("none"),
       "none, rtn_int8 or rtn_int6 (per channel, as the reference), rtn_int4 (groups of 128), or awq_int8 / "
       "awq_int4 (activation-aware scales searched on the calibration data): after compression")
      ("eval_ppl", po::value(&o.eval_ppl)->default_value("wikitext2,ptb"),
       "datasets to evaluate, comma-separated (name, name:split, text file, or none)")
      ("eval_tasks", po::value(&o.eval_tasks), "zero-shot tasks as lm-evaluation-harness scores them, comma-separated "
       "(piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, boolq, lambada_openai, mathqa, mmlu)")
      ("eval_mmlu", po::bool_switch(&o.eval_mmlu), "MMLU, 5-shot (as --eval_tasks mmlu)")
      ("eval_tasks_no_bos", po::bool_switch(&o.eval_tasks_no_bos),
       "encode task requests without BOS, as lm-evaluation-harness 0.4.0-0.4.8 do by default")
      ("raw_model", po::bool_switch(&o.raw_model), "evaluate the model without compression");
  po::options_description own("cur4llm options");
  cur4llm::app::add_pipeline_flags(ref, own, flags);
  own.add_options()
      ("output", po::value(&o.output)->default_value("output"), "folder for results.jsonl and plan files")
      ("results_file", po::value(&o.results_file),
       "the JSON-lines file each run appends its record to (default: <output>/results.jsonl)")
      ("limit", po::value(&o.limit)->default_value(-1), "evaluate only the first N windows, and N items per task (MMLU: per subject) (-1: all)")
      ("skip_dense_eval", po::bool_switch(&o.skip_dense_eval),
       "in a compression run, do not evaluate the dense model first (its perplexity is printed next to the "
       "compressed one; cached with --use_cache)")
      ("allow_nonfinite", po::bool_switch(&o.allow_nonfinite), "load weights holding NaN or infinity (refused by default)")
      ("version", "print the version and exit")
      ("help,h", "print this help");
  po::options_description all("acur: activation-aware CUR compression of a Hugging Face causal LM\n\n"
                              "Usage: acur --model_id MODEL (--param_ratio_target R | --ppl_target P | "
                              "--compress_kv_cache --kv_cache_ratio_target R | --raw_model) [options]");
  all.add(ref).add(own);
  po::variables_map vm;
  int exit_code = 0;
  if (!cur4llm::app::parse_command_line("acur", argc, argv, all, vm, exit_code)) return exit_code;
  cur4llm::app::bind_rank_devices(*group, flags.gpus_per_rank);  // before CUDA is first used

  // Mistakes found now, not after the work.
  if (vm.count("eval_ppl") && !vm["eval_ppl"].defaulted() && split_list(o.eval_ppl).empty() &&
      o.eval_ppl.find("none") == std::string::npos) {
    throw std::invalid_argument("--eval_ppl names no dataset (give none to skip evaluation)");
  }
  cur4llm::app::check_output_folder(o.output, "--output");
  if (o.raw_model) {
    for (const char* flag : {"param_ratio_target", "ppl_target", "kv_cache_ratio_target"}) {
      if (!vm[flag].defaulted()) {
        throw std::invalid_argument(fmt::format("--raw_model evaluates the model as it is; it takes no --{}", flag));
      }
    }
    if (flags.options.compress_kv_cache) throw std::invalid_argument("--raw_model takes no --compress_kv_cache");
  }
  cur4llm::app::check_limit(o.limit);
  if (o.weight_quant != "none" && std::find(cur4llm::quant::quant_format_names().begin(),
                                              cur4llm::quant::quant_format_names().end(),
                                              o.weight_quant) == cur4llm::quant::quant_format_names().end()) {
    throw std::invalid_argument(fmt::format("--weight_quant must be none, {}, not \"{}\"",
                                            fmt::join(cur4llm::quant::quant_format_names(), ", "), o.weight_quant));
  }
  const bool awq = o.weight_quant != "none" && cur4llm::quant::parse_quant_format(o.weight_quant).activation_aware;
  auto pipe = flags.resolved();
  cur4llm::app::join_pipeline(group, argc, argv, pipe);  // several ranks: rank 0 alone prints and writes

  // The model first: a wrong --model_id is the error to report, not the data it would have read.
  auto hub = cur4llm::io::HubOptions::from_environment();
  hub.revision = o.revision;
  const fs::path folder = cur4llm::io::resolve_model_id(o.model_id, hub);
  if (!fs::is_regular_file(folder / "config.json")) {
    throw std::runtime_error(fmt::format("{}: no config.json, so this is not a Hugging Face model folder", folder.string()));
  }
  if (o.raw_model) {
    cur4llm::pipeline::validate_settings(pipe);
  } else {
    cur4llm::pipeline::validate(pipe);
  }

  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(flags.device);
  load.device_map = flags.device_map;
  load.max_memory = flags.max_memory;
  if (!flags.dtype.empty()) load.dtype = cur4llm::model::parse_dtype(flags.dtype);
  load.allow_nonfinite = o.allow_nonfinite;
  const fs::path data_dir = pipe.data_dir.empty() ? cur4llm::data::default_data_dir() : pipe.data_dir;
  const auto eval_sets = split_list(o.eval_ppl);
  for (const auto& spec : eval_sets) cur4llm::data::resolve_dataset(spec, cur4llm::data::Purpose::Evaluation, data_dir);
  if (awq) cur4llm::app::require_calibration_data(o.weight_quant, pipe.calib_dataset, data_dir);
  const fs::path results_file = o.results_file.empty() ? fs::path(o.output) / "results.jsonl" : fs::path(o.results_file);
  auto task_names = split_list(o.eval_tasks);
  if (o.eval_mmlu) task_names.push_back("mmlu");
  const auto tasks = cur4llm::eval::load_tasks(task_names, data_dir, {o.limit, {}});  // refuses missing data now

  std::vector<std::pair<std::string, double>> timings;
  std::vector<std::pair<std::string, cur4llm::util::MemoryPeaks>> memory;  // each stage's peaks, as timings
  auto t0 = std::chrono::steady_clock::now();
  // Ends a stage begun at t0: its seconds and peak memory are recorded, the next peak starts.
  auto stage_done = [&](const char* stage) {
    timings.emplace_back(stage, seconds_since(t0));
    memory.emplace_back(stage, cur4llm::util::memory_peaks());
    cur4llm::util::reset_memory_peaks();
  };
  cur4llm::util::reset_memory_peaks();
  auto lm = cur4llm::model::CausalLM::load(folder, load);
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  stage_done("load_s");
  fmt::print(stderr, "loaded {} ({}, {} layers, {}) on {} in {:.1f} s; tokenizer: {}\n", folder.string(),
             lm->config().model_type, lm->num_layers(), c10::toString(lm->dtype()), lm->device().str(),
             timings.back().second, tokenizer->describe());
  const int64_t seqlen = cur4llm::pipeline::effective_seqlen(*lm, pipe.seqlen);
  pipe.seqlen = seqlen;
  const auto counts = cur4llm::model::count_params(*lm);

  nlohmann::json record = {{"time", now_iso8601()},
                           {"cur4llm", cur4llm::app::provenance()},
                           {"model_id", o.model_id},
                           {"model_folder", folder.string()},
                           {"raw_model", o.raw_model},
                           {"method", o.raw_model ? "dense" : pipe.method},
                           {"seqlen", seqlen},
                           {"device", lm->device().str()},
                           {"dtype", c10::toString(lm->dtype())}};

  cur4llm::pipeline::EvalOptions eopts;
  eopts.seqlen = seqlen;
  eopts.batch_size = pipe.batch_size;
  eopts.max_windows = o.limit;
  eopts.data_dir = data_dir;

  // The dense model's perplexity, to print next to the compressed one.
  std::map<std::string, double> dense_ppl;
  if (!o.raw_model && !o.skip_dense_eval && !eval_sets.empty()) {
    t0 = std::chrono::steady_clock::now();
    for (const auto& spec : eval_sets) dense_ppl[spec] = dense_perplexity(*lm, *tokenizer, spec, eopts, pipe, group->is_root()).perplexity;
    stage_done("dense_eval_s");
  }

  std::optional<std::pair<cur4llm::search::CompressionPlan, fs::path>> plan_to_save;
  if (!o.raw_model) {
    auto result = cur4llm::pipeline::compress_model(*lm, *tokenizer, pipe);
    for (const auto& stage : result.timings) timings.push_back(stage);
    for (const auto& stage : result.memory) memory.push_back(stage);
    auto& plan = result.plan;
    plan.meta()["model_id"] = o.model_id;
    std::cout << plan.table() << std::flush;
    const fs::path plan_file = fs::path(o.output) / cur4llm::pipeline::plan_file_name(
                                                         cur4llm::pipeline::model_label(o.model_id), pipe, result.target_label);
    if (group->distributed()) {
      plan_to_save = std::make_pair(plan, plan_file);  // written once every rank has finished
    } else {
      fs::create_directories(plan_file.parent_path().empty() ? fs::path(".") : plan_file.parent_path());
      plan.save(plan_file);
      fmt::print(stderr, "plan saved to {}\n", plan_file.string());
    }
    record["plan_file"] = plan_file.string();
    record["search"] = {{"cut", result.search_cut}, {"entries", result.search_entries},
                        {"nominal_ratio", result.nominal_ratio}};
    if (result.dense_calibration_ppl > 0) record["dense_calibration_ppl"] = result.dense_calibration_ppl;
    if (result.final_calibration_ppl > 0) record["calibration_ppl"] = result.final_calibration_ppl;
    record["budget_ratio"] = result.budget_ratio;
    record["target_met"] = result.target_met;
    if (!result.target_met) record["target_note"] = result.target_note;
    if (result.budget_layers.size() < lm->linears().size()) {
      fmt::print("param ratio: {:.4f} of the budgeted Linear weights (lm_head is tied to the embedding and stays dense)\n",
                 result.budget_ratio);
    }
  }

  // Real parameter counts, after compression.
  const auto after = cur4llm::model::count_params(*lm);
  record["param_ratio_linear"] = static_cast<double>(after.linear_stored) / counts.linear_dense;
  record["param_ratio_model"] = static_cast<double>(after.total_stored) / counts.total_dense;
  record["linear_params"] = {{"stored", after.linear_stored}, {"dense", counts.linear_dense}};
  fmt::print("param ratio: {:.4f} of Linear weights, {:.4f} of the whole model\n",
             record["param_ratio_linear"].get<double>(), record["param_ratio_model"].get<double>());
  // What an export (build_acur_repo, config.json's dtype) would store; not known here for --weight_quant.
  if (o.weight_quant == "none") record["bytes"] = cur4llm::repo::export_weight_bytes(*lm);

  if (o.weight_quant != "none") {
    // int8 / int6 as the reference (fp32 scales); group-wise int4 has no reference counterpart and
    // takes the packed storage's arithmetic (fp16 scales), applied in memory.
    t0 = std::chrono::steady_clock::now();
    int64_t n = 0;
    if (awq) {
      // Scales searched on the inputs the calibration samples give the model as it is now.
      const auto samples = cur4llm::pipeline::calibration_samples(*lm, *tokenizer, pipe);
      cur4llm::quant::AWQOptions aopts;
      aopts.show_progress = true;
      const auto r =
          cur4llm::quant::awq_quantize_model(*lm, samples, cur4llm::quant::parse_quant_format(o.weight_quant), aopts);
      n = static_cast<int64_t>(r.packed.size());
      double error = 0, rtn_error = 0;
      for (const auto& [name, c] : r.choices) {
        error += c.error;
        rtn_error += c.rtn_error;
      }
      const double ratio = rtn_error > 0 ? error / rtn_error : 1.0;
      fmt::print(stderr, "{}: output error on the calibration inputs {:.4f} of RTN's (summed over tensors)\n",
                 o.weight_quant, ratio);
      record["awq_error_ratio"] = ratio;
    } else {
      n = o.weight_quant == "rtn_int4"
              ? cur4llm::quant::rtn_quantize_model(*lm, cur4llm::quant::parse_quant_format(o.weight_quant))
              : cur4llm::quant::rtn_quantize_model(*lm, o.weight_quant == "rtn_int8" ? 8 : 6);
    }
    stage_done("quantize_s");
    fmt::print(stderr, "{}: quantized {} weight tensors of the decoder layers\n", o.weight_quant, n);
    record["weight_quant"] = o.weight_quant;
  }

  nlohmann::json results = nlohmann::json::object();
  t0 = std::chrono::steady_clock::now();
  for (const auto& spec : eval_sets) {
    const auto t1 = std::chrono::steady_clock::now();
    auto r = cur4llm::pipeline::evaluate_dataset(*lm, *tokenizer, spec, eopts);
    const auto dense = dense_ppl.find(spec);
    const std::string note = windows_note(r, seqlen);
    if (dense != dense_ppl.end()) {
      fmt::print("{} {:.4f} (dense {:.4f}){}\n", spec, r.perplexity, dense->second, note);
    } else {
      fmt::print("{} {:.4f}{}\n", spec, r.perplexity, note);
    }
    std::fflush(stdout);
    if (!std::isfinite(r.perplexity)) {
      throw std::runtime_error(fmt::format("perplexity on {} is {} (the model's outputs overflow or are NaN); "
                                           "no result is recorded", spec, r.perplexity));
    }
    results[spec] = {{"ppl", r.perplexity}, {"windows", r.windows}, {"tokens", r.tokens},
                     {"eval_s", seconds_since(t1)}};
    if (dense != dense_ppl.end()) results[spec]["dense_ppl"] = dense->second;
  }
  if (!eval_sets.empty()) stage_done("eval_s");
  record["ppl"] = results;
  if (!tasks.empty()) {
    t0 = std::chrono::steady_clock::now();
    cur4llm::eval::ScoreOptions sopts;
    sopts.show_progress = true;
    sopts.add_special_tokens = !o.eval_tasks_no_bos;
    const auto task_results = cur4llm::eval::evaluate_tasks(*lm, *tokenizer, tasks, sopts);
    std::cout << cur4llm::eval::format_task_table(task_results) << std::flush;
    record["tasks"] = nlohmann::json::parse(cur4llm::eval::task_results_json(task_results));
    stage_done("eval_tasks_s");
  }
  nlohmann::json timing_record = nlohmann::json::object();
  for (const auto& [stage, s] : timings) timing_record[stage] = s;
  record["timings"] = timing_record;
  record["peak_memory"] = memory_record(memory);
  std::string candidates_text;  // as the flag takes them; empty: the sweep's own (the reference's)
  for (double r : pipe.candidates) candidates_text += fmt::format("{}{}", candidates_text.empty() ? "" : ",", r);
  nlohmann::json args = {{"preset", cur4llm::pipeline::preset_name(pipe.preset)},
                         {"param_ratio_target", pipe.param_ratio_target}, {"ppl_target", pipe.ppl_target},
                         {"kv_cache_ratio_target", pipe.kv_cache_ratio_target}, {"act_aware", *pipe.act_aware},
                         {"alpha", pipe.alpha}, {"n_calib_samples", pipe.n_calib_samples},
                         {"calib_dataset", pipe.calib_dataset}, {"scaling_method", pipe.scaling_method},
                         {"sensitivity_metric", pipe.sensitivity_metric}, {"sigma_fuse", pipe.sigma_fuse},
                         {"seed", pipe.seed}, {"rank_align", pipe.rank_align}, {"head_align", pipe.head_align},
                         {"use_bos", pipe.use_bos},
                         {"cur_selection", pipe.cur_selection}, {"cur_fold_u", pipe.cur_fold_u},
                         {"sequential", *pipe.sequential}, {"search", pipe.search},
                         {"candidates", candidates_text}, {"compress_lm_head", flags.compress_lm_head}};
  record["args"] = args;
  fmt::print(stderr, "time:");
  for (const auto& [stage, s] : timings) fmt::print(stderr, " {} {:.2f} s;", stage_label(stage), s);
  fmt::print(stderr, "\n");
  print_memory(memory);
  group->finish();  // every rank got here: the plan and record stand for all of them
  if (plan_to_save && group->is_root()) {
    const auto& [plan, plan_file] = *plan_to_save;
    fs::create_directories(plan_file.parent_path().empty() ? fs::path(".") : plan_file.parent_path());
    plan.save(plan_file);
    fmt::print(stderr, "plan saved to {}\n", plan_file.string());
  }
  if (group->is_root()) {
    cur4llm::io::append_line(results_file, record.dump());
    fmt::print(stderr, "results appended to {}\n", results_file.string());
  }
  return 0;
}

// One process, or one rank of several (docs/distributed.md): a rank's error ends every rank.
int run(int argc, char** argv) {
  return cur4llm::app::run_as_rank("acur", [&](const auto& group) { return run_rank(argc, argv, group); });
}

}  // namespace

int main(int argc, char** argv) { return guarded_main("acur", [&] { return run(argc, argv); }); }
