#pragma once
/// The compression pipeline of acur as one library call: calibration samples,
/// activation statistics, sensitivity, binary search and decomposition, each
/// cached under options.cache_dir when options.use_cache is set (docs/acur.md).
/// acur and build_acur_repo both run it; C++ users can too:
///
///   auto lm = model::CausalLM::load(folder);
///   auto tok = tokenize::load_tokenizer(folder);
///   pipeline::PipelineOptions o;
///   o.param_ratio_target = 0.9;
///   o.act_aware = true;
///   pipeline::validate(o);
///   auto result = pipeline::compress_model(*lm, *tok, o);   // lm now holds the compressed layers
///   std::cout << result.plan.table();

#include <cur4llm/eval/perplexity.h>
#include <cur4llm/search/compression_plan.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}
namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::pipeline {

/// Every input of a compression run. Field names are acur's flags (docs/acur.md);
/// exactly one target, or a plan file, must be given.
struct PipelineOptions {
  double param_ratio_target = -1;     ///< whole-model ratio of Linear weights in (0, 1]; -1: unset
  double ppl_target = -1;             ///< calibration perplexity to reach; -1: unset
  double kv_cache_ratio_target = -1;  ///< KV-cache ratio in (0, 1] (needs compress_kv_cache); -1: unset
  bool compress_kv_cache = false;     ///< compress k_proj / v_proj only
  std::filesystem::path plan_file;    ///< apply this saved plan (acur's --output) instead of sensitivity and search
  bool act_aware = false;             ///< scale each weight by its activation statistics (ASVD-style)
  double alpha = 0.5;                 ///< exponent of the activation scale, >= 0
  int64_t n_calib_samples = 32;       ///< calibration samples
  std::string calib_dataset = "wikitext2";  ///< dataset spec or text file (docs/data.md)
  std::string scaling_method = "abs_mean";  ///< abs_mean, abs_max, fisher, fisher_abs_mean
  std::string sensitivity_metric = "ppl";   ///< ppl or stable_rank
  std::string method = "cur";               ///< compressor name: cur, svd, grad_cur, skeleton, ... (compress/factory.h), or a module method (modules/modules.h: mlp_nystrom, vo_svd, modular)
  std::string cur_selection = "topk";       ///< CUR: topk or sampled leverage
  bool cur_fold_u = false;                  ///< CUR: store C·U [out, k] and R instead of C, U and R (CUROptions::fold_u)
  std::string sigma_fuse = "UV";            ///< SVD: U, V or UV
  std::string channel_selection = "greedy";  ///< module methods: greedy or ridge_leverage (modules/mlp_nystrom.h)
  double ridge = 1e-4;                      ///< module methods: ridge of the refit, relative to the mean of diag(G)
  std::string search = "reference";   ///< param-ratio search: reference (binary search) or lagrangian (docs/search.md); module methods: uniform widths or lagrangian
  std::vector<double> candidates;     ///< ppl sensitivity candidate ratios in (0, 1); empty: the reference's
  bool sequential = false;            ///< data-aware methods: decompose layer by layer on the compressed model's inputs
  uint64_t seed = 233;                ///< calibration sampling (and sampled CUR)
  int64_t rank_align = 1;             ///< ranks are multiples of this
  bool use_bos = false;               ///< BOS before each calibration sample if the tokenizer adds none
  int64_t seqlen = 2048;              ///< tokens per calibration sample (clamped to max_position_embeddings)
  int64_t batch_size = 1;             ///< samples per forward pass
  int64_t sweep_batch_size = 0;       ///< calibration samples per forward pass of the sensitivity sweep; 0: as many as 65536 tokens allow
  std::filesystem::path data_dir;     ///< datasets folder; empty: data::default_data_dir()
  bool use_cache = false;             ///< reuse samples, statistics and sensitivity from cache_dir
  std::filesystem::path cache_dir = "cache";  ///< where use_cache keeps its files
  bool show_progress = true;          ///< progress lines and cache messages on stderr
};

/// Refuses values a run cannot use, before any work: std::invalid_argument
/// naming the flag (a ratio outside (0, 1], two targets or none, an unknown
/// method, metric or scaling method, ...). Datasets are resolved too.
void validate(const PipelineOptions& options);
/// As validate(), without requiring a target (for evaluating a model as it is).
void validate_settings(const PipelineOptions& options);

/// What compress_model did.
struct PipelineResult {
  search::CompressionPlan plan;   ///< every Linear layer: method, ratio, rank, stored and dense parameters
  std::string target_label;       ///< "ratio0.9", "ppl10", "kv0.5" or "plan"
  int64_t seqlen = 0;             ///< calibration sample length used
  bool searched = false;          ///< false when a plan file was applied
  std::size_t search_cut = 0;     ///< the search's cut position (searched only)
  std::size_t search_entries = 0; ///< entries the search ordered (searched only)
  double nominal_ratio = 1;       ///< the allocation's nominal ratio (searched only)
  double dense_calibration_ppl = -1;  ///< the dense model's calibration ppl (lagrangian search only; else -1)
  std::vector<std::pair<std::string, double>> timings;  ///< stage -> seconds, in order
};

/// Runs the pipeline on `lm` (whose Linear layers must still be dense) with the
/// model's own tokenizer and replaces the chosen layers in place. The plan's
/// meta() records the model, method and scaling settings. Throws
/// std::invalid_argument for bad options or a plan that does not fit the model.
PipelineResult compress_model(model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                              const PipelineOptions& options);

/// How evaluate_dataset cuts and batches.
struct EvalOptions {
  int64_t seqlen = 2048;            ///< window length in tokens
  int64_t batch_size = 1;           ///< windows per forward pass
  int64_t max_windows = -1;         ///< evaluate only the first windows (-1: all)
  std::filesystem::path data_dir;   ///< datasets folder; empty: data::default_data_dir()
  bool show_progress = true;        ///< a progress line on stderr
};

/// Perplexity of one evaluation dataset as acur measures it (docs/data.md):
/// the whole text tokenized with the tokenizer's defaults, cut into
/// floor(N / seqlen) windows.
eval::PerplexityResult evaluate_dataset(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                        const std::string& spec, const EvalOptions& options = {});

/// The options of `options` that its method's decompositions read besides
/// rank_align, as text for the sensitivity cache key, so that changing an option
/// a method ignores keeps its cached table: "selection=<cur_selection>" for cur
/// and grad_cur, "sigma_fuse=<sigma_fuse>" for svd and svd_whiten, "" for the
/// skeleton and data-aware CUR methods. std::invalid_argument for a method
/// not classified there (a new method must say which options it reads).
std::string method_cache_options(const PipelineOptions& options);

/// acur's plan file name: "plan-<model>-<method>[-seq][-lagr]-<target label>.json".
std::string plan_file_name(const std::string& model_label, const PipelineOptions& options,
                           const std::string& target_label);

/// "0.5,0.6" -> {0.5, 0.6}; std::invalid_argument naming --candidates for an item that is not a ratio in (0, 1).
std::vector<double> parse_candidates(const std::string& text);

/// `requested`, or max_position_embeddings with a warning on stderr if smaller.
int64_t effective_seqlen(const model::CausalLM& lm, int64_t requested);

/// A short name for a model id or folder: its last path component ("opt-125m"
/// for "facebook/opt-125m", "stories260K-hf" for "../data/stories260K-hf/").
std::string model_label(const std::string& model_id);

}  // namespace cur4llm::pipeline
