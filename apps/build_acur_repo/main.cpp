// build_acur_repo: compresses a model as acur does and writes the result as a
// Hugging Face repository that transformers loads with trust_remote_code=True
// (docs/export.md). The compression flags are acur's (docs/acur.md); a plan
// saved by acur (--plan) replaces the sensitivity sweep and the search.
#include <cur4llm/compress/optimize_scale.h>
#include <cur4llm/quant/awq.h>
#include <cur4llm/quant/packed_model.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/io/atomic_folder.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/repo/acur_repo.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/host_memory.h>

#include <ATen/ATen.h>

#include "app_common.h"
#include "distributed.h"
#include "pipeline_flags.h"

#include <csignal>
#include <iostream>

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model_id;
  std::string revision = "main";
  std::string plan;
  std::string output = "output";
  bool overwrite = false;
  std::string max_shard_size = "5GB";
  std::string weight_quant = "none";
  std::string save_dtype;
  std::string eval_ppl = "none";
  int64_t limit = -1;
};

int run_rank(int argc, char** argv, const std::shared_ptr<cur4llm::dist::Group>& group) {
  cur4llm::util::tune_host_allocator();
  std::signal(SIGXFSZ, SIG_IGN);  // a file size limit gives a write error (EFBIG), not a core dump
  Options o;
  cur4llm::app::PipelineFlags flags;
  po::options_description ref("Compression flags (as acur's, see docs/acur.md)");
  ref.add_options()(
      "model_id", po::value(&o.model_id)->required(),
      "model folder, or an org/name Hugging Face id (from the local cache, else downloaded)")(
      "revision", po::value(&o.revision)->default_value("main"), "with an org/name --model_id: the Hub branch, tag or commit (default main)");
  po::options_description own("cur4llm options");
  cur4llm::app::add_pipeline_flags(ref, own, flags);
  po::options_description repo("Repository");
  repo.add_options()
      ("plan", po::value(&o.plan)->default_value(""), "apply a plan saved by acur (its --output) instead of searching")
      ("output", po::value(&o.output)->default_value("output"),
       "parent folder of the repository <output>/<model>-acur<round(100*ratio)>")
      ("overwrite", po::bool_switch(&o.overwrite), "replace an existing repository folder (once the new one is complete)")
      ("max_shard_size", po::value(&o.max_shard_size)->default_value("5GB"),
       "largest safetensors file before the weights are sharded (e.g. 500MB, 2GB, 1GiB)")
      ("weight_quant", po::value(&o.weight_quant)->default_value("none"),
       "none, or store the decoder layers' weights packed: rtn_int8, rtn_int6, rtn_int4, or awq_int8 / awq_int4 "
       "(activation-aware scales searched on the calibration data)")
      ("save_dtype", po::value(&o.save_dtype)->default_value(""),
       "fp32, fp16 or bf16 for floating tensors (default: the source config's dtype)")
      ("eval_ppl", po::value(&o.eval_ppl)->default_value("none"),
       "datasets to evaluate before saving, comma-separated (as acur's)")
      ("limit", po::value(&o.limit)->default_value(-1), "evaluate only the first N windows (-1: all)")
      ("version", "print the version and exit")
      ("help,h", "print this help");
  po::options_description all("build_acur_repo: compress a causal LM and write it as a Hugging Face repository\n\n"
                              "Usage: build_acur_repo --model_id MODEL (--param_ratio_target R | --ppl_target P | "
                              "--plan PLAN.json) [--method cur|svd|skeleton|...] [--output DIR] [options]");
  all.add(ref).add(own).add(repo);
  po::variables_map vm;
  int exit_code = 0;
  if (!cur4llm::app::parse_command_line("build_acur_repo", argc, argv, all, vm, exit_code)) return exit_code;
  cur4llm::app::bind_rank_devices(*group, flags.gpus_per_rank);  // before CUDA is first used
  cur4llm::app::check_limit(o.limit);

  auto pipe = flags.resolved();
  pipe.plan_file = o.plan;
  cur4llm::app::join_pipeline(group, argc, argv, pipe);  // several ranks: rank 0 alone prints and writes
  cur4llm::pipeline::validate(pipe);
  cur4llm::repo::ExportOptions eopts;
  eopts.overwrite = o.overwrite;
  eopts.max_shard_bytes = cur4llm::repo::parse_size(o.max_shard_size);
  if (!o.save_dtype.empty()) eopts.dtype = cur4llm::model::parse_dtype(o.save_dtype);
  std::optional<cur4llm::quant::QuantFormat> quant;
  if (o.weight_quant != "none") quant = cur4llm::quant::parse_quant_format(o.weight_quant);
  const auto eval_sets = cur4llm::app::split_list(o.eval_ppl);
  const fs::path data_dir = pipe.data_dir.empty() ? cur4llm::data::default_data_dir() : pipe.data_dir;
  for (const auto& spec : eval_sets) cur4llm::data::resolve_dataset(spec, cur4llm::data::Purpose::Evaluation, data_dir);
  if (quant && quant->activation_aware) cur4llm::app::require_calibration_data(o.weight_quant, pipe.calib_dataset, data_dir);

  // With a ratio target the folder name is known before any work, so that an existing one is refused at once.
  // <model>-acur<round(100*ratio)>, then "-<method>" for methods other than cur, "-folded" for CUR with
  // U folded into C, and "-<format>" when packed.
  auto folder_for = [&](double ratio) {
    std::string name = cur4llm::repo::repo_folder_name(cur4llm::pipeline::model_label(o.model_id), ratio);
    if (pipe.method != "cur" && pipe.method != "grad_cur") name += "-" + pipe.method;
    if (pipe.cur_fold_u) name += "-folded";
    if (quant) name += "-" + o.weight_quant;
    return fs::path(o.output) / name;
  };
  if (pipe.param_ratio_target > 0 && group->is_root()) cur4llm::io::check_target_free(folder_for(pipe.param_ratio_target), {o.overwrite});
  auto hub = cur4llm::io::HubOptions::from_environment();
  hub.revision = o.revision;
  const fs::path source = cur4llm::io::resolve_model_id(o.model_id, hub);

  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(flags.device);
  load.device_map = flags.device_map;
  load.max_memory = flags.max_memory;
  if (!flags.dtype.empty()) load.dtype = cur4llm::model::parse_dtype(flags.dtype);
  auto lm = cur4llm::model::CausalLM::load(source, load);
  if (lm->stored_form().acur_format_version > 0) {
    throw std::invalid_argument(source.string() + " is already an acur repository; give the dense model");
  }
  auto tokenizer = cur4llm::tokenize::load_tokenizer(source);
  fmt::print(stderr, "loaded {} ({}, {} layers, {}); tokenizer: {}\n", source.string(), lm->config().model_type,
             lm->num_layers(), c10::toString(lm->dtype()), tokenizer->describe());
  pipe.seqlen = cur4llm::pipeline::effective_seqlen(*lm, pipe.seqlen);
  const auto dense = cur4llm::model::count_params(*lm);

  auto result = cur4llm::pipeline::compress_model(*lm, *tokenizer, pipe);
  cur4llm::compress::freeze_scales(*lm);  // grad_cur layers are stored as the CUR layers they stand for
  std::cout << result.plan.table() << std::flush;
  const auto after = cur4llm::model::count_params(*lm);
  const double linear_ratio = static_cast<double>(after.linear_stored) / dense.linear_dense;
  if (result.budget_layers.size() < lm->linears().size()) {
    fmt::print("param ratio: {:.4f} of the budgeted Linear weights (lm_head is tied to the embedding and stays dense)\n",
               result.budget_ratio);
  }
  fmt::print("param ratio: {:.4f} of Linear weights, {:.4f} of the whole model\n", linear_ratio,
             static_cast<double>(after.total_stored) / dense.total_dense);

  cur4llm::quant::PackedWeights packed;
  if (quant) {
    if (quant->activation_aware) {
      // Scales searched on the inputs the calibration samples give the compressed model.
      const auto samples = cur4llm::pipeline::calibration_samples(*lm, *tokenizer, pipe);
      cur4llm::quant::AWQOptions aopts;
      aopts.show_progress = true;
      packed = cur4llm::quant::awq_quantize_model(*lm, samples, *quant, aopts).packed;
    } else {
      packed = cur4llm::quant::quantize_model_packed(*lm, *quant);
    }
    eopts.packed = &packed;
    fmt::print("{}: {} weight tensors of the decoder layers packed: {} -> {} bytes\n", o.weight_quant, packed.size(),
               cur4llm::quant::unpacked_bytes(packed, lm->dtype()), cur4llm::quant::packed_bytes(packed));
  }
  for (const auto& spec : eval_sets) {
    cur4llm::pipeline::EvalOptions ev;
    ev.seqlen = pipe.seqlen;
    ev.batch_size = pipe.batch_size;
    ev.max_windows = o.limit;
    ev.data_dir = data_dir;
    const auto r = cur4llm::pipeline::evaluate_dataset(*lm, *tokenizer, spec, ev);
    fmt::print("{} {:.6f} ({} windows of {} tokens)\n", spec, r.perplexity, r.windows, pipe.seqlen);
  }

  eopts.method = pipe.method == "grad_cur" ? "cur" : pipe.method;
  eopts.provenance = {{"tool", "cur4llm build_acur_repo"},
                      {"source", o.model_id},
                      {"target", result.target_label},
                      {"param_ratio_linear", fmt::format("{:.6f}", linear_ratio)},
                      {"preset", cur4llm::pipeline::preset_name(pipe.preset)},
                      {"act_aware", *pipe.act_aware ? "1" : "0"},
                      {"alpha", fmt::format("{}", pipe.alpha)},
                      {"calib_dataset", pipe.calib_dataset},
                      {"n_calib_samples", std::to_string(pipe.n_calib_samples)},
                      {"seqlen", std::to_string(pipe.seqlen)}};
  const fs::path folder = folder_for(pipe.param_ratio_target > 0 ? pipe.param_ratio_target : linear_ratio);
  group->finish();  // every rank got here
  if (!group->is_root()) return 0;
  const auto written = cur4llm::repo::write_acur_repo(*lm, folder, eopts);
  fmt::print("wrote {}: {} layers described, {} safetensors file(s), {} bytes of weights, {} bytes in all\n",
             written.folder.string(), written.layers, written.shards, written.weight_bytes, written.folder_bytes);
  return 0;
}

// One process, or one rank of several (docs/distributed.md).
int run(int argc, char** argv) {
  return cur4llm::app::run_as_rank("build_acur_repo", [&](const auto& group) { return run_rank(argc, argv, group); });
}

}  // namespace

int main(int argc, char** argv) { return cur4llm::app::guarded_main("build_acur_repo", [&] { return run(argc, argv); }); }
