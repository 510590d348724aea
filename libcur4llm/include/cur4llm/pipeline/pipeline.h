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
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/compression_plan.h>
#include <cur4llm/util/memory.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}
namespace cur4llm::tokenize {
class Tokenizer;
}
namespace cur4llm::dist {
class Group;
}

namespace cur4llm::pipeline {

/// Where the defaults of a compression run come from.
enum class Preset {
  kBest,       ///< the best measured configuration (docs/results.md): skeleton_swap, sequential, Lagrangian search, candidates 0.4 .. 0.95 by 0.05
  kReference,  ///< the reference pipeline (ASVD4LLM) exactly: cur, top-k leverage, its binary search and final cut, candidates 0.4 .. 0.9, lm_head counted like any Linear
};

/// What a run may do with lm_head.
enum class LmHeadPolicy {
  kAuto,       ///< a tied lm_head stays dense and tied (it stores nothing); an untied one is a candidate like any layer
  kCompress,   ///< lm_head is a candidate; when tied, compressing it unties it and its factors count in full
  kReference,  ///< lm_head is a candidate counted as a Linear of its own, tied or not (the reference's accounting)
};

/// Every input of a compression run. Field names are acur's flags (docs/acur.md);
/// exactly one target, or a plan file, must be given. Fields left unset (empty,
/// std::nullopt, kAuto) take the preset's value for the method and target
/// (resolve()).
struct PipelineOptions {
  Preset preset = Preset::kBest;      ///< where unset fields get their values
  double param_ratio_target = -1;     ///< ratio of the budgeted Linear weights in (0, 1]; -1: unset
  double ppl_target = -1;             ///< calibration perplexity to reach; -1: unset
  double kv_cache_ratio_target = -1;  ///< KV-cache ratio in (0, 1] (needs compress_kv_cache); -1: unset
  bool compress_kv_cache = false;     ///< compress k_proj / v_proj only
  std::filesystem::path plan_file;    ///< apply this saved plan (acur's --output) instead of sensitivity and search
  std::optional<bool> act_aware;      ///< scale each weight by its activation statistics (ASVD-style); unset: on (best), off (reference)
  double alpha = 0.5;                 ///< exponent of the activation scale, >= 0
  int64_t n_calib_samples = 32;       ///< calibration samples
  std::string calib_dataset = "wikitext2";  ///< dataset spec or text file (docs/data.md)
  std::string scaling_method = "abs_mean";  ///< abs_mean, abs_max, fisher, fisher_abs_mean
  std::string sensitivity_metric = "ppl";   ///< ppl or stable_rank
  std::string method;                       ///< compressor name (compress/factory.h) or a module method (modules/modules.h: mlp_nystrom, vo_svd, modular); empty: skeleton_swap (best), cur (reference)
  std::string cur_selection = "topk";       ///< CUR: topk or sampled leverage
  bool cur_fold_u = false;                  ///< CUR: store C·U [out, k] and R instead of C, U and R (CUROptions::fold_u)
  std::string sigma_fuse = "UV";            ///< SVD: U, V or UV
  std::string channel_selection = "greedy";  ///< module methods: greedy or ridge_leverage (modules/mlp_nystrom.h)
  double ridge = 1e-4;                      ///< module methods: ridge of the refit, relative to the mean of diag(G)
  int64_t head_align = 1;                   ///< module methods: kept query/key and value head widths are multiples of this
  std::string search;                 ///< reference (binary search) or lagrangian (docs/search.md); module methods: reference = one width for every module; empty: lagrangian for a param-ratio target with the ppl metric (best), else reference
  std::vector<double> candidates;     ///< ppl sensitivity candidate ratios in (0, 1); empty: 0.4 .. 0.95 by 0.05 (best, weights mode), else the reference's
  std::optional<bool> sequential;     ///< data-aware methods: decompose layer by layer on the compressed model's inputs; unset: on for data-aware methods (best)
  search::FinalCut final_cut = search::FinalCut::kConverged;  ///< binary search's cut (the reference preset takes kReferenceLastMid)
  LmHeadPolicy lm_head = LmHeadPolicy::kAuto;  ///< what may happen to lm_head (the reference preset takes kReference)
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
  std::shared_ptr<dist::Group> group; ///< the processes sharing the run (docs/distributed.md); null: this process alone
};

/// "best" or "reference"; std::invalid_argument naming --preset otherwise.
Preset parse_preset(const std::string& name);
/// "best" or "reference".
std::string preset_name(Preset preset);

/// `options` with every unset field filled from its preset, for its method and
/// target: method, act_aware, search, sequential (best: on for methods on the
/// Gram matrix), candidates (best: 0.4 .. 0.95 by 0.05 for the ppl metric in
/// the weights mode), and, for the reference preset, final_cut and lm_head.
/// Fields already set are kept as they are (validate() judges them).
PipelineOptions resolve(const PipelineOptions& options);

/// Refuses values a run cannot use, before any work: std::invalid_argument
/// naming the flag (a ratio outside (0, 1], two targets or none, an unknown
/// method, metric or scaling method, ...). Judges resolve(options). Datasets
/// are resolved too.
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
  std::vector<std::string> budget_layers;  ///< the layers the parameter budget counts (a tied lm_head kept dense is not one)
  double budget_ratio = 1;        ///< stored / dense weights of budget_layers after compression (a compressed tied lm_head counts in full)
  double final_calibration_ppl = -1;  ///< calibration ppl of the result (perplexity target only; else -1)
  bool target_met = true;         ///< false: the target was not reached (see target_note)
  std::string target_note;        ///< for a missed target: what was asked and what was reached, one line
  std::vector<std::pair<std::string, double>> timings;  ///< stage -> seconds, in order
  std::vector<std::pair<std::string, util::MemoryPeaks>> memory;  ///< stage -> peak host and device memory, as timings
};

/// Runs the pipeline on `lm` (whose Linear layers must still be dense) with the
/// model's own tokenizer and replaces the chosen layers in place. A target that
/// cannot be reached (ratios below the smallest candidate, a perplexity no cut
/// gives) is not an error: the result says so (target_met, target_note) and a
/// warning is printed when show_progress is set. The plan's
/// meta() records the model, method and scaling settings. Throws
/// std::invalid_argument for bad options or a plan that does not fit the model.
PipelineResult compress_model(model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                              const PipelineOptions& options);

/// The calibration samples (token ids) compress_model calibrates on for
/// `options` (calib_dataset, n_calib_samples, seqlen clamped to the model's
/// max_position_embeddings, seed, use_bos), read from and written to
/// options.cache_dir when use_cache is set. For calibration that follows
/// compression, such as AWQ (quant/awq.h). Needs no target (validate_settings).
std::vector<std::vector<int64_t>> calibration_samples(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
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
