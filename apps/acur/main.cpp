// acur: evaluate a model and (in a following release) compress it with
// activation-aware CUR. Flag names follow the reference pipeline (asvd.py).
#include <cur4llm/data/text_data.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/host_memory.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "app_common.h"

#include <chrono>
#include <ctime>
#include <iostream>
#include <sstream>

namespace po = boost::program_options;
using cur4llm::app::guarded_main;

namespace {

struct Options {
  std::string model_id;
  bool raw_model = false;
  std::string eval_ppl;
  std::string data_dir;
  int64_t seqlen = 2048;
  std::string device = "cpu";
  std::string dtype;
  int64_t batch_size = 1;
  int64_t limit = -1;
  std::string results_file = "output/results.jsonl";
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

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
  po::options_description desc(
      "acur: activation-aware CUR compression of a Hugging Face causal LM\n\n"
      "Usage: acur --model_id MODEL --raw_model --eval_ppl wikitext2,ptb [options]\n\nOptions");
  desc.add_options()
      ("help,h", "print this help")
      ("model_id", po::value(&o.model_id)->required(),
       "model folder, or an org/name id found in the local Hugging Face cache")
      ("raw_model", po::bool_switch(&o.raw_model), "evaluate the model as it is, without compression")
      ("eval_ppl", po::value(&o.eval_ppl)->default_value(""),
       "datasets to measure perplexity on, comma-separated: wikitext2, ptb, c4, name:split, or a text file path")
      ("data_dir", po::value(&o.data_dir)->default_value(""),
       "folder holding the datasets (default: $CUR4LLM_DATA_DIR, else ./data); see docs/data.md")
      ("seqlen", po::value(&o.seqlen)->default_value(2048),
       "tokens per window (capped by the model's max_position_embeddings)")
      ("device", po::value(&o.device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("dtype", po::value(&o.dtype)->default_value(""),
       "fp32, fp16 or bf16 (default: fp32 on the CPU, the checkpoint's dtype on CUDA)")
      ("batch_size", po::value(&o.batch_size)->default_value(1), "windows per forward pass")
      ("limit", po::value(&o.limit)->default_value(-1), "evaluate only the first N windows (-1: all)")
      ("results_file", po::value(&o.results_file)->default_value("output/results.jsonl"),
       "JSON-lines file that each run appends its results to");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  if (vm.count("help") || argc == 1) {
    std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);

  // Validate everything before any work starts.
  if (!o.raw_model) {
    throw std::invalid_argument("compression is not built yet in this version; pass --raw_model to evaluate");
  }
  const auto datasets = split_list(o.eval_ppl);
  if (datasets.empty()) throw std::invalid_argument("--eval_ppl: name at least one dataset");
  if (o.seqlen < 2) throw std::invalid_argument(fmt::format("--seqlen must be at least 2, not {}", o.seqlen));
  if (o.batch_size < 1) throw std::invalid_argument("--batch_size must be at least 1");
  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(o.device);
  if (!o.dtype.empty()) load.dtype = cur4llm::model::parse_dtype(o.dtype);
  const auto data_dir = o.data_dir.empty() ? cur4llm::data::default_data_dir() : std::filesystem::path(o.data_dir);
  for (const auto& spec : datasets) cur4llm::data::resolve_dataset(spec, cur4llm::data::Purpose::Evaluation, data_dir);

  const auto t_load = std::chrono::steady_clock::now();
  const auto folder = cur4llm::io::resolve_model_id(o.model_id);
  auto lm = cur4llm::model::CausalLM::load(folder, load);
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  const double load_s = seconds_since(t_load);
  fmt::print(stderr, "loaded {} ({}, {} layers, {}) on {} in {:.1f} s; tokenizer: {}\n", folder.string(),
             lm->config().model_type, lm->num_layers(), c10::toString(lm->dtype()), lm->device().str(), load_s,
             tokenizer->describe());
  int64_t seqlen = o.seqlen;
  if (seqlen > lm->config().max_position_embeddings) {
    fmt::print(stderr, "warning: --seqlen {} exceeds max_position_embeddings; using {}\n", seqlen,
               lm->config().max_position_embeddings);
    seqlen = lm->config().max_position_embeddings;
  }

  nlohmann::json results = nlohmann::json::object();
  nlohmann::json timings = {{"load_s", load_s}};
  for (const auto& spec : datasets) {
    const auto t0 = std::chrono::steady_clock::now();
    auto source = cur4llm::data::load_text(spec, cur4llm::data::Purpose::Evaluation, data_dir);
    auto ids = tokenizer->encode(source.text);
    cur4llm::eval::PerplexityOptions popts;
    popts.seqlen = seqlen;
    popts.batch_size = o.batch_size;
    popts.max_windows = o.limit;
    popts.show_progress = true;
    popts.label = spec.c_str();
    auto r = cur4llm::eval::evaluate_perplexity(*lm, ids, popts);
    const double s = seconds_since(t0);
    fmt::print("{} {:.4f}\n", spec, r.perplexity);
    std::fflush(stdout);
    results[spec] = {{"ppl", r.perplexity}, {"windows", r.windows}, {"tokens", r.tokens}};
    timings["eval_" + spec + "_s"] = s;
  }

  nlohmann::json line = {
      {"time", now_iso8601()},
      {"model_id", o.model_id},
      {"model_folder", folder.string()},
      {"raw_model", o.raw_model},
      {"seqlen", seqlen},
      {"device", lm->device().str()},
      {"dtype", c10::toString(lm->dtype())},
      {"ppl", results},
      {"timings", timings},
  };
  cur4llm::io::append_line(o.results_file, line.dump());
  fmt::print(stderr, "results appended to {}\n", o.results_file);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return guarded_main("acur", [&] { return run(argc, argv); }); }
