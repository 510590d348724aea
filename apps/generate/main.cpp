// generate: text from a model folder or acur repository, with a KV cache.
// One prompt streams its continuation to stdout as it comes; several run as
// one batch and print one block each. Tokens/s of the prefill and of the
// decoding go to stderr (docs/generate.md).
#include <cur4llm/generate/generate.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/host_memory.h>

#include "app_common.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model_id;
  std::string revision = "main";
  std::vector<std::string> prompts;
  std::string prompt_file;
  cur4llm::generate::GenerateOptions gen;  // the sampling flags land here directly
  bool ignore_eos = false;
  bool keep_packed = false;
  std::string device = "cpu";
  std::string dtype;
};

int run(int argc, char** argv) {
  cur4llm::util::tune_host_allocator();
  Options o;
  po::options_description opts(
      "generate: text generation with a KV cache\n\n"
      "Usage: generate --model_id MODEL --prompt TEXT [--prompt TEXT ...] [--max_new_tokens 64]\n"
      "                [--temperature 0] [--top_k 0] [--top_p 1] [--seed 0] [--stop TEXT ...]\n\nOptions");
  opts.add_options()
      ("model_id", po::value(&o.model_id)->required(),
       "model folder or acur repository (or an org/name Hugging Face id: from the local cache, else downloaded)")
      ("revision", po::value(&o.revision)->default_value("main"), "with an org/name --model_id: the Hub revision")
      ("prompt", po::value(&o.prompts)->composing(),
       "a prompt (repeat for a batch); an empty one starts from the BOS token")
      ("prompt_file", po::value(&o.prompt_file), "a file whose whole text is one prompt (one final newline dropped)")
      ("max_new_tokens", po::value(&o.gen.max_new_tokens)->default_value(64), "tokens to generate per prompt at most")
      ("temperature", po::value(&o.gen.temperature)->default_value(0.0), "0: greedy; > 0: sample at this temperature")
      ("top_k", po::value(&o.gen.top_k)->default_value(0), "sampling: only the k most likely tokens (0: all)")
      ("top_p", po::value(&o.gen.top_p)->default_value(1.0), "sampling: the most likely tokens up to this probability")
      ("seed", po::value(&o.gen.seed)->default_value(0), "sampling: the seed (the same seed gives the same text)")
      ("stop", po::value(&o.gen.stop)->composing(), "stop a prompt once its text contains this (repeatable)")
      ("ignore_eos", po::bool_switch(&o.ignore_eos), "do not stop at the end-of-sequence token")
      ("device", po::value(&o.device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("dtype", po::value(&o.dtype)->default_value(""), "fp32, fp16 or bf16 (default: fp32 on the CPU, the config's on CUDA)")
      ("keep_packed", po::bool_switch(&o.keep_packed),
       "a quantized repository's packed dense weights stay packed in memory (decoded inside the products)")
      ("version", "print the version and exit")
      ("help,h", "print this help");
  po::variables_map vm;
  int exit_code = 0;
  if (!cur4llm::app::parse_command_line("generate", argc, argv, opts, vm, exit_code)) return exit_code;

  if (o.prompts.empty() && o.prompt_file.empty()) throw std::invalid_argument("give --prompt TEXT or --prompt_file FILE");
  if (!o.prompts.empty() && !o.prompt_file.empty()) throw std::invalid_argument("give --prompt or --prompt_file, not both");
  if (!o.prompt_file.empty()) {
    std::string text = cur4llm::io::read_file(o.prompt_file);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    o.prompts = {text};
  }
  cur4llm::generate::GenerateOptions g = o.gen;
  g.stop_at_eos = !o.ignore_eos;

  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(o.device);
  if (!o.dtype.empty()) load.dtype = cur4llm::model::parse_dtype(o.dtype);
  load.keep_packed = o.keep_packed;
  auto hub = cur4llm::io::HubOptions::from_environment();
  hub.revision = o.revision;
  const fs::path folder = cur4llm::io::resolve_model_id(o.model_id, hub);
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  auto lm = cur4llm::model::CausalLM::load(folder, load);
  lm->group_projections();  // q/k/v and gate/up as one product each: faster decoding

  // One prompt: echoed once it is accepted (at its first token), then the text as it comes.
  const bool stream = o.prompts.size() == 1;
  bool echoed = false;
  auto echo = [&] {
    if (!echoed) fmt::print("{}", o.prompts[0]);
    echoed = true;
  };
  if (stream) {
    g.on_token = [&](const cur4llm::generate::TokenEvent& e) {
      echo();
      fmt::print("{}", e.text);
      std::fflush(stdout);
    };
  }
  const auto result = cur4llm::generate::generate(*lm, *tokenizer, o.prompts, g);
  if (stream) {
    echo();
    fmt::print("\n");
  } else {
    for (size_t i = 0; i < o.prompts.size(); ++i) {
      fmt::print("=== prompt {} ===\n{}{}\n", i, o.prompts[i], result.sequences[i].text);
    }
  }
  std::vector<std::string> finish;
  for (const auto& s : result.sequences) finish.push_back(cur4llm::generate::to_string(s.finish));
  const auto& st = result.stats;
  fmt::print(stderr,
             "prefill: {} tokens in {:.3f} s ({:.1f} tokens/s); decode: {} tokens in {:.3f} s ({:.1f} tokens/s); "
             "finished: {}\n",
             st.prompt_tokens, st.prefill_seconds, st.prefill_tokens_per_second(), st.generated_tokens - st.first_tokens,
             st.decode_seconds, st.decode_tokens_per_second(), fmt::join(finish, ","));
  return cur4llm::app::kOk;
}

}  // namespace

int main(int argc, char** argv) {
  return cur4llm::app::guarded_main("generate", [&] { return run(argc, argv); });
}
