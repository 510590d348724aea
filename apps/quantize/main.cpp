// quantize: RTN or AWQ weight quantization with real packed storage, applied to a
// dense model folder or to an acur repository, written as a new acur
// repository (docs/export.md). Every Linear inside the decoder layers is
// quantized, the factors of decomposed layers included; lm_head and OPT's
// project_in/out stay as they are.
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
#include "pipeline_flags.h"

#include <csignal>
#include <iostream>

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model_id;
  std::string device = "cpu";
  std::string revision = "main";
  std::string format;
  std::string output;
  bool overwrite = false;
  std::string max_shard_size = "5GB";
  std::string save_dtype;
  std::string eval_ppl = "none";
  int64_t seqlen = 2048;
  int64_t batch_size = 1;
  int64_t limit = -1;
  std::string data_dir;
  std::string calib_dataset;
  int64_t n_calib_samples = 32;
  int64_t seed = 233;
  bool use_bos = false;
};

int64_t safetensors_bytes(const fs::path& folder) {
  int64_t total = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
      total += static_cast<int64_t>(entry.file_size());
    }
  }
  return total;
}

int run(int argc, char** argv) {
  cur4llm::util::tune_host_allocator();
  std::signal(SIGXFSZ, SIG_IGN);  // a file size limit gives a write error (EFBIG), not a core dump
  Options o;
  po::options_description opts(
      "quantize: RTN or AWQ weight quantization with packed storage\n\n"
      "Usage: quantize --model_id FOLDER --format rtn_int8|rtn_int6|rtn_int4 --output DIR [--overwrite]\n"
      "       quantize --model_id FOLDER --format awq_int8|awq_int4 --calib_dataset DATA --output DIR\n\nOptions");
  opts.add_options()
      ("model_id", po::value(&o.model_id)->required(),
       "dense model folder (or an org/name Hugging Face id: from the local cache, else downloaded) or acur repository")
      ("revision", po::value(&o.revision)->default_value("main"),
       "with an org/name --model_id: the Hub branch, tag or commit (default main)")
      ("format", po::value(&o.format)->required(),
       "rtn_int8 or rtn_int6 (per output channel), rtn_int4 (groups of 128 input columns); awq_int8, awq_int4: "
       "the same with activation-aware scales searched on --calib_dataset")
      ("calib_dataset", po::value(&o.calib_dataset)->default_value(""),
       "awq formats: calibration data (wikitext2, ptb, c4, alpaca, selfgen, name:split, or a text file)")
      ("n_calib_samples", po::value(&o.n_calib_samples)->default_value(32), "awq formats: calibration samples")
      ("seed", po::value(&o.seed)->default_value(233), "awq formats: seed of calibration sampling")
      ("use_bos", po::bool_switch(&o.use_bos), "awq formats: BOS before each calibration sample if the tokenizer adds none")
      ("output", po::value(&o.output)->required(), "the folder to write (a new acur repository)")
      ("overwrite", po::bool_switch(&o.overwrite), "replace an existing output folder (once the new one is complete)")
      ("max_shard_size", po::value(&o.max_shard_size)->default_value("5GB"),
       "largest safetensors file before the weights are sharded (e.g. 500MB, 2GB, 1GiB)")
      ("save_dtype", po::value(&o.save_dtype)->default_value(""),
       "fp32, fp16 or bf16 for the floating tensors left unquantized (default: the source config's dtype)")
      ("eval_ppl", po::value(&o.eval_ppl)->default_value("none"), "datasets to evaluate after quantizing (as acur's)")
      ("seqlen", po::value(&o.seqlen)->default_value(2048), "evaluation window and calibration sample length in tokens")
      ("batch_size", po::value(&o.batch_size)->default_value(1), "windows per forward pass")
      ("limit", po::value(&o.limit)->default_value(-1), "evaluate only the first N windows (-1: all)")
      ("data_dir", po::value(&o.data_dir)->default_value(""), "datasets folder (default $CUR4LLM_DATA_DIR, else ./data)")
      ("device", po::value(&o.device)->default_value("cpu"),
       "cpu, cuda or cuda:N: where the weights are quantized and evaluated")
      ("version", "print the version and exit")
      ("help,h", "print this help");
  po::variables_map vm;
  int exit_code = 0;
  if (!cur4llm::app::parse_command_line("quantize", argc, argv, opts, vm, exit_code)) return exit_code;
  cur4llm::app::check_limit(o.limit);

  // Every flag is checked before the model is read.
  const auto format = cur4llm::quant::parse_quant_format(o.format);
  cur4llm::repo::ExportOptions eopts;
  eopts.overwrite = o.overwrite;
  eopts.max_shard_bytes = cur4llm::repo::parse_size(o.max_shard_size);
  if (!o.save_dtype.empty()) eopts.dtype = cur4llm::model::parse_dtype(o.save_dtype);
  if (o.seqlen < 2) throw std::invalid_argument(fmt::format("--seqlen must be at least 2, not {}", o.seqlen));
  if (o.batch_size < 1) throw std::invalid_argument("--batch_size must be at least 1");
  const auto eval_sets = cur4llm::app::split_list(o.eval_ppl);
  const fs::path data_dir = o.data_dir.empty() ? cur4llm::data::default_data_dir() : fs::path(o.data_dir);
  for (const auto& spec : eval_sets) cur4llm::data::resolve_dataset(spec, cur4llm::data::Purpose::Evaluation, data_dir);
  if (format.activation_aware) {
    cur4llm::app::require_calibration_data(format.name, o.calib_dataset, data_dir);
  } else if (!o.calib_dataset.empty()) {
    throw std::invalid_argument(fmt::format("--calib_dataset is read by the awq formats only, not by {}", format.name));
  }
  cur4llm::io::check_target_free(o.output, {o.overwrite});  // a link, even dangling, counts

  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(o.device);
  auto hub = cur4llm::io::HubOptions::from_environment();
  hub.revision = o.revision;
  const fs::path source = cur4llm::io::resolve_model_id(o.model_id, hub);
  std::error_code not_there;
  if (fs::equivalent(o.output, source, not_there)) {
    throw std::invalid_argument(fmt::format("--output {} is the --model_id folder; write to another one", o.output));
  }
  auto lm = cur4llm::model::CausalLM::load(source, load);
  const auto& form = lm->stored_form();
  if (!form.quantization.empty()) {
    throw std::invalid_argument(fmt::format("{} is already quantized ({}); give the unquantized model", source.string(),
                                            form.quantization));
  }
  fmt::print(stderr, "loaded {} ({}, {} layers{})\n", source.string(), lm->config().model_type, lm->num_layers(),
             form.acur_format_version > 0 ? ", acur repository of method " + form.method : std::string());

  cur4llm::quant::PackedWeights packed;
  std::unique_ptr<cur4llm::tokenize::Tokenizer> tokenizer;
  if (format.activation_aware) {
    tokenizer = cur4llm::tokenize::load_tokenizer(source);
    cur4llm::pipeline::PipelineOptions calib;
    calib.calib_dataset = o.calib_dataset;
    calib.n_calib_samples = o.n_calib_samples;
    calib.seqlen = o.seqlen;
    calib.seed = static_cast<uint64_t>(o.seed);
    calib.use_bos = o.use_bos;
    calib.data_dir = data_dir;
    calib.method = "cur";  // read by no step here; any method passes the settings' checks
    const auto samples = cur4llm::pipeline::calibration_samples(*lm, *tokenizer, calib);
    cur4llm::quant::AWQOptions aopts;
    aopts.show_progress = true;
    packed = cur4llm::quant::awq_quantize_model(*lm, samples, format, aopts).packed;
  } else {
    packed = cur4llm::quant::quantize_model_packed(*lm, format);
  }
  const c10::ScalarType stored_dtype = eopts.dtype ? *eopts.dtype : cur4llm::model::stored_dtype(lm->config());
  fmt::print("{}: {} weight tensors of the decoder layers: {} bytes as {} -> {} bytes packed\n", format.name,
             packed.size(), cur4llm::quant::unpacked_bytes(packed, stored_dtype), c10::toString(stored_dtype),
             cur4llm::quant::packed_bytes(packed));

  if (!eval_sets.empty()) {
    if (!tokenizer) tokenizer = cur4llm::tokenize::load_tokenizer(source);
    for (const auto& spec : eval_sets) {
      cur4llm::pipeline::EvalOptions ev;
      ev.seqlen = cur4llm::pipeline::effective_seqlen(*lm, o.seqlen);
      ev.batch_size = o.batch_size;
      ev.max_windows = o.limit;
      ev.data_dir = data_dir;
      const auto r = cur4llm::pipeline::evaluate_dataset(*lm, *tokenizer, spec, ev);
      fmt::print("{} {:.6f} ({} windows of {} tokens)\n", spec, r.perplexity, r.windows, ev.seqlen);
    }
  }

  eopts.packed = &packed;
  eopts.method = form.method;
  eopts.provenance = {{"tool", "cur4llm quantize"}, {"source", o.model_id}, {"quantization", format.name}};
  const auto written = cur4llm::repo::write_acur_repo(*lm, o.output, eopts);
  fmt::print("weights (safetensors): {} -> {} bytes\n", safetensors_bytes(source), safetensors_bytes(written.folder));
  fmt::print("folder: {} -> {} bytes\n", cur4llm::io::folder_bytes(source), written.folder_bytes);
  fmt::print("wrote {}\n", written.folder.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return cur4llm::app::guarded_main("quantize", [&] { return run(argc, argv); }); }
